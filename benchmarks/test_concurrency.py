"""Concurrent readers: two reader processes read a store while a third process appends to it.

Every read must be a consistent prefix: whole appends, bit-exact, never fewer images than an
earlier read of the same reader saw. After the writer finishes, every append is there.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

import storage
from benchmarks.isolation import run_forked

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fork")

BATCH = 100
APPENDS = 12
READERS = 2


def batch(number: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1000 + number)
    return rng.integers(0, 256, (BATCH, 8, 8, 3), dtype=np.uint8), np.arange(BATCH) + number * BATCH


def all_images(appends: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [batch(number) for number in range(appends)]
    return np.concatenate([images for images, _ in parts]), np.concatenate([labels for _, labels in parts])


def write(backend: str, path) -> int:
    with storage.open(backend, path, "a") as store:
        for number in range(1, APPENDS + 1):
            store.append(*batch(number))
            time.sleep(0.005)  # let the readers in between appends too
    return APPENDS


def read_until(backend: str, path, done) -> list[int]:
    """Read the whole store again and again until `done` exists; the sizes seen, each checked."""
    expected_images, expected_labels = all_images(APPENDS + 1)
    seen = []
    while not done.exists() or len(seen) < 3:
        with storage.open(backend, path) as store:
            images, labels = store.read()
        count = len(labels)
        if count % BATCH or count < max(seen, default=BATCH):
            raise AssertionError(f"read {count} images after {seen}: not a growing prefix of whole appends")
        if not (np.array_equal(images, expected_images[:count]) and np.array_equal(labels, expected_labels[:count])):
            raise AssertionError(f"the first {count} images read differ from those written")
        seen.append(count)
    return seen


# every backend; its variants change how pixels are encoded, not how an append commits
@pytest.mark.parametrize("backend", storage.available(variants=False))
def test_readers_see_a_consistent_prefix_while_a_writer_appends(backend, tmp_path):
    path, done = tmp_path / "store", tmp_path / "writer-done"
    with storage.open(backend, path, "x") as store:
        store.append(*batch(0))
    reports = [tmp_path / f"reader-{number}.txt" for number in range(READERS)]
    readers = []
    for report in reports:
        pid = os.fork()
        if pid == 0:  # a reader: it writes what it saw, or what went wrong, to its report
            try:
                report.write_text(f"ok {read_until(backend, path, done)}")
            except BaseException as error:
                report.write_text(f"{type(error).__name__}: {error}")
            finally:
                os._exit(0)
        readers.append(pid)
    written = run_forked(lambda: write(backend, path), timeout=60)
    done.touch()
    for pid in readers:
        os.waitpid(pid, 0)
    assert written.result == APPENDS, written.describe()
    for report in reports:
        assert report.read_text().startswith("ok"), report.read_text()
    with storage.open(backend, path) as store:
        images, labels = store.read()
    expected_images, expected_labels = all_images(APPENDS + 1)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
