"""The store interface every backend implements, its input checks, and where a store lives (local defaults)."""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar, Union

import numpy as np

from storage._durable import fsync_path, move_into_place, taking_turns
from storage._errors import DamagedStoreError, damage_reported
from storage._reading import Batch
from storage.codecs import CODECS, RAW, Codec
from storage.codecs import get as get_codec

Images = Union[np.ndarray, Sequence[np.ndarray], Sequence[Union[bytes, bytearray, memoryview]]]
Ids = Union[Sequence[int], slice, None]

FILE_TYPES = (bytes, bytearray, memoryview)  # what an encoded append takes as one image's file
INT64 = np.iinfo(np.int64)
WRITER_LOCK = "writer.lock"  # in a directory store; a single-file store's is beside it, named after it


@dataclass(frozen=True)
class Capabilities:
    """What a backend's stores are like: generic code asks these, never a backend's name."""

    directory: bool  # a local store is a directory of files (else one file)
    durability: str = "fsync"  # "fsync": the store's own code flushes files; "library": its library commits durably
    lock_files: tuple[str, ...] = ()  # files in the store that even a read-only open may write
    local: bool = True  # files on a local filesystem (else objects in an object store)
    checksummed: bool = False  # stored pixels carry a checksum, so a changed byte is reported, not returned
    fork_safe: bool = True  # a process forked after the library ran here can use it (else start workers by spawn)


@dataclass(frozen=True)
class Options:
    """A backend's keyword options: each backend subclasses this with its own fields, checked in __post_init__."""

    @property
    def codec(self) -> Codec:
        """How new images are encoded."""
        return RAW


@dataclass(frozen=True)
class EncodingOptions(Options):
    """`encoding`: how new images are held, a name from ``storage.codecs.CODECS`` ("raw" pixels by default)."""

    encoding: str = "raw"

    def __post_init__(self) -> None:
        get_codec(self.encoding)  # ValueError naming the known encodings

    @property
    def codec(self) -> Codec:
        return get_codec(self.encoding)


class EncodedRun(Sequence):
    """Files of images of one shape and dtype, which a store keeps as they are: what `_append` gets in place of a
    batch array for an encoded append. Like the array it has ``shape`` (n, H, W[, C]), as the files' headers give
    it, ``dtype`` and ``ndim``, and a slice of it is a run; its items are the files (bytes), which
    ``codec.encode`` returns unchanged, so a backend writes them where it would write what it encoded."""

    def __init__(self, files: list[bytes], image_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.files = files
        self.shape = (len(files), *image_shape)
        self.dtype = dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int | slice) -> bytes | EncodedRun:
        if isinstance(index, slice):
            return EncodedRun(self.files[index], self.shape[1:], self.dtype)
        return self.files[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.files)

    def __repr__(self) -> str:
        return f"<EncodedRun of {len(self)} files of {self.dtype} images of shape {self.shape[1:]}>"


