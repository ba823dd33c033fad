"""Growth: open a store of N images, append N/10 more, close (fsynced, unless --no-fsync).

The case that breaks a badly sized LMDB map, and that costs hdf5 and npz a copy of the file
(their appends are copy-and-rename, for crash safety). Every round starts from a fresh copy of
the store of N, made outside the timed region. The `limit` row appends the same pixel bytes to a
copy of the plain file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import storage
from benchmarks import plain
from benchmarks.conftest import assert_read_back, describe, raw_bytes, read_all

pytestmark = pytest.mark.training


def append_to_plain_file(path: Path, pixels: np.ndarray, durable: bool) -> None:
    with path.open("ab") as file:
        file.write(pixels)
        file.flush()
        if durable:
            os.fsync(file.fileno())


@pytest.mark.limit_row
def test_grow(benchmark, run_rounds, case, source, built_stores, fresh_target, durable):
    images, labels = source
    original = built_stores.get(case, images, labels)
    added = max(1, case.images // 10)
    more_images, more_labels = images[:added], labels[:added] + case.images  # new labels; pixels reused
    path, clear = fresh_target
    describe(benchmark, "grow-10%", case, images, durable=durable, appended=added)
    payload = plain.pixel_bytes(more_images) if case.backend == "limit" else more_images

    def fresh_copy():
        clear()
        (shutil.copytree if original.is_dir() else shutil.copy2)(original, path)
        return (path,), {}

    def grow(target: Path) -> None:
        if case.backend == "limit":
            append_to_plain_file(target, payload, durable)
            return
        with storage.open(case.backend, target, "a", durable=durable) as store:
            store.append(more_images, more_labels)

    run_rounds(grow, fresh_copy)
    expected_images = [*images, *more_images] if isinstance(images, list) else np.concatenate([images, more_images])
    expected_labels = np.concatenate([labels, more_labels])
    assert_read_back(
        case.backend, read_all(case.backend, path, raw_bytes(expected_images)), expected_images, expected_labels
    )
