"""Codecs: how one image becomes bytes in a store and back.

A codec knows which images it holds, whether it gives them back exactly, and how to encode and
decode one; decoding against the shape and dtype a store recorded turns a mismatch into
:class:`~storage.DamagedStoreError`. Backends that keep encoded records take ``encoding=`` and
look the codec up with :func:`get`.
"""

from __future__ import annotations

import io
import math
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from storage._errors import DamagedStoreError

Data = Union[bytes, memoryview, np.ndarray]
NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: fixed-size numbers
# A compressed image expands at most this much when decoded (deflate: 1032:1; lzf less): a stored
# size beyond it is forged, and is refused before anything of that size is allocated.
MAX_EXPANSION = 1100
MAX_SIDE = 2**31 - 1  # PNG's limit, and beyond what any store here records (lmdb: uint32 sides)


class Codec(ABC):
    """One way of turning an image into bytes."""

    name: ClassVar[str]
    holds: ClassVar[str]  # the images it accepts, in words for error messages
    lossless: ClassVar[bool] = True
    min_psnr: ClassVar[float | None] = None  # a lossy codec's promise: decoded images are at least this close (dB)
    checksummed: ClassVar[bool] = False  # a changed byte of its output is reported on decoding

    @property
    def label(self) -> str:
        """The codec and its settings, for a table's row: ``png-level1``."""
        return self.name

    @abstractmethod
    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        """Whether an image of this dtype and shape (H, W[, C]) can be encoded."""

    @abstractmethod
    def encode(self, image: np.ndarray) -> bytes:
        """The bytes of one accepted image."""

    @abstractmethod
    def decode(self, data: Data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image encoded in `data`, which its store recorded as `shape` and `dtype`."""


@dataclass(frozen=True)
class Raw(Codec):
    """The pixels as they are in memory (C order, little-endian): nothing to decode."""

    name: ClassVar[str] = "raw"
    holds: ClassVar[str] = "2-D or 3-D (H, W, C) images of any fixed-size numeric dtype"

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        return dtype.kind in NUMERIC_KINDS and len(shape) in (2, 3) and max(shape) <= MAX_SIDE

    def encode(self, image: np.ndarray) -> bytes:
        return image.tobytes()

    def decode(self, data: Data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise DamagedStoreError(f"a stored image has {len(data)} bytes; its recorded layout needs {expected}")
        return np.frombuffer(data, dtype).reshape(shape)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # per IHDR colour type: grey, RGB, palette, grey+alpha, RGBA
PNG_LIBRARIES = ("imagecodecs", "pillow")  # the first is the default: it decoded 32x32 images 4x faster here


@dataclass(frozen=True)
class Png(Codec):
    """A PNG file; `level` is zlib's, 0-9: 1 favours speed, 9 size; `library` writes and reads it: "imagecodecs"
    (libpng) or "pillow". Either reads what the other wrote. A channel axis of 1 is stored as grey."""

    level: int = 1
    library: str = PNG_LIBRARIES[0]
    name: ClassVar[str] = "png"
    holds: ClassVar[str] = "uint8 images that are 2-D or have 1, 3 or 4 channels, and 2-D uint16 images"
    checksummed: ClassVar[bool] = True  # the image data is a zlib stream with an Adler-32

    @property
    def label(self) -> str:
        return f"{self.name}-{self.library}-level{self.level}"

    def __post_init__(self) -> None:
        if not (isinstance(self.level, int) and 0 <= self.level <= 9):
            raise ValueError(f"compress_level must be an int from 0 to 9, got {self.level!r}")
        if self.library not in PNG_LIBRARIES:
            raise ValueError(f"library must be one of {', '.join(PNG_LIBRARIES)}, got {self.library!r}")

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        if dtype.kind != "u" or max(shape, default=0) > MAX_SIDE:
            return False
        if dtype.itemsize == 1:
            return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))
        return dtype.itemsize == 2 and len(shape) == 2

    def encode(self, image: np.ndarray) -> bytes:
        grey = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if self.library == "imagecodecs":
            import imagecodecs

            return imagecodecs.png_encode(np.ascontiguousarray(grey), level=self.level)
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="PNG", compress_level=self.level)
        return buffer.getvalue()

    def decode(self, data: Data, shape: tuple[int, ...] | None = None, dtype: np.dtype | None = None) -> np.ndarray:
        """Decoded from memory, after checking that its header states the recorded size: a forged size is refused
        before anything of that size is allocated. Without `shape` and `dtype`, the image as the file has it (grey
        files are 2-D)."""
        header = bytes(data[:26])
        if len(header) < 26 or header[:8] != PNG_SIGNATURE or header[12:16] != b"IHDR":
            raise DamagedStoreError("a stored PNG has no PNG header")
        width, height, depth, colour = struct.unpack(">IIBB", header[16:26])
        decoded = width * height * PNG_CHANNELS.get(colour, 4) * -(-depth // 8)
        if decoded > MAX_EXPANSION * len(data):  # more than deflate can expand to: forged
            raise DamagedStoreError(f"a stored PNG of {len(data)} bytes claims {width}x{height} pixels")
        if shape is not None and (height, width) != tuple(shape[:2]):
            raise DamagedStoreError(f"a stored PNG is {width}x{height}, not the recorded {shape[1]}x{shape[0]}")
        array = self._decoded(data)
        if shape is None:
            return array
        if (
            array.dtype != dtype
            or array.shape not in (shape, shape[:2])
            or (array.shape != shape and shape[2:] != (1,))
        ):
            raise DamagedStoreError(
                f"a stored PNG holds a {array.dtype} image of shape {array.shape}, not {dtype} {shape}"
            )
        return array.reshape(shape)

    def _decoded(self, data: Data) -> np.ndarray:
        if self.library == "imagecodecs":
            import imagecodecs

            try:
                return imagecodecs.png_decode(data)
            except MemoryError:
                raise
            except Exception as error:  # PngError, and a UnicodeDecodeError of libpng's message for some damage
                raise DamagedStoreError(f"a stored PNG cannot be decoded ({type(error).__name__}: {error})") from None
        from PIL import Image

        with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
            array = np.asarray(image)
        return array.astype(np.uint16) if array.dtype.kind == "i" else array  # older Pillow: 16-bit grey as "I"


RAW = Raw()
CODECS: dict[str, Codec] = {"raw": RAW, "png": Png()}


def get(name: str) -> Codec:
    """The codec called `name`; ValueError lists the known ones."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ValueError(f"encoding must be one of {', '.join(CODECS)}; got {name!r}") from None
