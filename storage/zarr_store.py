"""Zarr: a directory of Zarr v3 groups, one a part, written and read through zarr's own API (or tensorstore's).

Each part (see ``storage/_parts.py`` for the manifest that commits them) is a Zarr v3 group that zarr writes with
its ``LocalStore`` at the part's path: the group's ``zarr.json``, an array ``images`` of shape (n, H, W[, C]) in
the images' dtype, chunked along the first axis only, and an array ``labels`` of n int64 in one chunk. Chunk keys
use "." as separator, so an array's chunk files lie flat in its directory (``images/c.0.0.0.0``, ...) rather than
one directory per chunk. ``zarr.open_group(part)`` alone makes sense of a part.

Commit point: the manifest, as for every parts store. A part is written whole at a staging name, flushed (its
files, its directory and its arrays' directories), renamed to its own name, then listed in a new manifest.

Unusual lines, and why:

- Every chunk is written, an all-zero one too (``write_empty_chunks``), and opening a part checks that every chunk
  file its metadata implies is there, a regular file of the size a raw chunk has. zarr reads a missing chunk as
  the fill value, so a deleted chunk file would otherwise come back as black images.
- An array's metadata must be the manifest's shape and dtype, with chunks (and shards) of whole images, and one of
  the codec pipelines this backend writes, before any chunk is read.
- numcodecs allocates the size a zstd or blosc header records before it decompresses, so opening a compressed part
  checks each chunk's header against the chunk's size: a forged size cannot become a huge allocation. Compressed
  chunks inside shards could not be checked that way, so a compressor and shards are not taken together.
- zarr's errors about a part (bad JSON, an unknown codec, a chunk that fails to decode) become DamagedStoreError.
- zarr 3 is needed (zarr 2 has another API): under zarr 2 this module does not import, so the registry does not
  list the backend.

Option ``library="tensorstore"`` (the ``zarr-tensorstore`` variant) moves the pixels and labels through Google's
tensorstore instead of zarr-python, to show what the choice of library costs for the very same parts. zarr still
writes each part's metadata (both libraries write the same files: raw chunks and shards byte for byte) and still
opens each part for the checks above; only then does tensorstore write or read the chunks, through its file driver
on the array's own directory, held to the shape and dtype zarr checked, in a context whose cache keeps nothing
(``cache_pool`` of 0: memory stays what a read asks for). It writes all-zero chunks too
(``store_data_equal_to_fill_value``) and reads a chunk missing from a shard as an error
(``fill_missing_data_reads``), where zarr reads zeros. Its errors about a part become DamagedStoreError, but one
naming the system's error (``os_error_code``: a full disk, say) is that OSError. tensorstore aborts a process forked
from one in which it ran, so there (a DataLoader worker forked after the store was read, say) the store reads and
writes through zarr instead, with a RuntimeWarning; its capabilities say it is not fork-safe, so the benchmarks'
process workers start from a fork server and read through tensorstore. The option decides only which library moves
the bytes: each reads what the other wrote.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Union

import numpy as np
import zarr

if int(zarr.__version__.split(".")[0]) < 3:
    raise ImportError(f"the zarr backend needs zarr 3 or newer; zarr {zarr.__version__} is installed")

from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.errors import BaseZarrError
from zarr.storage import LocalStore

try:
    import tensorstore
except ImportError:  # the option's value "tensorstore" is then refused, and the registry hides the variant
    tensorstore = None

from storage._base import Capabilities, Options
from storage._durable import NO_FOLLOW, fsync_path
from storage._errors import DamagedStoreError
from storage._parts import Part, PartsStore
from storage._reading import is_consecutive

CHUNK_BYTES = 1 << 20  # pixels per chunk by default: see ZarrOptions
COMPRESSORS = {
    "zstd": lambda: ZstdCodec(level=3, checksum=True),  # the frame's checksum reports a changed byte
    "blosc-lz4": lambda: BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
}
SCRATCH_BYTES = 64 << 20  # a scattered read reads at most this much at a time
MAX_STRETCHES = 16  # more stretches of chunks than this: one orthogonal selection (see read_into)
KEYS = {"name": "default", "separator": "."}  # chunk keys c.0.0.0.0, flat in the array's directory
ZSTD_MAGIC = 0xFD2FB528
LIBRARIES = ("zarr", "tensorstore")  # what moves a part's bytes; the first is the default
OS_ERROR = re.compile(r"\[os_error_code='(\d+)'\]")  # how tensorstore names the system's error in its message
_tensorstore_ran_in: int | None = None  # the process in which this module first used tensorstore
Pixels = Union[zarr.Array, "tensorstore.TensorStore"]  # a part's images array, opened by either library


@dataclass(frozen=True)
class ZarrOptions(Options):
    """`chunk_images`: images per chunk, or None: as many as make about 1 MiB (CHUNK_BYTES), or one with shards.
    `shard_images`: images per shard, a file of chunks with an index (zarr's sharding codec), a multiple of
    `chunk_images`; None: a file per chunk. `compressor`: None (raw chunks) or one of COMPRESSORS, not with shards.
    `library`: what writes and reads the chunks, one of LIBRARIES; each reads what the other wrote.

    1 MiB chunks measured best for 10,000 images of 32x32x3 (341 a chunk): zarr spends about 0.2 ms on each chunk it
    reads, so smaller chunks make whole reads slow (64 images a chunk: 2.5 to 4 times as long), while larger ones
    read whole stores no faster and read more than a small read needs (1,024 a chunk: one image took 1.1 to 1.6
    times as long).
    """

    chunk_images: int | None = None
    shard_images: int | None = None
    compressor: str | None = None
    library: str = LIBRARIES[0]

    def __post_init__(self) -> None:
        if self.library not in LIBRARIES:
            raise ValueError(f"library must be one of {', '.join(LIBRARIES)}, got {self.library!r}")
        if self.library == "tensorstore" and tensorstore is None:
            raise ValueError("library 'tensorstore' needs tensorstore, which is not installed")
        for option in ("chunk_images", "shard_images"):
            value = getattr(self, option)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{option} must be None or a positive int, got {value!r}")
        if self.shard_images is not None and self.chunk_images is not None and self.shard_images % self.chunk_images:
            raise ValueError(
                f"shard_images ({self.shard_images}) must be a multiple of chunk_images ({self.chunk_images})"
            )
        if self.compressor is not None and self.compressor not in COMPRESSORS:
            raise ValueError(f"compressor must be None or one of {', '.join(COMPRESSORS)}, got {self.compressor!r}")
        if self.compressor is not None and self.shard_images is not None:
            raise ValueError(
                "compressor and shard_images cannot be used together: the size a compressed chunk records is checked"
                " before zarr decodes it, and inside a shard it cannot be"
            )

    def layout(self, count: int, image_bytes: int) -> tuple[int, int | None]:
        """Images per chunk and per shard (None: no shards) for a part of `count` images: never more than the part
        needs, and a shard a whole number of chunks."""
        chunk = self.chunk_images or (1 if self.shard_images else max(1, CHUNK_BYTES // image_bytes))
        chunk = min(chunk, count)
        if self.shard_images is None:
            return chunk, None
        return chunk, min(self.shard_images, -(-count // chunk) * chunk)


@contextmanager
def zarr_errors(path: Path) -> Iterator[None]:
    """zarr's and tensorstore's complaints about a part (their ValueErrors too) as DamagedStoreError naming it; the
    system's OSErrors and MemoryError pass."""
    try:
        with system_errors(path):
            yield
    except (DamagedStoreError, MemoryError):
        raise
    except Exception as error:
        if isinstance(error, OSError) and not isinstance(error, BaseZarrError):
            raise
        raise DamagedStoreError(f"{path} is a damaged Zarr group ({type(error).__name__}: {error})") from error


@contextmanager
def system_errors(path: Path) -> Iterator[None]:
    """A tensorstore error that names the system's (but a missing file's) as that OSError: a full disk, say."""
    try:
        yield
    except ValueError as error:
        code = OS_ERROR.search(str(error))
        if code is None or int(code[1]) == errno.ENOENT:
            raise
        raise OSError(int(code[1]), f"{path}: {error}") from error


def tensorstore_here(library: str) -> bool:
    """Whether to move bytes through tensorstore: asked for, and not in a process forked after it ran here (it
    would abort the process)."""
    global _tensorstore_ran_in
    if library != "tensorstore":
        return False
    if _tensorstore_ran_in in (None, os.getpid()):
        _tensorstore_ran_in = os.getpid()
        return True
    warnings.warn(
        "tensorstore ran in the process this one was forked from, and aborts a forked process: the zarr store"
        " reads and writes through zarr-python here",
        RuntimeWarning,
        stacklevel=2,
    )
    return False


@cache
def context() -> tensorstore.Context:
    """tensorstore's context for every part: a cache that keeps nothing."""
    return tensorstore.Context({"cache_pool": {"total_bytes_limit": 0}})


def tensorstore_array(array: zarr.Array, path: Path, write: bool = False) -> tensorstore.TensorStore:
    """The array zarr opened (and checked) at `path`, opened again by tensorstore, held to its shape and dtype."""
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": f"{path}/", "file_io_sync": False},  # the store flushes, as for zarr
        "fill_missing_data_reads": False,
        "store_data_equal_to_fill_value": True,
    }
    opening = tensorstore.open(
        spec, open=True, read=True, write=write, shape=array.shape, dtype=array.dtype, context=context()
    )
    return opening.result()


