"""HDF5: each uniform run of an append is one contiguous (n, H, W[, C]) dataset.

``images/00000000`` holds the pixels in native little-endian types and ``labels/00000000``
their int64 labels; a batch of one shape (the usual case) is a single dataset that reads
straight into a preallocated array, and images of differing shapes fall into several runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from storage._base import Batch, Store, fsync_path, gather_runs, is_consecutive, make_durable

FORMAT = "imagestore-hdf5-1"


class Hdf5Store(Store):
    name = "hdf5"
    is_directory = False

    def __init__(self, path: Path, writable: bool, create: bool) -> None:
        super().__init__(path, writable)
        self._file = h5py.File(path, "w-" if create else ("r+" if writable else "r"))
        if create:
            self._file.attrs["format"] = FORMAT
            self._file.create_group("images")
            self._file.create_group("labels")
            self._file.flush()
            make_durable([path], path.parent)
        elif self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise ValueError(f"{path} is an HDF5 file that is no image store")
        self._runs: list[h5py.Dataset] = []
        self._index_runs(self._file["images"][name] for name in sorted(self._file["images"]))
        labels = [self._file["labels"][name][()] for name in sorted(self._file["labels"])]
        self._labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        if len(self._labels) != self._starts[-1]:
            raise ValueError(f"{path} holds {self._starts[-1]} images but {len(self._labels)} labels")

    @classmethod
    def is_store(cls, path: Path) -> bool:
        if not (path.is_file() and h5py.is_hdf5(path)):
            return False
        with h5py.File(path, "r") as file:
            return file.attrs.get("format") == FORMAT

    @classmethod
    def files(cls, path: Path) -> list[Path]:
        return [path]

    def _count(self) -> int:
        return int(self._starts[-1])

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        offset = 0
        for batch in batches:
            name = f"{len(self._runs):08d}"
            self._index_runs([self._file["images"].create_dataset(name, data=batch)])
            self._file["labels"].create_dataset(name, data=labels[offset : offset + len(batch)])
            offset += len(batch)
        self._file.flush()
        fsync_path(self.path)
        self._labels = np.concatenate([self._labels, labels])

    def _index_runs(self, runs: Iterable[h5py.Dataset]) -> None:
        """Add datasets to the runs, keeping their start ids and layouts at hand."""
        self._runs.extend(runs)
        self._starts = np.cumsum([0] + [len(run) for run in self._runs])
        self._layouts = [(run.shape[1:], run.dtype) for run in self._runs]
        self._offsets = [run.id.get_offset() or 0 for run in self._runs]

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
