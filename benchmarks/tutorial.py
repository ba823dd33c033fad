"""The 2019 tutorial's methods as rows: `tutorial-png` and `tutorial-hdf5`, the classic answer beside ours.

The tutorial ("Three Ways of Storing and Accessing Lots of Images in Python", Real Python, 2019) timed its own
functions once each. These rows do what those functions do, written here, so that a table shows each backend beside
the method it replaces (``× tutorial`` in the summary):

- `tutorial-png` stores each image with Pillow's defaults (``Image.fromarray(image).save(...)``: zlib level 6) as
  ``<id>.png``, then every label as a line of one space-delimited CSV file; it reads each file with
  ``np.array(Image.open(...))`` into a list (not one array) and parses the CSV.
- `tutorial-hdf5` stores one HDF5 file with two contiguous datasets, ``images`` and ``meta`` (the labels), both as
  big-endian uint8 (``STD_U8BE``); it reads both whole and converts them with ``astype("uint8")``, a copy.

Two things differ, both in the tutorial's favour or neutral: its code never fsyncs, and these rows flush their files
and directory when the table is durable (as every row of that table does), with the same calls the backends use; and
its HDF5 reader opens the file for writing ("r+") and leaves it open, where this one opens it read-only and closes
it. Its LMDB method has no row: reading it back means unpickling stored records, which this project never does
(`lmdb-pickle` writes the same kind of record and reads it without unpickling). The tutorial keeps labels as uint8,
so these rows hold labels 0-255 only, and images that Pillow writes as PNG: uint8 grey, RGB or RGBA.
"""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np

from storage._durable import fsync_path, make_durable
from storage.codecs import RAW, Codec, Png

TUTORIAL_PREFIX = "tutorial-"


class TutorialPngFiles:
    """A directory of the tutorial's PNG files and labels CSV, opened like a store."""

    def __init__(self, path: Path, mode: str, durable: bool) -> None:
        if mode == "x":
            path.mkdir()
        elif not path.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no tutorial-png directory", str(path))
        self.path, self.durable = path, durable

    def append(self, images: np.ndarray | list, labels: np.ndarray) -> None:
        """Store every image as a PNG file of Pillow's defaults, then the labels as one CSV file."""
        from PIL import Image

        written = []
        for image_id, image in enumerate(images):
            written.append(self.path / f"{image_id}.png")
            Image.fromarray(image).save(written[-1])
        written.append(self.path / f"{len(images)}.csv")
        with open(written[-1], "w") as labels_file:
            writer = csv.writer(labels_file, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
            for label in labels:
                writer.writerow([label])
        if self.durable:
            make_durable(written, self.path)

    def read(self) -> tuple[list, list]:
        """Every image, one file at a time, as a list of arrays, and the labels parsed from the CSV file."""
        from PIL import Image

        count = len(os.listdir(self.path)) - 1  # the PNG files beside the one CSV file (untimed work is not kept)
        images = [np.array(Image.open(self.path / f"{image_id}.png")) for image_id in range(count)]
        with open(self.path / f"{count}.csv") as labels_file:
            reader = csv.reader(labels_file, delimiter=" ", quotechar="|", quoting=csv.QUOTE_MINIMAL)
            labels = [int(row[0]) for row in reader]
        return images, labels

    def close(self) -> None:
        pass

    def __enter__(self) -> TutorialPngFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TutorialHdf5File:
    """The tutorial's HDF5 file, opened like a store."""

    def __init__(self, path: Path, mode: str, durable: bool) -> None:
        if mode != "x" and not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no tutorial-hdf5 file", str(path))
        self.path, self.durable = path, durable

    def append(self, images: np.ndarray, labels: np.ndarray) -> None:
        """A new file with two big-endian uint8 datasets: the images and the labels."""
        import h5py

        with h5py.File(self.path, "w") as file:
            file.create_dataset("images", np.shape(images), h5py.h5t.STD_U8BE, data=images)
            file.create_dataset("meta", np.shape(labels), h5py.h5t.STD_U8BE, data=labels)
        if self.durable:
            fsync_path(self.path)
            fsync_path(self.path.parent)

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """Both datasets whole, converted to uint8 as the tutorial does (a copy)."""
        import h5py

        with h5py.File(self.path, "r") as file:
            return np.array(file["/images"]).astype("uint8"), np.array(file["/meta"]).astype("uint8")

    def close(self) -> None:
        pass

    def __enter__(self) -> TutorialHdf5File:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Tutorial:
    """One of the tutorial's methods: a row named `tutorial-<family>` beside the backend of that family."""

    local = True

    def __init__(self, family: str, opener: type, codec: Codec, stacks: bool) -> None:
        self.family = family
        self.name = TUTORIAL_PREFIX + family
        self.opener = opener
        self.codec = codec
        self.stacks = stacks  # whether a read gives one array (else a list, as the tutorial's PNG reader does)

    def open(self, path: Path, mode: str = "r", *, durable: bool = True) -> TutorialPngFiles | TutorialHdf5File:
        return self.opener(path, mode, durable)

    def files(self, path: Path) -> list[Path]:
        if path.is_dir():
            return sorted(path.iterdir())
        return [path] if path.exists() else []

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        """What the tutorial's code stores faithfully: uint8 images Pillow writes as PNG (and labels below 256)."""
        return dtype == np.uint8 and (len(shape) == 2 or (len(shape) == 3 and shape[2] in (3, 4)))


TUTORIALS = {
    "png": Tutorial("png", TutorialPngFiles, Png(level=6, library="pillow"), stacks=False),
    "hdf5": Tutorial("hdf5", TutorialHdf5File, RAW, stacks=True),
}
