"""Reading, warm page cache: stores are built once per session, outside timing.

- read-one: open a store of N, read its middle image, close;
- read-one-open: ``store[i]`` from an open store, ids in a seeded shuffled order (per-sample cost in a training loop);
- read-many: open, read all N images in id order into memory, close; beside the floor row `limit`
  (the same pixel bytes read from one plain file into a fresh array).
"""

import itertools

import numpy as np
import pytest

from benchmarks.harness import (
    check_read_back,
    describe,
    peak_memory,
    raw_bytes,
    read_all,
    record_disk_usage,
    record_read_memory,
    record_transfers,
)
from storage.testing import assert_images_match


def test_read_one(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    path = built_stores.get(case, images, labels)
    image_id = case.images // 2
    describe(benchmark, "read-one", case, images, page_cache="warm", image_id=image_id, reads=1)
    record_disk_usage(benchmark, case.subject, path, case.images, raw_bytes(images))

    def open_read_close():
        with case.subject.open(path) as store:
            return store[image_id]

    image, label = run_rounds(open_read_close)
    record_transfers(benchmark, case.subject, path, 1, lambda store: store[image_id], opening=True)
    assert_images_match([image], [images[image_id]], case.subject.codec)
    assert label == labels[image_id]


def test_read_one_open_store(benchmark, case, source, built_stores):
    images, labels = source
    path = built_stores.get(case, images, labels)
    describe(benchmark, "read-one-open", case, images, page_cache="warm", order="shuffled", reads=1)
    record_disk_usage(benchmark, case.subject, path, case.images, raw_bytes(images))
    ids = itertools.cycle(np.random.default_rng(0).permutation(case.images).tolist())
    with case.subject.open(path) as store:

        def read_next():
            image_id = next(ids)
            return image_id, store[image_id]

        image_id, (image, label) = benchmark(read_next)
        if not benchmark.disabled:
            benchmark.extra_info["peak_memory_bytes"] = peak_memory(read_next)
    assert_images_match([image], [images[image_id]], case.subject.codec)
    assert label == labels[image_id]
    record_transfers(benchmark, case.subject, path, 1, lambda store: store[image_id], opening=False)


@pytest.mark.limit_row
@pytest.mark.tutorial_row
@pytest.mark.codec_floor
def test_read_many(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    path = built_stores.get(case, images, labels)
    describe(benchmark, "read-many", case, images, page_cache="warm")
    record_disk_usage(benchmark, case.subject, path, case.images, raw_bytes(images))
    got = run_rounds(lambda: read_all(case.subject, path))
    check_read_back(case.subject, got, images, labels)
    record_read_memory(benchmark, case.subject, path)  # in a fresh process, untimed
    record_transfers(benchmark, case.subject, path, case.images, lambda store: store.read(), opening=True)
