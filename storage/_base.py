"""What every backend shares: the public store interface, input checks and durability."""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Union

import numpy as np

Images = Union[np.ndarray, Sequence[np.ndarray]]
Ids = Union[Sequence[int], slice, None]
Batch = Union[np.ndarray, list]

INT64 = np.iinfo(np.int64)
NUMERIC_KINDS = "biufc"  # bool, signed, unsigned, float, complex: fixed-size numbers
PAGE = 4096
# A compressed image expands at most this much when decoded (deflate: 1032:1; lzf less): a stored
# size beyond it is forged, and is refused before anything of that size is allocated.
MAX_EXPANSION = 1100
# Distance (mod PAGE) of a read buffer past its file offset. Kernels copy page-cache pages with
# `rep movsb`, which on some AMD CPUs runs about 3x slower when the destination lies a few bytes
# past the source modulo a page (glibc bug 30994); a fresh large NumPy array sits 16 bytes past
# a page boundary, so reading a page-aligned file offset into it hits exactly that case.
COPY_SKEW = 256


PNG_HOLDS = "uint8 images that are 2-D or have 1, 3 or 4 channels, and 2-D uint16 images"


def png_accepts(dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Whether PNG holds an image of this dtype and shape bit-exactly."""
    if dtype.kind != "u":
        return False
    if dtype.itemsize == 1:
        return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))
    return dtype.itemsize == 2 and len(shape) == 2


class DamagedStoreError(ValueError):
    """A store whose format marker is present but whose content is damaged or incomplete."""


# What opening and reading raise on purpose; anything else out of a backend's library (h5py's
# KeyError for a broken object, say) is damage. Missing ids (KeyError) and bad arguments
# (TypeError) are reported before a backend touches the store.
INTENDED_ERRORS = (ValueError, FileNotFoundError, PermissionError, BlockingIOError, MemoryError)


@contextmanager
def damage_reported(path: Path, backend: str) -> Iterator[None]:
    """Turn a library's unexpected error about a store's content into a DamagedStoreError naming the store."""
    try:
        yield
    except INTENDED_ERRORS:
        raise
    except Exception as error:
        raise DamagedStoreError(
            f"{path} is a damaged or incomplete {backend} store ({type(error).__name__}: {error})"
        ) from error


class Store(ABC):
    """A store of labelled images; open one with :func:`storage.open`."""

    name: ClassVar[str]
    holds: ClassVar[str] = "2-D or 3-D (H, W, C) images of any fixed-size numeric dtype"
    is_directory: ClassVar[bool]
    options: ClassVar[Mapping[str, object]] = MappingProxyType({})  # the write options of a variant
    base: ClassVar[type[Store] | None] = None  # the backend a variant is made from

    @classmethod
    def variant(cls, name: str, options: Mapping[str, object]) -> type[Store]:
        """This backend under another name, writing new images with `options` (see ``storage.VARIANTS``).

        Stores are the same format whatever their options, so any name of a backend reads them.
        """
        base = cls.base or cls
        options = MappingProxyType({**cls.options, **options})
        holds = f"{PNG_HOLDS} (encoding='png')" if options.get("encoding") == "png" else base.holds
        return type(base.__name__, (base,), {"name": name, "options": options, "base": base, "holds": holds})

    def __init__(self, path: Path, writable: bool, durable: bool = True) -> None:
        self.path = path
        self.writable = writable
        self.durable = durable  # whether append flushes to disk (fsync) before it returns
        self.closed = False

    # --- what a backend provides -------------------------------------------------

    @classmethod
    @abstractmethod
    def is_store(cls, path: Path) -> bool:
        """Whether `path` holds a store of this backend."""

    @classmethod
    @abstractmethod
    def files(cls, path: Path) -> list[Path]:
        """Every file that belongs to the store at `path`."""

    @classmethod
    def accepts(cls, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        """Whether one image of this dtype and shape (H, W[, C]) can be stored bit-exactly."""
        if cls.options.get("encoding") == "png":
            return png_accepts(dtype, shape)
        return dtype.kind in NUMERIC_KINDS and len(shape) in (2, 3)

    @abstractmethod
    def _count(self) -> int: ...

    @abstractmethod
    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        """Store uniform batches (each (n, H, W[, C]), little-endian, C-contiguous) durably."""

    @abstractmethod
    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        """Images and labels of valid ids, in the given order."""

    @abstractmethod
    def _close(self) -> None: ...

    # --- the public interface ----------------------------------------------------

    def __len__(self) -> int:
        self._check_open()
        return self._count()

    def __getitem__(self, image_id: int) -> tuple[np.ndarray, int]:
        images, labels = self.read([image_id])
        return images[0], int(labels[0])

    def read(self, ids: Ids = None) -> tuple[Batch, np.ndarray]:
        """Images and int64 labels of `ids` (a sequence of ints, a slice, or None for all).

        Images come as one array when the selection is non-empty and shares one shape and
        dtype, otherwise as a list of arrays.
        """
        self._check_open()
        selected = self._ids(ids)
        if len(selected) == 0:
            return [], np.empty(0, np.int64)
        with damage_reported(self.path, self.name):
            return self._read(selected)

    def append(self, images: Images, labels: Sequence[int]) -> None:
        """Add images with their labels; ids continue from ``len(store)``.

        Everything is checked before anything is written, and the images are durable on
        disk when this returns.
        """
        self._check_open()
        if not self.writable:
            raise io.UnsupportedOperation(f"{self.path} is open read-only (mode 'r'); open it with mode 'a' to append")
        batches = self._batches(images)
        count = sum(len(b) for b in batches)
        label_array = as_labels(labels, count)
        if count:
            self._append(batches, label_array)

    def disk_usage(self) -> int:
        """Bytes allocated on disk by all files of the store."""
        return sum(allocated_bytes(f) for f in self.files(self.path))

    def close(self) -> None:
        """Release the store; safe to call more than once."""
        if not self.closed:
            self.closed = True
            self._close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read/append" if self.writable else "read-only")
        return f"<{self.name} store {str(self.path)!r} ({state})>"

    # --- shared checks -----------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"the {self.name} store {self.path} is closed")

    def _ids(self, ids: Ids) -> np.ndarray:
        count = self._count()
        if ids is None:
            return np.arange(count, dtype=np.int64)
        if isinstance(ids, slice):
            return np.arange(*ids.indices(count), dtype=np.int64)
        if isinstance(ids, (int, np.integer, str, bytes)):
            raise TypeError(f"ids must be a sequence of ints, a slice or None, not {type(ids).__name__}")
        selected = np.asarray(ids)
        if selected.size == 0:
            return np.empty(0, np.int64)
        if selected.ndim != 1 or selected.dtype.kind not in "iu":
            raise TypeError(
                f"ids must be a flat sequence of ints, got an array of {selected.dtype} with shape {selected.shape}"
            )
        outside = (selected < 0) | (selected >= count)
        if outside.any():
            raise KeyError(int(selected[outside][0]))
        return selected.astype(np.int64, copy=False)

    def _batches(self, images: Images) -> list[np.ndarray]:
        """Split `images` into runs of one shape and dtype, checking every image first."""
        if isinstance(images, np.ndarray):
            if images.ndim not in (3, 4):
                raise ValueError(f"an image batch must have shape (N, H, W) or (N, H, W, C), got {images.shape}")
            self._check_image(images.dtype, images.shape[1:])
            return [little_endian(images)] if len(images) else []
        if isinstance(images, (str, bytes)) or not isinstance(images, Iterable):
            raise TypeError(f"images must be an array or a sequence of arrays, not {type(images).__name__}")
        arrays = [np.asarray(image) for image in images]
        for array in arrays:
            self._check_image(array.dtype, array.shape)
        runs: list[list[np.ndarray]] = []
        for array in arrays:
            if runs and (runs[-1][0].shape, runs[-1][0].dtype) == (array.shape, array.dtype):
                runs[-1].append(array)
            else:
                runs.append([array])
        return [little_endian(np.stack(run)) for run in runs]

    def _check_image(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if min(shape, default=0) < 1 or not self.accepts(dtype, shape):
            raise ValueError(f"the {self.name} backend holds {self.holds}; got a {dtype} image of shape {shape}")


def as_labels(labels: Sequence[int], count: int) -> np.ndarray:
    """`labels` as an int64 array of length `count`, or TypeError/ValueError naming the problem."""
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise TypeError(
                f"labels must be a flat sequence of integers, got an array of {labels.dtype} with shape {labels.shape}"
            )
        if labels.dtype.kind == "u" and labels.size and labels.max() > INT64.max:
            raise ValueError(f"label {labels.max()} does not fit in int64")
        array = labels.astype(np.int64)
    else:
        if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable):
            raise TypeError(f"labels must be a sequence of integers, not {type(labels).__name__}")
        items = list(labels)
        for position, label in enumerate(items):
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                raise TypeError(f"label {label!r} at position {position} is not an integer")
            if not INT64.min <= label <= INT64.max:
                raise ValueError(f"label {label} at position {position} does not fit in int64")
        array = np.array(items, dtype=np.int64).reshape(-1)
    if len(array) != count:
        raise ValueError(f"got {count} images but {len(array)} labels")
    return array


def little_endian(batch: np.ndarray) -> np.ndarray:
    """The batch as a C-contiguous little-endian array (a no-op for the usual input)."""
    return np.ascontiguousarray(batch, dtype=batch.dtype.newbyteorder("<"))


def stack_or_list(images: Iterator[np.ndarray], count: int) -> Batch:
    """Copy `count` images into one preallocated array, or a list once their shapes differ.

    The images may be views of memory that is only valid while the iterator runs.
    """
    first = next(images)
    out = np.empty((count, *first.shape), first.dtype)
    out[0] = first
    for position, image in enumerate(images, 1):
        if image.shape != first.shape or image.dtype != first.dtype:
            return [*(earlier.copy() for earlier in out[:position]), image.copy(), *(later.copy() for later in images)]
        out[position] = image
    return out


def read_buffer(shape: tuple[int, ...], dtype: np.dtype, file_offset: int = 0) -> np.ndarray:
    """An empty array placed in memory so that a read(2) from `file_offset` into it copies fast.

    The array is 16-byte aligned and starts `COPY_SKEW` bytes (mod a page) past the file offset.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE + 16, np.uint8)
    start = (file_offset + COPY_SKEW - raw.ctypes.data) % PAGE
    start += -(raw.ctypes.data + start) % 16
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def gather_runs(
    ids: np.ndarray,
    starts: np.ndarray,
    layouts: Sequence[tuple[tuple[int, ...], np.dtype]],
    read_run: Callable[[int, np.ndarray, np.ndarray], None],
    offsets: Sequence[int] | None = None,
) -> Batch:
    """Images at `ids` from uniform runs of images, run ``r`` holding ids ``starts[r]:starts[r+1]``.

    `layouts[r]` is run r's (image shape, dtype); ``read_run(r, local_ids, out)`` fills `out`
    with those images of run r. Ids read from one run in order land straight in the result,
    placed for a fast copy from ``offsets[r]``, the file offset of run r's first image, if given.
    """
    run_of = np.searchsorted(starts, ids, side="right") - 1
    order = np.argsort(run_of, kind="stable")
    touched, first = np.unique(run_of[order], return_index=True)
    uniform = len({layouts[run] for run in touched.tolist()}) == 1
    if uniform:
        shape, dtype = layouts[int(touched[0])]
        offset = 0
        if offsets is not None:
            run = int(run_of[0])
            offset = offsets[run] + int(ids[0] - starts[run]) * int(np.prod(shape)) * np.dtype(dtype).itemsize
        images: Batch = read_buffer((len(ids), *shape), dtype, offset)
    else:
        images = [None] * len(ids)
    for run, positions in zip(touched.tolist(), np.split(order, first[1:])):
        local = ids[positions] - starts[run]
        if uniform and is_consecutive(positions):
            read_run(run, local, images[positions[0] : positions[-1] + 1])
            continue
        shape, dtype = layouts[run]
        part = np.empty((len(local), *shape), dtype)
        read_run(run, local, part)
        if uniform:
            images[positions] = part
        else:
            for position, image in zip(positions.tolist(), part):
                images[position] = image
    return images


