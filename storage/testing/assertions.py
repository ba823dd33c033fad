"""Comparing what a store gave back with what it was given: bit-exact, or within a lossy codec's PSNR bound."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

import numpy as np

import storage
from storage.codecs import Codec
from storage.testing.places import object_place

Tolerance = Union[Codec, float, None]  # a codec, a least PSNR in dB, or None for bit-exact


def min_psnr(tolerance: Tolerance) -> float | None:
    """The least PSNR in dB that `tolerance` allows, or None when images must come back bit-exact."""
    if isinstance(tolerance, Codec):
        return None if tolerance.lossless else tolerance.min_psnr
    return tolerance


def psnr(got: np.ndarray, expected: np.ndarray) -> float:
    """Peak signal-to-noise ratio of `got` against `expected` in dB (inf when equal).

    The peak is the dtype's range for integers and bools, else the largest magnitude in `expected`.
    """
    if expected.dtype.kind in "iu":
        info = np.iinfo(expected.dtype)
        peak = float(info.max) - float(info.min)
    elif expected.dtype.kind == "b":
        peak = 1.0
    else:
        peak = float(np.max(np.abs(expected), initial=0.0)) or 1.0
    wide = np.complex128 if expected.dtype.kind == "c" else np.float64
    error = float(np.mean(np.abs(got.astype(wide) - expected.astype(wide)) ** 2))
    return math.inf if error == 0 else 10 * math.log10(peak**2 / error)


def assert_images_equal(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> None:
    """Same count, and each image has the same dtype, shape and bytes (so NaNs and -0.0 count too)."""
    assert_images_match(got, expected, None)


def assert_images_match(got: Sequence[np.ndarray], expected: Sequence[np.ndarray], tolerance: Tolerance = None) -> None:
    """Same count, each image of the same dtype and shape, and its pixels bit-exact or within `tolerance`.

    `tolerance`: a codec (lossless: bit-exact; lossy: its ``min_psnr``), a least PSNR in dB, or None (bit-exact).
    """
    assert len(got) == len(expected), f"{len(got)} images, expected {len(expected)}"
    bound = min_psnr(tolerance)
    for position, (image, want) in enumerate(zip(got, expected)):
        assert image.dtype == want.dtype, f"image {position}: dtype {image.dtype}, expected {want.dtype}"
        assert image.shape == want.shape, f"image {position}: shape {image.shape}, expected {want.shape}"
        if bound is None:
            assert image.tobytes() == want.tobytes(), f"image {position}: pixels differ"
        else:
            found = psnr(image, want)
            assert found >= bound, f"image {position}: PSNR {found:.1f} dB, below the promised {bound} dB"


def assert_read_match(
    store, ids, expected_images: Sequence[np.ndarray], expected_labels: Sequence[int], tolerance: Tolerance = None
) -> None:
    """`store.read(ids)` gives these images (within `tolerance`, by default the store's codec's) and exact labels.

    The images come as one array when they share one layout, else as a list.
    """
    images, labels = store.read(ids)
    assert_images_match(images, expected_images, store.codec if tolerance is None else tolerance)
    assert labels.dtype == np.int64
    assert labels.tolist() == [int(label) for label in expected_labels]
    layouts = {(image.shape, image.dtype) for image in expected_images}
    assert isinstance(images, np.ndarray) == (len(layouts) == 1)


@contextlib.contextmanager
def store_path(prefix: str = "store") -> Iterator[Path]:
    """A path for a new store inside a fresh temporary directory (safe in hypothesis tests, unlike tmp_path); for a
    `prefix` naming a backend whose stores live in an object store, a fresh place there."""
    if prefix in storage.available() and not storage.backend(prefix).capabilities.local:
        with object_place() as place:
            yield place / "store"
        return
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as directory:
        yield Path(directory) / "store"
