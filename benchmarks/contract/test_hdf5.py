"""HDF5 through the contract, plus what is its own: h5py opens it, compressed runs are chunked one image a chunk,
compressing variants save room, and its options."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import storage
from storage import hdf5_store
from storage.testing import HEADROOM, StoreContract, open_and_read, run_forked
from storage.testing.contract import append_files, encoded_names

IMAGES = np.random.default_rng(3).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
SMOOTH = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None], (12, 64, 64, 3)).copy()


class TestHdf5(StoreContract):
    backend = "hdf5"


def test_store_opens_with_h5py(tmp_path):
    with storage.open("hdf5", tmp_path / "store.h5", "x") as store:
        store.append(IMAGES[:2], [1, 2])
    with h5py.File(tmp_path / "store.h5", "r") as file:
        np.testing.assert_array_equal(file["images/00000000"][()], IMAGES[:2])
        np.testing.assert_array_equal(file["labels/00000000"][()], [1, 2])


@pytest.mark.parametrize(("name", "compression"), [("hdf5-lzf", "lzf"), ("hdf5-gzip", "gzip")])
def test_compressed_runs_are_chunked_one_image_a_chunk(name, compression, tmp_path):
    with storage.open(name, tmp_path / "store.h5", "x") as store:
        store.append(IMAGES, range(12))
    with h5py.File(tmp_path / "store.h5", "r") as file:
        run = file["images/00000000"]
        assert (run.compression, run.chunks) == (compression, (1, 16, 16, 3))


@pytest.mark.parametrize("name", ["hdf5-png", "hdf5-lzf", "hdf5-gzip"])
def test_a_compressing_variant_stores_smooth_images_in_less_room(name, tmp_path):
    sizes = {}
    for written_by in ("hdf5", name):
        with storage.open(written_by, tmp_path / f"{written_by}.h5", "x") as store:
            store.append(SMOOTH, range(12))
            sizes[written_by] = sum(file.stat().st_size for file in store.files(store.path))
    assert sizes[name] < 0.5 * sizes["hdf5"]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("hdf5", {"encoding": "webp"}, "encoding must be one of raw, png"),
        ("hdf5", {"compression": "szip"}, "compression must be None, lzf or gzip"),
        ("hdf5-png", {"compression": "gzip"}, "png files are compressed already"),
    ],
    ids=["encoding", "compression", "compressed-png"],
)
def test_bad_option_is_refused_and_writes_nothing(name, options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        storage.open(name, tmp_path / "store", "x", **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("way", ["external-storage", "external-link", "soft-link", "virtual"])
def test_data_outside_the_store_is_refused_as_damage(way, tmp_path):
    """A store that would make h5py read another file (or another place) is damaged, and nothing of it is read."""
    victim = tmp_path / "user.bin"
    victim.write_bytes(bytes(range(256)) * 4)
    with storage.open("hdf5", tmp_path / "store.h5", "x") as store:
        store.append(IMAGES[:2], [1, 2])
    with h5py.File(tmp_path / "store.h5", "r+") as file:
        images = file["images"]
        if way == "external-storage":
            images.create_dataset("00000001", shape=(2, 16, 16, 3), dtype="u1", external=[(str(victim), 0, 1536)])
        elif way == "external-link":
            images["00000001"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/data")
        elif way == "soft-link":
            images["00000001"] = h5py.SoftLink("/images/00000000")
        else:
            layout = h5py.VirtualLayout(shape=(2, 16, 16, 3), dtype="u1")
            layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "/data", shape=(2, 16, 16, 3))
            images.create_virtual_dataset("00000001", layout)
        file["labels"].create_dataset("00000001", data=np.array([3, 4]))
    with pytest.raises(storage.DamagedStoreError, match=r"(outside|not part of) the store"):
        storage.open("hdf5", tmp_path / "store.h5").read()


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([1.5, 2.5]), "not one int64 per image"),
        (np.array([b"1", b"2"]), "not one int64 per image"),
        (None, "more labels than it can hold"),  # 2**31 declared, none written: 16 GiB if read
    ],
    ids=["float", "bytes", "huge"],
)
def test_labels_that_are_not_int64_or_not_there_are_damage(labels, message, tmp_path):
    with storage.open("hdf5", tmp_path / "store.h5", "x") as store:
        store.append(IMAGES[:2], [1, 2])
    with h5py.File(tmp_path / "store.h5", "r+") as file:
        del file["labels/00000000"]
        if labels is None:
            file["labels"].create_dataset("00000000", shape=(2**31,), dtype="<i8")
        else:
            file["labels"].create_dataset("00000000", data=labels)
    outcome = run_forked(lambda: open_and_read("hdf5", tmp_path / "store.h5"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert message in outcome.message


@pytest.mark.parametrize("name", encoded_names("hdf5"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store.h5")
    with h5py.File(tmp_path / "store.h5", "r") as file:
        runs = [file["images"][run] for run in sorted(file["images"])]
        assert len(runs) > 1  # one a shape and layout
        assert [row.tobytes() for run in runs for row in run[()]] == files


def test_encoded_images_are_read_a_few_at_a_time_into_their_places(monkeypatch, tmp_path):
    with storage.open("hdf5-png", tmp_path / "store.h5", "x") as store:
        store.append(IMAGES, range(12))
    rows_of, blocks = hdf5_store._rows_of, []

    def counted(dataset, local):
        blocks.append(len(local))
        return rows_of(dataset, local)

    monkeypatch.setattr(hdf5_store, "ENCODED_BLOCK_BYTES", 5 * IMAGES[0].nbytes)
    monkeypatch.setattr(hdf5_store, "_rows_of", counted)
    ids = [11, 0, 7, 7, 3, 9, 1]
    with storage.open("hdf5", tmp_path / "store.h5") as store:
        np.testing.assert_array_equal(store.read()[0], IMAGES)
        np.testing.assert_array_equal(store.read(ids)[0], IMAGES[ids])
    assert blocks == [5, 5, 2, 5, 2]  # at most 5 images' files held at once
