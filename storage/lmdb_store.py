"""LMDB: each image's value is its pixels alone (or its PNG or JPEG file); a run record per uniform block of an
append holds the layout and the labels.

Layout (``format`` = ``imagestore-lmdb-2``); keys are a prefix and a big-endian id, so key order is id order:

- ``b"R"`` + the id of a run's first image: `RUN` (dtype code, number of dimensions, encoding, shape, images,
  images per value), then the run's labels as int64. A run is the images of one shape and dtype of one append.
- ``b"i"`` + id: the image's pixels as they are in memory, or its PNG or JPEG file, and nothing else. With
  ``pack_bytes`` (the ``lmdb-packed`` variant: 1 MiB) a raw run puts several images in one value, as streaming
  loaders put them in shards: the value at the key of id ``start + k * per`` holds the `per` images from there.

``b"R"`` sorts before ``b"format"`` and ``b"i"``, so image records go at the end of the tree (MDB_APPEND, no
search per record). Each append is one write transaction, committed with LMDB's own fsync (``sync`` and
``metasync`` follow ``durable``): the commit point. A store reads its run records, and so all labels, as it
opens; an append reads those other processes committed since inside its write transaction and starts after them.
A read of consecutive ids copies each value once, straight into the preallocated result: one memoryview slice
assignment per value, no header to split off, no list of views (100,000 of them keep the garbage collector busy).

``encoding``: ``"raw"`` (the default), ``"png"``, ``"jpeg"`` (lossy, needs simplejpeg), or ``"pickle"``, the
layout tutorials teach: each value is ``pickle.dumps((header, pixels))`` with the first format's `HEADER` (label
included). It is read by checking it byte for byte against the frame this module writes (laid out by
``pickletools.genops``, which parses without executing) and taking the pixels from their place; the header must
be the run's layout and the image's label. Stored data is never unpickled.

The map grows before an append to what it may need (an estimate; on ``MapFullError`` the transaction runs again
with a map twice the size), so a tiny ``map_size`` never fails. No ``writemap``: it made durable appends 4% faster
at 10,000 x 32x32x3 and 32% at 1,000 x 256x256x3 (medians of 7, alternated, 2026-11-22), but a write through a
shared map to a page without disk blocks is a SIGBUS on a full disk; allocating blocks ahead and handing back the
unused ones, under a lock of its own (LMDB sizes the file as it maps it), took about 150 lines.

Stores of the first format (``imagestore-lmdb-1``: per image, a `HEADER` with dtype, shape, encoding and label,
then the pixels or file, or a pickle frame of both) stay readable, one record at a time, and appends to them keep
that layout (unpacked). ``new_format`` is the format new stores get.

Damage: ``data.mdb`` is checked against its meta page before LMDB maps it (`_check_length`). A run record's size
must match its count, runs must follow one another, and the pixels of all runs must fit in the committed pages
(raw) or what those can expand to (encoded): a forged count or shape is DamagedStoreError before anything is
allocated. Each value's length is checked as it is copied, and a range must end at the key it should, so a
missing record is damage, not a shifted read.
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
from functools import lru_cache, partial
from itertools import chain, islice
from pathlib import Path
from typing import ClassVar

import lmdb
import numpy as np

from storage import codecs
from storage._base import Capabilities, Options, Store
from storage._durable import NO_FOLLOW
from storage._errors import DamagedStoreError
from storage._reading import PAGE, Batch, gather_runs, is_consecutive, stack_or_list
from storage.codecs import MAX_EXPANSION, NUMERIC_KINDS

RUN = struct.Struct("<4sBB2x3IQQ")  # dtype code, ndim, encoding, padding, shape (unused dims 0), images, per value
HEADER = struct.Struct("<4sBB2x3Iq")  # a first-format record's, and a pickle frame's: ... shape, label
ENCODINGS = ("raw", "png", "pickle", "jpeg")  # the encoding byte is the position here
RAW, PNG, PICKLE, JPEG = range(4)
RECORD_CODECS = ("raw", "png", "raw", "jpeg")  # a pickle frame holds raw pixels; jpeg is there with simplejpeg
PICKLE_PROTOCOL = 5
PICKLE_START = b"\x80\x05"  # a record that starts so is a pickle frame; other first-format records, a dtype code
KEY = struct.Struct(">cQ")  # prefix, id
IMAGE, RUN_KEY = b"i", b"R"  # b"R" < b"format" < b"i": image records are appended at the end of the tree
FORMAT_KEY, FORMAT_1, FORMAT = b"format", b"imagestore-lmdb-1", b"imagestore-lmdb-2"
PAGE_HEADER = 16  # a large value starts this far into its first overflow page: reads are placed from there
MIB = 1 << 20
MIN_MAP_SIZE = 1 << 16  # LMDB needs a few pages to create a store; a smaller map_size starts from this
LOCK_BYTES = 125 * 64 + 192  # LMDB's lock file for its default 126 readers: 64-byte slots after the first, a header


@lru_cache(maxsize=64)
def _layout(code: bytes, ndim: int, dims: tuple[int, int, int]) -> tuple[np.dtype, tuple[int, ...], int]:
    """dtype, shape and pixel bytes a header or run record describes; DamagedStoreError for one no writer makes."""
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
    hold pixels, "raw", "png", "jpeg" or "pickle" (any store reads them all); `pack_bytes`: None for one image per
    value, else about this many bytes of raw pixels per value (at least one image)."""

    map_size: int = MIB
    encoding: str = "raw"
    pack_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; got {self.encoding!r}")
        if self.encoding != "pickle":
            codecs.get(self.encoding)  # ValueError for jpeg where simplejpeg is missing
        if not (isinstance(self.map_size, int) and self.map_size > 0):
            raise ValueError(f"map_size must be a positive int, got {self.map_size!r}")
        if self.pack_bytes is not None:
            if isinstance(self.pack_bytes, bool) or not (isinstance(self.pack_bytes, int) and self.pack_bytes > 0):
                raise ValueError(f"pack_bytes must be None or a positive int, got {self.pack_bytes!r}")
            if self.encoding != "raw":
                raise ValueError(f"pack_bytes packs raw pixels; it does not go with encoding={self.encoding!r}")

    @property
    def codec(self) -> codecs.Codec:
        return codecs.RAW if self.encoding == "pickle" else codecs.get(self.encoding)


