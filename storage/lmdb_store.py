"""LMDB: one record per image, a fixed binary header (dtype, shape, encoding, label) and the pixels.

Keys are ``b"i"`` and the big-endian id, so key order is id order (after the format key)
and a cursor reads a range in one pass. The memory map grows before (and, if needed, during)
an append, so a store created with a tiny ``map_size`` never fails with ``MapFullError``.

``encoding`` says how new records hold their pixels: ``"raw"`` bytes (the default), a PNG
file (``"png"``: smaller records, a decode per read), a JPEG file (``"jpeg"``: lossy, needs
simplejpeg), or ``"pickle"``: the header and raw pixels as a pickled tuple, the layout
tutorials teach. Pickled records are read by checking them byte for byte against the frame
this module writes and taking the two byte strings out of it (the frame's layout comes from
``pickletools.genops``, which parses without executing); stored data is never unpickled.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import pickletools
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain, islice
from pathlib import Path

import lmdb
import numpy as np

from storage import codecs
from storage._base import Capabilities, Options, Store
from storage._durable import NO_FOLLOW
from storage._errors import DamagedStoreError
from storage._reading import Batch, is_consecutive, stack_or_list
from storage.codecs import NUMERIC_KINDS

HEADER = struct.Struct("<4sBB2x3Iq")  # dtype code, ndim, encoding, padding, shape (unused dims 0), label
LAYOUT_BYTES = HEADER.size - 8  # everything before the label: equal for images of one layout and encoding
ENCODINGS = ("raw", "png", "pickle", "jpeg")  # the header's encoding byte is the position here
RAW, PNG, PICKLE, JPEG = range(4)
RECORD_CODECS = ("raw", "png", "raw", "jpeg")  # a pickle frame holds raw pixels; jpeg is there with simplejpeg
PICKLE_PROTOCOL = 5
PICKLE_START = b"\x80\x05"  # a record that starts so is a pickle frame; other records start with a dtype code
KEY = struct.Struct(">cQ")  # b"i", id
FORMAT_KEY, FORMAT = b"format", b"imagestore-lmdb-1"  # sorts before every id key
MIB = 1 << 20
MIN_MAP_SIZE = 1 << 16  # LMDB needs a few pages to create a store; a smaller map_size starts from this
LOCK_BYTES = 125 * 64 + 192  # LMDB's lock file for its default 126 readers: 64-byte slots after the first, a header


@lru_cache(maxsize=64)
def _layout(code: bytes, ndim: int, dims: tuple[int, int, int]) -> tuple[np.dtype, tuple[int, ...], int]:
    """dtype, shape and pixel bytes a header describes; ValueError for a header no writer makes."""
    try:
        dtype = np.dtype(code.rstrip(b"\0").decode("ascii"))
    except (TypeError, UnicodeDecodeError) as error:
        raise DamagedStoreError(f"lmdb record has an unknown dtype code {code!r}") from error
    if dtype.kind not in NUMERIC_KINDS or ndim not in (2, 3):
        raise DamagedStoreError(f"lmdb record header describes a {dtype} image with {ndim} dimensions")
    shape = dims[:ndim]
    return dtype, shape, math.prod(shape) * dtype.itemsize


@dataclass(frozen=True)
class LmdbOptions(Options):
    """`map_size`: the initial size of the memory map in bytes (it grows as needed); `encoding`: how new records
    hold pixels, "raw", "png", "jpeg" or "pickle" (any store reads them all)."""

    map_size: int = MIB
    encoding: str = "raw"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; got {self.encoding!r}")
        if self.encoding != "pickle":
            codecs.get(self.encoding)  # ValueError for jpeg where simplejpeg is missing
        if not (isinstance(self.map_size, int) and self.map_size > 0):
            raise ValueError(f"map_size must be a positive int, got {self.map_size!r}")

    @property
    def codec(self) -> codecs.Codec:
        return codecs.RAW if self.encoding == "pickle" else codecs.get(self.encoding)


class LmdbStore(Store):
    name = "lmdb"
    capabilities = Capabilities(directory=True, durability="library", lock_files=("lock.mdb",))
    Options = LmdbOptions

    def _start(self, create: bool) -> None:
        self.encoding = ENCODINGS.index(self.options.encoding)
        _check_own(self.location)
        if not create:
            _check_length(self.location / "data.mdb")
        _allocate_lock_file(self.location, create)
        self._env = _open_env(
            self.location,
            map_size=max(self.options.map_size, MIN_MAP_SIZE),
            readonly=not self.writable,
            create=create,
            meminit=False,
            sync=self.durable,
            metasync=self.durable,
        )
        if create:
            with self._env.begin(write=True) as txn:
                txn.put(FORMAT_KEY, FORMAT)
        with self._begin() as txn:
            found = txn.get(FORMAT_KEY)
            self._length = txn.stat()["entries"] - 1
        if found != FORMAT:
            self._env.close()
            raise ValueError(f"{self.location} is an LMDB environment that is no image store")

    @classmethod
    def is_store(cls, location: Path) -> bool:
        if not (location / "data.mdb").is_file():
            return False
        try:
            _check_own(location)
            _check_length(location / "data.mdb")
            env = _open_env(location, readonly=True, lock=False, create=False)
        except (lmdb.Error, DamagedStoreError):  # not LMDB, or damaged beyond opening
            return False
        try:
            with env.begin() as txn:
                return txn.get(FORMAT_KEY) == FORMAT
        except lmdb.Error:  # damaged where the format key should be
            return False
        finally:
            env.close()

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        return [file for file in (location / "data.mdb", location / "lock.mdb") if file.exists()]

    def _count(self) -> int:
        return self._length

    def _records(self, batches: list[np.ndarray], labels: np.ndarray):
        image_id = self._length
        for batch in batches:
            code = batch.dtype.str.encode("ascii")
            dims = (*batch.shape[1:], 0, 0)[:3]
            for image in batch:
                header = HEADER.pack(code, batch.ndim - 1, self.encoding, *dims, labels[image_id - self._length])
                if self.encoding == PICKLE:
                    value = pickle.dumps((header, image.tobytes()), protocol=PICKLE_PROTOCOL)
                else:
                    value = header + self.codec.encode(image)
                yield KEY.pack(b"i", image_id), value
                image_id += 1

    def _reserve(self, batches: list[np.ndarray]) -> None:
        """Grow the map ahead of an append so that it fits (an estimate; `_append` retries)."""
        page = self._env.stat()["psize"]
        info = self._env.info()
        needed = (info["last_pgno"] + 2) * page
        for batch in batches:
            extra = 700 if self.encoding == JPEG else 80  # a JPEG's markers and tables take about 630 bytes
            pixels = math.prod(batch.shape[1:]) * batch.dtype.itemsize  # from the shape: files of an encoded run too
            record = HEADER.size + pixels + KEY.size + extra  # room for a pickle frame or PNG chunks
            needed += len(batch) * (math.ceil(record / page) * page if record > page // 2 else 2 * record)
        if needed > info["map_size"]:
            self._env.set_mapsize(math.ceil(needed * 1.5 / MIB) * MIB)

    @classmethod
    def writer_lock(cls, location: Path) -> None:
        return None  # LMDB's own lock lets one write transaction in at a time

    def _refresh(self) -> None:
        pass  # the append counts the records inside its write transaction

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        self._reserve(batches)
        while True:
            try:
                txn = self._begin(write=True)  # adopts a map that another process grew
                with txn:  # commits (with fsync) or aborts as one
                    self._length = txn.stat()["entries"] - 1  # another writer may have appended since
                    _, added = txn.cursor().putmulti(self._records(batches, labels), append=True)
                    if added != len(labels):
                        raise RuntimeError(f"lmdb stored {added} of {len(labels)} records")
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(2 * self._env.info()["map_size"])
            except lmdb.Error as error:
                if "Input/output error" in str(error) and _disk_full(self.location):
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (LMDB: {error})") from error
                raise
        self._length += len(labels)

    def _begin(self, **options: bool) -> lmdb.Transaction:
        """A transaction, after adopting a map that another process has grown; only where no other thread of
        this process can hold a transaction (opening, or an append's turn): LMDB resizes a map only then."""
        try:
            return self._env.begin(**options)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self._env.begin(**options)

    def _read_transaction(self) -> lmdb.Transaction:
        """A read transaction; to adopt a map that another process grew, a reading thread waits for a turn alone."""
        while True:
            try:
                return self._env.begin(buffers=True)
            except lmdb.MapResizedError:
                self._turns.stop_reading()
                try:
                    with self._turns.writing():
                        self._env.set_mapsize(0)
                finally:
                    self._turns.start_reading()

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        with self._read_transaction() as txn:  # values are views of the map, valid in the transaction
            return _decode_uniform(_values(txn, ids), len(ids)) or _decode_each(list(_values(txn, ids)))

    def _close(self) -> None:
        self._env.close()


# LMDB's meta page (lmdb/mdb.c, MDB_meta after the 16-byte page header, 64-bit build): magic,
# version, then the free-page DB record, whose first field holds the page size; the last used
# page number and the transaction id follow both DB records.
META = struct.Struct("<II16xI44x48xQQ")
META_MAGIC = 0xBEEFC0DE


def _check_length(data_file: Path) -> None:
    """DamagedStoreError if `data_file` is shorter than its newest meta page says.

    LMDB maps the file and trusts it: touching a page past the end of a truncated file kills the
    process with SIGBUS, and py-lmdb touches the root page while opening.
    """
    with data_file.open("rb") as file:
        first = file.read(16 + META.size)
        if len(first) < 16 + META.size:
            raise DamagedStoreError(f"{data_file} is too short to be an LMDB file")
        magic, _, page_size, last_page, txn_id = META.unpack_from(first, 16)
        newest = [(txn_id, last_page)] if magic == META_MAGIC else []
        if 16 + META.size <= page_size <= 1 << 16:
            file.seek(page_size)
            second = file.read(16 + META.size)
            if len(second) == 16 + META.size:
                magic, _, _, other_last_page, other_txn_id = META.unpack_from(second, 16)
                newest += [(other_txn_id, other_last_page)] if magic == META_MAGIC else []
    if not newest:
        raise DamagedStoreError(f"{data_file} has no valid LMDB meta page")
    needed = (max(newest)[1] + 1) * page_size
    if data_file.stat().st_size < needed:
        raise DamagedStoreError(f"{data_file} is {data_file.stat().st_size} bytes; its meta page lists {needed}")


def _check_own(location: Path) -> None:
    """DamagedStoreError if LMDB's files are symlinks, which LMDB would read and write through (lock.mdb even when
    read-only), or FIFOs or devices, which it would wait on or read without end."""
    for name in ("data.mdb", "lock.mdb"):
        try:
            mode = os.lstat(location / name).st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            raise DamagedStoreError(f"{location / name} is a symlink; a store's files are its own")
        if not stat.S_ISREG(mode):
            raise DamagedStoreError(f"{location / name} is not a regular file")


def _disk_full(location: Path) -> bool:
    """Whether the disk holding `location` is full: LMDB reports a write cut short by it as EIO."""
    return hasattr(os, "statvfs") and os.statvfs(location).f_bavail == 0


def _allocated(lock: Path) -> bool:
    try:
        found = os.stat(lock, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return found.st_size >= LOCK_BYTES and getattr(found, "st_blocks", 0) * 512 >= LOCK_BYTES


def _allocate_lock_file(location: Path, create: bool) -> None:
    """Give lock.mdb its disk blocks before LMDB maps it. LMDB sizes the file with ftruncate and writes to the map:
    on a full disk that kills the process with SIGBUS, where this raises ENOSPC. On read-only media nothing is
    done, and LMDB reads without a lock file (no writer can be there)."""
    if create:
        location.mkdir(exist_ok=True)
    elif _allocated(location / "lock.mdb"):
        return  # what stores of this module always have: nothing to do, one stat spent
    try:
        descriptor = os.open(location / "lock.mdb", os.O_RDWR | os.O_CREAT | NO_FOLLOW, 0o644)
    except OSError as error:
        if error.errno == errno.EROFS:
            return  # LMDB decides: a reader goes on without the lock file, a writer gets the error
        raise  # PermissionError where lock.mdb may not be written: LMDB's readers write to it
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(descriptor, 0, LOCK_BYTES)
    finally:
        os.close(descriptor)


def _open_env(path: Path, **options: object) -> lmdb.Environment:
    """lmdb.open, with py-lmdb's one-handle-per-process rule reported as the usage error it is."""
    try:
        return lmdb.open(str(path), **options)
    except lmdb.Error as error:
        if "already open" in str(error):  # py-lmdb has no error class of its own for this
            raise ValueError(f"{path} is already open in this process; py-lmdb allows one handle per store") from error
        raise


def _header(value) -> tuple[bytes, int, int, tuple[int, int, int], int]:
    code, ndim, encoding, *dims, label = HEADER.unpack_from(value)
    return code, ndim, encoding, tuple(dims), label


@lru_cache(maxsize=64)
def _pickle_frame(pixel_bytes: int) -> tuple[bytes, slice, slice]:
    """The pickled record this module writes for `pixel_bytes` of pixels, and where its header and pixels lie."""
    frame = pickle.dumps((bytes(HEADER.size), bytes(pixel_bytes)), protocol=PICKLE_PROTOCOL)
    operations = list(pickletools.genops(frame))
    spans = [
        slice(following[2] - len(argument), following[2])
        for (opcode, argument, _), following in zip(operations, operations[1:])
        if opcode.name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8")
    ]
    return frame, spans[0], spans[1]


HEADER_IN_PICKLE = _pickle_frame(0)[1]  # at the same place whatever the size of the pixels


def _split(value) -> tuple[tuple[bytes, int, int, tuple[int, int, int], int], memoryview]:
    """The header fields and the pixel bytes of a record of any encoding; DamagedStoreError for a foreign one."""
    if value[: len(PICKLE_START)] != PICKLE_START:
        fields = _header(value)
        if fields[2] not in (RAW, PNG, JPEG):
            raise DamagedStoreError(f"lmdb record with encoding byte {fields[2]} outside a pickle frame")
        return fields, value[HEADER.size :]
    foreign = DamagedStoreError("lmdb record is a pickle frame this store did not write")
    try:
        fields = _header(value[HEADER_IN_PICKLE])
        pixel_bytes = _layout(fields[0], fields[1], fields[3])[2]
    except (struct.error, DamagedStoreError):
        raise foreign from None
    if fields[2] != PICKLE or len(value) < pixel_bytes:  # checked before a frame of that size is made
        raise foreign
    frame, header, pixels = _pickle_frame(pixel_bytes)
    framing = ((0, header.start), (header.stop, pixels.start), (pixels.stop, len(frame)))
    if len(value) != len(frame) or any(value[start:stop] != frame[start:stop] for start, stop in framing):
        raise foreign
    return fields, value[pixels]


def _values(txn: lmdb.Transaction, ids: np.ndarray) -> Iterator:
    """The records of `ids` in order, one at a time (a cursor pass for a range of ids); DamagedStoreError once a
    record is found missing (a damaged count of records can list more than there are)."""
    if is_consecutive(ids):
        cursor = txn.cursor()
        first, last = KEY.pack(b"i", int(ids[0])), KEY.pack(b"i", int(ids[-1]))
        if not cursor.set_key(first):
            raise DamagedStoreError(f"the lmdb store lacks the record of id {int(ids[0])}")
        return chain(islice(cursor.iternext(keys=False, values=True), len(ids)), _ended_at(cursor, last))
    return (_get(txn, image_id) for image_id in ids.tolist())


def _ended_at(cursor: lmdb.Cursor, last: bytes) -> Iterator:
    """Nothing, once the cursor has passed the records of a range: DamagedStoreError unless it ends at `last`."""
    if cursor.key() != last:
        raise DamagedStoreError(f"the lmdb store lacks records up to id {KEY.unpack(last)[1]}")
    yield from ()


def _get(txn: lmdb.Transaction, image_id: int) -> memoryview:
    value = txn.get(KEY.pack(b"i", image_id))
    if value is None:
        raise DamagedStoreError(f"the lmdb store lacks the record of id {image_id}")
    return value


def _decode_uniform(values: Iterator, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Images and labels of `count` records that share one layout, copied into two arrays; else None.

    Each record is copied as it comes, so no list of `count` views builds up (that would
    trigger the garbage collector over and over: 3x slower at 100,000 records).
    """
    first = next(values)
    if first[: len(PICKLE_START)] == PICKLE_START or _header(first)[2] != RAW:
        return None
    code, ndim, _, dims, _ = _header(first)
    dtype, shape, nbytes = _layout(code, ndim, dims)
    if len(first) != HEADER.size + nbytes:  # checked before allocating: the header may be forged
        return None
    headers = np.empty((count, HEADER.size), np.uint8)
    images = np.empty((count, *shape), dtype)
    header_bytes, pixel_bytes = memoryview(headers.reshape(-1)), memoryview(images.reshape(-1).view(np.uint8))
    size, header_size = HEADER.size + nbytes, HEADER.size
    header_at = pixels_at = 0
    for value in chain([first], values):
        if len(value) != size:
            return None
        header_end, pixels_end = header_at + header_size, pixels_at + nbytes
        header_bytes[header_at:header_end] = value[:header_size]
        pixel_bytes[pixels_at:pixels_end] = value[header_size:]
        header_at, pixels_at = header_end, pixels_end
    if (headers[:, :LAYOUT_BYTES] != headers[0, :LAYOUT_BYTES]).any():
        return None
    return images, headers[:, LAYOUT_BYTES:].copy().view("<i8").reshape(-1).astype(np.int64)


def _decode_each(values: list) -> tuple[Batch, np.ndarray]:
    """Images and labels of records of any layouts, one by one."""
    labels = np.empty(len(values), np.int64)

    def images():
        for position, value in enumerate(values):
            (code, ndim, encoding, dims, labels[position]), pixels = _split(value)
            dtype, shape, _ = _layout(code, ndim, dims)
            yield codecs.get(RECORD_CODECS[encoding]).decode(pixels, shape, dtype)

    return stack_or_list(images(), len(values)), labels
