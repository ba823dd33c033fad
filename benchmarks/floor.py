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

from storage import codecs
from storage._base import Capabilities
from storage._reading import read_buffer

FILE_MODES = {"r": "rb", "a": "ab", "x": "xb"}


def pixel_bytes(images: np.ndarray | list) -> np.ndarray:
    """All pixel bytes of `images` as one flat uint8 array (no copy for a contiguous batch)."""
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images).reshape(-1).view(np.uint8)
    return np.concatenate([np.ascontiguousarray(image).reshape(-1).view(np.uint8) for image in images])


class PlainFile:
    """An open plain file of pixel bytes, with a store's methods."""

    def __init__(self, path: Path, mode: str, durable: bool) -> None:
        self.file = path.open(FILE_MODES[mode], buffering=0)
        self.durable = durable

    def append(self, images: np.ndarray | list, labels: object = None) -> None:
        """Write the pixel bytes of `images` at the end (labels are not kept); fsync when durable."""
        self.file.write(pixel_bytes(images))
        if self.durable:
            os.fsync(self.file.fileno())

    def read(self) -> tuple[np.ndarray, None]:
        """Every byte of the file in a fresh array, and no labels."""
        size = os.fstat(self.file.fileno()).st_size
        out = read_buffer((size,), np.uint8)
        if self.file.readinto(out) != size:
            raise ValueError(f"{self.file.name} is shorter than {size} bytes")
        return out, None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> PlainFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Floor:
    """Opens plain files of pixel bytes; named `limit` in every table."""

    name = "limit"
    codec = codecs.RAW
    capabilities = Capabilities(directory=False)

    def open(self, path: Path, mode: str = "r", *, durable: bool = True) -> PlainFile:
        return PlainFile(Path(path), mode, durable)

    def files(self, path: Path) -> list[Path]:
        return [Path(path)]


FLOOR = Floor()
