"""Cold cache: read-many and a random batch with the store's files evicted from the page cache before each round.

Eviction (outside the timed region, with no handle open) is fsync, then ``POSIX_FADV_DONTNEED`` on
every file of the store; ``extra_info["eviction_verified"]`` says whether ``mincore`` then found
none of their pages resident in every round. On a virtual disk the host may still cache the data,
so "cold" here means: not in this machine's page cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import storage
from benchmarks.cache import CAN_EVICT, evict, resident_fraction
from benchmarks.conftest import assert_read_back, describe, random_ids, raw_bytes, read_all
from benchmarks.contract import assert_images_equal

pytestmark = [
    pytest.mark.training,
    pytest.mark.skipif(not CAN_EVICT, reason="evicting files from the page cache needs Linux"),
]


def store_files(backend: str, path: Path) -> list[Path]:
    return [path] if backend == "limit" else storage.backend(backend).files(path)


class Eviction:
    """Evicts a store's files before each round and remembers the most that stayed resident."""

    def __init__(self, backend: str, path: Path) -> None:
        self.files = store_files(backend, path)
        self.most_resident = 0.0

    def __call__(self) -> tuple[tuple, dict]:
        """Evict, check, and hand `benchmark.pedantic` no arguments: usable as a round's setup."""
        evict(self.files)
        self.most_resident = max(self.most_resident, resident_fraction(self.files))
        return (), {}

    def record(self, benchmark) -> None:
        benchmark.extra_info.update(
            eviction_verified=self.most_resident == 0, resident_after_eviction=self.most_resident
        )


@pytest.mark.limit_row
def test_read_many_cold(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    path = built_stores.get(case, images, labels)
    describe(benchmark, "read-many", case, images, page_cache="cold")
    benchmark.group = case.group("read-many-cold")
    eviction = Eviction(case.backend, path)
    nbytes = raw_bytes(images)
    got = run_rounds(lambda: read_all(case.backend, path, nbytes), eviction)
    eviction.record(benchmark)
    assert_read_back(case.backend, got, images, labels)


def test_random_batch_cold(benchmark, run_rounds, case, source, built_stores):
    """The random batch of test_random_access, from a store opened (untimed) right after eviction."""
    images, labels = source
    path = built_stores.get(case, images, labels)
    ids = random_ids(case.images)
    describe(benchmark, "random-batch", case, images, page_cache="cold", reads=len(ids))
    benchmark.group = case.group("random-batch-cold")
    eviction = Eviction(case.backend, path)
    opened = []

    def evicted_and_opened():
        while opened:
            opened.pop().close()
        eviction()
        opened.append(storage.open(case.backend, path))
        return (opened[0],), {}

    got_images, got_labels = run_rounds(lambda store: store.read(ids), evicted_and_opened)
    opened.pop().close()
    eviction.record(benchmark)
    assert_images_equal(got_images, [images[i] for i in ids])
    assert got_labels.tolist() == labels[ids].tolist()
