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


@pytest.mark.parametrize("level", [-1, 10, 1.5, "9"])
def test_png_level_out_of_range_is_refused(level):
    with pytest.raises(ValueError, match="compress_level must be an int from 0 to 9"):
        codecs.Png(level)


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(ValueError, match="encoding must be one of raw, png; got 'jpeg'"):
        codecs.get("jpeg")


@pytest.mark.parametrize("codec", list(codecs.CODECS.values()), ids=lambda codec: codec.name)
def test_lossless_codecs_promise_no_psnr_bound(codec):
    assert codec.lossless == (codec.min_psnr is None)
