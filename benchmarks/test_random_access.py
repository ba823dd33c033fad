"""How training reads: a shuffled epoch's random ids, and whole epochs in shuffled batches (warm cache).

- random-each: `store[i]` for K seeded random ids, one at a time, from an open store;
- random-batch: the same K ids as one `store.read(ids)` call, from an open store;
- batches-B: every image, in batches of B consecutive ids visited in a seeded shuffled order.

The store is opened before timing, as a training loop keeps it open. Each records images per
second in ``extra_info``.
"""

from __future__ import annotations

import numpy as np
import pytest

import storage
from benchmarks.conftest import describe, random_ids
from benchmarks.contract import assert_images_equal

pytestmark = pytest.mark.training


def record_rate(benchmark, images_per_round: int) -> None:
    if not benchmark.disabled:
        benchmark.extra_info["images_per_second"] = images_per_round / benchmark.stats.stats.median


def test_random_each(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    ids = random_ids(case.images).tolist()
    describe(benchmark, "random-each", case, images, page_cache="warm", reads=len(ids))
    with storage.open(case.backend, built_stores.get(case, images, labels)) as store:
        got = run_rounds(lambda: [store[image_id] for image_id in ids])
    record_rate(benchmark, len(ids))
    assert_images_equal([image for image, _ in got], [images[i] for i in ids])
    assert [label for _, label in got] == [int(labels[i]) for i in ids]


def test_random_batch(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    ids = random_ids(case.images)
    describe(benchmark, "random-batch", case, images, page_cache="warm", reads=len(ids))
    with storage.open(case.backend, built_stores.get(case, images, labels)) as store:
        got_images, got_labels = run_rounds(lambda: store.read(ids))
    record_rate(benchmark, len(ids))
    assert_images_equal(got_images, [images[i] for i in ids])
    assert got_labels.tolist() == labels[ids].tolist()


@pytest.mark.parametrize("batch_size", [32, 256], ids=lambda size: f"batch={size}")
def test_shuffled_batches(benchmark, run_rounds, case, source, built_stores, batch_size):
    images, labels = source
    starts = np.random.default_rng(0).permutation(np.arange(0, case.images, batch_size)).tolist()
    describe(benchmark, f"batches-{batch_size}", case, images, page_cache="warm", batch_size=batch_size)
    with storage.open(case.backend, built_stores.get(case, images, labels)) as store:
        got = run_rounds(lambda: [store.read(slice(start, start + batch_size)) for start in starts])
    record_rate(benchmark, case.images)
    for start, (batch_images, batch_labels) in zip(starts, got):
        assert_images_equal(batch_images, images[start : start + batch_size])
        assert batch_labels.tolist() == labels[start : start + batch_size].tolist()
