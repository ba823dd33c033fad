"""What the contract tests share: temporary stores and a bit-exact comparison."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def store_path(backend: str) -> Iterator[Path]:
    """A path for a new store inside a fresh temporary directory (hypothesis-safe, unlike tmp_path)."""
    with tempfile.TemporaryDirectory(prefix=f"{backend}-") as directory:
        yield Path(directory) / "store"


def assert_images_equal(got: object, expected: Sequence[np.ndarray]) -> None:
    """Same count, and each image has the same dtype, shape and bytes (so NaNs and -0.0 count too)."""
    assert len(got) == len(expected)
    for image, want in zip(got, expected):
        assert image.dtype == want.dtype
        assert image.shape == want.shape
        assert image.tobytes() == want.tobytes()


def assert_read_equal(store, ids, expected_images: Sequence[np.ndarray], expected_labels: Sequence[int]) -> None:
    """`store.read(ids)` returns exactly these images and labels, as an array when they are uniform."""
    images, labels = store.read(ids)
    assert_images_equal(images, expected_images)
    assert labels.dtype == np.int64
    assert labels.tolist() == list(expected_labels)
    layouts = {(image.shape, image.dtype) for image in expected_images}
    assert isinstance(images, np.ndarray) == (len(layouts) == 1)
