"""Benchmark data: deterministic synthetic images, CIFAR-10 batches, or a folder of the user's images.

A folder holds one subfolder per class. Files Pillow cannot identify (a README, ``.DS_Store``) are
skipped and counted; an image that cannot be decoded is skipped with a warning naming it
(``UnreadableImageWarning``), or stops the run with ``--fail-on-bad-image``.

Synthetic image ``i`` of a size depends only on ``(SEED, size, i // chunk)``, so a run of 1,000
images is a prefix of a run of 100,000 and results stay comparable across runs and grids.
Never change what the generator makes; add a new one instead.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 20191115
CHUNK_PIXELS = 1 << 18  # images are made in chunks of about this many pixels (256 at 32x32)
LABEL_COUNT = 10
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
FOLDER_MODES = {"L", "RGB", "RGBA", "I;16"}  # kept as they are; other modes become RGB
SPARE_IMAGES = 64  # a folder is listed this far past the count asked for, to stand in for unreadable images
CHANNELS = {"L": (), "I;16": (), "RGBA": (4,)}  # the channel axis of an image of each mode; others are RGB


class UnreadableImageWarning(UserWarning):
    """An image file of a folder dataset could not be decoded, and was left out."""


def parse_size(text: str) -> tuple[int, ...]:
    """'32x32x3' -> (32, 32, 3); 'HxW' is a grey image."""
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (2, 3) or min(size) < 1:
        raise ValueError(f"an image size is HxW or HxWxC with positive integers, e.g. 32x32x3; got {text!r}")
    return size


def size_id(size: tuple[int, ...]) -> str:
    return "x".join(map(str, size))


def _smoothing_matrix(out_size: int, grid: int) -> np.ndarray:
    """Linear interpolation weights from `grid` control points to `out_size` pixels."""
    position = np.linspace(0, grid - 1, out_size)
    weights = np.maximum(0, 1 - np.abs(position[:, None] - np.arange(grid)[None, :]))
    return weights.astype(np.float32)


def _chunk_length(size: tuple[int, ...]) -> int:
    return max(1, CHUNK_PIXELS // (size[0] * size[1]))


def _synthetic_chunk(size: tuple[int, ...], chunk: int) -> np.ndarray:
    """One chunk of images: smooth colour fields, two sharp edges (a half-plane and a disc) and mild noise."""
    count = _chunk_length(size)
    height, width = size[:2]
    channels = size[2] if len(size) == 3 else 1
    rng = np.random.default_rng([SEED, *size, chunk])
    image = np.zeros((count, height, width, channels), np.float32)
    for grid, low, high in ((4, 0, 255), (min(height, width, 16), -25, 25)):  # broad colour, then finer detail
        control = rng.uniform(low, high, (count, grid, grid, channels)).astype(np.float32)
        rows, cols = _smoothing_matrix(height, grid), _smoothing_matrix(width, grid)
        image += np.einsum("hy,nyxc,wx->nhwc", rows, control, cols, optimize=True)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi, (count, 1, 1))
    offset = rng.uniform(-0.5, 0.5, (count, 1, 1)) * (height + width) / 2
    half_plane = (cols - width / 2) * np.cos(angle) + (rows - height / 2) * np.sin(angle) > offset
    centre = rng.uniform(0, 1, (count, 2, 1, 1)) * np.array([height, width]).reshape(1, 2, 1, 1)
    radius = rng.uniform(0.1, 0.35, (count, 1, 1)) * min(height, width)
    disc = (rows - centre[:, 0]) ** 2 + (cols - centre[:, 1]) ** 2 < radius**2
    image += half_plane[..., None] * rng.uniform(-80, 80, (count, 1, 1, channels)).astype(np.float32)
    image += disc[..., None] * rng.uniform(-100, 100, (count, 1, 1, channels)).astype(np.float32)
    image += rng.normal(0, 3, image.shape).astype(np.float32)
    pixels = np.clip(image, 0, 255).astype(np.uint8)
    return pixels if len(size) == 3 else pixels[..., 0]


def synthetic(count: int, size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` synthetic uint8 images of `size` and their labels (0-9)."""
    images = np.empty((count, *size), np.uint8)
    length = _chunk_length(size)
    for chunk, start in enumerate(range(0, count, length)):
        images[start : start + length] = _synthetic_chunk(size, chunk)[: count - start]
    labels = np.random.default_rng([SEED, count]).integers(0, LABEL_COUNT, count)
    return images, labels


