"""WebDataset: a directory of tar shards in the WebDataset layout, each with an index of where its members lie.

Each part (see ``storage/_parts.py`` for the manifest that commits them) is one tar shard, ``part-00000000.tar``,
that ``webdataset.WebDataset("store/part-{00000000..00000041}.tar")`` streams as it is. A sample is two members
named after the image's id in nine digits: ``000000123.cls``, the label as decimal text, and ``000000123.npy``, the
raw pixels as a ``.npy`` file (written without pickle), or with an ``encoding`` the encoded file
(``000000123.png``, ``000000123.jpg``). The standard library's ``tarfile`` writes the shards, so that the file's
position after each member tells where its data lies; webdataset's ``TarWriter`` writes a stream and reports
only sizes.

Beside each shard, ``part-00000000.tar.idx`` is a ``.npy`` file of one int64 row per image: the byte offset and
size of its image member in the shard, and its label. It is written (and flushed) before the manifest lists the
shard, so the manifest's rename commits both; an index whose shard the manifest does not list, left by an
interrupted append, is ignored, overwritten, and deleted with that shard. Opening reads the indexes, not the
tars: offsets must lie inside the shard, on tar blocks, in order and not overlapping, and raw members must have the
size their recorded layout gives (the ``.npy`` header this store writes plus the pixels), equally spaced. The
``.npy`` header of a raw member is compared, byte for byte, with that expected one when the member is read, which
fetches it anyway (checking all at open would cost a read per image); it is never parsed. Labels come from the
index; the ``.cls`` members are there for webdataset.

Consecutive raw ids are read a span of up to 16 MiB at a time, in one positioned read, and their pixels copied out
of a strided view of it: raw samples of a shard are equally spaced. Scattered raw ids are one ``preadv`` each,
the header into a scratch row and the pixels straight into the result.

A run larger than ``shard_size`` images (default 10,000) is split into shards of that many. WebDataset shards are
usually around 1 GB, and a loader deals whole shards out to its workers: 10,000 ImageNet-sized JPEGs (about 110 KB
each) make 1 GB, while 100,000 CIFAR-sized images (a 50 MB shard per 10,000) still give ten shards to spread over
workers. An index is 240 KB.
"""

from __future__ import annotations

import io
import os
import re
import stat
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from storage._base import EncodingOptions
from storage._durable import NO_FOLLOW, STAGING, fsync_path, read_own, write_new
from storage._errors import DamagedStoreError
from storage._parts import Part, PartsStore, decode_into
from storage._reading import is_consecutive, read_buffer

BLOCK = tarfile.BLOCKSIZE  # 512: tar headers and member data start on these
INDEX_SUFFIX = ".idx"
INDEX_NAME = re.compile(r"part-\d{8}\.tar\.idx")
INDEX_ROW = np.dtype("<i8")  # offset, size, label: three per image
MAX_NPY_HEADER = 1 << 16  # a version 1.0 .npy header is at most this long
SPAN_BYTES = 1 << 24  # a consecutive read takes at most this much of a shard at once (16 MiB)
EXTENSIONS = {"raw": "npy", "jpeg": "jpg"}  # member name endings that webdataset decodes; else the codec's name
OPEN_FLAGS = os.O_RDONLY | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
PREADV = hasattr(os, "preadv")


@dataclass(frozen=True)
class WebDatasetOptions(EncodingOptions):
    """`encoding` as for every parts store; `shard_size`: at most this many images per shard."""

    shard_size: int = 10_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be an int of at least 1, got {self.shard_size!r}")


def index_path(shard: Path) -> Path:
    """Where the index of `shard` lives."""
    return shard.with_name(shard.name + INDEX_SUFFIX)


