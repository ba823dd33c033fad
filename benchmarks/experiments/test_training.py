"""How training reads (the training preset, and smoke): growth, random access, cold cache, parallel readers.

- grow-10%: open a store of N, append N/10 more, close (fsynced unless --no-fsync); every round from a
  fresh copy of the store of N, made outside timing; beside the floor, which appends to a copy of its file, and
  the codec floors, which encode the N/10 images;
  It is the case that breaks a badly sized LMDB map and costs hdf5 and npz a copy of their file.
- random-each: ``store[i]`` for K seeded random ids, one at a time, from an open store;
- random-batch: the same K ids as one ``store.read(ids)`` call, from an open store;
- batches-B: every image, in batches of B consecutive ids visited in a seeded shuffled order;
- read-many-cold and random-batch-cold: the store's files evicted from the page cache before each round
  (fsync, then ``POSIX_FADV_DONTNEED``; ``extra_info["eviction_verified"]`` says whether ``mincore`` then
  found none of their pages resident in every round). On a virtual disk the host may still cache the data,
  so cold means: not in this machine's page cache;
- read-many-processes / -threads: read-many split between 1 or 2 workers. A process worker opens its own
  handle (LMDB and HDF5 handles must not cross a fork); thread workers share one store opened in the round.
  Workers return only a count: this measures reading, not moving images between processes. Pools start
  outside timing, their workers in the untimed first round; ``extra_info["speedup"]`` is the one-worker
  median over this one.

Stores are opened before timing, as a training loop keeps them open, unless the experiment says otherwise.
Warm-cache experiments record ``page_cache="warm"``; random access records images per second.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import storage
from benchmarks.cache import CAN_EVICT, evict, resident_fraction
from benchmarks.harness import (
    check_picked,
    check_read_back,
    copy_store,
    describe,
    random_ids,
    read_all,
    record_transfers,
)
from storage.testing import assert_images_match

pytestmark = pytest.mark.training
needs_eviction = pytest.mark.skipif(not CAN_EVICT, reason="evicting files from the page cache needs Linux")
ONE_WORKER: dict[tuple[str, str], float] = {}  # (case, pool) -> median with one worker


@pytest.mark.limit_row
@pytest.mark.codec_floor
def test_grow(benchmark, run_rounds, case, source, built_stores, fresh_target, durable):
    if not case.subject.local:
        pytest.skip("each round starts from a copy of the store of N: a copy of a local directory or file")
    images, labels = source
    original = built_stores.get(case, images, labels)
    added = max(1, case.images // 10)
    more_images, more_labels = images[:added], labels[:added] + case.images  # new labels; pixels reused
    path, clear = fresh_target
    describe(benchmark, "grow-10%", case, images, durable=durable, appended=added)

    def fresh_copy():
        clear()
        copy_store(case.subject, original, path)
        return (path,), {}

    def grow(target: Path) -> None:
        with case.subject.open(target, "a", durable=durable) as store:
            store.append(more_images, more_labels)

    run_rounds(grow, fresh_copy)
    expected_images = [*images, *more_images] if isinstance(images, list) else np.concatenate([images, more_images])
    check_read_back(case.subject, read_all(case.subject, path), expected_images, np.concatenate([labels, more_labels]))


def record_rate(benchmark, images_per_round: int) -> None:
    if not benchmark.disabled:
        benchmark.extra_info["images_per_second"] = images_per_round / benchmark.stats.stats.median


@pytest.mark.limit_row
def test_random_each(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    ids = random_ids(case.images).tolist()
    describe(benchmark, "random-each", case, images, page_cache="warm", reads=len(ids))
    with case.subject.open(built_stores.get(case, images, labels)) as store:
        got = run_rounds(lambda: [store[image_id] for image_id in ids])
    record_rate(benchmark, len(ids))
    path = built_stores.get(case, images, labels)
    record_transfers(benchmark, case.subject, path, len(ids), lambda store: [store[i] for i in ids], opening=False)
    check_picked(case.subject, [image for image, _ in got], [label for _, label in got], images, labels, ids)


@pytest.mark.limit_row
def test_random_batch(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    ids = random_ids(case.images)
    describe(benchmark, "random-batch", case, images, page_cache="warm", reads=len(ids))
    with case.subject.open(built_stores.get(case, images, labels)) as store:
        got_images, got_labels = run_rounds(lambda: store.read(ids))
    record_rate(benchmark, len(ids))
    path = built_stores.get(case, images, labels)
    record_transfers(benchmark, case.subject, path, len(ids), lambda store: store.read(ids), opening=False)
    check_picked(case.subject, got_images, got_labels, images, labels, ids)


@pytest.mark.limit_row
@pytest.mark.parametrize("batch_size", [32, 256], ids=lambda size: f"batch={size}")
def test_shuffled_batches(benchmark, run_rounds, case, source, built_stores, batch_size):
    images, labels = source
    starts = np.random.default_rng(0).permutation(np.arange(0, case.images, batch_size)).tolist()
    describe(benchmark, f"batches-{batch_size}", case, images, page_cache="warm", batch_size=batch_size)
    with case.subject.open(built_stores.get(case, images, labels)) as store:
        got = run_rounds(lambda: [store.read(slice(start, start + batch_size)) for start in starts])
    record_rate(benchmark, case.images)
    path = built_stores.get(case, images, labels)
    record_transfers(
        benchmark,
        case.subject,
        path,
        case.images,
        lambda store: [store.read(slice(s, s + batch_size)) for s in starts],
        opening=False,
    )
    for start, (batch_images, batch_labels) in zip(starts, got):
        picked = range(start, min(start + batch_size, case.images))
        check_picked(case.subject, batch_images, batch_labels, images, labels, picked)


def skip_unless_local(case) -> None:
    if not case.subject.local:
        pytest.skip("cold means: evicted from this machine's page cache; an object store's cache is the server's")


class Eviction:
    """Evicts a store's files before each round and remembers the most that stayed resident."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
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


