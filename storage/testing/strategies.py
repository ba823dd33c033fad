"""Hypothesis strategies for images and labels that a given backend (or variant) accepts."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import storage

DTYPES = tuple(
    np.dtype(code) for code in ("?", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "c8", "c16")
)
CHANNELS = (None, 1, 2, 3, 4)  # None: a 2-D (H, W) image
# The layouts images usually come in; the contract checks each one a backend accepts at full value range.
REQUIRED = (
    (np.dtype("u1"), None),
    (np.dtype("u1"), 1),
    (np.dtype("u1"), 3),
    (np.dtype("u1"), 4),
    (np.dtype("u2"), None),
)
labels = st.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max)


def image_shape(height: int, width: int, channels: int | None) -> tuple[int, ...]:
    """(H, W) for channels None, else (H, W, C)."""
    return (height, width) if channels is None else (height, width, channels)


@cache
def layouts(name: str) -> tuple[tuple[np.dtype, int | None], ...]:
    """(dtype, channels) pairs among the candidates above that the backend `name` accepts."""
    chosen = storage.backend(name)
    return tuple((d, c) for d in DTYPES for c in CHANNELS if chosen.accepts(d, image_shape(4, 4, c)))


def rejected_layouts(name: str) -> tuple[tuple[np.dtype, int | None], ...]:
    """(dtype, channels) pairs among the candidates above that the backend `name` refuses."""
    return tuple((d, c) for d in DTYPES for c in CHANNELS if (d, c) not in layouts(name))


@cache
def values(dtype: np.dtype) -> st.SearchStrategy:
    """Single values of `dtype`, edge cases included (made once: building a strategy costs more than a draw)."""
    return hnp.from_dtype(dtype)


@st.composite
def arrays(draw, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """An array of noise (every bit pattern, so NaNs, infinities and -0.0 too) or of one value, with a few
    elements set to values hypothesis picks: edge cases at a fraction of the cost of drawing every element."""
    size = math.prod(shape)
    if draw(st.booleans(), label="noise"):
        noise = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
        if dtype.kind == "b":
            array = noise.integers(0, 2, size).astype(dtype)
        else:
            array = noise.integers(0, 256, size * dtype.itemsize, dtype=np.uint8).view(dtype)
    else:
        array = np.full(size, draw(values(dtype), label="fill"), dtype)
    for position in draw(st.lists(st.integers(0, size - 1), max_size=4), label="positions"):
        array[position] = draw(values(dtype), label="value")
    return array.reshape(shape)


@st.composite
def batches(draw, name: str, min_size: int = 1, max_size: int = 6, max_side: int = 7) -> np.ndarray:
    """A uniform (N, H, W[, C]) batch of one accepted layout."""
    dtype, channels = draw(st.sampled_from(layouts(name)))  # a tuple: hypothesis caches the strategy
    count = draw(st.integers(min_size, max_size))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    return draw(arrays(dtype, (count, *image_shape(height, width, channels))))


@st.composite
def mixed_images(draw, name: str, max_size: int = 6) -> list[np.ndarray]:
    """A list of single images whose layouts and sizes may all differ."""
    return [draw(batches(name, 1, 1))[0] for _ in range(draw(st.integers(1, max_size)))]


@st.composite
def labelled(draw, images_strategy) -> tuple[object, list[int]]:
    """Images drawn from `images_strategy` and one int64 label each."""
    images = draw(images_strategy)
    return images, draw(st.lists(labels, min_size=len(images), max_size=len(images)))
