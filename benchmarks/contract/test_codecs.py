"""The codecs on their own: each decodes what it encoded and reports a stored layout that does not fit."""

from __future__ import annotations

import numpy as np
import pytest

import storage
from storage import codecs

IMAGE = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def test_png_decoding_checks_the_recorded_layout():
    png = codecs.get("png")
    encoded = png.encode(IMAGE)
    assert np.array_equal(png.decode(encoded, (16, 16, 3), np.dtype("u1")), IMAGE)
    with pytest.raises(storage.DamagedStoreError, match="not uint8 \\(16, 16, 4\\)"):
        png.decode(encoded, (16, 16, 4), np.dtype("u1"))


def test_png_keeps_a_channel_axis_of_one_as_grey():
    png = codecs.get("png")
    grey = IMAGE[..., :1]
    assert png.decode(png.encode(grey)).shape == (16, 16)
    assert np.array_equal(png.decode(png.encode(grey), (16, 16, 1), np.dtype("u1")), grey)


def test_raw_decoding_checks_the_byte_count():
    encoded = codecs.RAW.encode(IMAGE)
    assert np.array_equal(codecs.RAW.decode(encoded, (16, 16, 3), np.dtype("u1")), IMAGE)
    with pytest.raises(storage.DamagedStoreError, match="its recorded layout needs 1024"):
        codecs.RAW.decode(encoded, (16, 16, 4), np.dtype("u1"))


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((16, 16, 3), "u1"), ((16, 16, 4), "u1"), ((16, 16), "u1"), ((16, 16, 1), "u1"), ((16, 16), "u2")],
    ids=["rgb", "rgba", "grey", "grey-axis", "grey16"],
)
def test_png_libraries_read_each_others_files_bit_exactly(shape, dtype):
    image = np.random.default_rng(5).integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    for writer in codecs.PNG_LIBRARIES:
        encoded = codecs.Png(1, writer).encode(image)
        for reader in codecs.PNG_LIBRARIES:
            assert np.array_equal(codecs.Png(1, reader).decode(encoded, shape, np.dtype(dtype)), image), (
                writer,
                reader,
            )


@pytest.mark.parametrize("library", codecs.PNG_LIBRARIES)
def test_png_whose_header_claims_more_pixels_than_its_bytes_can_hold_is_damage(library):
    encoded = bytearray(codecs.Png(1, library).encode(IMAGE))
    encoded[16:24] = (60_000).to_bytes(4, "big") * 2  # IHDR width and height; its CRC is not even reached
    with pytest.raises(storage.DamagedStoreError, match="claims 60000x60000 pixels"):
        codecs.Png(1, library).decode(bytes(encoded))
    with pytest.raises(storage.DamagedStoreError, match="no PNG header"):
        codecs.Png(1, library).decode(bytes(encoded[:20]), (16, 16, 3), np.dtype("u1"))


def test_an_unknown_png_library_is_refused():
    with pytest.raises(ValueError, match="library must be one of imagecodecs, pillow"):
        codecs.Png(1, "libspng")


@pytest.mark.parametrize("level", [-1, 10, 1.5, "9"])
def test_png_level_out_of_range_is_refused(level):
    with pytest.raises(ValueError, match="compress_level must be an int from 0 to 9"):
        codecs.Png(level)


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"encoding must be one of raw, png(, jpeg)?; got 'webp'"):
        codecs.get("webp")


@pytest.mark.parametrize("codec", list(codecs.CODECS.values()), ids=lambda codec: codec.name)
def test_lossless_codecs_promise_no_psnr_bound(codec):
    assert codec.lossless == (codec.min_psnr is None)