def is_consecutive(ids: np.ndarray) -> bool:
    """Whether non-empty `ids` count up by one (a range the backends read in one pass)."""
    return bool(ids[-1] - ids[0] == len(ids) - 1 and (len(ids) == 1 or (np.diff(ids) == 1).all()))


def allocated_bytes(path: Path) -> int:
    """Bytes the filesystem allocated for one file (its size where blocks are not reported)."""
    stat = path.stat()
    return stat.st_blocks * 512 if hasattr(stat, "st_blocks") else stat.st_size


def staging_path(path: Path) -> Path:
    """Where a new version of `path` is prepared before it replaces `path`."""
    return path.with_name(path.name + ".tmp")


def replace_atomically(path: Path, data: bytes, durable: bool) -> None:
    """Give `path` the content `data` so that a crash or a reader sees the old or the new file, never a mix."""
    staging = staging_path(path)
    staging.write_bytes(data)
    _swap_in(staging, path, durable)


@contextmanager
def staged_copy(path: Path, durable: bool) -> Iterator[Path]:
    """A copy of `path` to change; it replaces `path` atomically when the block succeeds, else it is removed.

    Readers that have `path` open keep reading the old version; a crash leaves the old version.
    """
    staging = staging_path(path)
    shutil.copyfile(path, staging)
    try:
        yield staging
        _swap_in(staging, path, durable)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _swap_in(staging: Path, path: Path, durable: bool) -> None:
    """Rename the finished `staging` over `path`: the file is complete on disk before its name is."""
    if durable:
        fsync_path(staging)
    os.replace(staging, path)
    if durable:
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush one file or directory to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_durable(files: Sequence[Path], directory: Path) -> None:
    """Flush new `files` and their `directory` entry to disk.

    On Linux one ``syncfs`` of the directory's filesystem does this for any number of files
    at the cost of a few fsyncs; elsewhere each file is flushed in turn.
    """
    if len(files) > 8 and _syncfs(directory):
        return
    for file in files:
        fsync_path(file)
    fsync_path(directory)


def _syncfs(directory: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        return libc.syncfs(descriptor) == 0
    finally:
        os.close(descriptor)
