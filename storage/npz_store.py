"""npz: a NumPy archive, each uniform run of an append one stored ``.npy`` member.

``images_00000000.npy`` holds a (n, H, W[, C]) batch and ``labels_00000000.npy`` its int64
labels. An append adds members to a copy of the archive and renames it over the store, so a
crash or a reader sees the old or the new archive, never a half-written one; ``numpy.load``
opens the file as usual. Members are stored uncompressed, so reads go straight
from the file into the result; nothing is ever unpickled.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from storage._base import (
    NUMERIC_KINDS,
    Batch,
    DamagedStoreError,
    Store,
    gather_runs,
    is_consecutive,
    make_durable,
    staged_copy,
    staging_path,
)

COMMENT = b"imagestore-npz-1"
MEMBER = re.compile(r"(images|labels)_(\d{8})\.npy")
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length


class NpzStore(Store):
    name = "npz"
    is_directory = False

    def __init__(self, path: Path, writable: bool, create: bool, *, durable: bool = True) -> None:
        """`durable`: flush each append to disk (fsync) before it returns."""
        super().__init__(path, writable, durable)
        if create:
            with zipfile.ZipFile(path, "x") as archive:
                archive.comment = COMMENT
            if durable:
                make_durable([path], path.parent)
        self._file = path.open("rb")
        self._map: mmap.mmap | None = None
        self._index()

    @classmethod
    def is_store(cls, path: Path) -> bool:
        if not (path.is_file() and zipfile.is_zipfile(path)):
            return False
        try:
            with zipfile.ZipFile(path) as archive:
                return archive.comment == COMMENT
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return False

    @classmethod
    def files(cls, path: Path) -> list[Path]:
        return [path, *filter(Path.exists, [staging_path(path)])]

    def _index(self) -> None:
        """Locate every member's array in the file."""
        self._close_map()
        with zipfile.ZipFile(self._file) as archive:
            if archive.comment != COMMENT:
                raise ValueError(f"{self.path} is a zip archive that is no npz image store")
            members = {
                MEMBER.fullmatch(info.filename).groups(): info
                for info in archive.infolist()
                if MEMBER.fullmatch(info.filename)
            }
        count = len(members) // 2
        if sorted(members) != sorted((kind, f"{run:08d}") for kind in ("images", "labels") for run in range(count)):
            raise DamagedStoreError(f"{self.path} does not hold matching images and labels members")
        self._runs = [self._locate(members["images", f"{run:08d}"]) for run in range(count)]
        labels = []
        for run in range(count):
            dtype, shape, offset = self._locate(members["labels", f"{run:08d}"])
            if dtype != np.dtype("<i8") or shape != (self._runs[run][1][0],):
                raise DamagedStoreError(
                    f"{self.path}: labels of run {run} are {dtype} {shape}, not one int64 per image"
                )
            labels.append(self._read_bytes(offset, np.empty(shape, dtype)))
        self._labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        self._starts = np.cumsum([0] + [shape[0] for _, shape, _ in self._runs])
        self._layouts = [(shape[1:], dtype) for dtype, shape, _ in self._runs]

    def _locate(self, info: zipfile.ZipInfo) -> tuple[np.dtype, tuple[int, ...], int]:
        """dtype, shape and file offset of the array in one stored .npy member."""
        if info.compress_type != zipfile.ZIP_STORED:
            raise DamagedStoreError(
                f"{self.path}: member {info.filename} is compressed; this store writes stored members"
            )
        self._file.seek(info.header_offset)
        signature, name_length, extra_length = LOCAL_HEADER.unpack(self._file.read(LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise DamagedStoreError(f"{self.path}: member {info.filename} has no local header")
        start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
        self._file.seek(start)
        if npy.read_magic(self._file) != (1, 0):  # what this store writes; 2.0 headers give a 4-byte length to forge
            raise DamagedStoreError(f"{self.path}: member {info.filename} is not a version 1.0 .npy array")
        shape, fortran_order, dtype = npy.read_array_header_1_0(self._file)
        if fortran_order or dtype.kind not in NUMERIC_KINDS or len(shape) not in (1, 3, 4):
            raise DamagedStoreError(f"{self.path}: member {info.filename} holds a {dtype} array of shape {shape}")
        offset = self._file.tell()
        if offset - start + int(np.prod(shape)) * dtype.itemsize != info.file_size:
            raise DamagedStoreError(
                f"{self.path}: member {info.filename} is {info.file_size} bytes, not what its header says"
            )
        return dtype, shape, offset

    def _read_bytes(self, offset: int, out: np.ndarray) -> np.ndarray:
        """Fill `out` from `offset`; positioned reads (Linux, BSD) leave no shared file position for threads."""
        target = memoryview(out.reshape(-1).view(np.uint8))
        done = 0
        while done < len(target):  # one read(2) returns at most about 2 GiB
            if hasattr(os, "preadv"):
                got = os.preadv(self._file.fileno(), [target[done:]], offset + done)
            else:  # macOS, Windows: a shared file position
                self._file.seek(offset + done)
                got = self._file.readinto(target[done:])
            if not got:
                raise DamagedStoreError(f"{self.path} ends before the data it lists")
            done += got
        return out

    def _count(self) -> int:
        return int(self._starts[-1])

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        offset = 0
        # zipfile's append mode overwrites the central directory in place: append to a copy instead
        with staged_copy(self.path, self.durable) as staging, zipfile.ZipFile(staging, "a") as archive:
            for run, batch in enumerate(batches, len(self._runs)):
                for kind, array in (("images", batch), ("labels", labels[offset : offset + len(batch)])):
                    with archive.open(f"{kind}_{run:08d}.npy", "w", force_zip64=True) as member:
                        npy.write_array_header_1_0(member, npy.header_data_from_array_1_0(array))
                        member.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # no chunk copies
                offset += len(batch)
        self._file.close()
        self._file = self.path.open("rb")
        self._index()

    def _read_run(self, run: int, local: np.ndarray, out: np.ndarray) -> None:
        dtype, shape, offset = self._runs[run]
        image_bytes = out[0].nbytes
        if is_consecutive(local):
            self._read_bytes(offset + int(local[0]) * image_bytes, out)
            return
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        run_array = np.frombuffer(self._map, dtype, int(np.prod(shape)), offset).reshape(shape)
        np.take(run_array, local, axis=0, out=out)

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        offsets = [offset for _, _, offset in self._runs]
        return gather_runs(ids, self._starts, self._layouts, self._read_run, offsets), self._labels[ids]

    def _close_map(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def _close(self) -> None:
        self._close_map()
        self._file.close()
