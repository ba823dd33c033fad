"""HDF5: each uniform run of an append is one contiguous (n, H, W[, C]) dataset.

``images/00000000`` holds the pixels in native little-endian types and ``labels/00000000``
their int64 labels; a batch of one shape (the usual case) is a single dataset that reads
straight into a preallocated array, and images of differing shapes fall into several runs.
An append writes a copy of the file and renames it over the store (HDF5 files are not crash
safe while open for writing), so the store is only ever held open read-only: readers in other
processes keep their snapshot, and a crash leaves the last complete version.

Options for new runs: ``compression="lzf"`` or ``"gzip"`` stores a run chunked one image per
chunk and compressed by HDF5's filter; ``encoding="png"`` stores each image as a PNG file in a
variable-length byte dataset whose attributes record the images' shape and dtype.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from storage import _png
from storage._base import (
    MAX_EXPANSION,
    Batch,
    DamagedStoreError,
    Store,
    gather_runs,
    is_consecutive,
    make_durable,
    png_accepts,
    staged_copy,
    staging_path,
)

# Attributes are fixed-length byte strings: libhdf5 can crash (SIGSEGV) reading a damaged
# variable-length string attribute, which is what h5py makes of a Python str.
FORMAT = np.bytes_(b"imagestore-hdf5-1")
ENCODINGS = ("raw", "png")
COMPRESSIONS = (None, "lzf", "gzip")
PNG_FILES = h5py.vlen_dtype(np.uint8)


class Hdf5Store(Store):
    name = "hdf5"
    is_directory = False

    def __init__(
        self,
        path: Path,
        writable: bool,
        create: bool,
        *,
        encoding: str = "raw",
        compression: str | None = None,
        durable: bool = True,
    ) -> None:
        """`encoding`: "raw" pixels or "png" files for new runs; `compression`: None, "lzf" or "gzip"
        for new raw runs (any store reads them all). `durable`: flush each append to disk (fsync)."""
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}; got {encoding!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be None, lzf or gzip; got {compression!r}")
        if encoding == "png" and compression:
            raise ValueError("compression applies to raw pixels; PNG files are compressed already")
        super().__init__(path, writable, durable)
        self.encoding, self.compression = encoding, compression
        if create:
            with h5py.File(path, "w-") as file:
                file.attrs["format"] = FORMAT
                file.create_group("images")
                file.create_group("labels")
            if durable:
                make_durable([path], path.parent)
        self._open()

    def _open(self) -> None:
        self._file = h5py.File(self.path, "r")
        if self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise ValueError(f"{self.path} is an HDF5 file that is no image store")
        self._runs: list[h5py.Dataset] = [self._file["images"][name] for name in sorted(self._file["images"])]
        self._starts = np.cumsum([0] + [len(run) for run in self._runs])
        self._encoded = [run.dtype == PNG_FILES for run in self._runs]
        self._layouts = [
            _png_layout(run) if encoded else (run.shape[1:], run.dtype)
            for run, encoded in zip(self._runs, self._encoded)
        ]
        pixel_bytes = sum(  # Python ints: forged sizes must not wrap around
            len(run) * math.prod(shape) * dtype.itemsize for run, (shape, dtype) in zip(self._runs, self._layouts)
        )
        if pixel_bytes > MAX_EXPANSION * self.path.stat().st_size:
            raise DamagedStoreError(f"{self.path} lists {pixel_bytes} bytes of pixels, more than it can hold")
        self._offsets = [run.id.get_offset() or 0 for run in self._runs]  # where each run's pixels start in the file
        labels = [self._file["labels"][name][()] for name in sorted(self._file["labels"])]
        self._labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        if len(self._labels) != self._starts[-1] or any(label.ndim != 1 for label in labels):
            raise DamagedStoreError(f"{self.path} holds {self._starts[-1]} images but {len(self._labels)} labels")

    @classmethod
    def is_store(cls, path: Path) -> bool:
        if not (path.is_file() and h5py.is_hdf5(path)):
            return False
        try:
            with h5py.File(path, "r") as file:
                return file.attrs.get("format") == FORMAT
        except Exception:  # unreadable (h5py raises OSError, KeyError, ...): damaged, or not ours
            return False

    @classmethod
    def files(cls, path: Path) -> list[Path]:
        return [path, *filter(Path.exists, [staging_path(path)])]

    def _count(self) -> int:
        return int(self._starts[-1])

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        first_run = len(self._runs)
        self._file.close()
        try:
            with staged_copy(self.path, self.durable) as staging, h5py.File(staging, "r+") as file:
                offset = 0
                for run, batch in enumerate(batches, first_run):
                    self._write_run(file["images"], f"{run:08d}", batch)
                    file["labels"].create_dataset(f"{run:08d}", data=labels[offset : offset + len(batch)])
                    offset += len(batch)
        finally:
            self._open()

    def _write_run(self, group: h5py.Group, name: str, batch: np.ndarray) -> None:
        if self.encoding == "png":
            files = np.empty(len(batch), PNG_FILES)
            for position, image in enumerate(batch):
                files[position] = np.frombuffer(_png.encode(image, _png.DEFAULT_LEVEL), np.uint8)
            run = group.create_dataset(name, data=files, dtype=PNG_FILES)
            run.attrs.update(image_shape=batch.shape[1:], image_dtype=np.bytes_(batch.dtype.str.encode("ascii")))
        elif self.compression:
            group.create_dataset(name, data=batch, chunks=(1, *batch.shape[1:]), compression=self.compression)
        else:
            group.create_dataset(name, data=batch)

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        images = gather_runs(
            ids,
            self._starts,
            self._layouts,
            lambda run, local, out: _read_run(self._runs[run], local, out, self._encoded[run]),
            self._offsets,
        )
        return images, self._labels[ids]

    def _close(self) -> None:
        self._file.close()


def _png_layout(run: h5py.Dataset) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of the images a run of PNG files holds, as its attributes record them."""
    shape = tuple(int(side) for side in run.attrs["image_shape"])
    dtype = np.dtype(bytes(run.attrs["image_dtype"]).decode("ascii"))
    if run.ndim != 1 or min(shape, default=0) < 1 or not png_accepts(dtype, shape):
        raise DamagedStoreError(f"{run.name} records PNG files of {dtype} images of shape {shape}")
    return shape, dtype


def _read_run(dataset: h5py.Dataset, local: np.ndarray, out: np.ndarray, encoded: bool) -> None:
    """Fill `out` with the images at `local` ids of one dataset (of PNG files if `encoded`), in that order."""
    if is_consecutive(local) and not encoded:
        dataset.read_direct(out, np.s_[local[0] : local[-1] + 1])
        return
    low, high = int(local.min()), int(local.max()) + 1
    if high - low <= 2 * len(local):  # dense enough: one contiguous read, then gather
        rows, pick = dataset[low:high], local - low
    else:  # sparse: h5py point selection wants increasing unique ids
        unique, pick = np.unique(local, return_inverse=True)
        rows = dataset[unique]
    pick = pick.reshape(-1)
    if not encoded:
        np.take(rows, pick, axis=0, out=out)
        return
    for position, row in enumerate(pick.tolist()):
        out[position] = _png.decode_as(rows[row], out.shape[1:], out.dtype)