@dataclass(frozen=True)
class Run:
    """Images of one layout from one append, ids ``start`` to ``start + count - 1``, `per_value` to a value."""

    start: int
    count: int
    dtype: np.dtype
    shape: tuple[int, ...]
    encoding: int
    per_value: int

    @property
    def nbytes(self) -> int:
        """Pixel bytes of one image."""
        return math.prod(self.shape) * self.dtype.itemsize

    def key(self, value: int) -> bytes:
        """The key of the run's value number `value`."""
        return KEY.pack(IMAGE, self.start + value * self.per_value)

    def value_bytes(self, value: int) -> int:
        """The length of raw value number `value`: `per_value` images, or what is left of the run."""
        return min(self.per_value, self.count - value * self.per_value) * self.nbytes

    def header(self, label: int) -> bytes:
        """The first format's header of an image of this run (what a pickle frame holds)."""
        return HEADER.pack(self.dtype.str.encode("ascii"), len(self.shape), self.encoding, *_dims(self.shape), label)

    def record(self, labels: np.ndarray) -> bytes:
        layout = (self.dtype.str.encode("ascii"), len(self.shape), self.encoding, *_dims(self.shape))
        return RUN.pack(*layout, self.count, self.per_value) + labels.astype("<i8").tobytes()


def _dims(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return (*shape, 0, 0)[:3]


def _run(key: bytes, value: memoryview, start: int) -> tuple[Run, np.ndarray]:
    """The run and its labels from a run record expected at id `start`; DamagedStoreError if this module did not
    write it (checked before anything is allocated: the labels are the record's own bytes)."""
    if len(key) != KEY.size or KEY.unpack(key)[1] != start:
        raise DamagedStoreError(f"the lmdb store's runs do not follow one another: {bytes(key)!r} after id {start}")
    if len(value) < RUN.size:
        raise DamagedStoreError(f"the lmdb run record of id {start} is {len(value)} bytes, shorter than its header")
    code, ndim, encoding, *dims, count, per_value = RUN.unpack_from(value)
    dtype, shape, _ = _layout(code, ndim, tuple(dims))
    if min(shape) < 1 or any(dims[ndim:]) or encoding > JPEG or count < 1 or not 1 <= per_value <= count:
        raise DamagedStoreError(f"the lmdb run record of id {start} describes no run this module writes")
    if per_value > 1 and encoding != RAW:
        raise DamagedStoreError(f"the lmdb run record of id {start} packs encoded images")
    if len(value) != RUN.size + 8 * count:
        raise DamagedStoreError(f"the lmdb run record of id {start} lists {count} images but has {len(value)} bytes")
    labels = np.frombuffer(value, "<i8", count, RUN.size).astype(np.int64)  # a copy: the value lives in the txn
    return Run(start, count, dtype, shape, encoding, per_value), labels


def _runs_from(txn: lmdb.Transaction, start: int) -> list[tuple[Run, np.ndarray]]:
    """The runs (and their labels) of ids from `start` on, in order."""
    found = []
    cursor = txn.cursor()
    if cursor.set_range(KEY.pack(RUN_KEY, start)):
        for key, value in cursor.iternext():
            if key[:1] != RUN_KEY:
                break
            found.append(_run(key, value, start))
            start += found[-1][0].count
    return found


class LmdbStore(Store):
    name = "lmdb"
    capabilities = Capabilities(directory=True, durability="library", lock_files=("lock.mdb",))
    Options = LmdbOptions
    new_format: ClassVar[bytes] = FORMAT  # the layout of new stores (tests make stores of the first format)

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
        try:
            if create:
                with self._env.begin(write=True) as txn:
                    txn.put(FORMAT_KEY, self.new_format)
            with self._begin() as txn:
                self._format = bytes(txn.get(FORMAT_KEY) or b"")
                if self._format == FORMAT_1:
                    self._length = txn.stat()["entries"] - 1
                elif self._format == FORMAT:
                    self._length = self._raw_bytes = self._encoded_bytes = 0
                    self._runs: list[Run] = []
                    self._layouts: list[tuple[tuple[int, ...], np.dtype]] = []
                    self._offsets: list[int] = []  # where each run's first value starts in its page
                    self._starts, self._labels = np.zeros(1, np.int64), np.empty(0, np.int64)
                    self._add_runs(_runs_from(txn, 0))
                else:
                    raise ValueError(f"{self.location} is an LMDB environment that is no image store")
        except BaseException:
            self._env.close()
            raise

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
                return txn.get(FORMAT_KEY) in (FORMAT, FORMAT_1)
        except lmdb.Error:  # damaged where the format key should be
            return False
        finally:
            env.close()

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        return [file for file in (location / "data.mdb", location / "lock.mdb") if file.exists()]

    @classmethod
    def writer_lock(cls, location: Path) -> None:
        return None  # LMDB's own lock lets one write transaction in at a time

    def _count(self) -> int:
        return self._length

    def _refresh(self) -> None:
        pass  # an append learns what others committed inside its write transaction

    def _add_runs(self, found: list[tuple[Run, np.ndarray]]) -> None:
        """Take runs that follow the known ones, once the pixels they claim fit in the committed pages. The arrays
        of starts and labels grow by doubling: many small appends cost O(1) each."""
        for run, _ in found:
            if run.encoding in (RAW, PICKLE):
                self._raw_bytes += run.count * run.nbytes  # Python ints: a forged size cannot wrap around
            else:
                self._encoded_bytes += run.count * run.nbytes
        committed = (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]
        if self._raw_bytes > committed or self._encoded_bytes > MAX_EXPANSION * committed:
            raise DamagedStoreError(f"{self.location} lists more pixels than its {committed} bytes of data can hold")
        for run, labels in found:
            self._starts = _extended(self._starts, len(self._runs) + 1, run.start + run.count)
            self._labels = _extended(self._labels, self._length, labels)
            self._runs.append(run)
            self._layouts.append((run.shape, run.dtype))
            self._offsets.append(PAGE_HEADER)
            self._length += run.count

    def _per_value(self, batch: np.ndarray) -> int:
        """Images of `batch` in one value: 1, or as many as fit in ``pack_bytes``, rounded down to a count whose
        pixels fill whole pages where that leaves at least one, so that every value lies at the same place
        relative to a page of the result (see ``storage._reading.read_buffer``)."""
        if self.options.pack_bytes is None or self._format == FORMAT_1:
            return 1
        nbytes = math.prod(batch.shape[1:]) * batch.dtype.itemsize
        per_value = max(1, self.options.pack_bytes // nbytes)
        whole_pages = PAGE // math.gcd(nbytes, PAGE)
        if per_value >= whole_pages:
            per_value -= per_value % whole_pages
        return min(per_value, len(batch))

    def _reserve(self, batches: list[np.ndarray]) -> None:
        """Grow the map ahead of an append so that it fits (an estimate; `_append` retries)."""
        page = self._env.stat()["psize"]
        info = self._env.info()
        needed = (info["last_pgno"] + 2) * page
        for batch in batches:
            per_value = self._per_value(batch)
            extra = 700 if self.encoding == JPEG else 80  # a JPEG's markers and tables take about 630 bytes
            pixels = math.prod(batch.shape[1:]) * batch.dtype.itemsize  # from the shape: files of an encoded run too
            record = HEADER.size + per_value * pixels + KEY.size + extra  # room for a pickle frame or PNG chunks
            values = -(-len(batch) // per_value)
            needed += values * (math.ceil(record / page) * page if record > page // 2 else 2 * record)
            needed += 2 * (RUN.size + 8 * len(batch)) + page
        if needed > info["map_size"]:
            self._env.set_mapsize(math.ceil(needed * 1.5 / MIB) * MIB)

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        self._reserve(batches)
        while True:
            try:
                with self._begin(write=True) as txn:  # commits (with fsync) or aborts as one
                    added = self._write(txn, batches, labels)
                break
            except lmdb.MapFullError:
                self._env.set_mapsize(2 * self._env.info()["map_size"])
            except lmdb.Error as error:
                if "Input/output error" in str(error) and _disk_full(self.location):
                    raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (LMDB: {error})") from error
                raise
        if self._format == FORMAT_1:
            self._length = added
        else:
            self._add_runs(added)

    def _write(self, txn: lmdb.Transaction, batches: list[np.ndarray], labels: np.ndarray) -> object:
        """Put an append's records in `txn`: the new count of a first-format store, else the new runs."""
        cursor = txn.cursor()
        if self._format == FORMAT_1:
            self._length = txn.stat()["entries"] - 1  # another writer may have appended since
            _, added = cursor.putmulti(self._first_format_records(batches, labels), append=True)
            if added != len(labels):
                raise RuntimeError(f"lmdb stored {added} of {len(labels)} records")
            return self._length + added
        self._add_runs(_runs_from(txn, self._length))  # what other writers committed since this store looked
        start, runs, ends = self._length, [], np.cumsum([0, *map(len, batches)])
        for batch, low, high in zip(batches, ends, ends[1:]):
            run = Run(start, len(batch), batch.dtype, batch.shape[1:], self.encoding, self._per_value(batch))
            txn.put(KEY.pack(RUN_KEY, start), run.record(labels[low:high]))
            values = self._values_of(run, batch, labels[low:high])
            _, added = cursor.putmulti(zip(_keys(start, run.count, run.per_value), values), append=True)
            if added != -(-run.count // run.per_value):
                raise RuntimeError(f"lmdb stored {added} records of a run of {run.count} images")
            runs.append((run, labels[low:high]))
            start += run.count
        return runs

    def _values_of(self, run: Run, batch: np.ndarray, labels: np.ndarray) -> Iterator:
        """A run's values: views of the batch's pixels, its images' files, or pickle frames."""
        if self.encoding == PICKLE:
            return (
                pickle.dumps((run.header(label), image.tobytes()), protocol=PICKLE_PROTOCOL)
                for image, label in zip(batch, labels.tolist())
            )
        if self.encoding != RAW:
            return map(self.codec.encode, batch)  # a file of an encoded append is its own encoding
        pixels, step = memoryview(batch.reshape(-1).view(np.uint8)), run.per_value * run.nbytes
        return (pixels[at : at + step] for at in range(0, len(pixels), step))

    def _first_format_records(self, batches: list[np.ndarray], labels: np.ndarray) -> Iterator:
        """(key, value) of each image in the first format: a header and the pixels or file, or a pickle frame."""
        image_id = self._length
        for batch in batches:
            run = Run(image_id, len(batch), batch.dtype, batch.shape[1:], self.encoding, 1)
            for image in batch:
                header = run.header(labels[image_id - self._length])
                if self.encoding == PICKLE:
                    value = pickle.dumps((header, image.tobytes()), protocol=PICKLE_PROTOCOL)
                else:
                    value = header + self.codec.encode(image)
                yield KEY.pack(IMAGE, image_id), value
                image_id += 1

    def _begin(self, **options: bool) -> lmdb.Transaction:
        """A transaction, after adopting a map that another process has grown; only where no other thread of
        this process can hold a transaction (opening, or an append's turn): LMDB resizes a map only then."""
        try:
            return self._env.begin(buffers=True, **options)
        except lmdb.MapResizedError:
            self._env.set_mapsize(0)
            return self._env.begin(buffers=True, **options)

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
            if self._format == FORMAT_1:
                return _decode_each(list(_values(txn, ids)))
            starts = self._starts[: len(self._runs) + 1]
            images = gather_runs(ids, starts, self._layouts, partial(self._read_run, txn), self._offsets)
        return images, self._labels[ids]

    def _read_run(self, txn: lmdb.Transaction, index: int, local: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` with the images of run `index` at `local` ids (counted from the run's start)."""
        run = self._runs[index]
        if run.encoding == RAW:
            into = memoryview(out.reshape(-1).view(np.uint8))
            if is_consecutive(local):
                _copy_range(txn, run, int(local[0]), len(local), into)
            else:  # each image from the value that holds it
                for position, image in enumerate(local.tolist()):
                    _copy_range(txn, run, image, 1, into[position * run.nbytes : (position + 1) * run.nbytes])
            return
        if is_consecutive(local):
            values = _consecutive(txn, run.key(int(local[0])), len(local), run.key(int(local[-1])))
        else:
            values = (_get(txn, run.key(value)) for value in local.tolist())
        if run.encoding == PICKLE:
            labels = self._labels[run.start + local].tolist()
            values = (_pickled_pixels(run, value, label) for value, label in zip(values, labels))
        decode = codecs.get(RECORD_CODECS[run.encoding]).decode
        for position, value in enumerate(values):
            out[position] = decode(value, run.shape, run.dtype)

    def _close(self) -> None:
        self._env.close()


def _extended(array: np.ndarray, used: int, values: object) -> np.ndarray:
    """`array` with `values` written from position `used` on: the same array while it has room, else a copy at least
    twice as large."""
    values = np.asarray(values, np.int64).reshape(-1)
    end = used + len(values)
    if end > len(array):
        array = np.concatenate([array[:used], np.empty(max(end, 2 * len(array)) - used, np.int64)])
    array[used:end] = values
    return array


def _keys(start: int, count: int, step: int) -> Iterator[bytes]:
    """Image keys of the values of `count` images from id `start`, `step` images a value, made as LMDB takes them
    (a list of them all would hold one more Python object per image)."""
    return map(partial(KEY.pack, IMAGE), range(start, start + count, step))


def _copy_range(txn: lmdb.Transaction, run: Run, first: int, count: int, into: memoryview) -> None:
    """Copy raw images `first` to ``first + count - 1`` of `run` into `into`, in one cursor pass, each value once.
    Keys only rise, so `count` values from the first key that end at the last key are the values asked for."""
    first_value, last_value = first // run.per_value, (first + count - 1) // run.per_value
    cursor = txn.cursor()
    if not cursor.set_key(run.key(first_value)):
        raise DamagedStoreError(f"the lmdb store lacks the record of id {run.start + first_value * run.per_value}")
    values, nbytes, at = islice(cursor.iternext(keys=False, values=True), last_value - first_value + 1), run.nbytes, 0
    try:
        if run.per_value == 1:  # the loop every image goes through: one slice assignment
            for value in values:
                end = at + nbytes
                into[at:end] = value
                at = end
        else:
            skip = (first - first_value * run.per_value) * nbytes
            for number, value in enumerate(values, first_value):
                if len(value) != run.value_bytes(number):
                    raise ValueError
                piece = value[skip : skip + len(into) - at]
                into[at : at + len(piece)] = piece
                at, skip = at + len(piece), 0
    except ValueError:  # memoryview's complaint about a value of another length, or ours
        raise DamagedStoreError(f"an lmdb record of the run from id {run.start} has another length") from None
    if at != len(into) or cursor.key() != run.key(last_value):
        raise DamagedStoreError(f"the lmdb store lacks records up to id {run.start + first + count - 1}")


def _pickled_pixels(run: Run, value: memoryview, label: int) -> memoryview:
    """The pixels of a pickle frame of `run`, whose header must be the run's layout and the image's label."""
    if bytes(value[HEADER_IN_PICKLE]) != run.header(label):
        raise DamagedStoreError("lmdb record is a pickle frame this store did not write")
    return _split(value)[1]


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


def _get(txn: lmdb.Transaction, key: bytes) -> memoryview:
    value = txn.get(key)
    if value is None:
        raise DamagedStoreError(f"the lmdb store lacks the record of id {KEY.unpack(key)[1]}")
    return value


def _consecutive(txn: lmdb.Transaction, first: bytes, count: int, last: bytes) -> Iterator:
    """The values of `count` consecutive keys from `first` to `last`, in one cursor pass; DamagedStoreError once one
    is found missing (a damaged count of records can list more than there are)."""
    cursor = txn.cursor()
    if not cursor.set_key(first):
        raise DamagedStoreError(f"the lmdb store lacks the record of id {KEY.unpack(first)[1]}")
    return chain(islice(cursor.iternext(keys=False, values=True), count), _ended_at(cursor, last))


def _ended_at(cursor: lmdb.Cursor, last: bytes) -> Iterator:
    """Nothing, once the cursor has passed the records of a range: DamagedStoreError unless it ends at `last`."""
    if cursor.key() != last:
        raise DamagedStoreError(f"the lmdb store lacks records up to id {KEY.unpack(last)[1]}")
    yield from ()


# --- the first format: a header in each record ----------------------------------------------


def _values(txn: lmdb.Transaction, ids: np.ndarray) -> Iterator:
    """The first-format records of `ids` in order, one at a time (a cursor pass for a range of ids)."""
    if is_consecutive(ids):
        return _consecutive(txn, KEY.pack(IMAGE, int(ids[0])), len(ids), KEY.pack(IMAGE, int(ids[-1])))
    return (_get(txn, KEY.pack(IMAGE, image_id)) for image_id in ids.tolist())


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


def _decode_each(values: list) -> tuple[Batch, np.ndarray]:
    """Images and labels of first-format records of any layouts, one by one."""
    labels = np.empty(len(values), np.int64)

    def images():
        for position, value in enumerate(values):
            (code, ndim, encoding, dims, labels[position]), pixels = _split(value)
            dtype, shape, _ = _layout(code, ndim, dims)
            yield codecs.get(RECORD_CODECS[encoding]).decode(pixels, shape, dtype)

    return stack_or_list(images(), len(values)), labels
