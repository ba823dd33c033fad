"""The floor: the same pixel bytes through one plain file, the cost no format can beat on this machine.

Every store-many, read-many and growth table has a `limit` row made by this object. It opens
like a store (``FLOOR.open(path, mode, durable=...)``) and its handle appends and reads like
one, so an experiment times it with the same code as every backend: an append writes the
pixel bytes (no labels) and fsyncs when durable; a read takes the whole file into a fresh
buffer placed for a fast copy, as the backends' reads are, and returns it with no labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from storage._reading import read_buffer

FILE_FLAGS = {"r": os.O_RDONLY, "a": os.O_WRONLY | os.O_APPEND, "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL}


def pixel_bytes(images: np.ndarray | list) -> np.ndarray:
    """All pixel bytes of `images` as one flat uint8 array (no copy for a contiguous batch)."""
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images).reshape(-1).view(np.uint8)
    return np.concatenate([np.ascontiguousarray(image).reshape(-1).view(np.uint8) for image in images])


class PlainFile:
    """An open plain file of pixel bytes, with a store's methods: POSIX file descriptors, no Python buffering."""

    def __init__(self, path: Path, mode: str, durable: bool) -> None:
        self.path = path
        self.descriptor = os.open(path, FILE_FLAGS[mode] | getattr(os, "O_BINARY", 0), 0o644)
        self.durable = durable

    def append(self, images: np.ndarray | list, labels: object = None) -> None:
        """Write the pixel bytes of `images` at the end (labels are not kept); fsync when durable."""
        data = memoryview(pixel_bytes(images))
        while data:  # one write(2) takes at most about 2 GiB
            data = data[os.write(self.descriptor, data) :]
        if self.durable:
            os.fsync(self.descriptor)

    def read(self) -> tuple[np.ndarray, None]:
        """Every byte of the file in a fresh array, and no labels."""
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
        if self.descriptor >= 0:
            os.close(self.descriptor)
            self.descriptor = -1

    def __enter__(self) -> PlainFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Floor:
    """Opens plain files of pixel bytes; named `limit` in every table."""

    name = "limit"

    def open(self, path: Path, mode: str = "r", *, durable: bool = True) -> PlainFile:
        return PlainFile(path, mode, durable)

    def files(self, path: Path) -> list[Path]:
        return [path]


FLOOR = Floor()
