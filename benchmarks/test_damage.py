"""Hostile and damaged stores: truncated, flipped, replaced or missing files give documented errors only.

Each example damages one file of a small valid store and then opens and reads it in a forked child
(benchmarks.isolation), so that a segfault, a hang or a huge allocation from a forged size shows up
as a failure instead of taking the test run down. Opening and reading may succeed (pixel bytes carry
no checksum, so a flipped pixel comes back flipped) or raise one of the documented errors.
"""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage
from benchmarks.isolation import run_forked

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs fork")

DOCUMENTED = {"DamagedStoreError", "ValueError", "FileNotFoundError"}
HEADROOM = 1 << 30  # a reader may map 1 GiB more than the test process: a forged size needs far more
IMAGES = (
    np.arange(5 * 6 * 7 * 3, dtype=np.uint8).reshape(5, 6, 7, 3),
    np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5) * 1000,
)


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One valid store per backend: a batch of colour images and a batch of 16-bit grey ones."""
    root = tmp_path_factory.mktemp("templates")
    made = {}
    for backend in storage.available():
        made[backend] = root / backend
        with storage.open(backend, made[backend], "x") as store:
            store.append(IMAGES[0], range(5))
            store.append(IMAGES[1], [-1, 2**40, 7])
    return made


def open_and_read(backend: str, path: Path) -> int:
    with storage.open(backend, path) as store:
        images, labels = store.read()
        assert len(images) == len(labels) == len(store)
        for image_id in reversed(range(len(store))):  # one at a time, out of order: the other read paths
            store[image_id]
        return len(store)


def damage(path: Path, data: st.DataObject) -> str:
    """Damage one file of the store at `path`; what was done."""
    files = sorted(storage.backend(storage.detect(path)).files(path))
    target = data.draw(st.sampled_from(files), label="file")
    content = bytearray(target.read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "replace", "delete"]), label="kind")
    near_start = st.integers(0, max(0, min(len(content), 4096) - 1))  # headers live here
    anywhere = st.integers(0, max(0, len(content) - 1))
    if kind == "truncate":
        content = content[: data.draw(st.one_of(near_start, anywhere), label="length")]
    elif kind == "flip" and content:
        for position in data.draw(st.lists(st.one_of(near_start, anywhere), min_size=1, max_size=8), label="at"):
            content[position] ^= data.draw(st.integers(1, 255), label="mask")
    elif kind == "replace":
        content = bytearray(data.draw(st.binary(max_size=2 * len(content) + 64), label="bytes"))
    if kind == "delete":
        target.unlink()
    else:
        target.write_bytes(bytes(content))
    return f"{kind} {target.name}"


@pytest.mark.parametrize("backend", storage.available())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_store_gives_documented_errors_only(backend, templates, data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "store"
        copy = shutil.copytree if templates[backend].is_dir() else shutil.copy2
        copy(templates[backend], path)
        done = damage(path, data)
        outcome = run_forked(lambda: open_and_read(backend, path), timeout=30, headroom=HEADROOM)
    assert not outcome.timed_out, f"{done}: {outcome.describe()}"
    assert outcome.signal is None, f"{done}: {outcome.describe()}"
    assert outcome.error is None or outcome.error in DOCUMENTED, f"{done}: {outcome.describe()}"


@pytest.mark.parametrize("backend", storage.available())
def test_undamaged_template_reads_in_a_forked_child(backend, templates):
    """The harness itself: an intact store reads fine in the child, within the memory headroom."""
    outcome = run_forked(lambda: open_and_read(backend, templates[backend]), timeout=30, headroom=HEADROOM)
    assert outcome.result == 8, outcome.describe()


@pytest.mark.skipif("lmdb" not in storage.available(), reason="lmdb backend not available")
def test_lmdb_header_claiming_a_larger_image_is_rejected(tmp_path):
    import lmdb

    from storage.lmdb_store import HEADER, KEY

    with storage.open("lmdb", tmp_path / "store", "x") as store:
        store.append(IMAGES[0][:2], [0, 1])
    with lmdb.open(str(tmp_path / "store")) as env, env.begin(write=True) as txn:
        value = bytes(txn.get(KEY.pack(b"i", 1)))
        txn.put(KEY.pack(b"i", 1), HEADER.pack(b"|u1", 3, 0, 60_000, 70_000, 3, 1) + value[HEADER.size :])
    outcome = run_forked(lambda: open_and_read("lmdb", tmp_path / "store"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert "recorded layout needs" in outcome.message


@pytest.mark.skipif("npz" not in storage.available(), reason="npz backend not available")
def test_npz_header_claiming_a_larger_array_is_rejected(tmp_path):
    with storage.open("npz", tmp_path / "store.npz", "x") as store:
        store.append(IMAGES[0], range(5))
    content = (tmp_path / "store.npz").read_bytes()
    forged = content.replace(b"(5, 6, 7, 3)", b"(9, 6, 7, 3)", 1)  # same length: only the claim changes
    assert forged != content
    (tmp_path / "store.npz").write_bytes(forged)
    outcome = run_forked(lambda: open_and_read("npz", tmp_path / "store.npz"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert "not what its header says" in outcome.message


@pytest.mark.skipif("png" not in storage.available(), reason="png backend not available")
def test_png_header_claiming_a_huge_image_is_rejected(tmp_path):
    import zlib

    with storage.open("png", tmp_path / "store", "x") as store:
        store.append(IMAGES[0][:1], [0])
    image = tmp_path / "store" / "000000000.png"
    content = bytearray(image.read_bytes())
    ihdr = content[12:29]  # chunk type and data of the first chunk, IHDR
    forged = ihdr[:4] + struct.pack(">II", 60_000, 60_000) + ihdr[12:]
    content[12:33] = forged + struct.pack(">I", zlib.crc32(forged))  # a valid CRC: only the size lies
    image.write_bytes(bytes(content))
    outcome = run_forked(lambda: open_and_read("png", tmp_path / "store"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()


@pytest.mark.parametrize("backend", storage.available())
def test_flipped_pixel_byte(backend, tmp_path):
    """A flipped byte of image data: a PNG's chunk CRC and a zip member's CRC-32 report it; pixels kept as they
    are (raw, or left uncompressed because noise does not compress) may come back with the byte flipped."""
    image = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "store"
    with storage.open(backend, path, "x") as store:
        store.append(image[np.newaxis], [1])
    files = {file: bytearray(file.read_bytes()) for file in storage.backend(backend).files(path)}
    as_is = next((file for file, content in files.items() if image.tobytes() in content), None)
    if as_is:
        target, at = as_is, files[as_is].index(image.tobytes()) + 100
    else:  # compressed: inside a PNG's image data, or in the middle of the (deflated) archive
        target = max(files, key=lambda file: len(files[file]))
        at = files[target].index(b"IDAT") + 20 if b"IDAT" in files[target] else len(files[target]) // 2
    files[target][at] ^= 0x10
    target.write_bytes(bytes(files[target]))
    outcome = run_forked(lambda: storage.open(backend, path).read()[0][0].tobytes().hex(), headroom=HEADROOM)
    flipped = bytearray(image.tobytes())
    flipped[100] ^= 0x10
    if as_is:
        assert outcome.result == flipped.hex() or outcome.error == "DamagedStoreError", outcome.describe()
    else:
        assert outcome.error == "DamagedStoreError", outcome.describe()
