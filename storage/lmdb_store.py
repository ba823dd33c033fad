"""LMDB: one record per image, a fixed binary header (dtype, shape, label) and the raw pixels.

Keys are ``b"i"`` and the big-endian id, so key order is id order (after the format key)
and a cursor reads a range in one pass.
Nothing is pickled. The memory map grows before (and, if needed, during) an append, so a
store created with a tiny ``map_size`` never fails with ``MapFullError``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from functools import lru_cache
from itertools import chain, islice
from pathlib import Path

import lmdb
import numpy as np

from storage._base import NUMERIC_KINDS, Batch, DamagedStoreError, Store, is_consecutive, stack_or_list

HEADER = struct.Struct("<4sB3x3Iq")  # dtype code, ndim, padding, shape (unused dims 0), label
LAYOUT_BYTES = HEADER.size - 8  # everything before the label: equal for images of one dtype and shape
KEY = struct.Struct(">cQ")  # b"i", id
FORMAT_KEY, FORMAT = b"format", b"imagestore-lmdb-1"  # sorts before every id key
MIB = 1 << 20


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


class LmdbStore(Store):
    name = "lmdb"
    is_directory = True

    def __init__(self, path: Path, writable: bool, create: bool, *, map_size: int = MIB, durable: bool = True) -> None:
        """`map_size`: the initial size of the memory map in bytes; it grows as needed.
        `durable`: flush each append's transaction to disk (fsync) before it returns."""
        super().__init__(path, writable, durable)
        if not create:
            _check_length(path / "data.mdb")
        self._env = _open_env(
            path, map_size=map_size, readonly=not writable, create=create, meminit=False, sync=durable, metasync=durable
        )
        if create:
            with self._env.begin(write=True) as txn:
                txn.put(FORMAT_KEY, FORMAT)
        with self._begin() as txn:
            found = txn.get(FORMAT_KEY)
            self._length = txn.stat()["entries"] - 1
        if found != FORMAT:
            self._env.close()
            raise ValueError(f"{path} is an LMDB environment that is no image store")

    @classmethod
    def is_store(cls, path: Path) -> bool:
        if not (path / "data.mdb").is_file():
            return False
        try:
            _check_length(path / "data.mdb")
            env = _open_env(path, readonly=True, lock=False, create=False)
        except (lmdb.Error, DamagedStoreError):  # not LMDB, or damaged beyond opening
            return False
        try:
            with env.begin() as txn:
                return txn.get(FORMAT_KEY) == FORMAT
        finally:
            env.close()

    @classmethod
    def files(cls, path: Path) -> list[Path]:
        return [file for file in (path / "data.mdb", path / "lock.mdb") if file.exists()]

    def _count(self) -> int:
        return self._length

    def _records(self, batches: list[np.ndarray], labels: np.ndarray):
        image_id = self._length
        for batch in batches:
            code = batch.dtype.str.encode("ascii")
            dims = (*batch.shape[1:], 0, 0)[:3]
            for image in batch:
                header = HEADER.pack(code, batch.ndim - 1, *dims, labels[image_id - self._length])
                yield KEY.pack(b"i", image_id), header + image.tobytes()
                image_id += 1

    def _reserve(self, batches: list[np.ndarray]) -> None:
        """Grow the map ahead of an append so that it fits (an estimate; `_append` retries)."""
        page = self._env.stat()["psize"]
        info = self._env.info()
        needed = (info["last_pgno"] + 2) * page
        for batch in batches:
            record = HEADER.size + batch[0].nbytes + KEY.size + 16
            needed += len(batch) * (math.ceil(record / page) * page if record > page // 2 else 2 * record)
        if needed > info["map_size"]:
            self._env.set_mapsize(math.ceil(needed * 1.5 / MIB) * MIB)

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        self._reserve(batches)
        while True:
            try:
                with self._env.begin(write=True) as txn:  # commits (with fsync) or aborts as one
                    _, added = txn.cursor().putmulti(self._records(batches, labels), append=True)
                    if added != len(labels):
                        raise RuntimeError(f"lmdb stored {added} of {len(labels)} records")
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(2 * self._env.info()["map_size"])
        self._length += len(labels)

    def _begin(self, **options: bool) -> lmdb.Transaction:
        """A read transaction, after adopting a map that another process has grown."""
        try:
            return self._env.begin(**options)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self._env.begin(**options)

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        with self._begin(buffers=True) as txn:  # values are views of the map, valid in the transaction
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


def _open_env(path: Path, **options: object) -> lmdb.Environment:
    """lmdb.open, with py-lmdb's one-handle-per-process rule reported as the usage error it is."""
    try:
        return lmdb.open(str(path), **options)
    except lmdb.Error as error:
        if "already open" in str(error):  # py-lmdb has no error class of its own for this
            raise ValueError(f"{path} is already open in this process; py-lmdb allows one handle per store") from error
        raise


def _header(value) -> tuple[bytes, int, tuple[int, int, int], int]:
    code, ndim, *dims, label = HEADER.unpack_from(value)
    return code, ndim, tuple(dims), label


def _values(txn: lmdb.Transaction, ids: np.ndarray) -> Iterator:
    """The records of `ids` in order, one at a time (a cursor pass for a range of ids)."""
    if is_consecutive(ids):
        cursor = txn.cursor()
        cursor.set_key(KEY.pack(b"i", int(ids[0])))
        return islice(cursor.iternext(keys=False, values=True), len(ids))
    return (txn.get(KEY.pack(b"i", image_id)) for image_id in ids.tolist())


def _decode_uniform(values: Iterator, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Images and labels of `count` records that share one layout, copied into two arrays; else None.

    Each record is copied as it comes, so no list of `count` views builds up (that would
    trigger the garbage collector over and over: 3x slower at 100,000 records).
    """
    first = next(values)
    dtype, shape, nbytes = _layout(*_header(first)[:3])
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
            code, ndim, dims, labels[position] = _header(value)
            dtype, shape, nbytes = _layout(code, ndim, dims)
            if len(value) != HEADER.size + nbytes:
                raise DamagedStoreError(f"lmdb record of {len(value)} bytes; its header says {HEADER.size + nbytes}")
            yield np.frombuffer(value, dtype, offset=HEADER.size).reshape(shape)

    return stack_or_list(images(), len(values)), labels