class ReadersOrWriter:
    """Lets threads that share a store read at the same time, and an append run alone (it may reopen the store)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._writers = 0  # waiting or writing: new readers let them go first, so an append is never starved
        self._writing = False

    def start_reading(self) -> None:
        with self._changed:
            while self._writers:
                self._changed.wait()
            self._readers += 1

    def stop_reading(self) -> None:
        with self._changed:
            self._readers -= 1
            if not self._readers:
                self._changed.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        with self._changed:
            self._writers += 1
            while self._writing or self._readers:
                self._changed.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._changed:
                self._writers -= 1
                self._writing = False
                self._changed.notify_all()


class Store(ABC):
    """A store of labelled images; open one with :func:`storage.open`."""

    name: ClassVar[str]  # the backend's name in the registry
    capabilities: ClassVar[Capabilities]
    Options: ClassVar[type[Options]] = Options
    thread_turns: ClassVar[type] = ReadersOrWriter  # how threads sharing one store object take turns

    def __init__(
        self, location: Path, options: Options, *, writable: bool, create: bool, durable: bool, name: str | None = None
    ) -> None:
        """Open (or, with `create`, first create) the store at `location`; `name` is the name it was opened by."""
        self.location = location
        self.options = options
        self.codec = options.codec
        self.writable = writable
        self.durable = durable  # whether append flushes to disk (fsync) before it returns
        self.closed = False
        self.name = name or type(self).name  # a variant's name, or the backend's
        self._turns = self.thread_turns()  # threads sharing this object: reads together, an append alone
        self._swept = False  # whether this object's first append has deleted what killed writers left
        before = None if create else self._last_commit()  # taken first: a commit while opening is caught up later
        self._start(create)
        self._committed = self._last_commit() if create else before

    # --- where a store lives: local files by default --------------------------------

    @classmethod
    def locate(cls, location: str | os.PathLike) -> Path:
        """The location a user gave, resolved once: the store stays where it was opened after ``os.chdir``, and a
        symlink to a store leads to the store itself (the link stays a link)."""
        return Path(os.path.realpath(location))

    @classmethod
    def capabilities_for(cls, options: Options) -> Capabilities:
        """The capabilities of stores written and read with `options`: the class's, unless an option changes them."""
        return cls.capabilities

    @classmethod
    def writer_lock(cls, location: Path) -> Path | None:
        """The file an append locks, so that writers take turns; None where the format's library does that."""
        if cls.capabilities.directory:
            return location / WRITER_LOCK
        return location.with_name(location.name + ".lock")

    @classmethod
    def exists(cls, location: Path) -> bool:
        """Whether anything at all is at `location`."""
        return os.path.lexists(location)

    @classmethod
    @abstractmethod
    def is_store(cls, location: Path) -> bool:
        """Whether `location` holds a store of this backend."""

    @classmethod
    @abstractmethod
    def files(cls, location: Path) -> list[Path]:
        """Every file (or object) that belongs to the store at `location`."""

    @classmethod
    def is_free(cls, location: Path) -> bool:
        """Whether an existing `location` that holds no store may take a new one (an empty directory may)."""
        return cls.capabilities.directory and location.is_dir() and not any(location.iterdir())

    @classmethod
    def describe(cls, location: Path) -> str:
        """What is at an existing `location` that is no store of this backend, for error messages."""
        if location.is_dir():
            return "a directory that is no image store" if any(location.iterdir()) else "an empty directory"
        return "a file that is no image store"

    @classmethod
    def install(cls, location: Path, options: Options, *, durable: bool, name: str, replace: bool) -> None:
        """Create an empty store at `location`; with `replace`, in place of the store or empty directory there.

        The store is made at a hidden name beside `location` and moved into place in one step, under the writer
        lock of a store it replaces: an interrupted creation leaves the old store or the new one, never half of
        one (a kill can leave the hidden one behind), and a failed one leaves nothing.
        """
        if replace and cls.capabilities.directory:
            own = {location / file.relative_to(location).parts[0] for file in cls.files(location)}  # parts: dirs too
            own.add(cls.writer_lock(location))
            foreign = sorted(entry.name for entry in location.iterdir() if entry not in own)
            if foreign:
                raise ValueError(
                    f"{location} holds files that are not the store's ({', '.join(foreign[:3])}): "
                    "mode 'w' replaces the whole directory; move them out first"
                )
        new = location.with_name(f".{location.name}.new-{secrets.token_hex(6)}")
        try:
            with damage_reported(location, name):  # unflushed: one flush below, of exactly what is needed
                cls(new, options, writable=True, create=True, durable=False, name=name).close()
            if durable:  # the store's own files, not its lock files; the directory entry after the move
                locks = {cls.writer_lock(new), *(new / name for name in cls.capabilities.lock_files)}
                for file in [*cls.files(new), *([new] if cls.capabilities.directory else [])]:
                    if file not in locks:
                        fsync_path(file)
            with taking_turns(cls.writer_lock(location) if replace else None):
                old = move_into_place(new, location, replace, durable)
        except BaseException as error:
            cls._discard(new)
            if isinstance(error, OSError) and error.filename == str(new):  # name the place the user gave
                raise type(error)(error.errno, error.strerror, str(location)) from error
            raise
        if not cls.capabilities.directory and cls.writer_lock(new) is not None:
            cls.writer_lock(new).unlink(missing_ok=True)
        if old is not None:
            cls._discard(old)

    @classmethod
    def _discard(cls, hidden: Path) -> None:
        """Delete a store at a hidden name that `install` chose: all of it, as far as the disk lets."""
        if hidden.is_dir() and not hidden.is_symlink():
            shutil.rmtree(hidden, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                cls.remove(hidden)

    @classmethod
    def remove(cls, location: Path) -> None:
        """Delete the store at `location`, and nothing else."""
        for file in cls.files(location):
            file.unlink()
        lock = cls.writer_lock(location)
        if lock is not None:
            lock.unlink(missing_ok=True)
        if cls.capabilities.directory:
            with contextlib.suppress(OSError):  # the directory holds something else too: keep it and that
                location.rmdir()

    def disk_usage(self) -> int:
        """Bytes allocated on disk by all files of the store."""
        return sum(allocated_bytes(file) for file in self.files(self.location))

    @property
    def path(self) -> Path:
        """The store's location (a path, for the local backends)."""
        return self.location

    # --- what a backend provides ---------------------------------------------------

    @abstractmethod
    def _start(self, create: bool) -> None:
        """Create an empty store first if `create`; then open it (ValueError if it is some other format)."""

    def _commit_file(self) -> Path | None:
        """The file that every append replaces with a new one, so a writer can tell whether others committed since
        it last looked; None: always catch up before an append."""
        return None

    def _last_commit(self) -> tuple[int, ...] | None:
        """What identifies the last commit: the commit file's inode, size and change time."""
        commit = self._commit_file()
        if commit is None:
            return None
        try:
            stat = os.stat(commit)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _sweep(self) -> None:
        """Delete what writers killed midway left behind (staging copies). Called in turn, at an object's first
        append: a writer holding the lock knows that no other writer is using them."""
        return  # a backend whose library commits in place leaves nothing to sweep

    def _refresh(self) -> None:
        """Catch up with appends that other writers committed since this store last looked (called in turn)."""
        latest = self._last_commit()
        if latest is None or latest != self._committed:
            self._close()
            self._start(create=False)

    @abstractmethod
    def _count(self) -> int: ...

    @abstractmethod
    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        """Store uniform batches (each (n, H, W[, C]), little-endian, C-contiguous) durably. After an encoded append
        each batch is an `EncodedRun` of checked files, whose ``codec.encode`` is the file itself."""

    @abstractmethod
    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        """Images and labels of valid ids, in the given order."""

    @abstractmethod
    def _close(self) -> None: ...

    # --- the public interface ----------------------------------------------------

    @property
    def holds(self) -> str:
        """The images this store accepts, in words."""
        return self.codec.holds

    @property
    def lossless(self) -> bool:
        """Whether images come back bit-exact (else within ``codec.min_psnr``)."""
        return self.codec.lossless

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        """Whether one image of this dtype and shape (H, W[, C]) can be stored."""
        return self.codec.accepts(dtype, shape)

    def __len__(self) -> int:
        self._check_open()
        self._turns.start_reading()
        try:
            return self._count()
        finally:
            self._turns.stop_reading()

    def __getitem__(self, image_id: int) -> tuple[np.ndarray, int]:
        images, labels = self.read([image_id])
        return images[0], int(labels[0])

    def read(self, ids: Ids = None) -> tuple[Batch, np.ndarray]:
        """Images and int64 labels of `ids` (a sequence of ints, a slice, or None for all).

        Images come as one array when the selection is non-empty and shares one shape and
        dtype, otherwise as a list of arrays.
        """
        self._check_open()
        self._turns.start_reading()
        try:
            selected = self._ids(ids)
            if len(selected) == 0:
                return [], np.empty(0, np.int64)
            with damage_reported(self.location, self.name):
                return self._read(selected)
        finally:
            self._turns.stop_reading()

    def append(self, images: Images, labels: Sequence[int], *, encoded: bool = False) -> None:
        """Add images with their labels; ids continue from ``len(store)``.

        With ``encoded=True``, `images` are encoded files (bytes, bytearray or memoryview), one per image, in the
        format of the store's codec (PNG for a "png" encoding, JPEG for "jpeg"). Each is kept byte for byte as its
        image's record, never decoded and encoded again, and reads give what the codec decodes from it. A file's
        header must give a shape and dtype that the codec holds, and the file must decode: each is decoded once to
        check it, so an encoded append costs one decode per image. A store of raw pixels takes no files.

        Everything is checked before anything is written, and the images are durable on
        disk when this returns (unless the store was opened with ``durable=False``).
        """
        self._check_open()
        if not isinstance(encoded, bool):
            raise TypeError(f"encoded must be True or False, got {encoded!r}")
        if not self.writable:
            raise io.UnsupportedOperation(
                f"{self.location} is open read-only (mode 'r'); open it with mode 'a' to append"
            )
        batches = self._encoded_runs(images) if encoded else self._batches(images)
        count = sum(len(b) for b in batches)
        label_array = as_labels(labels, count)
        if count:
            with (
                self._turns.writing(),
                taking_turns(self.writer_lock(self.location)),
                damage_reported(self.location, self.name),
            ):
                if not self._swept:
                    self._sweep()
                    self._swept = True
                self._refresh()
                self._append(batches, label_array)
                self._committed = self._last_commit()

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
        return f"<{self.name} store {str(self.location)!r} ({state})>"

    # --- shared checks -----------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"the {self.name} store {self.location} is closed")

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
        if selected.dtype == object and selected.ndim == 1:  # Python ints beyond int64 are no id of any store
            for image_id in selected.tolist():
                if isinstance(image_id, int) and not isinstance(image_id, bool) and not 0 <= image_id < count:
                    raise KeyError(image_id)
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
        if isinstance(images, memoryview):  # a buffer of a whole batch
            images = np.asarray(images)
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

    def _encoded_runs(self, files: Sequence[bytes | bytearray | memoryview]) -> list[EncodedRun]:
        """Split encoded `files` into runs of one shape and dtype, checking every file first: its header, then a
        decode. A bytearray or memoryview is copied to bytes, so that what was checked is what is written."""
        if self.codec is RAW:
            raise ValueError(self._takes_no_files())
        if isinstance(files, (str, *FILE_TYPES, np.ndarray)) or not isinstance(files, Iterable):
            raise TypeError(
                f"encoded images must be a sequence of files (bytes), one per image, not {type(files).__name__}"
            )
        checked = []
        for position, file in enumerate(files):
            if not isinstance(file, FILE_TYPES):
                kind = type(file).__name__
                raise TypeError(
                    f"image {position} must be an encoded file (bytes, bytearray or memoryview), not {kind}"
                )
            data = bytes(file)
            try:
                shape, dtype = self.codec.file_layout(data)
                self.codec.decode(data, shape, dtype)
            except ValueError as error:  # DamagedStoreError too: the decoder's complaint about this file
                what = "does not decode" if isinstance(error, DamagedStoreError) else "is refused"
                raise ValueError(f"the file of image {position} {what} as {self.codec.name}: {error}") from None
            checked.append((data, shape, dtype))
        runs: list[EncodedRun] = []
        for data, shape, dtype in checked:
            if runs and (runs[-1].shape[1:], runs[-1].dtype) == (shape, dtype):
                runs[-1].files.append(data)
                runs[-1].shape = (len(runs[-1].files), *shape)
            else:
                runs.append(EncodedRun([data], shape, dtype))
        return runs

    def _takes_no_files(self) -> str:
        """Why a store of raw pixels refuses an encoded append, and which stores take files."""
        from storage import VARIANTS  # imported here: storage imports this module

        family = type(self).name
        encodings = [name for name in CODECS if name != RAW.name]
        takes = f"encoding={' or '.join(map(repr, encodings))}"
        if any(field.name == "encoding" for field in fields(self.Options)):
            variants = [name for name, (base, options) in VARIANTS.items() if base == family]
            takers = [name for name in variants if VARIANTS[name][1].get("encoding") in encodings]
            how = f"open it with {takes}" + (f" (the {', '.join(takers)} variants)" if takers else "")
        else:
            how = f"the {family} backend has no encoding option (the png and jpeg backends, and others with {takes})"
        return f"the {self.name} store holds raw pixels, so it cannot keep encoded files as they are: {how}"

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


def allocated_bytes(path: Path) -> int:
    """Bytes the filesystem allocated for one file (its size where blocks are not reported)."""
    stat = path.stat()
    return stat.st_blocks * 512 if hasattr(stat, "st_blocks") else stat.st_size
