"""Codecs: how one image becomes bytes in a store and back.

A codec knows which images it holds, whether it gives them back exactly, and how to encode and
decode one; decoding against the shape and dtype a store recorded turns a mismatch into
:class:`~storage.DamagedStoreError`. Backends that keep encoded records take ``encoding=`` and
look the codec up with :func:`get`. JPEG is lossy and optional: its codec is registered only
where simplejpeg (the formats extra) imports.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from storage._errors import DamagedStoreError

try:
    import simplejpeg
except ImportError:  # optional (the formats extra): no jpeg codec, backend or variant without it
    simplejpeg = None

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
        """The bytes of one accepted image. A codec with a file format returns a file (bytes) as it is: that is
        how a store keeps the files of an encoded append (`Store.append`) unchanged."""

    @abstractmethod
    def decode(self, data: Data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The image encoded in `data`, which its store recorded as `shape` and `dtype`."""

    def file_layout(self, data: bytes) -> tuple[tuple[int, ...], np.dtype]:
        """The shape and dtype of the image in a file of this codec's format, as its header gives them, for a file
        that a store keeps as it is; ValueError if it is no such file, or one this codec does not take."""
        raise ValueError(f"the {self.name} codec has no file format")


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
# The files a PNG codec keeps as they are, by IHDR bit depth and colour type: dtype and channels (None: 2-D). Others
# decode differently in the two libraries (a palette: RGB in libpng, indices in Pillow; fewer than 8 bits: uint8 or
# bool) or to layouts the codec does not hold (grey with alpha, 16-bit colour).
PNG_FILE_LAYOUTS = {(8, 0): ("u1", None), (16, 0): ("u2", None), (8, 2): ("u1", 3), (8, 6): ("u1", 4)}
# Chunks that make the two libraries disagree: with tRNS, libpng adds an alpha channel and Pillow does not; acTL
# makes an animation, whose first frame need not be the image libpng decodes.
PNG_FOREIGN_CHUNKS = {b"tRNS": "a tRNS (transparency) chunk", b"acTL": "an animation (acTL chunk)"}
PNG_LIBRARIES = ("imagecodecs", "pillow")  # the first is the default: it decoded 32x32 images 4x faster here
# zlib's strategies by name, as both libraries take them (libpng's png_set_compression_strategy, Pillow's
# compress_type), and libpng's row filters (png_set_filter's masks): "adaptive" tries all five on every row and keeps
# the one that looks smallest, which is what libpng does by default and what Pillow always does.
PNG_STRATEGIES = {"default": 0, "filtered": 1, "huffman": 2, "rle": 3, "fixed": 4}
PNG_FILTERS = {"none": 0x08, "sub": 0x10, "up": 0x20, "average": 0x40, "paeth": 0x80, "adaptive": 0xF8}
# Each library's (strategy, filter) when none are given. imagecodecs: chosen by measurement (see `Png`). Pillow: its
# own, so that png-pillow rows and the tutorial's codec floor measure Pillow as people use it (None: Pillow's strategy;
# Pillow has no filter setting and always filters adaptively).
PNG_DEFAULTS = {"imagecodecs": ("rle", "adaptive"), "pillow": (None, "adaptive")}


