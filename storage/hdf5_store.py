"""HDF5: each uniform run of an append is one contiguous (n, H, W[, C]) dataset.

``images/00000000`` holds the pixels in native little-endian types and ``labels/00000000``
their int64 labels; a batch of one shape (the usual case) is a single dataset that reads
straight into a preallocated array, and images of differing shapes fall into several runs.
An append writes a copy of the file and renames it over the store (HDF5 files are not crash
safe while open for writing), so the store is only ever held open read-only: readers in other
processes keep their snapshot, and a crash leaves the last complete version.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from storage._base import (
    Batch,
    DamagedStoreError,
    Store,
    gather_runs,
    is_consecutive,
    make_durable,
    staged_copy,
    staging_path,
)

FORMAT = "imagestore-hdf5-1"


class Hdf5Store(Store):
    name = "hdf5"
    is_directory = False

    def __init__(self, path: Path, writable: bool, create: bool, *, durable: bool = True) -> None:
        """`durable`: flush each append to disk (fsync) before it returns."""
        super().__init__(path, writable, durable)
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
        self._layouts = [(run.shape[1:], run.dtype) for run in self._runs]
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
                    file["images"].create_dataset(f"{run:08d}", data=batch)
                    file["labels"].create_dataset(f"{run:08d}", data=labels[offset : offset + len(batch)])
                    offset += len(batch)
        finally:
            self._open()

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        images = gather_runs(
            ids,
            self._starts,
            self._layouts,
            lambda run, local, out: _read_run(self._runs[run], local, out),
            self._offsets,
        )
        return images, self._labels[ids]

    def _close(self) -> None:
        self._file.close()


def _read_run(dataset: h5py.Dataset, local: np.ndarray, out: np.ndarray) -> None:
    """Fill `out` with the images at `local` ids of one dataset, in that order."""
    if is_consecutive(local):
        dataset.read_direct(out, np.s_[local[0] : local[-1] + 1])
        return
    low, high = int(local.min()), int(local.max()) + 1
    if high - low <= 2 * len(local):  # dense enough: one contiguous read, then gather
        block = np.empty((high - low, *dataset.shape[1:]), dataset.dtype)
        dataset.read_direct(block, np.s_[low:high])
        np.take(block, local - low, axis=0, out=out)
    else:  # sparse: h5py point selection wants increasing unique ids
        unique, inverse = np.unique(local, return_inverse=True)
        np.take(dataset[unique], inverse.reshape(-1), axis=0, out=out)
