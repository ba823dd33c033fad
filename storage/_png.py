"""PNG encoding of one image, shared by the png backend and the PNG-encoded variants of lmdb and hdf5."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from storage._base import PNG_HOLDS as HOLDS
from storage._base import DamagedStoreError
from storage._base import png_accepts as accepts

__all__ = ["DEFAULT_LEVEL", "HOLDS", "accepts", "check_level", "decode", "decode_as", "encode"]
DEFAULT_LEVEL = 1  # zlib level: 1 favours speed, 9 size


def encode(image: np.ndarray, compress_level: int) -> bytes:
    """The PNG file of an accepted image (zlib level 0-9); a trailing channel axis of 1 is stored as grey."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(
        buffer, format="PNG", compress_level=compress_level
    )
    return buffer.getvalue()


def decode(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """The pixels of a PNG file held in memory (so a forged chunk length cannot make Pillow read or allocate more)."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
        array = np.asarray(image)
    return array.astype(np.uint16) if array.dtype.kind == "i" else array  # older Pillow opens 16-bit grey as "I"


def decode_as(data: bytes | memoryview | np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode, and check that the image has the shape and dtype its store recorded for it."""
    array = decode(data)
    if array.dtype != dtype or array.shape not in (shape, shape[:2]) or (array.shape != shape and shape[2:] != (1,)):
        raise DamagedStoreError(f"a stored PNG holds a {array.dtype} image of shape {array.shape}, not {dtype} {shape}")
    return array.reshape(shape)


def check_level(compress_level: object) -> None:
    if not (isinstance(compress_level, int) and 0 <= compress_level <= 9):
        raise ValueError(f"compress_level must be an int from 0 to 9, got {compress_level!r}")
