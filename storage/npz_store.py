"""npz: a NumPy archive, each uniform run of an append one stored ``.npy`` member.

``images_00000000.npy`` holds a (n, H, W[, C]) batch and ``labels_00000000.npy`` its int64
labels. An append adds members to a copy of the archive and renames it over the store, so a
crash or a reader sees the old or the new archive, never a half-written one; ``numpy.load``
opens the file as usual. Members are stored uncompressed by default, so reads go straight
from the file into the result; with ``compression="deflate"`` new members are deflated (the
layout of ``numpy.savez_compressed``) and a read inflates each member it needs from its start.
Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy

from storage._base import Options
from storage._errors import DamagedStoreError
from storage._reading import is_consecutive
from storage._runs import RunFileStore
from storage.codecs import MAX_EXPANSION, NUMERIC_KINDS

COMMENT = b"imagestore-npz-1"
MEMBER = re.compile(r"(images|labels)_(\d{8})\.npy")
LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
PAGE_OF_HEADERS = 4096  # a deflated member may hold this much more than MAX_EXPANSION allows its pixels
COMPRESSIONS = {None: zipfile.ZIP_STORED, "deflate": zipfile.ZIP_DEFLATED}


class Member(NamedTuple):
    """One .npy member: its array's dtype and shape, and where the array's bytes start."""

    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int | None  # in the archive file, for a stored member; None for a deflated one
    info: zipfile.ZipInfo
    header_bytes: int  # the .npy header before the array, inside the member


@dataclass(frozen=True)
class NpzOptions(Options):
    """`compression`: None (stored members) or "deflate" for new members; any store reads both."""

    compression: str | None = None

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be None or deflate; got {self.compression!r}")


class NpzStore(RunFileStore):
    name = "npz"
    Options = NpzOptions

    @classmethod
    def is_store(cls, location: Path) -> bool:
        if not (location.is_file() and zipfile.is_zipfile(location)):
            return False
        try:
            with zipfile.ZipFile(location) as archive:
                return archive.comment == COMMENT
        except Exception:  # unreadable (zipfile raises BadZipFile, NotImplementedError, ...): damaged, or not ours
            return False

    def _create(self, location: Path) -> None:
        with zipfile.ZipFile(location, "x") as archive:
            archive.comment = COMMENT

    def _open(self) -> None:
        """Locate every member's array in the file."""
        self._file = self.location.open("rb")
        self._map: mmap.mmap | None = None
        try:
            self._archive = zipfile.ZipFile(self._file)  # kept open to inflate deflated members
        except BaseException:  # not a zip archive (another backend's file, say): leave no file open
            self._file.close()
            raise
        if self._archive.comment != COMMENT:
            self._release()
            raise ValueError(f"{self.location} is a zip archive that is no npz image store")
        members = {
            MEMBER.fullmatch(info.filename).groups(): info
            for info in self._archive.infolist()
            if MEMBER.fullmatch(info.filename)
        }
        count = len(members) // 2
        if sorted(members) != sorted((kind, f"{run:08d}") for kind in ("images", "labels") for run in range(count)):
            raise DamagedStoreError(f"{self.location} does not hold matching images and labels members")
        self._runs = [self._locate(members["images", f"{run:08d}"]) for run in range(count)]
        labels = []
        for run in range(count):
            member = self._locate(members["labels", f"{run:08d}"])
            if member.dtype != np.dtype("<i8") or member.shape != (self._runs[run].shape[0],):
                raise DamagedStoreError(
                    f"{self.location}: labels of run {run} are {member.dtype} {member.shape}, not one int64 per image"
                )
            labels.append(self._fill(member, np.empty(member.shape, member.dtype)))
        layouts = [(member.shape[1:], member.dtype) for member in self._runs]
        counts = [member.shape[0] for member in self._runs]
        self._found_runs(layouts, counts, labels, [member.offset or 0 for member in self._runs])

    def _release(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._archive.close()
        self._file.close()

    def _locate(self, info: zipfile.ZipInfo) -> Member:
        """Where the array of one stored or deflated .npy member is, and its dtype and shape."""
        if info.compress_type == zipfile.ZIP_STORED:
            self._file.seek(info.header_offset)
            signature, name_length, extra_length = LOCAL_HEADER.unpack(self._file.read(LOCAL_HEADER.size))
            if signature != b"PK\x03\x04":
                raise DamagedStoreError(f"{self.location}: member {info.filename} has no local header")
            start = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
            if start + info.file_size > self.location.stat().st_size:  # checked before anything of that size is made
                raise DamagedStoreError(f"{self.location}: member {info.filename} runs past the end of the file")
            self._file.seek(start)
            dtype, shape, header_bytes = self._npy_header(info, self._file)
            return Member(dtype, shape, start + header_bytes, info, header_bytes)
        size = self.location.stat().st_size
        if info.compress_type != zipfile.ZIP_DEFLATED or not info.compress_size <= size:
            raise DamagedStoreError(f"{self.location}: member {info.filename} is neither stored nor deflated here")
        if info.file_size > MAX_EXPANSION * info.compress_size + PAGE_OF_HEADERS:  # checked before inflating
            raise DamagedStoreError(f"{self.location}: member {info.filename} lists {info.file_size} bytes inflated")
        with self._archive.open(info) as stream:
            dtype, shape, header_bytes = self._npy_header(info, stream)
        return Member(dtype, shape, None, info, header_bytes)

    def _npy_header(self, info: zipfile.ZipInfo, stream) -> tuple[np.dtype, tuple[int, ...], int]:
        """dtype, shape and header length of the .npy array that `stream` is at the start of."""
        start = stream.tell()
        if npy.read_magic(stream) != (1, 0):  # what this store writes; 2.0 headers give a 4-byte length to forge
            raise DamagedStoreError(f"{self.location}: member {info.filename} is not a version 1.0 .npy array")
        shape, fortran_order, dtype = npy.read_array_header_1_0(stream)
        if fortran_order or dtype.kind not in NUMERIC_KINDS or len(shape) not in (1, 3, 4):
            raise DamagedStoreError(f"{self.location}: member {info.filename} holds a {dtype} array of shape {shape}")
        header_bytes = stream.tell() - start
        if header_bytes + math.prod(shape) * dtype.itemsize != info.file_size:
            raise DamagedStoreError(
                f"{self.location}: member {info.filename} is {info.file_size} bytes, not what its header says"
            )
        return dtype, shape, header_bytes

    def _fill(self, member: Member, out: np.ndarray, first: int = 0) -> np.ndarray:
        """Fill `out` with the member's items from item `first` on."""
        start = first * out[0].nbytes if len(out) else 0
        if member.offset is not None:
            return self._read_bytes(member.offset + start, out)
        target = memoryview(out.reshape(-1).view(np.uint8))
        with self._archive.open(member.info) as stream:
            stream.seek(member.header_bytes + start)  # inflates and drops what comes before
            done = 0
            while done < len(target):
                got = stream.readinto(target[done:])
                if not got:
                    raise DamagedStoreError(f"{self.location}: member {member.info.filename} ends early")
                done += got
        return out

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
                raise DamagedStoreError(f"{self.location} ends before the data it lists")
            done += got
        return out

    def _write_runs(self, staging: Path, runs: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        # zipfile's append mode overwrites the central directory in place: hence the copy
        with zipfile.ZipFile(staging, "a", COMPRESSIONS[self.options.compression]) as archive:
            for name, batch, labels in runs:
                for kind, array in (("images", batch), ("labels", labels)):
                    with archive.open(f"{kind}_{name}.npy", "w", force_zip64=True) as member:
                        npy.write_array_header_1_0(member, npy.header_data_from_array_1_0(array))
                        member.write(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # no chunk copies

    def _read_run(self, run: int, local: np.ndarray, out: np.ndarray) -> None:
        member = self._runs[run]
        dtype, shape, offset = member.dtype, member.shape, member.offset
        if is_consecutive(local):
            self._fill(member, out, int(local[0]))
            return
        if offset is None:  # deflated: inflate up to the last id needed, then pick
            block = self._fill(member, np.empty((int(local.max()) + 1, *shape[1:]), dtype))
            np.take(block, local, axis=0, out=out)
            return
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        run_array = np.frombuffer(self._map, dtype, int(np.prod(shape)), offset).reshape(shape)
        np.take(run_array, local, axis=0, out=out)
