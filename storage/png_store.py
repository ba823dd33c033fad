"""PNG: one PNG file per image, labels in an index file beside them (the classic "disk" method).

The index is replaced (write a new one, rename it over the old) only after the PNG files of a
batch are on disk, so it is the commit record: ``len(store)`` is the number of index records,
and a PNG without one (left by an interrupted append) is ignored and later overwritten.

An encoded append (``append(files, labels, encoded=True)``) writes the user's PNG files as they are, so that
``compress_level`` applies only to the files the store writes itself.

Per image, an append costs one encode and three system calls: an ``open`` that creates the file (``O_CREAT |
O_EXCL | O_NOFOLLOW``: a symlink planted at its name is never followed), one ``write`` and the ``close``. Only when
something is already at the name (a file of an interrupted append, or a planted link) is it unlinked and the open
tried again, so the usual case pays no ``unlink``. A read costs an ``open`` (``O_NOFOLLOW``: a planted symlink is
damage; ``O_NONBLOCK``: a FIFO cannot make it wait), an ``fstat`` (a regular file? how long?), one ``read``, the
``close`` and the decode.

``threads`` workers (default `THREADS`) encode and write, or read and decode, the images of one call, in chunks;
imagecodecs, simplejpeg and those system calls release the GIL. An append that fails in any worker stops the others,
removes every file the append began, as a single thread would, and raises the first error; nothing is committed,
because the index is replaced only after every worker is done. Calls of fewer than `POOL_MIN` images run in the
calling thread: starting the threads would cost more than they save.

`ImageFileStore` is this layout for any codec: the jpeg store is the same with ``.jpg`` files
and its own index magic, so that each backend knows its own stores.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from storage._base import Capabilities, Options, Store
from storage._durable import NO_FOLLOW, make_durable, read_own, remove_leftovers, replace_atomically, staging_leftovers
from storage._errors import DamagedStoreError
from storage._reading import Batch, stack_or_list
from storage.codecs import PNG_LIBRARIES, Png

INDEX = "index.bin"
MAGIC = b"imagestore-png\x00\x01"  # 16 bytes, then one RECORD per image
RECORD = np.dtype([("label", "<i8"), ("one_channel_axis", "u1")])  # was (H, W, 1), stored as grey
THREADS = 2
POOL_MIN = 16  # images in one call below which no threads are started
CHUNKS_PER_THREAD = 16  # a call's images are split into about this many chunks per thread, to balance the load
BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW | BINARY
OPEN = os.O_RDONLY | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0) | BINARY


def write_image(path: str, data: bytes) -> None:
    """Write `path` as a new file: whatever was at that name is removed, never followed."""
    try:
        descriptor = os.open(path, CREATE, 0o644)
    except FileExistsError:  # left by an interrupted append, or planted: replaced
        os.unlink(path)
        descriptor = os.open(path, CREATE, 0o644)
    try:
        done = os.write(descriptor, data)
        while done < len(data):  # a short write: the disk filled up (the next write raises), or over 2 GiB
            done += os.write(descriptor, memoryview(data)[done:])
    finally:
        os.close(descriptor)


def read_image(path: str) -> bytes:
    """The bytes of an image file of a store; DamagedStoreError if it is a symlink or not a regular file."""
    try:
        descriptor = os.open(path, OPEN)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DamagedStoreError(f"{path} is a symlink; a store's files are its own") from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):  # a FIFO or device would be read forever
            raise DamagedStoreError(f"{path} is not a regular file")
        data = os.read(descriptor, status.st_size)
        while len(data) < status.st_size:  # one read(2) returns at most about 2 GiB
            more = os.read(descriptor, status.st_size - len(data))
            if not more:
                break
            data += more
        return data
    finally:
        os.close(descriptor)


def in_threads(work: Callable[[int], None], count: int, threads: int) -> None:
    """``work(i)`` for i in 0..count-1, on up to `threads` threads (in this one for 1, or fewer than `POOL_MIN`).

    Once a call fails, the others stop at their next item; when all threads have stopped, the first error raised
    is raised here (also when this thread is interrupted while waiting, no worker runs on after this returns)."""
    if threads == 1 or count < POOL_MIN:
        for index in range(count):
            work(index)
        return
    size = max(1, -(-count // (threads * CHUNKS_PER_THREAD)))
    failed = threading.Event()
    errors: list[BaseException] = []

    def chunk(start: int) -> None:
        try:
            for index in range(start, min(start + size, count)):
                if failed.is_set():
                    return
                work(index)
        except BaseException as error:
            errors.append(error)  # list.append is atomic; the first one appended came first
            failed.set()

    pool = ThreadPoolExecutor(threads, thread_name_prefix="image-files")
    try:
        for start in range(0, count, size):
            pool.submit(chunk, start)
        pool.shutdown()
    except BaseException:  # KeyboardInterrupt, say: stop the workers before the caller cleans up
        failed.set()
        pool.shutdown()
        raise
    if errors:
        raise errors[0]


class ImageFileStore(Store):
    """A directory of one encoded file per image (``000000000<suffix>``, ...) and an index of labels, which is the
    commit record. A subclass names its index `magic` (16 bytes) and its files' `suffix`; its Options choose the
    codec, whose ``decode(data)`` gives a grey image as 2-D, and the `threads` of a call."""

    magic: ClassVar[bytes]
    suffix: ClassVar[str]
    capabilities = Capabilities(directory=True)

    def _start(self, create: bool) -> None:
        index = self.location / INDEX
        if create:
            self.location.mkdir(exist_ok=True)
            replace_atomically(index, self.magic, self.durable)
        data = read_own(index)
        if not data.startswith(self.magic) or (len(data) - len(self.magic)) % RECORD.itemsize:
            raise DamagedStoreError(f"{index} is not a complete {type(self).name} store index")
        self._records = np.frombuffer(data, RECORD, offset=len(self.magic))
        self._prefix = os.path.join(str(self.location), "")  # an image's path is this, its id and the suffix

    @classmethod
    def is_store(cls, location: Path) -> bool:
        index = location / INDEX
        if not index.is_file():
            return False
        with index.open("rb") as file:
            return file.read(len(cls.magic)) == cls.magic

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        name = re.compile(rf"\d{{9}}{re.escape(cls.suffix)}")
        images = [Path(entry.path) for entry in os.scandir(location) if name.fullmatch(entry.name)]
        own = [location / INDEX, cls.writer_lock(location)]
        return [*filter(Path.exists, own), *staging_leftovers(location / INDEX), *sorted(images)]

    def _sweep(self) -> None:
        remove_leftovers(self.location / INDEX)

    def _commit_file(self) -> Path:
        return self.location / INDEX  # replaced atomically by every append

    def _image_path(self, image_id: int) -> str:
        return f"{self._prefix}{image_id:09d}{self.suffix}"

    def _count(self) -> int:
        return len(self._records)

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        records = np.empty(len(labels), RECORD)
        records["label"] = labels
        one_channel = [batch.ndim == 4 and batch.shape[-1] == 1 for batch in batches]
        records["one_channel_axis"] = np.repeat(one_channel, [len(batch) for batch in batches])
        images = [image for batch in batches for image in batch]
        first, encode = len(self._records), self.codec.encode
        written: list[str | None] = [None] * len(images)  # named before writing: a failed write leaves a file too

        def write(index: int) -> None:
            written[index] = path = self._image_path(first + index)
            write_image(path, encode(images[index]))

        try:
            in_threads(write, len(images), self.options.threads)
            if self.durable:
                make_durable(written, self.location)
            records = np.concatenate([self._records, records])
            replace_atomically(self.location / INDEX, self.magic + records.tobytes(), self.durable)
        except BaseException:
            if self._committed_count() == len(self._records):  # not committed (a full disk, say): no orphans
                for path in filter(None, written):
                    Path(path).unlink(missing_ok=True)
            raise
        self._records = records

    def _committed_count(self) -> int:
        return ((self.location / INDEX).stat().st_size - len(self.magic)) // RECORD.itemsize

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        order = ids.tolist()
        decode, one_channel = self.codec.decode, self._records["one_channel_axis"]

        def image(image_id: int) -> np.ndarray:
            array = decode(read_image(self._image_path(image_id)))
            return array[..., np.newaxis] if one_channel[image_id] else array

        labels = self._records["label"][ids]
        if self.options.threads == 1 or len(order) < POOL_MIN:
            return stack_or_list(map(image, order), len(order)), labels
        start = image(order[0])  # the workers decode into one array, so the pixels are never held twice
        out = np.empty((len(order), *start.shape), start.dtype)
        out[0] = start
        others: dict[int, np.ndarray] = {}  # images of another shape or dtype, by position

        def place(index: int) -> None:
            got = image(order[index + 1])
            if got.shape == start.shape and got.dtype == start.dtype:
                out[index + 1] = got
            else:
                others[index + 1] = got

        in_threads(place, len(order) - 1, self.options.threads)
        if others:  # a list, as stack_or_list gives
            return [others.get(position, out[position].copy()) for position in range(len(out))], labels
        return out, labels

    def _close(self) -> None:
        pass  # every file is closed as soon as it has been written or read


def check_threads(threads: object) -> None:
    """ValueError unless `threads` is a positive int."""
    if not (isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")


@dataclass(frozen=True)
class PngOptions(Options):
    """`compress_level`: zlib's level for new PNG files, 0-9 (1 favours speed, 9 size); `library`: what writes and
    reads them, "imagecodecs" or "pillow"; `strategy` and `filter`: the encoder's zlib strategy and row filter
    (`storage.codecs.Png`; None: the library's default); `threads`: workers per append or read (1: none)."""

    compress_level: int = 1
    library: str = PNG_LIBRARIES[0]
    strategy: str | None = None
    filter: str | None = None
    threads: int = THREADS

    def __post_init__(self) -> None:
        Png(self.compress_level, self.library, self.strategy, self.filter)  # checks them
        check_threads(self.threads)

    @property
    def codec(self) -> Png:
        return Png(self.compress_level, self.library, self.strategy, self.filter)


class PngStore(ImageFileStore):
    name = "png"
    Options = PngOptions
    magic = MAGIC
    suffix = ".png"
