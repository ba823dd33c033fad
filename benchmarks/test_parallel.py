"""Parallel readers: read-many split between 1 or 2 workers, as processes or threads (warm cache).

Each round hands every worker an equal range of ids. A process worker opens its own handle inside
the task (LMDB and HDF5 handles must not cross a fork) and reads its range; thread workers share
one store opened in the round. Workers keep the pixels and return only their count: this measures
reading, not moving images between processes. Pools start outside the timed region; their workers
are started in the untimed first round. ``extra_info["speedup"]`` is the one-worker median of the
same case and pool over this one, once both have run.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

import storage
from benchmarks.conftest import describe

ONE_WORKER: dict[tuple[str, str], float] = {}  # (case, pool) -> median with one worker

pytestmark = pytest.mark.training


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


def make_pool(kind: str, workers: int) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))


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
            with storage.open(case.backend, path) as store:
                return list(pool.map(lambda bound: read_shared(store, *bound, check), ranges))
        futures = [pool.submit(read_range, case.backend, str(path), *bound, check) for bound in ranges]
        return [future.result() for future in futures]

    with make_pool(pool_kind, workers) as pool:
        counts = run_rounds(read_in_parallel)
        digests = read_in_parallel(check=True)  # one more round, untimed, that fingerprints what each worker read
    assert sum(counts) == case.images
    assert digests == [digest(images[start:stop], labels[start:stop]) for start, stop in ranges]
    if not benchmark.disabled:
        median = benchmark.stats.stats.median
        if workers == 1:
            ONE_WORKER[str(case), pool_kind] = median
        elif (str(case), pool_kind) in ONE_WORKER:
            benchmark.extra_info["speedup"] = ONE_WORKER[str(case), pool_kind] / median