@dataclass(frozen=True)
class Png(Codec):
    """A PNG file; `level` is zlib's, 0-9: 1 favours speed, 9 size; `library` writes and reads it: "imagecodecs"
    (libpng) or "pillow". Either reads what the other wrote. A channel axis of 1 is stored as grey.

    `strategy` (zlib's, a name of `PNG_STRATEGIES`) and `filter` (the row filter, a name of `PNG_FILTERS`) tune the
    encoder; None takes the library's default (`PNG_DEFAULTS`). Pillow takes a strategy but picks each row's filter
    itself, so with Pillow a filter other than "adaptive" is refused. Whatever the settings, the files are standard
    PNGs that any decoder reads bit-exactly.

    imagecodecs' default, zlib's RLE strategy with adaptive filters, was chosen by measurement (the suite's
    synthetic images, medians of 7, idle machine, 2026-11-22): at 32x32x3 it encodes in 61 us against 68 us for
    libpng's own defaults and 107 us for Pillow at level 1, decodes in 28 us (29, 59), and compresses 1.40x (1.37x,
    1.37x); at 256x256x3, 3.0 ms (3.8, 6.0), 0.87 ms (1.09, 1.24) and 1.94x (1.67x, 1.62x). Paeth filters alone
    encode faster still (40 us, 1.5 ms) but decode 1.35x slower at 256x256x3, and sub filters compress 32x32 images
    worse than Pillow (1.27x); a dataset is read far more often than written. Up filters alone (the ``png-up``
    variant; 2026-11-23, medians of 7) encode 256x256x3 images in 1.35 ms and decode them in 0.74 ms against 2.98 and
    0.85 ms, at 1.86x, but compress 32x32 images 1.27x, worse than Pillow at level 1: not the default.
    """

    level: int = 1
    library: str = PNG_LIBRARIES[0]
    strategy: str | None = None
    filter: str | None = None
    name: ClassVar[str] = "png"
    holds: ClassVar[str] = "uint8 images that are 2-D or have 1, 3 or 4 channels, and 2-D uint16 images"
    checksummed: ClassVar[bool] = True  # the image data is a zlib stream with an Adler-32

    @property
    def label(self) -> str:
        """``png-<library>-level<level>``, then the strategy and the filter where they are not the library's
        default: ``png-imagecodecs-level1``, ``png-imagecodecs-level1-filtered-adaptive``."""
        differ = [
            value for value, usual in zip((self.strategy, self.filter), PNG_DEFAULTS[self.library]) if value != usual
        ]
        return "-".join([self.name, self.library, f"level{self.level}", *differ])

    def __post_init__(self) -> None:
        if not (isinstance(self.level, int) and 0 <= self.level <= 9):
            raise ValueError(f"compress_level must be an int from 0 to 9, got {self.level!r}")
        if self.library not in PNG_LIBRARIES:
            raise ValueError(f"library must be one of {', '.join(PNG_LIBRARIES)}, got {self.library!r}")
        for option, known in (("strategy", PNG_STRATEGIES), ("filter", PNG_FILTERS)):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, str) or value not in known):
                raise ValueError(f"{option} must be one of {', '.join(known)}, got {value!r}")
        strategy, filter_ = PNG_DEFAULTS[self.library]
        object.__setattr__(self, "strategy", self.strategy or strategy)  # resolved: equal settings, equal codecs
        object.__setattr__(self, "filter", self.filter or filter_)
        if self.library == "pillow" and self.filter != "adaptive":
            raise ValueError(
                f"Pillow picks each row's PNG filter itself (filter 'adaptive'); filter {self.filter!r} needs "
                "library 'imagecodecs'"
            )

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        if dtype.kind != "u" or max(shape, default=0) > MAX_SIDE:
            return False
        if dtype.itemsize == 1:
            return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))
        return dtype.itemsize == 2 and len(shape) == 2

    def encode(self, image: np.ndarray | bytes) -> bytes:
        """The PNG file of `image`; a file (bytes, checked by `Store.append`) is returned as it is."""
        if isinstance(image, bytes):
            return image
        grey = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if self.library == "imagecodecs":
            import imagecodecs

            return imagecodecs.png_encode(
                np.ascontiguousarray(grey),
                level=self.level,
                strategy=PNG_STRATEGIES[self.strategy],
                filter=PNG_FILTERS[self.filter],
            )
        from PIL import Image

        buffer = io.BytesIO()
        strategy = {} if self.strategy is None else {"compress_type": PNG_STRATEGIES[self.strategy]}
        Image.fromarray(grey).save(buffer, format="PNG", compress_level=self.level, **strategy)  # filter: adaptive
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

    def file_layout(self, data: bytes) -> tuple[tuple[int, ...], np.dtype]:
        """From the IHDR chunk: (H, W) for grey, (H, W, 3) for RGB, (H, W, 4) for RGBA. Only files that both
        libraries decode alike: a layout of `PNG_FILE_LAYOUTS`, no chunk of `PNG_FOREIGN_CHUNKS`, and every chunk
        whole with its CRC, up to IEND (Pillow decodes a file whose IDAT's CRC is cut off; libpng refuses it)."""
        if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[8:16] != b"\x00\x00\x00\x0dIHDR":
            raise ValueError("it is no PNG file (no PNG signature and IHDR chunk)")
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        if (depth, colour) not in PNG_FILE_LAYOUTS:
            raise ValueError(
                f"it is a PNG of bit depth {depth} and colour type {colour}; "
                "this codec takes 8-bit grey, RGB and RGBA, and 16-bit grey"
            )
        view, position, kind = memoryview(data), 8, b""
        while kind != b"IEND":  # each chunk: length, type, data, CRC of type and data
            if position + 12 > len(data):
                raise ValueError("it is a PNG that ends before its IEND chunk")
            length, kind = struct.unpack(">I4s", view[position : position + 8])
            end = position + 8 + length
            if end + 4 > len(data) or zlib.crc32(view[position + 4 : end]) != int.from_bytes(
                view[end : end + 4], "big"
            ):
                raise ValueError(f"it is a PNG whose {kind!r} chunk at byte {position} is cut short or fails its CRC")
            if kind in PNG_FOREIGN_CHUNKS:
                raise ValueError(f"it is a PNG with {PNG_FOREIGN_CHUNKS[kind]}, which PNG libraries decode differently")
            position = end + 4
        code, channels = PNG_FILE_LAYOUTS[depth, colour]
        shape, dtype = (height, width) if channels is None else (height, width, channels), np.dtype(code)
        if min(shape) < 1 or not self.accepts(dtype, shape):
            raise ValueError(f"it is a PNG of {width}x{height} pixels, which this codec does not hold")
        return shape, dtype

    def _decoded(self, data: Data) -> np.ndarray:
        if self.library == "imagecodecs":
            import imagecodecs

            with undecodable("a stored PNG cannot be decoded"):  # PngError; a UnicodeDecodeError of libpng's message
                return imagecodecs.png_decode(data)
        from PIL import Image

        with undecodable("a stored PNG cannot be decoded"), Image.open(io.BytesIO(data), formats=("PNG",)) as image:
            array = np.asarray(image)  # Pillow's errors: OSError, struct.error, SyntaxError, ...
        return array.astype(np.uint16) if array.dtype.kind == "i" else array  # older Pillow: 16-bit grey as "I"


