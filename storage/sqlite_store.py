"""SQLite: one database file, one row per image in the table ``images``.

A row is ``id`` (the image id, the table's rowid), ``label``, ``layout`` (encoding, dtype and shape as text:
``"raw |u1 32 32 3"``) and ``pixels``, a BLOB of raw C-order little-endian bytes or, with ``encoding="png"``, a
PNG file. ``PRAGMA application_id`` marks the file as an image store (``is_store`` reads it from the header,
without SQLite); ``user_version`` is the format's version.

An append is one transaction, so the commit point is SQLite's: ``BEGIN IMMEDIATE`` takes SQLite's write lock
(writers take turns) and the append counts the rows inside it. In WAL mode, readers in other processes see
whole appends, and the next connection recovers the WAL of a killed writer. ``synchronous=FULL`` flushes each
commit; ``durable=False`` uses NORMAL, which flushes at checkpoints only: a power cut loses recent appends but
leaves the database consistent.

WAL mode keeps ``<db>-wal`` and ``<db>-shm`` beside the file while it is open (read-only connections write the
-shm too, and leave both behind, empty of data); ``files`` lists them. SQLite finds them by name, so a WAL left
at a name is replayed into whatever file is put there next. Hence a new store is made in rollback-journal mode,
whole in its one file at ``install``'s hidden name, and switched to WAL at its first writable open; and mode
"w" first folds the old store's WAL into it and deletes both (``PRAGMA journal_mode=DELETE``), raising
BlockingIOError while another connection has the store open and DamagedStoreError if it is damaged. Where the
-shm cannot be made (a read-only medium or directory) and there is no -wal, all commits are in the file, which
is then read with ``immutable=1``. Sidecars that are symlinks or not regular files are refused: SQLite would
follow them.

A range of ids is one query; scattered ids are ``IN (...)`` queries in chunks, rows in id order, put back in
the order asked. Each blob is copied into one preallocated array, after the first has been checked against the
byte size of its recorded layout. SQLite's length limit is the size of the store's files, so a forged record
length cannot make SQLite allocate more than that. Each thread reading a store gets its own connection: SQLite
runs the calls on one connection one at a time, and rows below ``len(store)`` never change, so any
connection's snapshot serves. Connections must not cross a fork.
"""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from itertools import chain
from pathlib import Path

import numpy as np

from storage import codecs
from storage._base import Capabilities, EncodingOptions, Options, Store
from storage._durable import NO_FOLLOW
from storage._errors import DamagedStoreError, damage_reported
from storage._reading import Batch, is_consecutive, stack_or_list

APPLICATION_ID, VERSION = int.from_bytes(b"imgs", "big"), 1
SCHEMA = "CREATE TABLE images (id INTEGER PRIMARY KEY, label INTEGER NOT NULL, layout TEXT NOT NULL, pixels BLOB)"
MARK = f"PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {VERSION}"
SIDECARS = ("-wal", "-shm", "-journal")
RANGE = "SELECT label, layout, pixels FROM images WHERE id >= ? AND id < ? ORDER BY id"
SOME = "SELECT label, layout, pixels FROM images WHERE id IN ({}) ORDER BY id"
CHUNK = 500  # ids per IN (...) query: within every SQLite's limit on parameters (999 before 3.32)
TIMEOUT = 60.0  # seconds a connection waits for a lock that another connection holds
LENGTH = getattr(sqlite3, "SQLITE_LIMIT_LENGTH", None)  # Python 3.11+ can set SQLite's limits


