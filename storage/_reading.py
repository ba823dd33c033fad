"""Reading helpers the backends share: buffers placed for a fast copy, and gathering ids from uniform runs."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Callable, Union

import numpy as np

Batch = Union[np.ndarray, list]
PAGE = 4096
# Distance (mod PAGE) of a read buffer past its file offset. Kernels copy page-cache pages with
# `rep movsb`, which on some AMD CPUs runs about 3x slower when the destination lies a few bytes
# past the source modulo a page (glibc bug 30994); a fresh large NumPy array sits 16 bytes past
# a page boundary, so reading a page-aligned file offset into it hits exactly that case.
COPY_SKEW = 256


def stack_or_list(images: Iterator[np.ndarray], count: int) -> Batch:
    """Copy `count` images into one preallocated array, or a list once their shapes differ.

    The images may be views of memory that is only valid while the iterator runs.
    """
    first = next(images)
    out = np.empty((count, *first.shape), first.dtype)
    out[0] = first
    for position, image in enumerate(images, 1):
        if image.shape != first.shape or image.dtype != first.dtype:
            return [*(earlier.copy() for earlier in out[:position]), image.copy(), *(later.copy() for later in images)]
        out[position] = image
    return out


def read_buffer(shape: tuple[int, ...], dtype: np.dtype, file_offset: int = 0) -> np.ndarray:
    """An empty array placed in memory so that a read(2) from `file_offset` into it copies fast.

    The array is 16-byte aligned and starts `COPY_SKEW` bytes (mod a page) past the file offset.
    """
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE + 16, np.uint8)
    start = (file_offset + COPY_SKEW - raw.ctypes.data) % PAGE
    start += -(raw.ctypes.data + start) % 16
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def gather_runs(
    ids: np.ndarray,
    starts: np.ndarray,
    layouts: Sequence[tuple[tuple[int, ...], np.dtype]],
    read_run: Callable[[int, np.ndarray, np.ndarray], None],
    offsets: Sequence[int] | None = None,
) -> Batch:
    """Images at `ids` from uniform runs of images, run ``r`` holding ids ``starts[r]:starts[r+1]``.

    `layouts[r]` is run r's (image shape, dtype); ``read_run(r, local_ids, out)`` fills `out`
    with those images of run r. Ids read from one run in order land straight in the result,
    placed for a fast copy from ``offsets[r]``, the file offset of run r's first image, if given.
    """
    run_of = np.searchsorted(starts, ids, side="right") - 1
    order = np.argsort(run_of, kind="stable")
    touched, first = np.unique(run_of[order], return_index=True)
    uniform = len({layouts[run] for run in touched.tolist()}) == 1
    if uniform:
        shape, dtype = layouts[int(touched[0])]
        offset = 0
        if offsets is not None:
            run = int(run_of[0])
            offset = offsets[run] + int(ids[0] - starts[run]) * int(np.prod(shape)) * np.dtype(dtype).itemsize
        images: Batch = read_buffer((len(ids), *shape), dtype, offset)
    else:
        images = [None] * len(ids)
    for run, positions in zip(touched.tolist(), np.split(order, first[1:])):
        local = ids[positions] - starts[run]
        if uniform and is_consecutive(positions):
            read_run(run, local, images[positions[0] : positions[-1] + 1])
            continue
        shape, dtype = layouts[run]
        part = np.empty((len(local), *shape), dtype)
        read_run(run, local, part)
        if uniform:
            images[positions] = part
        else:
            for position, image in zip(positions.tolist(), part):
                images[position] = image
    return images


def is_consecutive(ids: np.ndarray) -> bool:
    """Whether non-empty `ids` count up by one (a range the backends read in one pass)."""
    return bool(ids[-1] - ids[0] == len(ids) - 1 and (len(ids) == 1 or (np.diff(ids) == 1).all()))
