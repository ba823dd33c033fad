"""JPEG files through the contract, plus what is their own: real JPEGs, quality against size, the PSNR promise, and
a forged header refused before decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import storage
from storage import codecs
from storage.testing import HEADROOM, StoreContract, open_and_read, psnr, run_forked
from storage.testing.contract import append_files

if "jpeg" not in storage.available():
    pytest.skip("the jpeg backend needs simplejpeg, which does not import here", allow_module_level=True)

ROWS, COLUMNS = np.mgrid[0:48, 0:64]
SMOOTH = np.stack(  # gradients and gentle waves: what JPEG is made for
    [
        128 + 100 * np.sin(ROWS / 9) * np.cos(COLUMNS / 13),
        4 * COLUMNS,
        255 - 5 * ROWS,
    ],
    axis=-1,
).astype(np.uint8)
# The worst image found for quality 90 (a descent over every value of a 2x2 colour image): 18.9 dB.
WORST_FOUND = np.array([27, 255, 2, 138, 114, 255, 119, 117, 126, 128, 0, 255], np.uint8).reshape(2, 2, 3)


class TestJpeg(StoreContract):
    backend = "jpeg"


def sof(data: bytes) -> int:
    """Where the baseline frame header (SOF0) of a JPEG starts."""
    return data.index(b"\xff\xc0")


def test_files_are_jpegs_that_pillow_opens(tmp_path):
    images = [SMOOTH, SMOOTH[..., 0], SMOOTH[..., :1]]
    with storage.open("jpeg", tmp_path / "store", "x") as store:
        store.append(images, [0, 1, 2])
    for path, image, mode in zip(sorted((tmp_path / "store").glob("*.jpg")), images, ["RGB", "L", "L"]):
        with Image.open(path, formats=["JPEG"]) as opened:
            assert (opened.mode, opened.size) == (mode, (64, 48))
            assert psnr(np.asarray(opened).reshape(image.shape), image) > 35
    with storage.open("jpeg", tmp_path / "store") as store:
        assert [image.shape for image in store.read()[0]] == [(48, 64, 3), (48, 64), (48, 64, 1)]


def test_quality_trades_size_for_closeness(tmp_path):
    noisy = np.clip(SMOOTH + np.random.default_rng(1).normal(0, 8, SMOOTH.shape), 0, 255).astype(np.uint8)
    sizes, closeness = {}, {}
    for quality in (50, 90, 98):
        with storage.open("jpeg", tmp_path / f"q{quality}", "x", quality=quality) as store:
            store.append(noisy[np.newaxis], [0])
            assert store.codec.label == f"jpeg-q{quality}"
            sizes[quality] = (tmp_path / f"q{quality}" / "000000000.jpg").stat().st_size
            closeness[quality] = psnr(store[0][0], noisy)
    assert sizes[50] < sizes[90] < sizes[98]
    assert closeness[50] < closeness[90] < closeness[98]


def test_a_smooth_image_comes_back_close_at_quality_90(tmp_path):
    with storage.open("jpeg", tmp_path / "store", "x") as store:
        store.append(SMOOTH[np.newaxis], [0])
        assert psnr(store[0][0], SMOOTH) > 35


@pytest.mark.parametrize("quality", [0, 101, 1.5, "90", True])
def test_bad_quality_is_refused_and_writes_nothing(quality, tmp_path):
    with pytest.raises(ValueError, match="quality must be an int from 1 to 100"):
        storage.open("jpeg", tmp_path / "store", "x", quality=quality)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("size", [(1, 1), (4, 5), (32, 32), (256, 256)], ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("channels", [1, 3])
def test_random_noise_keeps_the_promised_psnr(size, channels):
    jpeg = codecs.get("jpeg")
    for seed in range(20 if size[0] < 100 else 2):
        image = np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)
        assert psnr(jpeg.decode(jpeg.encode(image), image.shape, image.dtype), image) >= jpeg.min_psnr


def test_the_worst_image_found_keeps_the_promised_psnr():
    jpeg = codecs.get("jpeg")
    found = psnr(jpeg.decode(jpeg.encode(WORST_FOUND), WORST_FOUND.shape, WORST_FOUND.dtype), WORST_FOUND)
    assert jpeg.min_psnr < found < 20


def test_the_promise_grows_with_the_quality():
    floors = [codecs.Jpeg(quality).min_psnr for quality in range(1, 101)]
    assert floors == sorted(floors)
    assert codecs.Jpeg(90).min_psnr == codecs.get("jpeg").min_psnr > 15


def test_a_flat_image_is_within_the_expansion_bound():
    """A flat image is JPEG's smallest (about 110 pixel bytes per byte in colour): the header check never refuses it."""
    flat = np.full((1024, 1024, 3), 200, np.uint8)
    encoded = codecs.get("jpeg").encode(flat)
    assert 50 < flat.nbytes / len(encoded) < codecs.MAX_EXPANSION / 5
    assert np.array_equal(codecs.get("jpeg").decode(encoded, flat.shape, flat.dtype), flat)