class SqliteStore(Store):
    name = "sqlite"
    capabilities = Capabilities(directory=False, durability="library")
    Options = EncodingOptions

    @classmethod
    def writer_lock(cls, location: Path) -> None:
        return None  # SQLite's write lock lets one transaction write at a time

    @classmethod
    def is_store(cls, location: Path) -> bool:
        try:
            descriptor = os.open(location, os.O_RDONLY | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            return False
        try:
            header = os.read(descriptor, 100) if stat.S_ISREG(os.fstat(descriptor).st_mode) else b""
        finally:
            os.close(descriptor)
        return header[:16] == b"SQLite format 3\0" and header[68:72] == APPLICATION_ID.to_bytes(4, "big")

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        return [location, *(path for path in _sidecars(location) if os.path.lexists(path))]

    @classmethod
    def install(cls, location: Path, options: Options, *, durable: bool, name: str, replace: bool) -> None:
        if replace:  # the old store's WAL must not outlive it beside the new file
            with damage_reported(location, name), _plain_errors(location):
                _check_own(location)
                _run(location, "rw", "PRAGMA journal_mode = DELETE")  # fails while others have it open
        super().install(location, options, durable=durable, name=name, replace=replace)

    def _start(self, create: bool) -> None:
        _check_own(self.location)
        if create:  # one transaction, in rollback-journal mode: the new file is whole, with nothing beside it
            with _plain_errors(self.location):
                _run(self.location, "rwc", f"BEGIN; {SCHEMA}; {MARK}; COMMIT")
        elif not self.is_store(self.location):
            raise ValueError(f"{self.location} is a file that is no sqlite image store")
        if self.writable:  # the OS says why not (EROFS, EACCES), where SQLite would quietly open read-only
            os.close(os.open(self.location, os.O_RDWR | NO_FOLLOW))
        self._read_mode, self._readers, self._local = "ro", [], threading.local()
        with _plain_errors(self.location):
            self._db = self._local.db = self._open(create)

    def _open(self, create: bool) -> sqlite3.Connection:
        db = _connect(self.location, "rw" if self.writable else self._read_mode)
        try:
            self._stored = _stored_bytes(self.location)
            _limit(db, self._stored)
            if self.writable:
                db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
                if not create:
                    db.execute("PRAGMA journal_mode = WAL")
            self._length = _check(db, self.location, self._stored)
            return db
        except sqlite3.OperationalError:
            db.close()
            wal, directory = _sidecars(self.location)[0], self.location.parent
            if self.writable or self._read_mode != "ro" or os.path.lexists(wal) or os.access(directory, os.W_OK):
                raise
            self._read_mode = "ro&immutable=1"  # no -shm can be made here, and with no -wal all is in the file
            return self._open(create)
        except BaseException:
            db.close()
            raise

    def _refresh(self) -> None:
        pass  # the append counts the rows inside its transaction

    def _count(self) -> int:
        return self._length

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        db = self._db
        _limit(db, 2**31 - 1)  # SQLite caps it at its own maximum
        with _plain_errors(self.location):
            db.execute("BEGIN IMMEDIATE")
            try:
                start = db.execute("SELECT coalesce(max(id) + 1, 0) FROM images").fetchone()[0]
                db.executemany("INSERT INTO images VALUES (?, ?, ?, ?)", self._rows(batches, labels, start))
                db.execute("COMMIT")
            except (sqlite3.DataError, OverflowError) as error:
                raise ValueError(f"the {self.name} backend holds no image this big in a row ({error})") from None
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
        self._length = start + len(labels)
        self._stored = _stored_bytes(self.location)
        _limit(db, self._stored)

    def _rows(self, batches: list[np.ndarray], labels: np.ndarray, start: int) -> Iterator[tuple]:
        image_ids, labels = iter(range(start, start + len(labels))), iter(labels.tolist())
        raw = self.codec is codecs.RAW
        for batch in batches:
            layout = " ".join([self.codec.name, batch.dtype.str, *map(str, batch.shape[1:])])
            for image in batch:  # a raw image goes in as its buffer, without a copy to bytes first
                yield next(image_ids), next(labels), layout, image if raw else self.codec.encode(image)

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        with _plain_errors(self.location):
            return self._select(ids)

    def _select(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        db = getattr(self._local, "db", None)
        if db is None:  # this thread's first read
            db = self._local.db = _connect(self.location, self._read_mode)
            self._readers.append(db)
        _limit(db, self._stored)
        if is_consecutive(ids):
            queries, places = [(RANGE, (int(ids[0]), int(ids[-1]) + 1))], range(len(ids))
        else:  # row k, of the k-th smallest id, goes where that id was asked (once: repeats are copied after)
            wanted, inverse = np.unique(ids, return_inverse=True)
            chunks = (wanted[start : start + CHUNK].tolist() for start in range(0, len(wanted), CHUNK))
            queries = [(SOME.format(",".join("?" * len(chunk))), chunk) for chunk in chunks]
            places = np.argsort(ids, kind="stable").tolist() if len(wanted) == len(ids) else range(len(wanted))

        def rows() -> Iterator[tuple]:
            return chain.from_iterable(db.execute(*query) for query in queries)

        images, labels = _uniform(rows(), places) or _each(rows(), places)
        if len(places) == len(ids):
            return images, labels
        copies = images[inverse] if isinstance(images, np.ndarray) else [images[i].copy() for i in inverse.tolist()]
        return copies, labels[inverse]

    def _close(self) -> None:
        for db in [*self._readers, self._db]:  # the writer last: closing, it folds the WAL into the file
            db.close()


def _connect(location: Path, mode: str) -> sqlite3.Connection:
    uri = f"{location.as_uri()}?mode={mode}"
    db = sqlite3.connect(uri, uri=True, timeout=TIMEOUT, isolation_level=None, check_same_thread=False)
    db.text_factory = bytes  # text of a damaged file need not be UTF-8: checked where it is used
    return db


def _run(location: Path, mode: str, script: str) -> None:
    db = _connect(location, mode)
    try:
        db.executescript(script)
    finally:
        db.close()


def _sidecars(location: Path) -> list[Path]:
    return [location.with_name(location.name + suffix) for suffix in SIDECARS]


def _check_own(location: Path) -> None:
    """DamagedStoreError for a sidecar that is a symlink (SQLite would write through it) or not a regular file."""
    for path in _sidecars(location):
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
            raise DamagedStoreError(f"{path} is not a regular file; a store's files are its own")


def _stored_bytes(location: Path) -> int:
    wal = _sidecars(location)[0]
    return os.stat(location).st_size + (os.stat(wal).st_size if os.path.exists(wal) else 0)


def _limit(db: sqlite3.Connection, length: int) -> None:
    """Let `db` make no string or blob longer than `length` bytes (where Python can tell SQLite so)."""
    if LENGTH is not None:
        db.setlimit(LENGTH, max(length, 1))


def _check(db: sqlite3.Connection, location: Path, stored: int) -> int:
    """The number of images in the store that `db` opened, after checking that it is one."""
    if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        raise ValueError(f"{location} is an SQLite database that is no image store")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != VERSION or db.execute("SELECT type, name, sql FROM sqlite_master").fetchall() != [
        (b"table", b"images", SCHEMA.encode())
    ]:
        raise DamagedStoreError(f"{location} does not hold the table of a version {VERSION} sqlite image store")
    length = db.execute("SELECT coalesce(max(id) + 1, 0) FROM images").fetchone()[0]
    if not (isinstance(length, int) and 0 <= length <= stored):  # before anything of that length is made
        raise DamagedStoreError(f"{location} lists image id {length - 1} in {stored} bytes")
    return length


@contextmanager
def _plain_errors(location: Path) -> Iterator[None]:
    """SQLite's reports of a lock held too long, a read-only medium and a full disk as Python's OSErrors, and a
    message that quotes damaged text (Python fails to decode it) as damage."""
    try:
        yield
    except UnicodeDecodeError as error:
        raise DamagedStoreError(f"{location} is a damaged sqlite store (SQLite's message: {error})") from error
    except sqlite3.OperationalError as error:
        medium = os.statvfs(location.parent) if hasattr(os, "statvfs") else None
        if "locked" in str(error):
            message = f"another connection holds the store ({error})"
            raise BlockingIOError(errno.EAGAIN, message, str(location)) from error
        if medium is not None and medium.f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, f"{os.strerror(errno.EROFS)} (SQLite: {error})", str(location)) from error
        if "full" in str(error) or (medium is not None and medium.f_bavail == 0):
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (SQLite: {error})", str(location)) from error
        raise


@lru_cache(maxsize=256)
def _layout(text: bytes) -> tuple[codecs.Codec, np.dtype, tuple[int, ...], int]:
    """The codec, dtype, shape and raw byte size that a row's layout names; DamagedStoreError if no writer did."""
    try:
        encoding, code, *dims = text.decode("ascii").split(" ")
        codec, dtype, shape = codecs.get(encoding), np.dtype(code), tuple(map(int, dims))
    except (AttributeError, TypeError, ValueError) as error:
        raise DamagedStoreError(f"a row's layout {text!r} is none that this store writes") from error
    if not codec.accepts(dtype, shape) or min(shape) < 1:
        raise DamagedStoreError(f"a row's layout {text!r} is none that this store writes")
    return codec, dtype, shape, math.prod(shape) * dtype.itemsize


def _uniform(rows: Iterable[tuple], places: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Raw images of one layout, each row's copied into one array as it comes (row k to `places[k]`); None if
    the rows are not all such."""
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return None
    _, layout, pixels = first
    codec, dtype, shape, size = _layout(layout)
    if codec is not codecs.RAW or len(pixels) != size:  # checked before allocating: the layout may be forged
        return None
    images = np.empty((len(places), *shape), dtype)
    target = memoryview(images.reshape(-1).view(np.uint8))
    labels = []
    for place, (label, found, pixels) in zip(places, chain([first], rows)):
        if found != layout or len(pixels) != size:
            return None
        target[place * size : (place + 1) * size] = pixels
        labels.append(label)
    return images, _placed(labels, places)


def _each(rows: Iterable[tuple], places: Sequence[int]) -> tuple[Batch, np.ndarray]:
    """Images of any layouts and encodings, decoded one by one (row k to `places[k]`)."""
    images: list = [None] * len(places)
    labels = []
    for place, (label, layout, pixels) in zip(places, rows):
        codec, dtype, shape, _ = _layout(layout)
        images[place] = codec.decode(pixels, shape, dtype)
        labels.append(label)
    placed = _placed(labels, places)
    return stack_or_list(iter(images), len(images)), placed


def _placed(labels: list, places: Sequence[int]) -> np.ndarray:
    """Labels of rows read, each at its place; DamagedStoreError if rows are missing."""
    if len(labels) != len(places):
        raise DamagedStoreError(f"{len(places) - len(labels)} of the images asked for are missing from the store")
    placed = np.empty(len(places), np.int64)
    placed[places if isinstance(places, list) else slice(None)] = labels
    return placed
