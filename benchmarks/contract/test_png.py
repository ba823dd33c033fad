"""PNG files through the contract, plus what is its own: levels trade time for size, its options, a forged IHDR,
the default encoder settings against Pillow's, and appends and reads on several threads."""

from __future__ import annotations

import errno
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import storage
from benchmarks.data import synthetic
from storage import codecs, png_store
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"compress_level": 10}, "compress_level must be an int from 0 to 9"),
        ({"strategy": "best"}, "strategy must be one of"),
        ({"filter": "sub", "library": "pillow"}, "Pillow picks each row's PNG filter itself"),
        ({"threads": 0}, "threads must be a positive int"),
    ],
    ids=["level", "strategy", "pillow-filter", "threads"],
)
def test_bad_option_is_refused_and_writes_nothing(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        storage.open("png", tmp_path / "store", "x", **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("size", [(32, 32, 3), (256, 256, 3)], ids=["32x32x3", "256x256x3"])
def test_the_default_settings_compress_the_suites_images_as_well_as_pillow_at_level_1(size):
    images, _ = synthetic(200 if size[0] < 100 else 4, size)
    default, pillow = codecs.Png(), codecs.Png(1, "pillow")
    assert sum(map(len, map(default.encode, images))) <= sum(map(len, map(pillow.encode, images)))


def test_files_written_with_any_settings_are_pngs_that_pillow_reads_bit_exactly(tmp_path):
    images = SMOOTH[:3, :20, :24]
    for number, options in enumerate([{}, {"strategy": "huffman", "filter": "paeth"}, {"library": "pillow"}]):
        with storage.open("png", tmp_path / f"store{number}", "x", **options) as store:
            store.append(images, range(3))
        for position, image in enumerate(images):
            with Image.open(tmp_path / f"store{number}" / f"{position:09d}.png", formats=["PNG"]) as opened:
                assert np.array_equal(np.asarray(opened), image), options


RUN = np.random.default_rng(3).integers(0, 256, (48, 8, 9, 3), dtype=np.uint8)  # 48 distinct images of one shape
MIXED = [SMOOTH[0, :8, :8], *RUN[:40], SMOOTH[1, :8, :8, :1], SMOOTH[2, :5, :7, 0], *RUN[:30]]


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_append_and_read_what_one_thread_does(threads, tmp_path):
    labels = list(range(len(MIXED)))
    for name, count in (("one", 1), ("many", threads)):
        with storage.open("png", tmp_path / name, "x", threads=count) as store:
            store.append(MIXED, labels)
            store.append(SMOOTH[:, :8, :9], range(len(SMOOTH)))
    for name in ("one", "many"):
        with storage.open("png", tmp_path / name, threads=threads) as store:
            images, got = store.read()
            assert got.tolist() == [*labels, *range(len(SMOOTH))]
            assert [image.shape for image in images] == [image.shape for image in MIXED] + [(8, 9, 3)] * len(SMOOTH)
            assert all(np.array_equal(a, b) for a, b in zip(images, [*MIXED, *SMOOTH[:, :8, :9]]))
            uniform, _ = store.read(range(len(MIXED) - 30, len(MIXED) + 12))  # one shape across appends: one array
            assert isinstance(uniform, np.ndarray)
            assert np.array_equal(uniform, np.concatenate([RUN[:30], SMOOTH[:, :8, :9]]))
    assert sorted(path.name for path in (tmp_path / "one").iterdir()) == sorted(
        path.name for path in (tmp_path / "many").iterdir()
    )
    for path in (tmp_path / "one").glob("*.png"):
        assert path.read_bytes() == (tmp_path / "many" / path.name).read_bytes()


class FailingEncoder:
    """The png codec, failing (a full disk, say) at the `fail_at`-th image it is given."""

    def __init__(self, codec, fail_at: int) -> None:
        self.codec, self.fail_at, self.calls, self.lock = codec, fail_at, 0, threading.Lock()

    def __getattr__(self, name: str):
        return getattr(self.codec, name)

    def encode(self, image):
        with self.lock:
            self.calls += 1
            call = self.calls
        if call == self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return self.codec.encode(image)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("where", ["encode", "write"])
def test_an_append_that_fails_midway_commits_nothing_and_leaves_no_files(threads, where, tmp_path, monkeypatch):
    path = tmp_path / "store"
    with storage.open("png", path, "x", threads=threads) as store:
        store.append(RUN[:20, :6, :7], range(20))
        before = sorted(path.iterdir())
        if where == "encode":
            store.codec = FailingEncoder(store.codec, fail_at=150)
        else:
            write = png_store.write_image

            def failing_write(name, data):
                write(name, data[:10])  # a write cut short by a full disk leaves a file behind
                if name.endswith("000000170.png"):
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
                write(name, data)

            monkeypatch.setattr(png_store, "write_image", failing_write)
        images = np.concatenate([RUN[:, :6, :7]] * 5)
        with pytest.raises(OSError, match="injected") as raised:
            store.append(images, range(len(images)))
        assert raised.value.errno == errno.ENOSPC
        assert len(store) == 20
        monkeypatch.undo()
        store.codec = codecs.Png()
        store.append(RUN[:3, :6, :7], range(3))  # and the store takes the next append
    assert sorted(path.iterdir()) == sorted([*before, *(path / f"{n:09d}.png" for n in range(20, 23))])
    with storage.open("png", path) as store:
        images, labels = store.read()
        assert labels.tolist() == [*range(20), *range(3)]
        assert np.array_equal(images, np.concatenate([RUN[:20, :6, :7], RUN[:3, :6, :7]]))


def test_the_first_error_is_raised_and_no_worker_runs_on():
    done = []

    def work(index: int) -> None:
        if index == 5:  # the first chunk fails late
            time.sleep(0.2)
            raise KeyError("late")
        if index == 300:  # another chunk fails first
            raise LookupError("first")
        done.append(index)

    with pytest.raises(LookupError, match="first") as raised:
        png_store.in_threads(work, 400, 2)
    assert type(raised.value) is LookupError
    finished = len(done)
    time.sleep(0.1)
    assert len(done) == finished < 399  # the workers stopped early, and before in_threads returned


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