def test_forged_header_size_is_refused_before_decoding(tmp_path):
    with storage.open("jpeg", tmp_path / "store", "x") as store:
        store.append(SMOOTH[np.newaxis, :6, :7], [0])
    image = tmp_path / "store" / "000000000.jpg"
    content = bytearray(image.read_bytes())
    at = sof(content) + 5  # after the marker, the segment's length and the sample precision: height, width
    content[at : at + 4] = (60_000).to_bytes(2, "big") * 2  # JPEG headers have no checksum
    image.write_bytes(bytes(content))
    with pytest.raises(storage.DamagedStoreError, match="claims 60000x60000 pixels"):
        codecs.get("jpeg").decode(bytes(content))
    outcome = run_forked(lambda: open_and_read("jpeg", tmp_path / "store"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()


def test_a_header_that_differs_from_the_recorded_layout_is_damage():
    jpeg = codecs.get("jpeg")
    colour, grey = jpeg.encode(SMOOTH), jpeg.encode(SMOOTH[..., 0])
    for data, shape in [(colour, (48, 64)), (colour, (48, 65, 3)), (grey, (48, 64, 3)), (grey, (47, 64, 1))]:
        with pytest.raises(storage.DamagedStoreError, match="a stored JPEG holds"):
            jpeg.decode(data, shape, np.dtype("u1"))
    with pytest.raises(storage.DamagedStoreError, match="a stored JPEG holds"):
        jpeg.decode(grey, (48, 64), np.dtype("u2"))
    assert jpeg.decode(grey, (48, 64, 1), np.dtype("u1")).shape == (48, 64, 1)


def test_damaged_or_foreign_jpegs_are_damage():
    jpeg = codecs.get("jpeg")
    encoded = jpeg.encode(SMOOTH)
    with pytest.raises(storage.DamagedStoreError, match="no readable header"):
        jpeg.decode(encoded[:100])
    with pytest.raises(storage.DamagedStoreError, match="cannot be decoded"):
        jpeg.decode(encoded[: len(encoded) // 2], SMOOTH.shape, SMOOTH.dtype)
    cmyk = io.BytesIO()
    Image.fromarray(SMOOTH).convert("CMYK").save(cmyk, format="JPEG")
    with pytest.raises(storage.DamagedStoreError, match="colour space"):
        jpeg.decode(cmyk.getvalue())
    progressive, baseline = io.BytesIO(), io.BytesIO()  # many scans could take long to decode: refused
    Image.fromarray(SMOOTH).save(progressive, format="JPEG", progressive=True)
    with pytest.raises(storage.DamagedStoreError, match="not a sequential"):
        jpeg.decode(progressive.getvalue())
    Image.fromarray(SMOOTH).save(baseline, format="JPEG", quality=95, subsampling=0)
    assert psnr(jpeg.decode(baseline.getvalue(), SMOOTH.shape, SMOOTH.dtype), SMOOTH) > 35  # another writer's


@pytest.mark.parametrize("name", ["lmdb-jpeg", "hdf5-jpeg"])
def test_jpeg_records_of_other_backends_come_back_close(name, tmp_path):
    with storage.open(name, tmp_path / "store", "x") as store:
        assert store.codec.name == "jpeg"
        assert not store.lossless
        store.append(SMOOTH[np.newaxis], [0])
        assert psnr(store[0][0], SMOOTH) > 35


def test_an_encoded_append_keeps_each_file_as_it_is(tmp_path):
    files = append_files("jpeg", tmp_path / "store")
    assert [(tmp_path / "store" / f"{number:09d}.jpg").read_bytes() for number in range(len(files))] == files
