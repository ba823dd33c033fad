"""Stores stay readable by their format's own tools, as the backend docstrings promise."""

import numpy as np
import pytest

import storage

IMAGES = [np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3), np.arange(6, dtype="<u2").reshape(1, 2, 3)]


@pytest.mark.skipif("npz" not in storage.available(), reason="npz backend not available")
def test_npz_store_opens_with_numpy_load(tmp_path):
    with storage.open("npz", tmp_path / "store.npz", "x") as store:
        store.append(IMAGES[0], [1, 2])
        store.append(IMAGES[1], [3])
    with np.load(tmp_path / "store.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["images_00000000", "images_00000001", "labels_00000000", "labels_00000001"]
        for run, images in enumerate(IMAGES):
            np.testing.assert_array_equal(archive[f"images_{run:08d}"], images)
            assert archive[f"images_{run:08d}"].dtype == images.dtype
        np.testing.assert_array_equal(archive["labels_00000001"], [3])


@pytest.mark.skipif("hdf5" not in storage.available(), reason="hdf5 backend not available")
def test_hdf5_store_opens_with_h5py(tmp_path):
    import h5py

    with storage.open("hdf5", tmp_path / "store.h5", "x") as store:
        store.append(IMAGES[0], [1, 2])
    with h5py.File(tmp_path / "store.h5", "r") as file:
        np.testing.assert_array_equal(file["images/00000000"][()], IMAGES[0])
        np.testing.assert_array_equal(file["labels/00000000"][()], [1, 2])
