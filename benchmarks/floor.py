"""The floors: what no format can beat on this machine.

`FLOOR`, the `limit` row of the tables of local stores: the same pixel bytes through one plain file. It opens like
a store (``FLOOR.open(path, mode, durable=...)``) and its handle appends and reads like one, so an experiment times
it with the same code as every backend: an append writes the pixel bytes (no labels) and fsyncs when durable; a
read of everything takes the whole file into a fresh buffer placed for a fast copy, as the backends' reads are,
and returns it with no labels. A read of some ids (random access, batches) copies just their bytes, once, out of
a memory map of the file made by the first such read, as the fastest backends do; for that the floor remembers the
sizes of the images it wrote (in this process: the benchmarks build and read their stores in one session).

`OBJECT_FLOOR`, the `limit` row of the object-store tables: the same pixel bytes as one object, stored with one
PUT and read with one GET; some ids are read with ranged GETs of that object (obstore's ``get_ranges`` merges
near ones), as `FLOOR` remembering where each image is.

`CodecFloor(codec)`, the `limit-<codec>` rows of the store-many, read-many (warm and cold) and growth
tables that hold a backend writing encoded images: the codec alone, no container and no files. Its append encodes
each image into memory; its read decodes the bytes held in memory into one array, as the
backends' reads do. A backend's ratio to it is what its container and code add to its codec.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

from storage._reading import read_buffer, stack_or_list
from storage.codecs import Codec

FILE_FLAGS = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}


def pixel_bytes(images: np.ndarray | list) -> np.ndarray:
    """All pixel bytes of `images` as one flat uint8 array (no copy for a contiguous batch)."""
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images).reshape(-1).view(np.uint8)
    return np.concatenate([np.ascontiguousarray(image).reshape(-1).view(np.uint8) for image in images])


def image_starts(runs: list[tuple[int, int]]) -> np.ndarray:
    """Where each image of `runs` ((count, bytes of each) per append) starts among their bytes, and where they end."""
    if not runs:
        raise ValueError("the floor knows where the images are only in what it wrote")
    counts, sizes = np.array(runs, np.int64).T
    return np.concatenate([[0], np.cumsum(np.repeat(sizes, counts))])


def image_runs(images: np.ndarray | list) -> list[tuple[int, int]]:
    """`images` as (count, bytes of each) runs: one for a batch (no object per image: the peak memory stays flat),
    one per image for a list."""
    if isinstance(images, np.ndarray):
        return [(len(images), images[0].nbytes)] if len(images) else []
    return [(1, image.nbytes) for image in images]


def picked_ids(ids: object, count: int) -> np.ndarray:
    """`ids` (a sequence of ints or a slice) of `count` images, as an array."""
    return np.arange(*ids.indices(count)) if isinstance(ids, slice) else np.asarray(ids, np.int64)


class PlainFile:
    """An open plain file of pixel bytes, with a store's methods: POSIX file descriptors, no Python buffering.
    `runs` lists the images written to the file as (count, bytes of each) pairs, one per append of one size."""

    def __init__(self, path: Path, mode: str, durable: bool, runs: list[tuple[int, int]]) -> None:
        self.path = path
        self.descriptor = os.open(path, FILE_FLAGS[mode] | getattr(os, "O_BINARY", 0), 0o644)
        self.durable = durable
        self.runs = runs
        self.mapped: np.memmap | None = None  # made by the first read of some ids: a whole read needs none
        self.rows: np.ndarray | None = None  # the map as one row per image, or as where each image starts

    def append(self, images: np.ndarray | list, labels: object = None) -> None:
        """Write the pixel bytes of `images` at the end (labels are not kept); fsync when durable."""
        data = memoryview(pixel_bytes(images))
        while data:  # one write(2) takes at most about 2 GiB
            data = data[os.write(self.descriptor, data) :]
        if self.durable:
            os.fsync(self.descriptor)
        self.runs += image_runs(images)
        self.mapped = self.rows = None

    def read_ids(self, ids: object) -> tuple[np.ndarray, None]:
        """The pixel bytes of the images at `ids` (a sequence of ints or a slice), one after another, and no
        labels: each image's bytes copied once out of the file's memory map."""
        if self.rows is None:  # once per open file (the first, untimed round), not in every timed read
            self._map()
        picked = picked_ids(ids, len(self.rows) - 1)
        if self.mapped.ndim == 2:  # one size: a gather of rows
            return self.mapped[picked].reshape(-1), None
        starts = self.rows
        return np.concatenate([self.mapped[starts[i] : starts[i + 1]] for i in picked.tolist()]), None

    def _map(self) -> None:
        """Map the file: as one row per image when they are of one size, else flat with where each starts."""
        self.rows = image_starts(self.runs)
        self.mapped = np.memmap(self.path, np.uint8, "r", shape=(int(self.rows[-1]),))
        sizes = np.array(self.runs, np.int64)[:, 1]
        if (sizes == sizes[0]).all():
            self.mapped = self.mapped.reshape(-1, int(sizes[0]))

    def __getitem__(self, image_id: int) -> tuple[np.ndarray, None]:
        return self.read_ids([image_id])

    def read(self, ids: object = None) -> tuple[np.ndarray, None]:
        """Every byte of the file in a fresh array, or those of the images at `ids` (`read_ids`), and no labels."""
        if ids is not None:
            return self.read_ids(ids)
        size = os.fstat(self.descriptor).st_size
        out = read_buffer((size,), np.uint8)
        done = os.readv(self.descriptor, [out])
        while done < size:  # one read(2) returns at most about 2 GiB
            got = os.readv(self.descriptor, [out[done:]])
            if not got:
                raise ValueError(f"{self.path} ended after {done} of {size} bytes")
            done += got
        return out, None

    def close(self) -> None:
        self.mapped = self.rows = None  # the map goes with the last view of it
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def __enter__(self) -> PlainFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


FLOOR_NAME = "limit"


class Floor:
    """Opens plain files of pixel bytes; named `limit` in every table of local stores."""

    name = FLOOR_NAME
    local = True

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[int, int]]] = {}  # per file: its images, as (count, bytes of each)

    def open(self, path: Path, mode: str = "r", *, durable: bool = True) -> PlainFile:
        if mode == "x":
            self.runs[str(path)] = []
        return PlainFile(path, mode, durable, self.runs.setdefault(str(path), []))

    def files(self, path: Path) -> list[Path]:
        return [path]

    def copy(self, source: Path, target: Path) -> None:
        """Copy the file at `source` to `target`, with where its images begin (a growth round's start)."""
        shutil.copy2(source, target)
        self.runs[str(target)] = list(self.runs.get(str(source), []))


FLOOR = Floor()


class EncodedImages:
    """The images of a codec floor at one path, held in memory: appended by encoding, read by decoding."""

    def __init__(self, floor: CodecFloor, path: Path, mode: str) -> None:
        if mode == "x":
            floor.held[path] = ([], [], [])
        elif path not in floor.held:
            raise FileNotFoundError(errno.ENOENT, f"no {floor.name} images", str(path))
        self.codec = floor.codec
        self.encoded, self.layouts, self.labels = floor.held[path]

    def append(self, images: np.ndarray | list, labels: object) -> None:
        """Encode every image into memory."""
        encode = self.codec.encode
        self.encoded.extend(encode(image) for image in images)
        self.layouts.extend((image.shape, image.dtype) for image in images)
        self.labels.extend(np.asarray(labels).tolist())

    def read(self) -> tuple[np.ndarray | list, np.ndarray]:
        """Decode every image into one array (a list when their layouts differ), and the labels."""
        decode = self.codec.decode
        decoded = (decode(data, shape, dtype) for data, (shape, dtype) in zip(self.encoded, self.layouts))
        return stack_or_list(decoded, len(self.encoded)), np.array(self.labels, np.int64)

    def close(self) -> None:
        pass

    def __enter__(self) -> EncodedImages:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def codec_floor_name(codec: Codec) -> str:
    """The row of `codec` alone: ``limit-png-imagecodecs-level1``."""
    return f"{FLOOR_NAME}-{codec.label}"


class CodecFloor:
    """Encodes and decodes with one codec and its settings, in memory; named `limit-<codec label>`."""

    local = True

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.name = codec_floor_name(codec)
        self.held: dict[Path, tuple[list, list, list]] = {}  # per path: encoded images, their layouts, labels

    def open(self, path: Path, mode: str = "r", *, durable: bool = True) -> EncodedImages:
        return EncodedImages(self, path, mode)

    def files(self, path: Path) -> list[Path]:
        return []  # nothing on disk

    def copy(self, source: Path, target: Path) -> None:
        """Hold at `target` what `source` holds, as a copy of a store's files would (a growth round's start)."""
        self.held[target] = tuple(list(kept) for kept in self.held[source])


class ObjectFile:
    """One object of pixel bytes in an object store, with a store's methods: one PUT; one GET for all of it; one
    ranged GET for some consecutive ids, or obstore's ``get_ranges`` for any ids, as the fastest object reads do.
    `runs` lists the images written, as `PlainFile.runs`."""

    def __init__(self, location: object, mode: str, runs: list[tuple[int, int]]) -> None:
        from storage._objects import ObjectLocation  # obstore: only where the object-store backends are installed

        self.location = ObjectLocation.parse(location)
        self.client = self.location.client()
        self.runs = runs
        self.starts: np.ndarray | None = None  # made by the first read of some ids: a whole read needs none
        self.requests = self.bytes_transferred = 0
        if mode == "r":
            import obstore

            obstore.head(self.client, OBJECT_KEY)  # FileNotFoundError (obstore's NotFoundError) if it is not there

    def append(self, images: np.ndarray | list, labels: object = None) -> None:
        """PUT the pixel bytes of `images` as one object, in one request (labels are not kept)."""
        import obstore

        data = pixel_bytes(images)
        obstore.put(self.client, OBJECT_KEY, memoryview(data), use_multipart=False)
        self._count(1, data.nbytes)
        self.runs[:] = image_runs(images)  # the PUT replaced the object
        self.starts = None

    def read(self, ids: object = None) -> tuple[np.ndarray, None]:
        """GET the object in one request: its bytes as an array, as the client hands them over (no copy); or those
        of the images at `ids` (`read_ids`). No labels."""
        import obstore

        if ids is not None:
            return self.read_ids(ids)
        data = np.frombuffer(obstore.get(self.client, OBJECT_KEY).bytes(), np.uint8)
        self._count(1, data.nbytes)
        return data, None

    def read_ids(self, ids: object) -> tuple[np.ndarray, None]:
        """The pixel bytes of the images at `ids` (a sequence of ints or a slice), one after another: a slice in one
        ranged GET; other ids through ``get_ranges``, which merges ranges at most `COALESCE` bytes apart into one
        GET and sends up to 10 at once. The requests and bytes counted are those of that documented merging."""
        import obstore

        if self.starts is None:  # once per open object (the first, untimed round), not in every timed read
            self.starts = image_starts(self.runs)
        picked = picked_ids(ids, len(self.starts) - 1)
        starts, ends = self.starts[picked], self.starts[picked + 1]
        if isinstance(ids, slice):
            data = obstore.get_range(self.client, OBJECT_KEY, start=int(starts[0]), end=int(ends[-1]))
            data = np.frombuffer(data, np.uint8)
            self._count(1, data.nbytes)
            return data, None
        parts = obstore.get_ranges(
            self.client, OBJECT_KEY, starts=starts.tolist(), ends=ends.tolist(), coalesce=COALESCE
        )
        self._count(*merged(starts, ends, COALESCE))
        return np.concatenate([np.frombuffer(part, np.uint8) for part in parts]), None

    def __getitem__(self, image_id: int) -> tuple[np.ndarray, None]:
        return self.read_ids(slice(image_id, image_id + 1))

    def _count(self, requests: int, nbytes: int) -> None:
        self.requests, self.bytes_transferred = self.requests + requests, self.bytes_transferred + nbytes

    def close(self) -> None:
        pass

    def __enter__(self) -> ObjectFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


OBJECT_KEY = "pixels"
COALESCE = 1 << 20  # ranges at most this far apart share one GET (obstore's default, and s3-shards' gap_bytes)


def merged(starts: np.ndarray, ends: np.ndarray, gap: int) -> tuple[int, int]:
    """The GETs and bytes of reading ranges `starts`-`ends` with neighbours at most `gap` bytes apart merged into
    one GET, as object_store's ``merge_ranges`` (under obstore's ``get_ranges``) does."""
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(ends[order])
    apart = np.flatnonzero(starts[1:] - ends[:-1] > gap)  # a new GET starts after each of these
    first, last = np.concatenate([[0], apart + 1]), np.concatenate([apart, [len(starts) - 1]])
    return len(first), int((ends[last] - starts[first]).sum())


class ObjectFloor:
    """`limit` of the object-store tables: the pixel bytes as one object, stored with one PUT and read with one
    GET, the transport's limit between this machine and the server; some ids are read with ranged GETs."""

    name = FLOOR_NAME
    local = False

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[int, int]]] = {}  # per object: its images, as (count, bytes of each)

    def open(self, location: object, mode: str = "r", *, durable: bool = True) -> ObjectFile:
        return ObjectFile(location, mode, self.runs.setdefault(str(location), []))

    def files(self, location: object) -> list[str]:
        from storage._objects import ObjectLocation, _listed

        located = ObjectLocation.parse(location)
        return [f"{located}/{entry['path']}" for entry in _listed(located, "")]

    def disk_usage(self, location: object) -> int:
        from storage._objects import ObjectLocation, _listed

        return sum(int(entry["size"]) for entry in _listed(ObjectLocation.parse(location), ""))


OBJECT_FLOOR = ObjectFloor()
