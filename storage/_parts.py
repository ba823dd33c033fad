"""The skeleton of a store kept as a directory of parts (arrow, parquet, webdataset, zarr): each part one uniform
run of images, written by the format's own library as a file (or a directory), listed in a manifest.

``manifest.json`` names the format and lists each part's image count, image shape, dtype and encoding; part ``i``
lives at ``part-<i in 8 digits><suffix>``. An append writes each new run as a part at a staging name, flushes it,
renames it to its own name and flushes the directory; then it replaces the manifest (written new, flushed,
renamed over the old). The manifest is the commit record: a part it does not list, left by an interrupted append,
is ignored, overwritten by the next append and deleted by the next writer. A listed part never changes, so an
append opens only the parts it added.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import stat
from abc import abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from storage import codecs
from storage._base import Capabilities, EncodingOptions, Store
from storage._durable import (
    STAGING,
    fsync_path,
    make_durable,
    read_own,
    remove_leftovers,
    replace_atomically,
    staging_leftovers,
    staging_path,
)
from storage._errors import DamagedStoreError
from storage._reading import Batch, gather_runs
from storage.codecs import MAX_EXPANSION, MAX_SIDE, NUMERIC_KINDS, Codec

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 30  # far beyond any real manifest (about 80 bytes a part): refused before parsing
PART_KEYS = {"count", "shape", "dtype", "encoding"}


class Part(NamedTuple):
    """What the manifest says of one part: `count` images of one `shape` and `dtype`, held as `encoding`."""

    count: int
    shape: tuple[int, ...]
    dtype: np.dtype
    encoding: str

    @property
    def codec(self) -> Codec:
        return codecs.get(self.encoding)

    @property
    def image_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class PartsStore(Store):
    capabilities = Capabilities(directory=True)
    Options = EncodingOptions
    suffix: ClassVar[str]  # a part's file name ending, ".arrow" say
    part_is_directory: ClassVar[bool] = False  # whether the library writes a part as a directory of files

    # --- what a backend provides ---------------------------------------------------

    @abstractmethod
    def _write_part(self, path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        """Write one uniform run, held as ``self.codec`` says, as a complete new part at `path`."""

    @abstractmethod
    def _open_part(self, path: Path, part: Part) -> tuple[object, np.ndarray]:
        """Open a listed part: a handle for `_read_part`, and its int64 labels; DamagedStoreError where the part
        disagrees with `part`."""

    @abstractmethod
    def _read_part(self, handle: object, part: Part, local: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` with the part's images at `local` (ids counted within the part), in that order."""

    def _close_part(self, handle: object) -> None:
        """Release what `_open_part` opened."""

    # --- the skeleton ----------------------------------------------------------------

    @classmethod
    def format_name(cls) -> str:
        return f"imagestore-{cls.name}-1"

    @classmethod
    def part_path(cls, location: Path, number: int) -> Path:
        return location / f"part-{number:08d}{cls.suffix}"

    @classmethod
    def part_files(cls, location: Path, number: int) -> list[Path]:
        """The files of part `number`: the part, and whatever a backend keeps beside it."""
        return [cls.part_path(location, number)]

    @classmethod
    def is_store(cls, location: Path) -> bool:
        manifest = location / MANIFEST
        if not manifest.is_file():
            return False
        with manifest.open("rb") as file:
            return file.read(200).startswith(b'{"format": "%s"' % cls.format_name().encode())

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        part_name = re.compile(rf"part-\d{{8}}{re.escape(cls.suffix)}")
        found = []
        for entry in sorted(os.scandir(location), key=lambda entry: entry.name):
            path = Path(entry.path)
            if entry.name == MANIFEST or path == cls.writer_lock(location):
                found.append(path)
            elif part_name.fullmatch(entry.name.split(STAGING)[0]):  # a part or its staging copy
                found.extend(_tree(path) if entry.is_dir(follow_symlinks=False) else [path])
        return [*found, *staging_leftovers(location / MANIFEST)]

    def _commit_file(self) -> Path:
        return self.location / MANIFEST

    def _sweep(self) -> None:
        """Delete staging copies, and parts the manifest on disk does not list: killed writers left them."""
        remove_leftovers(self.location / MANIFEST)
        listed = len(self._read_manifest(self.location / MANIFEST))  # newer than this object's, maybe
        keep = {path.name for number in range(listed) for path in self.part_files(self.location, number)}
        for entry in os.scandir(self.location):
            if entry.name.startswith("part-") and entry.name not in keep:
                _remove(Path(entry.path))

    def _start(self, create: bool) -> None:
        manifest = self.location / MANIFEST
        if create:
            self.location.mkdir(exist_ok=True)
            replace_atomically(manifest, self._manifest_bytes([]), self.durable)
        self._parts: list[Part] = []
        self._handles: list[object] = []
        self._label_runs: list[np.ndarray] = []
        try:
            self._add_parts(self._read_manifest(manifest))
        except BaseException:  # a damaged later part: release the parts opened before it
            self._close()
            raise

    def _read_manifest(self, manifest: Path) -> list[Part]:
        if os.lstat(manifest).st_size > MAX_MANIFEST_BYTES:
            raise DamagedStoreError(f"{manifest} is too large to be a manifest")
        try:
            listed = json.loads(read_own(manifest))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise DamagedStoreError(f"{manifest} is no manifest ({error})") from None
        if not isinstance(listed, dict) or listed.get("format") != self.format_name():
            raise ValueError(f"{self.location} is no {self.name} image store")
        if set(listed) != {"format", "parts"} or not isinstance(listed["parts"], list):
            raise DamagedStoreError(f"{manifest} does not list parts")
        return [checked_part(entry, manifest) for entry in listed["parts"]]

    def _manifest_bytes(self, parts: Iterable[Part]) -> bytes:
        entries = [
            {"count": p.count, "shape": list(p.shape), "dtype": p.dtype.str, "encoding": p.encoding} for p in parts
        ]
        return json.dumps({"format": self.format_name(), "parts": entries}).encode()

    def _add_parts(self, parts: list[Part]) -> None:
        """Open `parts`, the next ones after those already open, checking each against its size on disk."""
        for part in parts:
            path = self.part_path(self.location, len(self._parts))
            size = _own_size(path, self.part_is_directory)
            if part.count * part.image_bytes > MAX_EXPANSION * size:  # Python ints: a forged size cannot wrap
                raise DamagedStoreError(f"{path} is {size} bytes; the manifest says it holds {part.count} images")
            handle, labels = self._open_part(path, part)
            if labels.dtype != np.int64 or labels.shape != (part.count,):
                self._close_part(handle)
                raise DamagedStoreError(f"{path} holds {labels.shape} {labels.dtype} labels, not {part.count} int64")
            self._parts.append(part)
            self._handles.append(handle)
            self._label_runs.append(labels)
        self._starts = np.cumsum([0, *(part.count for part in self._parts)])
        self._layouts = [(part.shape, part.dtype) for part in self._parts]
        self._labels = np.concatenate(self._label_runs) if self._label_runs else np.empty(0, np.int64)

    def _count(self) -> int:
        return int(self._starts[-1])

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        bounds = np.cumsum([0, *map(len, batches)])
        new_parts, written = [], []
        try:
            for number, (batch, start, stop) in enumerate(zip(batches, bounds, bounds[1:]), len(self._parts)):
                path = self.part_path(self.location, number)
                staging = staging_path(path)
                written += [staging, *self.part_files(self.location, number)]  # what a failure leaves, if anything
                self._write_part(staging, batch, labels[start:stop])
                if self.durable:
                    make_durable(_tree(staging), staging if self.part_is_directory else self.location)
                if os.path.lexists(path):  # left by an interrupted append: never listed
                    _remove(path)
                os.rename(staging, path)
                new_parts.append(Part(len(batch), batch.shape[1:], batch.dtype, self.codec.name))
            if self.durable:
                fsync_path(self.location)  # the parts' names are on disk before the manifest lists them
            manifest = self._manifest_bytes([*self._parts, *new_parts])
            replace_atomically(self.location / MANIFEST, manifest, self.durable)
        except BaseException:
            if not self._committed_beyond(len(self._parts)):  # uncommitted: a full disk is left as it was
                for path in written:
                    _remove(path)
            raise
        self._add_parts(new_parts)

    def _committed_beyond(self, count: int) -> bool:
        """Whether the manifest on disk lists more than `count` parts: a failure after the rename (flushing the
        directory, say) must not delete committed parts; when that cannot be told, they are kept."""
        try:
            return len(self._read_manifest(self.location / MANIFEST)) > count
        except (OSError, ValueError):
            return True

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        images = gather_runs(ids, self._starts, self._layouts, self._read_run)
        return images, self._labels[ids]

    def _read_run(self, run: int, local: np.ndarray, out: np.ndarray) -> None:
        self._read_part(self._handles[run], self._parts[run], local, out)

    def _close(self) -> None:
        for handle in self._handles:
            self._close_part(handle)
        self._handles = []


