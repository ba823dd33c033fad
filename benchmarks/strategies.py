"""Hypothesis strategies for images and labels that a given backend accepts."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import storage

DTYPES = [
    np.dtype(code) for code in ("?", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "c8", "c16")
]
CHANNELS = (None, 1, 2, 3, 4)  # None: a 2-D (H, W) image
REQUIRED = [(np.dtype("u1"), c) for c in (None, 1, 3, 4)] + [(np.dtype("u2"), None)]  # every backend holds these
labels = st.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max)


def image_shape(height: int, width: int, channels: int | None) -> tuple[int, ...]:
    return (height, width) if channels is None else (height, width, channels)


def layouts(backend: str) -> list[tuple[np.dtype, int | None]]:
    """(dtype, channels) pairs the backend accepts, among the candidates above."""
    cls = storage.backend(backend)
    return [(d, c) for d in DTYPES for c in CHANNELS if cls.accepts(d, image_shape(4, 4, c))]


def rejected_layouts(backend: str) -> list[tuple[np.dtype, int | None]]:
    accepted = layouts(backend)
    return [(d, c) for d in DTYPES for c in CHANNELS if (d, c) not in accepted]


@st.composite
def batches(draw, backend: str, min_size: int = 1, max_size: int = 6, max_side: int = 7) -> np.ndarray:
    """A uniform (N, H, W[, C]) batch of one accepted layout."""
    dtype, channels = draw(st.sampled_from(layouts(backend)))
    count = draw(st.integers(min_size, max_size))
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    return draw(hnp.arrays(dtype, (count, *image_shape(height, width, channels))))


@st.composite
def mixed_images(draw, backend: str, max_size: int = 6) -> list[np.ndarray]:
    """A list of single images whose layouts and sizes may all differ."""
    return [draw(batches(backend, 1, 1))[0] for _ in range(draw(st.integers(1, max_size)))]


@st.composite
def labelled(draw, images_strategy) -> tuple[object, list[int]]:
    images = draw(images_strategy)
    return images, draw(st.lists(labels, min_size=len(images), max_size=len(images)))
