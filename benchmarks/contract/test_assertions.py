"""The contract's comparisons: bit-exact for lossless codecs, a PSNR bound for lossy ones, dtype and shape always."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.contract.test_third_party import Quantized
from storage import codecs
from storage.testing import assert_images_equal, assert_images_match, psnr

IMAGE = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)


def off_by(image: np.ndarray, step: int) -> np.ndarray:
    """`image` with every pixel `step` away (towards the middle, so nothing wraps around)."""
    return np.where(image < 128, image + step, image - step).astype(image.dtype)


def test_psnr_of_a_uniform_error_follows_the_definition():
    assert psnr(IMAGE, IMAGE) == math.inf
    assert psnr(off_by(IMAGE, 2), IMAGE) == pytest.approx(10 * math.log10(255**2 / 4))  # 42.1 dB
    assert psnr(off_by(IMAGE, 4), IMAGE) == pytest.approx(10 * math.log10(255**2 / 16))  # 36.1 dB


def test_a_lossy_codec_allows_errors_within_its_bound_and_no_more():
    assert_images_match([off_by(IMAGE, 4)], [IMAGE], Quantized())  # 36.1 dB, promised 36
    assert_images_match([off_by(IMAGE, 2)], [IMAGE], 40.0)
    with pytest.raises(AssertionError, match=r"PSNR 30\.1 dB, below the promised 36\.0 dB"):
        assert_images_match([off_by(IMAGE, 8)], [IMAGE], Quantized())
    with pytest.raises(AssertionError, match=r"PSNR 36\.1 dB, below the promised 40\.0 dB"):
        assert_images_match([off_by(IMAGE, 4)], [IMAGE], 40.0)


@pytest.mark.parametrize("tolerance", [Quantized(), codecs.RAW, None], ids=["lossy", "lossless", "none"])
def test_dtype_shape_and_count_must_match_whatever_the_codec(tolerance):
    with pytest.raises(AssertionError, match="dtype uint16, expected uint8"):
        assert_images_match([IMAGE.astype(np.uint16)], [IMAGE], tolerance)
    with pytest.raises(AssertionError, match=r"shape \(16, 48\), expected \(16, 16, 3\)"):
        assert_images_match([IMAGE.reshape(16, 48)], [IMAGE], tolerance)
    with pytest.raises(AssertionError, match="2 images, expected 1"):
        assert_images_match([IMAGE, IMAGE], [IMAGE], tolerance)


@pytest.mark.parametrize("tolerance", [codecs.RAW, codecs.Png(), None], ids=["raw", "png", "none"])
def test_a_lossless_codec_allows_no_change_at_all(tolerance):
    changed = IMAGE.copy()
    changed[0, 0, 0] ^= 1
    with pytest.raises(AssertionError, match="pixels differ"):
        assert_images_match([changed], [IMAGE], tolerance)


def test_bit_exact_means_the_same_bytes_so_nans_and_signed_zeros_count():
    floats = np.array([[np.nan, 0.0]], np.float32)
    assert_images_equal([floats.copy()], [floats])
    with pytest.raises(AssertionError, match="pixels differ"):
        assert_images_equal([np.array([[np.nan, -0.0]], np.float32)], [floats])
