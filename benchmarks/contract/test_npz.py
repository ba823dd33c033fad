"""npz through the contract, plus what is its own: numpy.load opens it, deflate is savez_compressed's layout,
its options, and a forged .npy header."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy

import storage
from storage.npz_store import COMMENT
from storage.testing import HEADROOM, StoreContract, open_and_read, run_forked

IMAGES = [np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3), np.arange(6, dtype="<u2").reshape(1, 2, 3)]
SMOOTH = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None], (12, 64, 64, 3)).copy()


class TestNpz(StoreContract):
    backend = "npz"


def test_store_opens_with_numpy_load(tmp_path):
    with storage.open("npz", tmp_path / "store.npz", "x") as store:
        store.append(IMAGES[0], [1, 2])
        store.append(IMAGES[1], [3])
    with np.load(tmp_path / "store.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["images_00000000", "images_00000001", "labels_00000000", "labels_00000001"]
        for run, images in enumerate(IMAGES):
            np.testing.assert_array_equal(archive[f"images_{run:08d}"], images)
            assert archive[f"images_{run:08d}"].dtype == images.dtype
        np.testing.assert_array_equal(archive["labels_00000001"], [3])


def test_deflated_npz_is_what_numpy_savez_compressed_writes(tmp_path):
    with storage.open("npz-deflate", tmp_path / "store.npz", "x") as store:
        store.append(SMOOTH, range(12))
    with zipfile.ZipFile(tmp_path / "store.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(tmp_path / "store.npz", allow_pickle=False) as archive:
        assert np.array_equal(archive["images_00000000"], SMOOTH)


def test_deflate_stores_smooth_images_in_less_room(tmp_path):
    sizes = {}
    for name in ("npz", "npz-deflate"):
        with storage.open(name, tmp_path / f"{name}.npz", "x") as store:
            store.append(SMOOTH, range(12))
            sizes[name] = sum(file.stat().st_size for file in store.files(store.path))
    assert sizes["npz-deflate"] < 0.5 * sizes["npz"]


def test_bad_option_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="compression must be None or deflate"):
        storage.open("npz", tmp_path / "store", "x", compression="bzip2")
    assert not any(tmp_path.iterdir())


def test_header_claiming_a_larger_array_is_rejected(tmp_path):
    images = np.arange(5 * 6 * 7 * 3, dtype=np.uint8).reshape(5, 6, 7, 3)
    with storage.open("npz", tmp_path / "store.npz", "x") as store:
        store.append(images, range(5))
    content = (tmp_path / "store.npz").read_bytes()
    forged = content.replace(b"(5, 6, 7, 3)", b"(9, 6, 7, 3)", 1)  # same length: only the claim changes
    assert forged != content
    (tmp_path / "store.npz").write_bytes(forged)
    outcome = run_forked(lambda: open_and_read("npz", tmp_path / "store.npz"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert "not what its header says" in outcome.message


def test_a_member_that_runs_past_the_end_of_the_file_is_damage(tmp_path):
    """Members whose central-directory sizes and .npy headers agree on 10**8 images, in a file of a few hundred
    bytes: refused before the labels (800 MB) are allocated."""
    count = 10**8
    claims = {"images": ((count, 1, 1, 1), "|u1", count), "labels": ((count,), "<i8", 8 * count)}
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(forged, "w") as archive:
        archive.comment = COMMENT
        for kind, (shape, descr, _) in claims.items():
            header = io.BytesIO()
            npy.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": shape})
            archive.writestr(zipfile.ZipInfo(f"{kind}_00000000.npy"), header.getvalue())
    raw = bytearray(forged.read_bytes())
    entry = raw.find(b"PK\x01\x02")
    while entry != -1:  # each central directory entry: its sizes now include the pixels its header claims
        (name_length,) = struct.unpack_from("<H", raw, entry + 28)
        kind = bytes(raw[entry + 46 : entry + 46 + name_length]).decode().split("_")[0]
        size = struct.unpack_from("<I", raw, entry + 24)[0] + claims[kind][2]
        struct.pack_into("<II", raw, entry + 20, size, size)
        entry = raw.find(b"PK\x01\x02", entry + 46)
    forged.write_bytes(bytes(raw))
    outcome = run_forked(lambda: open_and_read("npz", forged), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert "past the end of the file" in outcome.message