def npy_header(part: Part) -> bytes:
    """The .npy header every raw member of `part` starts with."""
    buffer = io.BytesIO()
    layout = {"descr": npy.dtype_to_descr(part.dtype), "fortran_order": False, "shape": part.shape}
    npy.write_array_header_1_0(buffer, layout)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    """Add one regular file to `tar`, read-only as webdataset's TarWriter makes them."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o444
    tar.addfile(info, io.BytesIO(data))


def read_index(path: Path, count: int) -> np.ndarray:
    """The (count, 3) int64 index at `path`; DamagedStoreError unless it is exactly that, sized before reading."""
    if os.lstat(path).st_size > MAX_NPY_HEADER + count * 3 * INDEX_ROW.itemsize:
        raise DamagedStoreError(f"{path} is too large to index {count} images")
    data = read_own(path)
    stream = io.BytesIO(data)
    try:
        if npy.read_magic(stream) != (1, 0):
            raise ValueError("not a version 1.0 .npy file")
        shape, fortran_order, dtype = npy.read_array_header_1_0(stream)
    except (ValueError, TypeError, SyntaxError) as error:
        raise DamagedStoreError(f"{path} is no index ({error})") from None
    start = stream.tell()
    expected = start + count * 3 * INDEX_ROW.itemsize
    if dtype != INDEX_ROW or fortran_order or shape != (count, 3) or expected != len(data):
        raise DamagedStoreError(f"{path} holds a {dtype} array of shape {shape}, not {count} rows of 3 int64")
    return np.frombuffer(data, INDEX_ROW, offset=start).reshape(count, 3)


class Shard:
    """An open shard: its file, and where each image's member lies in it, checked against the shard's size."""

    def __init__(self, path: Path, part: Part) -> None:
        self.path, self.part = path, part
        self.lock = threading.Lock()  # for reads where the OS has no preadv: they share the file position
        self.fd = os.open(path, OPEN_FLAGS)
        try:
            info = os.fstat(self.fd)
            if not stat.S_ISREG(info.st_mode):
                raise DamagedStoreError(f"{path} is not a regular file")
            table = read_index(index_path(path), part.count)
            self.offsets, self.sizes, self.labels = (table[:, column].copy() for column in range(3))
            self._check(info.st_size)
        except BaseException:
            os.close(self.fd)
            raise

    def _check(self, file_size: int) -> None:
        offsets, sizes = self.offsets, self.sizes
        within = (offsets >= BLOCK) & (offsets % BLOCK == 0) & (offsets <= file_size) & (sizes >= 1)
        if not (within.all() and (sizes <= file_size).all()):
            raise DamagedStoreError(f"{index_path(self.path)} lists members outside {self.path}")
        self.ends = offsets + sizes  # both at most the file's size: no overflow
        if (self.ends > file_size).any() or (offsets[1:] < self.ends[:-1]).any():
            raise DamagedStoreError(f"{index_path(self.path)} lists members that overlap or pass the shard's end")
        if self.part.encoding != "raw":
            return
        self.header = np.frombuffer(npy_header(self.part), np.uint8)
        if (sizes != len(self.header) + self.part.image_bytes).any():
            raise DamagedStoreError(f"{index_path(self.path)} lists raw members of a size other than the layout's")
        self.stride = int(offsets[1] - offsets[0]) if len(offsets) > 1 else int(sizes[0])
        if (np.diff(offsets) != self.stride).any():  # as this store writes them: a strided view can reach all
            raise DamagedStoreError(f"{index_path(self.path)} lists raw members that are not equally spaced")

    def read_into(self, buffers: list[memoryview], offset: int) -> None:
        """Fill `buffers` (byte views), in order, from `offset` on: one preadv where the OS has it."""
        pending = [view for view in buffers if len(view)]
        while pending:
            if PREADV:
                got = os.preadv(self.fd, pending, offset)
            else:  # Windows: seek and read under a lock
                with self.lock:
                    os.lseek(self.fd, offset, os.SEEK_SET)
                    data = os.read(self.fd, len(pending[0]))
                pending[0][: len(data)] = data
                got = len(data)
            if not got:
                raise DamagedStoreError(f"{self.path} ends before a member its index lists")
            offset += got
            while pending and got >= len(pending[0]):
                got -= len(pending.pop(0))
            if got:
                pending[0] = pending[0][got:]

    def read_raw(self, local: np.ndarray, out: np.ndarray) -> None:
        """Pixels of raw images at `local` into the C-contiguous `out`, each member's header checked."""
        header_bytes, stride = len(self.header), self.stride
        if is_consecutive(local):
            first, count = int(local[0]), len(local)
            per_span = max(1, SPAN_BYTES // stride)
            buffer = read_buffer((min(count, per_span) * stride,), np.uint8, int(self.offsets[first]))
            for start in range(0, count, per_span):
                span = min(per_span, count - start)
                used = (span - 1) * stride + header_bytes + self.part.image_bytes
                self.read_into([memoryview(buffer[:used])], int(self.offsets[first + start]))
                rows = buffer[: span * stride].reshape(span, stride)
                self._check_headers(rows[:, :header_bytes])
                pixels = rows[:, header_bytes : header_bytes + self.part.image_bytes]
                out[start : start + span] = pixels.view(self.part.dtype).reshape(span, *self.part.shape)
            return
        headers = np.empty((len(local), header_bytes), np.uint8)
        header_views = memoryview(headers.reshape(-1))
        pixel_views = memoryview(out.reshape(-1).view(np.uint8))
        size = self.part.image_bytes
        for position, offset in enumerate(self.offsets[local].tolist()):
            place = slice(position * header_bytes, (position + 1) * header_bytes)
            self.read_into([header_views[place], pixel_views[position * size : (position + 1) * size]], offset)
        self._check_headers(headers)

    def _check_headers(self, headers: np.ndarray) -> None:
        if (headers != self.header).any():
            raise DamagedStoreError(f"{self.path} holds a .npy member whose header is not its recorded layout's")

    def records(self, local: np.ndarray):
        """The encoded members at `local`, in order; consecutive ones read a span at a time."""
        if not is_consecutive(local):
            for image_id in local.tolist():
                yield self._span(image_id, image_id + 1)[0]
            return
        image_id, stop = int(local[0]), int(local[-1]) + 1
        while image_id < stop:
            limit = int(np.searchsorted(self.ends, self.offsets[image_id] + SPAN_BYTES, "right"))
            after = min(stop, max(image_id + 1, limit))
            span, base = self._span(image_id, after)
            for member in range(image_id, after):
                yield span[int(self.offsets[member]) - base : int(self.ends[member]) - base]
            image_id = after

    def _span(self, first: int, stop: int) -> tuple[memoryview, int]:
        """The bytes from member `first`'s start to member `stop - 1`'s end, and the offset they start at."""
        base = int(self.offsets[first])
        span = memoryview(bytearray(int(self.ends[stop - 1]) - base))
        self.read_into([span], base)
        return span, base

    def close(self) -> None:
        os.close(self.fd)


class WebDatasetStore(PartsStore):
    name = "webdataset"
    suffix = ".tar"
    Options = WebDatasetOptions

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        indexes = [Path(entry.path) for entry in os.scandir(location) if INDEX_NAME.fullmatch(entry.name)]
        return [*super().files(location), *sorted(indexes)]

    @classmethod
    def part_files(cls, location: Path, number: int) -> list[Path]:
        shard = cls.part_path(location, number)
        return [shard, index_path(shard)]

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        """Runs split into shards of at most `shard_size` images, then written as the skeleton does."""
        size = self.options.shard_size
        shards = [batch[start : start + size] for batch in batches for start in range(0, len(batch), size)]
        self._next_id = self._count()  # the key of the next image written
        super()._append(shards, labels)

    def _write_part(self, path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        part = Part(len(images), images.shape[1:], images.dtype, self.codec.name)
        raw = part.encoding == "raw"
        header = npy_header(part) if raw else b""
        extension = EXTENSIONS.get(part.encoding, part.encoding)
        table = np.empty((part.count, 3), INDEX_ROW)
        table[:, 2] = labels
        mtime = int(time.time())
        with path.open("xb") as file, tarfile.open(fileobj=file, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for position, (image, label) in enumerate(zip(images, labels.tolist())):
                key = f"{self._next_id + position:09d}"
                add_member(tar, f"{key}.cls", str(label).encode("ascii"), mtime)
                data = header + image.tobytes() if raw else self.codec.encode(image)
                add_member(tar, f"{key}.{extension}", data, mtime)
                table[position, :2] = file.tell() - -(-len(data) // BLOCK) * BLOCK, len(data)  # data, then padding
        index = index_path(path.with_name(path.name.split(STAGING)[0]))
        buffer = io.BytesIO()
        npy.write_array(buffer, table, version=(1, 0), allow_pickle=False)
        write_new(index, buffer.getvalue())
        if self.durable:
            fsync_path(index)  # its directory entry is flushed with the shard's, before the manifest
        self._next_id += part.count

    def _open_part(self, path: Path, part: Part) -> tuple[Shard, np.ndarray]:
        shard = Shard(path, part)
        return shard, shard.labels

    def _read_part(self, handle: Shard, part: Part, local: np.ndarray, out: np.ndarray) -> None:
        if part.encoding != "raw":
            decode_into(part, handle.records(local), out)
        elif out.flags.c_contiguous:
            handle.read_raw(local, out)
        else:
            contiguous = np.empty_like(out)
            handle.read_raw(local, contiguous)
            out[...] = contiguous

    def _close_part(self, handle: Shard) -> None:
        handle.close()
