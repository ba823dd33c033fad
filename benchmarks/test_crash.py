"""Crash safety: a writer killed with SIGKILL mid-append leaves exactly the appends that completed.

A child process appends batches to a store and reports each completed append through a pipe;
the test kills it at a seeded random moment, then reopens the store: it must open and hold
whole batches only, bit-exact, at least the reported ones and at most one more (the append that
finished just before the kill could be reported). Then it must take a further append.
Appends here skip fsync (``durable=False``): a killed process loses nothing that reached the
page cache, so fsync only matters for power loss, which this test cannot stage.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import numpy as np
import pytest

import storage
from benchmarks.contract import assert_read_equal

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fork and SIGKILL")

BATCH = 100  # images per append
APPENDS = 6  # appends by the killed writer, after the first batch written by the test
TRIALS = 6  # kills per backend


def batch(number: int) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of append `number`: distinct for every append, the same on every call."""
    rng = np.random.default_rng(number)
    return rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8), np.arange(BATCH) + number * BATCH


def expected(appends: int) -> tuple[list[np.ndarray], list[int]]:
    images, labels = [], []
    for number in range(appends):
        batch_images, batch_labels = batch(number)
        images += list(batch_images)
        labels += batch_labels.tolist()
    return images, labels


def start_writer(backend: str, path) -> tuple[int, int]:
    """Fork a child that appends batches 1..APPENDS, writing one byte to a pipe after each; (pid, pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            with storage.open(backend, path, "a", durable=False) as store:
                for number in range(1, APPENDS + 1):
                    store.append(*batch(number))
                    os.write(write_end, b".")
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


def completed(pipe: int) -> int:
    with os.fdopen(pipe, "rb") as reports:
        return len(reports.read())


def new_store(backend: str, path) -> None:
    with storage.open(backend, path, "x", durable=False) as store:
        store.append(*batch(0))


# every backend; its variants change how pixels are encoded, not how an append commits
@pytest.mark.parametrize("backend", storage.available(variants=False))
def test_killed_append_leaves_the_completed_appends(backend, tmp_path):
    new_store(backend, tmp_path / "timing")
    started = time.perf_counter()
    pid, pipe = start_writer(backend, tmp_path / "timing")  # one undisturbed run sets the range of kill times
    os.waitpid(pid, 0)
    duration = time.perf_counter() - started
    assert completed(pipe) == APPENDS
    seeded = random.Random(f"crash-{backend}")
    for trial in range(TRIALS):
        path = tmp_path / f"store-{trial}"
        new_store(backend, path)
        pid, pipe = start_writer(backend, path)
        time.sleep(seeded.uniform(0, duration))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reported = completed(pipe)
        with storage.open(backend, path) as store:
            assert len(store) % BATCH == 0, f"trial {trial}: {len(store)} images, not whole batches"
            appended = len(store) // BATCH - 1
            assert reported <= appended <= min(reported + 1, APPENDS), f"trial {trial}: {reported=}, {appended=}"
            assert_read_equal(store, None, *expected(appended + 1))
        with storage.open(backend, path, "a", durable=False) as store:  # the killed append's leftovers are no obstacle
            store.append(*batch(appended + 1))
        with storage.open(backend, path) as store:
            assert_read_equal(store, None, *expected(appended + 2))