@needs_eviction
@pytest.mark.limit_row
@pytest.mark.codec_floor
def test_read_many_cold(benchmark, run_rounds, case, source, built_stores):
    skip_unless_local(case)
    images, labels = source
    path = built_stores.get(case, images, labels)
    describe(benchmark, "read-many", case, images, page_cache="cold")
    benchmark.group = case.group("read-many-cold")
    eviction = Eviction(case.subject.files(path))
    got = run_rounds(lambda: read_all(case.subject, path), eviction)
    eviction.record(benchmark)
    check_read_back(case.subject, got, images, labels)


@needs_eviction
@pytest.mark.limit_row
def test_random_batch_cold(benchmark, run_rounds, case, source, built_stores):
    """The random batch above, from a store opened (untimed) right after eviction."""
    skip_unless_local(case)
    images, labels = source
    path = built_stores.get(case, images, labels)
    ids = random_ids(case.images)
    describe(benchmark, "random-batch", case, images, page_cache="cold", reads=len(ids))
    benchmark.group = case.group("random-batch-cold")
    eviction = Eviction(case.subject.files(path))
    opened = []

    def evicted_and_opened():
        while opened:
            opened.pop().close()
        eviction()
        opened.append(case.subject.open(path))
        return (opened[0],), {}

    got_images, got_labels = run_rounds(lambda store: store.read(ids), evicted_and_opened)
    opened.pop().close()
    eviction.record(benchmark)
    check_picked(case.subject, got_images, got_labels, images, labels, ids)


def digest(images, labels) -> str:
    """A fingerprint of images and labels, to check outside timing what a worker read."""
    hashed = hashlib.blake2b(np.asarray(labels, np.int64).tobytes())
    for image in images:
        hashed.update(np.ascontiguousarray(image).tobytes())
    return hashed.hexdigest()


def read_shared(store: storage.Store, start: int, stop: int, check: bool = False) -> int | str:
    images, labels = store.read(slice(start, stop))
    return digest(images, labels) if check else len(labels)


def read_range(backend: str, path: str, start: int, stop: int, check: bool = False) -> int | str:
    with storage.open(backend, path) as store:
        return read_shared(store, start, stop, check)


def make_pool(kind: str, workers: int, fork_safe: bool = True) -> Executor:
    """Threads, or processes: forked, unless the store's library cannot run in a forked child (then forked from a
    fork server, which has used no store). The workers take this process's environment: a fork server keeps the
    one it started with, which may predate the S3 server's address and credentials."""
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    context = multiprocessing.get_context("fork" if fork_safe else "forkserver")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=adopt_environment, initargs=(dict(os.environ),))


def adopt_environment(environment: dict[str, str]) -> None:
    os.environ.update(environment)


@pytest.mark.parametrize("pool_kind", ["process", "thread"])
@pytest.mark.parametrize("workers", [1, 2], ids=lambda count: f"workers={count}")
def test_parallel_read_many(benchmark, run_rounds, case, source, built_stores, workers, pool_kind):
    images, labels = source
    path = built_stores.get(case, images, labels)
    bounds = np.linspace(0, case.images, workers + 1).astype(int).tolist()
    ranges = list(zip(bounds[:-1], bounds[1:]))
    experiment = {"process": "read-many-processes", "thread": "read-many-threads"}[pool_kind]
    describe(benchmark, experiment, case, images, page_cache="warm", workers=workers)

    def read_in_parallel(check: bool = False) -> list:
        if pool_kind == "thread":
            with case.subject.open(path) as store:
                return list(pool.map(lambda bound: read_shared(store, *bound, check), ranges))
        futures = [pool.submit(read_range, case.subject.name, str(path), *bound, check) for bound in ranges]
        return [future.result() for future in futures]

    with make_pool(pool_kind, workers, case.subject.capabilities.fork_safe) as pool:
        counts = run_rounds(read_in_parallel)
        digests = read_in_parallel(check=True)  # one more round, untimed, that fingerprints what each worker read
    assert sum(counts) == case.images
    decoded = images
    if not case.subject.codec.lossless:  # the workers must read what the store decodes, itself close to the images
        with case.subject.open(path) as store:
            decoded = store.read()[0]
        assert_images_match(decoded, images, case.subject.codec)
    assert digests == [digest(decoded[start:stop], labels[start:stop]) for start, stop in ranges]
    if not benchmark.disabled:
        median = benchmark.stats.stats.median
        if workers == 1:
            ONE_WORKER[str(case), pool_kind] = median
        elif (str(case), pool_kind) in ONE_WORKER:
            benchmark.extra_info["speedup"] = ONE_WORKER[str(case), pool_kind] / median