JPEG_MAX_SIDE = 65500  # libjpeg's JPEG_MAX_DIMENSION
JPEG_COLOURS = {"Gray": 1, "YCbCr": 3}  # what this codec writes, by the header's colour space; others are foreign
JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # SOFn markers
JPEG_SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential Huffman frames, what this codec writes
# The least PSNR (dB) promised at a quality and above: about 3 dB below the worst found by searching for bad images
# (random noise, and a descent over every pixel's value). The worst are tiny colour images: at quality 90, 2x2
# colour went down to 18.9 dB, where random colour noise of 32x32 stays above 29 dB and grey images lose less.
# Below quality 50 no useful bound holds; 0 dB is the trivial one (no pixel can be off by more than 255).
JPEG_FLOORS = ((100, 38.0), (95, 22.0), (90, 16.0), (75, 9.0), (50, 3.0), (1, 0.0))


@dataclass(frozen=True)
class Jpeg(Codec):
    """A baseline JPEG file through simplejpeg (libjpeg-turbo); `quality` 1-100. Colour is stored without chroma
    subsampling (4:4:4): at quality 90, 4:2:0 took random colour noise down to 12 dB. A channel axis of 1 is stored
    as grey. JPEG has no checksum: a changed byte may come back as changed pixels."""

    quality: int = 90
    name: ClassVar[str] = "jpeg"
    holds: ClassVar[str] = "uint8 images that are 2-D or have 1 or 3 channels"
    lossless: ClassVar[bool] = False

    @property
    def label(self) -> str:
        return f"{self.name}-q{self.quality}"

    @property
    def min_psnr(self) -> float:  # type: ignore[override] - a property: the promise depends on the quality
        return next(floor for quality, floor in JPEG_FLOORS if self.quality >= quality)

    def __post_init__(self) -> None:
        if not (isinstance(self.quality, int) and not isinstance(self.quality, bool) and 1 <= self.quality <= 100):
            raise ValueError(f"quality must be an int from 1 to 100, got {self.quality!r}")

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        if dtype != np.uint8 or max(shape[:2], default=0) > JPEG_MAX_SIDE:
            return False
        return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))

    def encode(self, image: np.ndarray | bytes) -> bytes:
        """The JPEG file of `image`; a file (bytes, checked by `Store.append`) is returned as it is."""
        if isinstance(image, bytes):
            return image
        if image.ndim == 2 or image.shape[2] == 1:
            grey = np.ascontiguousarray(image.reshape(*image.shape[:2], 1))
            return simplejpeg.encode_jpeg(grey, self.quality, "GRAY")
        return simplejpeg.encode_jpeg(np.ascontiguousarray(image), self.quality, "RGB", "444")

    def decode(self, data: Data, shape: tuple[int, ...] | None = None, dtype: np.dtype | None = None) -> np.ndarray:
        """Decoded from memory, after checking that its header states the recorded size and channels: a forged size
        is refused before anything of that size is allocated. Without `shape` and `dtype`, the image as the file has
        it (grey files are 2-D)."""
        with undecodable("a stored JPEG has no readable header"):
            height, width, colours, _ = simplejpeg.decode_jpeg_header(data)
        channels = JPEG_COLOURS.get(colours)
        if channels is None:
            raise DamagedStoreError(f"a stored JPEG is in the {colours} colour space, which this codec never writes")
        # Progressive and arithmetic-coded files, which this codec never writes, are refused: they can pack a flat
        # image into next to nothing, and a progressive file of many scans takes long to decode. A sequential
        # Huffman JPEG spends at least 2 bits on each 8x8 block of a component, whatever its tables and sampling:
        # at most about 700 pixel bytes per byte (this encoder's flat colour images: 110).
        if _jpeg_frame(data) not in JPEG_SEQUENTIAL:
            raise DamagedStoreError("a stored JPEG is not a sequential (baseline) JPEG, which this codec writes")
        if height * width * channels > MAX_EXPANSION * len(data):
            raise DamagedStoreError(f"a stored JPEG of {len(data)} bytes claims {width}x{height} pixels")
        if shape is not None:
            want = shape[2] if len(shape) == 3 else 1
            if dtype != np.uint8 or (height, width, channels) != (*shape[:2], want):
                raise DamagedStoreError(
                    f"a stored JPEG holds a {height}x{width} image with {channels} channel(s), not {dtype} {shape}"
                )
        with undecodable("a stored JPEG cannot be decoded"):
            array = simplejpeg.decode_jpeg(data, "GRAY" if channels == 1 else "RGB", strict=True)  # warnings raise
        if array.shape != (height, width, channels):
            raise DamagedStoreError(f"a stored JPEG decoded to {array.shape}, not the {height}x{width} of its header")
        if shape is None:
            return array.reshape(height, width) if channels == 1 else array
        return array.reshape(shape)

    def file_layout(self, data: bytes) -> tuple[tuple[int, ...], np.dtype]:
        """From the frame header: (H, W) for grey, (H, W, 3) for YCbCr colour; only what `decode` decodes, a
        sequential Huffman JPEG (baseline or extended) of 8-bit samples, in any chroma subsampling."""
        if data[:2] != b"\xff\xd8":
            raise ValueError("it is no JPEG file (no start-of-image marker)")
        frame = _jpeg_frame(data)
        if frame is None:
            raise ValueError("it is a JPEG without a frame header")
        if frame not in JPEG_SEQUENTIAL:
            raise ValueError(
                f"it is a JPEG of frame type SOF{frame - 0xC0}; this codec decodes sequential Huffman JPEGs only "
                "(SOF0 baseline, SOF1 extended), not progressive, lossless or arithmetic-coded ones"
            )
        try:
            height, width, colours, _ = simplejpeg.decode_jpeg_header(data)
        except MemoryError:
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            raise ValueError(f"it is a JPEG whose header is cut short or damaged ({reason})") from None
        if colours not in JPEG_COLOURS:
            raise ValueError(f"it is a JPEG in the {colours} colour space; this codec takes Gray and YCbCr")
        shape = (height, width) if JPEG_COLOURS[colours] == 1 else (height, width, 3)
        if min(shape) < 1 or not self.accepts(np.dtype("u1"), shape):
            raise ValueError(f"it is a JPEG of {width}x{height} pixels, which this codec does not hold")
        return shape, np.dtype("u1")