class Opened:
    """An open part: its images array, and its labels, checked against the manifest before any chunk is read;
    `pixels`: the images array opened by tensorstore, or None to read through zarr."""

    def __init__(self, path: Path, part: Part, library: str) -> None:
        self.path = path
        with zarr_errors(path):
            group = zarr.open_group(LocalStore(path, read_only=True), mode="r", zarr_format=3, use_consolidated=False)
            self.images, labels = group["images"], group["labels"]
            check(path, self.images, (part.count, *part.shape), part.dtype)
            check(path, labels, (part.count,), np.dtype(np.int64))
            self.pixels = None
            if tensorstore_here(library):
                self.pixels = tensorstore_array(self.images, path / "images")
                self.labels = tensorstore_array(labels, path / "labels").read().result()
            else:
                self.labels = labels[:]


def check(path: Path, array: zarr.Array, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """DamagedStoreError unless `array` has `shape` and `dtype`, chunks (and shards) of whole items along the first
    axis, a codec pipeline this backend writes, and every chunk file this implies, whose size or header fits."""
    where = f"{path}/{array.basename}"
    if not isinstance(array, zarr.Array) or array.shape != shape or array.dtype != dtype:
        raise DamagedStoreError(f"{where} is not {shape} {dtype} as the manifest says")
    chunks, shards = array.chunks, array.shards
    files = shards or chunks  # as written: chunks of at most the part, shards of whole chunks that cover it once
    sound = 1 <= chunks[0] <= shape[0] and chunks[0] <= files[0] < shape[0] + chunks[0]
    if chunks[1:] != shape[1:] or files[1:] != shape[1:] or not sound:
        raise DamagedStoreError(f"{where} has chunks {chunks} and shards {shards}, not as this backend writes them")
    compressor = compressor_of(where, array.metadata.codecs)
    chunk_bytes = math.prod(chunks) * dtype.itemsize  # a chunk at the end is whole too, padded with the fill value
    for number in range(-(-shape[0] // files[0])):
        file = path / array.basename / array.metadata.encode_chunk_key((number,) + (0,) * (len(shape) - 1))
        try:
            info = os.lstat(file)
        except FileNotFoundError:
            raise DamagedStoreError(f"{file} is missing (zarr would read it as zeros)") from None
        size = info.st_size if stat.S_ISREG(info.st_mode) else 0
        if size == 0 or (shards is None and compressor is None and size != chunk_bytes):
            raise DamagedStoreError(f"{file} is not a chunk file of {where}")
        if compressor is not None and recorded_size(file, compressor, size) != chunk_bytes:
            raise DamagedStoreError(f"{file} records a size other than its chunk's {chunk_bytes} bytes")


def compressor_of(where: str, codecs: tuple) -> object:
    """The compressor of a codec pipeline this backend writes (None for raw chunks); DamagedStoreError for others."""
    first, *rest = codecs
    if isinstance(first, ShardingCodec) and not rest:  # shards of raw chunks, with zarr's usual index
        inner, index = first.codecs, first.index_codecs
        if all(isinstance(codec, BytesCodec) for codec in inner) and all(
            isinstance(codec, (BytesCodec, Crc32cCodec)) for codec in index
        ):
            return None
    elif isinstance(first, BytesCodec) and len(rest) <= 1 and all(isinstance(c, (ZstdCodec, BloscCodec)) for c in rest):
        return rest[0] if rest else None
    raise DamagedStoreError(f"{where} has codecs this backend does not write: {codecs}")


def recorded_size(file: Path, compressor: object, size: int) -> int | None:
    """The decompressed size a zstd frame or blosc buffer at the start of `file` records (None: none or unsound)."""
    descriptor = os.open(file, os.O_RDONLY | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        header = os.read(descriptor, 18)
    finally:
        os.close(descriptor)
    if isinstance(compressor, BloscCodec):  # version, versionlz, flags, typesize, then nbytes, blocksize, cbytes
        if len(header) < 16:
            return None
        nbytes, block, cbytes = struct.unpack_from("<III", header, 4)
        return nbytes if block <= nbytes and cbytes == size else None
    # zstd: magic, frame header descriptor, [window descriptor], [dictionary id], frame content size
    if len(header) < 6 or struct.unpack_from("<I", header)[0] != ZSTD_MAGIC:
        return None
    descriptor_byte = header[4]
    single_segment = descriptor_byte >> 5 & 1
    at = 5 + (not single_segment) + (0, 1, 2, 4)[descriptor_byte & 3]
    width = (single_segment, 2, 4, 8)[descriptor_byte >> 6]
    if width == 0 or len(header) < at + width:  # no size recorded: numcodecs would grow its output as it goes
        return None
    recorded = int.from_bytes(header[at : at + width], "little")
    return recorded + 256 if width == 2 else recorded


class ZarrStore(PartsStore):
    name = "zarr"
    suffix = ".zarr"
    part_is_directory = True
    Options = ZarrOptions

    @classmethod
    def capabilities_for(cls, options: ZarrOptions) -> Capabilities:
        """Through tensorstore, not fork-safe: process workers start by spawn or from a fork server, so that they
        read through tensorstore too rather than falling back to zarr-python."""
        return replace(cls.capabilities, fork_safe=False) if options.library == "tensorstore" else cls.capabilities

    def _write_part(self, path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        count, shape = len(images), images.shape[1:]
        chunk, shard = self.options.layout(count, images[0].nbytes)
        compressor = self.options.compressor
        group = zarr.create_group(LocalStore(path), zarr_format=3)
        common = {"chunk_key_encoding": KEYS, "config": {"write_empty_chunks": True}, "filters": None, "fill_value": 0}
        arrays = {
            "images": group.create_array(
                "images",
                shape=images.shape,
                dtype=images.dtype,
                chunks=(chunk, *shape),
                shards=None if shard is None else (shard, *shape),
                compressors=None if compressor is None else COMPRESSORS[compressor](),
                **common,
            ),
            "labels": group.create_array(
                "labels", shape=labels.shape, dtype=labels.dtype, chunks=(count,), compressors=None, **common
            ),
        }
        through_tensorstore = tensorstore_here(self.options.library)
        with system_errors(path):  # zarr wrote the metadata; either library writes the chunks it describes
            for name, data in (("images", images), ("labels", labels)):
                if through_tensorstore:
                    tensorstore_array(arrays[name], path / name, write=True).write(data).result()
                else:
                    arrays[name][...] = data
        if self.durable:  # the skeleton flushes the files and the part's directory; the arrays' directories too
            for name in ("images", "labels"):
                fsync_path(path / name)

    def _open_part(self, path: Path, part: Part) -> tuple[Opened, np.ndarray]:
        opened = Opened(path, part, self.options.library)
        return opened, opened.labels

    def _read_part(self, handle: Opened, part: Part, local: np.ndarray, out: np.ndarray) -> None:
        images = handle.pixels if handle.pixels is not None and tensorstore_here("tensorstore") else handle.images
        with zarr_errors(handle.path):
            read_into(images, handle.images.chunks[0], part, local, out)


def read_into(images: Pixels, chunk: int, part: Part, local: np.ndarray, out: np.ndarray) -> None:
    """Fill `out` with the images at `local`, in that order, from `images` in chunks of `chunk` images."""
    if is_consecutive(local):
        fill(images, slice(int(local[0]), int(local[-1]) + 1), out)
        return
    # Both libraries gather a selection element by element (zarr through numpy's ix_ over every axis, tensorstore
    # at about 0.5 GB/s), 4 to 10 times slower for big images than reading each stretch of touched chunks as one
    # slice and taking the images from it; but each call costs about what reading a small chunk does, so many
    # stretches are read as one selection after all.
    order = np.argsort(local, kind="stable")
    wanted = local[order]
    window = max(chunk, SCRATCH_BYTES // part.image_bytes // chunk * chunk)
    cuts = np.flatnonzero((np.diff(wanted // chunk) > 1) | (np.diff(wanted // window) != 0)) + 1
    if len(cuts) >= MAX_STRETCHES:
        fill(images, local, out)
        return
    for positions in np.split(np.arange(len(wanted)), cuts):
        first, last = int(wanted[positions[0]]), int(wanted[positions[-1]])
        stretch = fill(images, slice(first, last + 1), None)
        out[order[positions]] = stretch[wanted[positions] - first]


def fill(images: Pixels, selection: slice | np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Read `selection` (a slice, or ids along the first axis) of `images` into `out` in place; None: a new array."""
    if isinstance(images, zarr.Array):
        buffer = None if out is None else default_buffer_prototype().nd_buffer.from_numpy_array(out)
        if isinstance(selection, slice):
            return images.get_basic_selection(selection, out=buffer)
        return images.get_orthogonal_selection((selection,), out=buffer)
    if out is None:
        return images[selection].read().result()
    tensorstore.array(out, copy=False, write=True).write(images[selection]).result()  # copied straight into `out`
    return out