def cifar10(directory: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` images of the CIFAR-10 "python version" batches in `directory`.

    Each batch is a pickle, the dataset's standard distribution: this is the one place that
    unpickles, and only files the user chose to point at.
    """
    images, labels, held = [], [], 0
    for name in CIFAR10_BATCHES:
        if held >= count:
            break
        path = directory / name
        if not path.is_file():
            continue
        with path.open("rb") as file:
            batch = pickle.load(file, encoding="bytes")  # noqa: S301 - a dataset file the user chose to trust
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        images.append(data[: count - held])
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64)[: count - held])
        held += len(images[-1])
    if held < count:
        raise ValueError(f"{directory} holds {held} CIFAR-10 images ({', '.join(CIFAR10_BATCHES)}), not {count}")
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


@dataclass(frozen=True)
class Listing:
    """The first images of a class-per-subfolder tree, found by their headers, and what else it holds."""

    images: tuple[tuple[int, Path, tuple[int, ...]], ...]  # label, file, shape of each image, class by class
    classes: int
    others: tuple[Path, ...]  # files among those looked at that are no images
    complete: bool  # every file was looked at (else the listing stopped once it had enough images)

    def describe(self, directory: Path) -> str:
        holds = "holds" if self.complete else "holds at least"
        others = f"; {len(self.others)} files that are no images skipped" if self.others else ""
        names = f" ({', '.join(path.name for path in self.others[:3])}{', ...' if len(self.others) > 3 else ''})"
        return f"{directory} {holds} {len(self.images)} images in {self.classes} class folders{others}" + (
            names if self.others else ""
        )

    def listing(self, count: int) -> Listing:
        """What a folder dataset holds, looked at as far as `count` images need."""
        return list_folder(self.directory, count + SPARE_IMAGES)

    def size_label(self, count: int) -> str:
        """The size of the first `count` images, as in test ids (``224x224x3``), or ``mixed``."""
        shapes = {shape for _, _, shape in self.images[:count]}
        return size_id(shapes.pop()) if len(shapes) == 1 else "mixed"


_LISTINGS: dict[Path, Listing] = {}  # directory -> the longest listing made of it


def list_folder(directory: Path, wanted: int) -> Listing:
    """Up to `wanted` images of `directory`, class folders in sorted order, each file's header read by Pillow."""
    known = _LISTINGS.get(directory)
    if known is not None and (known.complete or len(known.images) >= wanted):
        complete = known.complete and len(known.images) <= wanted
        return Listing(known.images[:wanted], known.classes, known.others, complete)
    classes = sorted(entry for entry in directory.iterdir() if entry.is_dir())
    images, others = [], []
    for label, cls in enumerate(classes):
        for path in sorted(entry for entry in cls.iterdir() if entry.is_file()):
            if len(images) == wanted:
                _LISTINGS[directory] = Listing(tuple(images), len(classes), tuple(others), complete=False)
                return _LISTINGS[directory]
            try:
                with Image.open(path) as image:
                    shape = (image.height, image.width, *CHANNELS.get(image.mode, (3,)))
            except (OSError, SyntaxError, ValueError):  # Pillow's UnidentifiedImageError is an OSError
                others.append(path)
                continue
            images.append((label, path, shape))
    _LISTINGS[directory] = Listing(tuple(images), len(classes), tuple(others), complete=True)
    return _LISTINGS[directory]


def folder(directory: Path, count: int, strict: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """The first `count` readable images of a class-per-subfolder tree; labels number the sorted class names.

    An image that cannot be decoded is skipped with an UnreadableImageWarning naming it, or with `strict`
    is a ValueError naming it.
    """
    images, labels, _ = _folder(directory, count, strict)
    return images, labels


@cache
def folder_files(directory: Path, count: int, strict: bool = False) -> list[bytes]:
    """The files, byte for byte, of the images `folder` gives."""
    return [path.read_bytes() for path in _folder(directory, count, strict)[2]]


@cache
def _folder(directory: Path, count: int, strict: bool) -> tuple[list[np.ndarray], np.ndarray, list[Path]]:
    images, labels, paths = [], [], []
    listing = list_folder(directory, count + SPARE_IMAGES)
    for label, path, _ in listing.images:
        if len(images) == count:
            break
        try:
            with Image.open(path) as image:
                images.append(np.asarray(image if image.mode in FOLDER_MODES else image.convert("RGB")))
        except (OSError, SyntaxError, ValueError) as error:
            if strict:
                raise ValueError(f"{path} is not a readable image: {error}") from None
            warnings.warn(f"{path} left out: not a readable image ({error})", UnreadableImageWarning, stacklevel=2)
            continue
        labels.append(label)
        paths.append(path)
    if len(images) < count:
        raise ValueError(f"{listing.describe(directory)}; {len(images)} of them readable, not {count}")
    return images, np.array(labels, dtype=np.int64), paths


@dataclass(frozen=True)
class Dataset:
    """What `--dataset` chose: ``synthetic``, ``cifar10:DIR`` or ``folder:DIR``."""

    kind: str
    directory: Path | None = None
    strict: bool = False  # a folder image that cannot be decoded stops the run instead of being left out
    as_files: bool = False  # stores that hold the files' format keep the files as they are (--store-files)

    @classmethod
    def parse(cls, text: str) -> Dataset:
        kind, _, directory = text.partition(":")
        if kind == "synthetic" and not directory:
            return cls("synthetic")
        if kind in ("cifar10", "folder") and directory:
            if not Path(directory).is_dir():
                raise ValueError(f"--dataset {text}: {directory} is not a directory")
            return cls(kind, Path(directory))
        raise ValueError(f"--dataset is synthetic, cifar10:DIR or folder:DIR; got {text!r}")

    @property
    def id(self) -> str:
        return f"{self.kind}+files" if self.as_files else self.kind

    def files(self, count: int) -> list[bytes] | None:
        """With --store-files, the folder's first `count` image files, byte for byte; else None."""
        return folder_files(self.directory, count, self.strict) if self.as_files else None

    def check(self, count: int) -> None:
        """ValueError saying what a folder holds, unless it holds `count` images in class folders."""
        if self.kind != "folder":
            return
        listing = self.listing(count)
        if listing.classes == 0 or len(listing.images) < count:
            wanted = "class subfolders with images" if not listing.images else f"{count} images"
            raise ValueError(f"--dataset folder: {listing.describe(self.directory)}, not {wanted}")

    def listing(self, count: int) -> Listing:
        """What a folder dataset holds, looked at as far as `count` images need."""
        return list_folder(self.directory, count + SPARE_IMAGES)

    def size_label(self, count: int) -> str:
        """How test ids and groups name the images of a real dataset: ``folder-224x224x3``, ``folder-mixed``."""
        if self.kind == "cifar10":
            return "cifar10-32x32x3"
        return f"{self.kind}-{self.listing(count).size_label(count)}"

    def load(self, count: int, size: tuple[int, ...] | None) -> tuple[np.ndarray | list, np.ndarray]:
        """`count` images with labels; `size` is used by the synthetic dataset only."""
        return _load(self, count, size)


@cache
def _load(dataset: Dataset, count: int, size: tuple[int, ...] | None) -> tuple[np.ndarray | list, np.ndarray]:
    if dataset.kind == "synthetic":
        return synthetic(count, size)
    if dataset.kind == "cifar10":
        return cifar10(dataset.directory, count)
    return folder(dataset.directory, count, dataset.strict)