@contextmanager
def undecodable(message: str) -> Iterator[None]:
    """Any error of a decoder library (libjpeg-turbo's and libpng's are ValueErrors) but MemoryError as
    DamagedStoreError: the data is no image it can decode."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as error:
        raise DamagedStoreError(f"{message} ({type(error).__name__}: {error})") from None


def _jpeg_frame(data: Data) -> int | None:
    """The marker of a JPEG's frame header (SOFn), found by stepping over the segments before it; None if none."""
    view = memoryview(data).cast("B")
    position = 2  # after the start of image
    while position + 4 <= len(view):
        if view[position] != 0xFF:
            return None
        marker = view[position + 1]
        if marker == 0xFF:  # a fill byte
            position += 1
        elif marker in JPEG_FRAMES:
            return marker
        else:
            position += 2 + (view[position + 2] << 8 | view[position + 3])
    return None


RAW = Raw()
CODECS: dict[str, Codec] = {"raw": RAW, "png": Png()}
MISSING: dict[str, str] = {}  # codecs whose library does not import here: name -> the library
if simplejpeg is not None:
    CODECS["jpeg"] = Jpeg()
else:
    MISSING["jpeg"] = "simplejpeg"


def get(name: str) -> Codec:
    """The codec called `name`; ValueError lists the known ones, or names the library a known one is missing."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        if isinstance(name, str) and name in MISSING:
            raise ValueError(f"the {name} codec needs {MISSING[name]}, which is not installed") from None
        raise ValueError(f"encoding must be one of {', '.join(CODECS)}; got {name!r}") from None
