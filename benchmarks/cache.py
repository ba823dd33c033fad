"""The page cache: evict a store's files from it, and check how much of them it still holds (Linux)."""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

CAN_EVICT = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise")


def evict(files: Iterable[Path]) -> None:
    """Flush each file and drop its pages from the page cache (``POSIX_FADV_DONTNEED``, as fio does)."""
    for path in files:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # dirty pages cannot be dropped
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def resident_fraction(files: Iterable[Path]) -> float:
    """Share of the files' pages in the page cache, from ``mincore`` on a private mapping of each."""
    libc = ctypes.CDLL(None, use_errno=True)
    resident = total = 0
    for path in files:
        size = path.stat().st_size
        if size == 0:
            continue
        pages = -(-size // mmap.PAGESIZE)
        flags = (ctypes.c_ubyte * pages)()
        with path.open("rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
            view = ctypes.c_char.from_buffer(mapping)  # the mapping's address, for mincore
            try:
                if libc.mincore(ctypes.c_void_p(ctypes.addressof(view)), ctypes.c_size_t(size), flags) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore failed on {path}")
            finally:
                del view  # release the buffer so the mapping can close
        resident += int((np.frombuffer(flags, np.uint8) & 1).sum())
        total += pages
    return resident / total if total else 0.0
