"""Contract: bad input and misuse raise a clear error, and a failed call writes nothing."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest

import storage
from benchmarks.contract import assert_read_equal
from benchmarks.strategies import image_shape, rejected_layouts

each_backend = pytest.mark.parametrize("backend", storage.available())
GOOD = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)


@pytest.fixture(params=storage.available())
def store(request, tmp_path):
    """An open, writable store of each backend holding the two GOOD images."""
    with storage.open(request.param, tmp_path / "store", "x") as store:
        store.append(GOOD, [7, 8])
        yield store


def snapshot(store) -> dict[str, int]:
    """Every file under the store's directory with its size: what a failed call must not change."""
    root = store.path if store.capabilities.directory else store.path.parent
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "lock.mdb"}


@pytest.mark.parametrize(
    ("images", "labels", "error", "message"),
    [
        (GOOD, [1], ValueError, "2 images but 1 labels"),
        (GOOD, [1, 2, 3], ValueError, "2 images but 3 labels"),
        (GOOD, [1, 2.0], TypeError, "label 2.0 at position 1 is not an integer"),
        (GOOD, [1, "2"], TypeError, "is not an integer"),
        (GOOD, [True, 2], TypeError, "is not an integer"),
        (GOOD, np.array([1.0, 2.0]), TypeError, "float64"),
        (GOOD, 3, TypeError, "labels must be a sequence"),
        (GOOD, [1, 2**63], ValueError, "does not fit in int64"),
        (GOOD, np.array([1, 2**63], dtype=np.uint64), ValueError, "does not fit in int64"),
        (GOOD[0, 0], [1, 2, 3, 4], ValueError, "shape (N, H, W) or (N, H, W, C)"),
        (GOOD[..., np.newaxis], [1, 2], ValueError, "got (2, 4, 5, 3, 1)"),
        (np.zeros((2, 0, 5), np.uint8), [1, 2], ValueError, "of shape (0, 5)"),
        (GOOD.astype(object), [1, 2], ValueError, "object"),
        ([GOOD[0], np.zeros(5, np.uint8)], [1, 2], ValueError, "of shape (5,)"),
        ([GOOD[0], "text"], [1, 2], ValueError, "<U4"),
        ("text", [1], TypeError, "images must be an array or a sequence"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_append_raises_and_writes_nothing(store, images, labels, error, message):
    before = snapshot(store)
    with pytest.raises(error, match=re.escape(message)):
        store.append(images, labels)
    assert len(store) == 2
    assert snapshot(store) == before
    assert_read_equal(store, None, list(GOOD), [7, 8])


@each_backend
def test_unsupported_layout_names_backend_and_writes_nothing(backend, tmp_path):
    with storage.open(backend, tmp_path / "store", "x") as store:
        before = snapshot(store)
        for dtype, channels in rejected_layouts(backend):
            image = np.zeros(image_shape(3, 3, channels), dtype)
            with pytest.raises(ValueError, match=f"the {backend} backend holds .*; got a {dtype} image"):
                store.append([GOOD[0], image], [1, 2])
        assert len(store) == 0
        assert snapshot(store) == before


def test_empty_append_is_a_no_op(store):
    before = snapshot(store)
    store.append(np.empty((0, 4, 5, 3), np.uint8), [])
    store.append([], np.array([], dtype=np.int64))
    assert len(store) == 2
    assert snapshot(store) == before


@pytest.mark.parametrize("image_id", [2, 3, -1, 2**40])
def test_id_out_of_range_raises_key_error(store, image_id):
    with pytest.raises(KeyError) as caught:
        store[image_id]
    assert caught.value.args == (image_id,)
    with pytest.raises(KeyError) as caught:
        store.read([0, image_id, 1])
    assert caught.value.args == (image_id,)


@pytest.mark.parametrize("ids", [1, "01", [0.0, 1.0], [[0, 1]], [True]])
def test_ids_of_wrong_type_raise_type_error(store, ids):
    with pytest.raises(TypeError, match="ids must be"):
        store.read(ids)


def test_empty_selection_reads_nothing(store):
    images, labels = store.read([])
    assert images == []
    assert labels.dtype == np.int64
    assert len(labels) == 0
    assert store.read(slice(5, 9))[0] == []


@each_backend
def test_missing_store_read_only_raises_file_not_found(backend, tmp_path):
    with pytest.raises(FileNotFoundError):
        storage.open(backend, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


@each_backend
@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: p.write_bytes(b"")])
def test_exclusive_create_on_existing_path_raises_file_exists(backend, tmp_path, make):
    make(tmp_path / "taken")
    with pytest.raises(FileExistsError):
        storage.open(backend, tmp_path / "taken", "x")


@each_backend
def test_writing_to_read_only_store_is_refused(backend, tmp_path):
    storage.open(backend, tmp_path / "store", "x").close()
    with storage.open(backend, tmp_path / "store") as store:
        with pytest.raises(io.UnsupportedOperation, match="read-only"):
            store.append(GOOD, [1, 2])
        assert len(store) == 0


@pytest.mark.parametrize(
    ("backend", "found"),
    [(b, f) for b in storage.available() for f in storage.available(variants=False) if storage.family(b) != f],
)
@pytest.mark.parametrize("mode", ["r", "a", "w"])
def test_store_of_another_backend_is_refused_and_kept(backend, found, mode, tmp_path):
    with storage.open(found, tmp_path / "store", "x") as other:
        other.append(GOOD, [1, 2])
    with pytest.raises(ValueError, match=f"holds a {found} store, not a {backend} store"):
        storage.open(backend, tmp_path / "store", mode)
    with storage.open(found, tmp_path / "store") as other:
        assert_read_equal(other, None, list(GOOD), [1, 2])


@each_backend
@pytest.mark.parametrize("mode", ["r", "a", "w"])
@pytest.mark.parametrize(
    ("make", "description"),
    [
        (lambda p: p.write_bytes(b"not a store"), "a file that is no image store"),
        (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "a directory that is no image store"),
    ],
    ids=["file", "directory"],
)
def test_something_that_is_no_store_is_refused_and_kept(backend, mode, make, description, tmp_path):
    path = tmp_path / "thing"
    make(path)
    before = {str(p): p.stat().st_size for p in tmp_path.rglob("*")}
    with pytest.raises(ValueError, match=f"holds {description}, not a {backend} store"):
        storage.open(backend, path, mode)
    assert {str(p): p.stat().st_size for p in tmp_path.rglob("*")} == before


@each_backend
def test_replace_mode_empties_a_store_of_its_own_backend(backend, tmp_path):
    with storage.open(backend, tmp_path / "store", "x") as store:
        store.append(GOOD, [1, 2])
    with storage.open(backend, tmp_path / "store", "w") as store:
        assert len(store) == 0
        store.append(GOOD[:1], [5])
    with storage.open(backend, tmp_path / "store") as store:
        assert_read_equal(store, None, [GOOD[0]], [5])


@each_backend
def test_close_is_idempotent_and_closed_store_refuses_use(backend, tmp_path):
    with storage.open(backend, tmp_path / "store", "x") as store:
        store.append(GOOD, [1, 2])
    store.close()
    with pytest.raises(ValueError, match="is closed"):
        store.read()
    with pytest.raises(ValueError, match="is closed"):
        len(store)


@each_backend
def test_disk_usage_counts_allocated_bytes_of_the_store_files(backend, tmp_path):
    with storage.open(backend, tmp_path / "store", "x") as store:
        store.append(np.zeros((50, 32, 32, 3), np.uint8) + np.arange(32, dtype=np.uint8)[:, None], range(50))
        files = store.files(store.path)
        assert files
        assert store.disk_usage() == sum(os.stat(f).st_blocks * 512 for f in files)
        assert store.disk_usage() > 0


def test_unknown_backend_and_mode_are_refused(tmp_path):
    with pytest.raises(ValueError, match="available: " + ", ".join(storage.available())):
        storage.open("tiff", tmp_path / "store", "x")
    with pytest.raises(ValueError, match="mode must be one of"):
        storage.open(storage.available()[0], tmp_path / "store", "rw")
    assert not (tmp_path / "store").exists()


def test_available_lists_backends_whose_libraries_import():
    assert isinstance(storage.available(), tuple)
    assert set(storage.available()) <= set(storage.REGISTRY) | set(storage.VARIANTS)
    assert set(storage.available(variants=False)) <= set(storage.REGISTRY)
    for name in ("png", "lmdb", "hdf5", "npz"):  # their libraries are runtime dependencies
        assert name in storage.available()


@pytest.mark.skipif("lmdb" not in storage.available(), reason="lmdb is not installed")
def test_lmdb_map_grows_from_a_tiny_initial_map(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)  # 3.7 MB in one append
    with storage.open("lmdb", tmp_path / "store", "x", map_size=64 * 1024) as store:
        store.append(big, range(300))
        for start in range(0, 300, 30):  # and many small appends after it
            store.append(big[start : start + 30], range(start, start + 30))
    with storage.open("lmdb", tmp_path / "store", map_size=64 * 1024) as store:
        assert_read_equal(store, None, list(big) * 2, [*range(300), *range(300)])