def checked_part(entry: object, where: object, extra: tuple[str, ...] = ()) -> Part:
    """A manifest's entry of one part (with `extra` keys too: what an object store's run adds), checked: a forged
    entry is DamagedStoreError naming `where`, before anything is allocated for it."""
    try:
        if not isinstance(entry, dict) or set(entry) != PART_KEYS | set(extra):
            raise TypeError("not a part")
        count, shape, dtype_name, encoding = entry["count"], entry["shape"], entry["dtype"], entry["encoding"]
        if not (isinstance(count, int) and count > 0 and isinstance(shape, list) and len(shape) in (2, 3)):
            raise TypeError("bad count or shape")
        if not all(isinstance(side, int) and 1 <= side <= MAX_SIDE for side in shape):
            raise TypeError("bad shape")
        if not isinstance(dtype_name, str) or not isinstance(encoding, str):
            raise TypeError("bad dtype or encoding")
        dtype = np.dtype(dtype_name)
        part = Part(count, tuple(shape), dtype, encoding)
        if dtype.kind not in NUMERIC_KINDS or dtype.byteorder == ">" or not part.codec.accepts(dtype, part.shape):
            raise TypeError("a layout no writer makes")
    except (TypeError, ValueError) as error:
        raise DamagedStoreError(f"{where} lists a part that no writer makes: {entry!r} ({error})") from None
    return part


def decode_into(part: Part, records: Iterable[bytes | memoryview], out: np.ndarray) -> None:
    """Decode encoded records of `part` into `out`, one image each, checked against the part's layout."""
    codec = part.codec
    for position, record in enumerate(records):
        out[position] = codec.decode(record, part.shape, part.dtype)


def _own_size(path: Path, directory: bool) -> int:
    """Bytes in a part, which must be a regular file (or a directory of them), never a symlink out of the store."""
    info = os.lstat(path)
    if directory and stat.S_ISDIR(info.st_mode):
        for root, directories, _ in os.walk(path):  # os.walk lists a symlinked directory but does not enter it
            for name in directories:
                if os.path.islink(os.path.join(root, name)):
                    raise DamagedStoreError(f"{os.path.join(root, name)} is a symlink, not a directory of the store")
        return sum(_own_size(file, False) for file in _tree(path))
    if not stat.S_ISREG(info.st_mode):
        raise DamagedStoreError(f"{path} is not a regular file of the store")
    return info.st_size


def _tree(path: Path) -> list[Path]:
    """`path` if a file, else every file below the directory `path`."""
    if not path.is_dir() or path.is_symlink():
        return [path]
    return sorted(Path(root) / name for root, _, names in os.walk(path) for name in names)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
