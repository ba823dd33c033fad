"""The `limit` rows: the same bytes through one plain file, the floor no format can beat here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from storage._reading import read_buffer


def pixel_bytes(images: np.ndarray | list) -> np.ndarray:
    """All pixel bytes of `images` as one flat uint8 array (no copy for a contiguous batch)."""
    if isinstance(images, np.ndarray):
        return np.ascontiguousarray(images).reshape(-1).view(np.uint8)
    return np.concatenate([np.ascontiguousarray(image).reshape(-1).view(np.uint8) for image in images])


def write(path: Path, pixels: np.ndarray, durable: bool = True) -> None:
    """Write the bytes to a new file and (when `durable`, as the stores' appends) fsync it."""
    with path.open("xb") as file:
        file.write(pixels)
        file.flush()
        if durable:
            os.fsync(file.fileno())


def read(path: Path, nbytes: int) -> np.ndarray:
    """Read the bytes into a fresh array placed for a fast copy, as the stores' reads do."""
    out = read_buffer((nbytes,), np.uint8)
    with path.open("rb", buffering=0) as file:
        if file.readinto(out) != nbytes:
            raise ValueError(f"{path} is shorter than {nbytes} bytes")
    return out
