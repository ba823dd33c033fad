"""PNG files through the contract, plus what is its own: levels trade time for size, its option, a forged IHDR."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

import storage
from storage.testing import HEADROOM, StoreContract, open_and_read, run_forked
from storage.testing.contract import append_files, encoded_names

SMOOTH = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None], (12, 64, 64, 3)).copy()


class TestPng(StoreContract):
    backend = "png"


def test_levels_trade_time_for_size(tmp_path):
    sizes = {}
    for name in ("png", "png-level9"):
        with storage.open(name, tmp_path / name, "x") as store:
            store.append(SMOOTH, range(12))
            sizes[name] = sum(file.stat().st_size for file in store.files(store.path))
    assert sizes["png-level9"] <= sizes["png"]


def test_bad_option_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="compress_level must be an int from 0 to 9"):
        storage.open("png", tmp_path / "store", "x", compress_level=10)
    assert not any(tmp_path.iterdir())


def test_header_claiming_a_huge_image_is_rejected(tmp_path):
    with storage.open("png", tmp_path / "store", "x") as store:
        store.append(SMOOTH[:1, :6, :7], [0])
    image = tmp_path / "store" / "000000000.png"
    content = bytearray(image.read_bytes())
    ihdr = content[12:29]  # chunk type and data of the first chunk, IHDR
    forged = ihdr[:4] + struct.pack(">II", 60_000, 60_000) + ihdr[12:]
    content[12:33] = forged + struct.pack(">I", zlib.crc32(forged))  # a valid CRC: only the size lies
    image.write_bytes(bytes(content))
    outcome = run_forked(lambda: open_and_read("png", tmp_path / "store"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()


def test_a_symlink_at_the_next_image_name_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    with storage.open("png", tmp_path / "store", "x") as store:
        store.append(SMOOTH[:1, :6, :7], [0])
    (tmp_path / "store" / "000000001.png").symlink_to(victim)
    with storage.open("png", tmp_path / "store", "a") as store:
        store.append(SMOOTH[1:2, :6, :7], [1])
        assert np.array_equal(store[1][0], SMOOTH[1, :6, :7])
    assert victim.read_bytes() == b"not yours"
    assert not (tmp_path / "store" / "000000001.png").is_symlink()


@pytest.mark.parametrize("name", encoded_names("png"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store")
    assert [(tmp_path / "store" / f"{number:09d}.png").read_bytes() for number in range(len(files))] == files
