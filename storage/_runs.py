"""The skeleton of a store kept in one file of runs (hdf5, npz): each run one uniform block of images.

An append writes its new runs into a copy of the file and renames the copy over the store, so a
crash or a reader sees the old file or the new one, never a mix; between appends the store holds
the file open read-only. A backend says how to create an empty file, how to find its runs when
opening, how to write new runs into the copy, and how to read ids of one run.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from storage._base import Capabilities, Store
from storage._durable import make_durable, remove_leftovers, staged_copy, staging_leftovers
from storage._errors import DamagedStoreError
from storage._reading import Batch, gather_runs
from storage.codecs import MAX_EXPANSION

Layout = tuple[tuple[int, ...], np.dtype]  # the shape and dtype of each image of a run


class RunFileStore(Store):
    capabilities = Capabilities(directory=False)

    def _start(self, create: bool) -> None:
        if create:
            self._create(self.location)
            if self.durable:
                make_durable([self.location], self.location.parent)
        self._open()

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        lock = cls.writer_lock(location)
        return [location, *staging_leftovers(location), *([lock] if lock.exists() else [])]

    def _sweep(self) -> None:
        remove_leftovers(self.location)

    # --- what a backend provides -------------------------------------------------

    @abstractmethod
    def _create(self, location: Path) -> None:
        """Write an empty store at `location`."""

    @abstractmethod
    def _open(self) -> None:
        """Open the file and find its runs, then call `_found_runs`."""

    @abstractmethod
    def _release(self) -> None:
        """Close every handle on the file."""

    @abstractmethod
    def _write_runs(self, staging: Path, runs: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        """Add (name, images, labels) runs to the copy of the store at `staging`."""

    @abstractmethod
    def _read_run(self, run: int, local: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` with the images of run `run` at ids `local` (counted within the run), in that order."""

    # --- shared ------------------------------------------------------------------

    def _found_runs(self, layouts: list[Layout], counts: list[int], labels: list[np.ndarray], offsets: Sequence[int]):
        """Record the runs found on opening: checked against their labels and the file's size.

        `offsets` are where each run's pixels start in the file (0 where not known): reads are
        placed in memory for a fast copy from there.
        """
        pixel_bytes = sum(  # Python ints: forged sizes must not wrap around
            count * math.prod(shape) * dtype.itemsize for count, (shape, dtype) in zip(counts, layouts)
        )
        if pixel_bytes > MAX_EXPANSION * self.location.stat().st_size:
            raise DamagedStoreError(f"{self.location} lists {pixel_bytes} bytes of pixels, more than it can hold")
        if any(label.ndim != 1 for label in labels) or sum(map(len, labels)) != sum(counts):
            raise DamagedStoreError(f"{self.location} holds {sum(counts)} images but {sum(map(len, labels))} labels")
        self._layouts = layouts
        self._starts = np.cumsum([0, *counts])
        self._labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        self._offsets = list(offsets)

    def _commit_file(self) -> Path:
        return self.location  # replaced by the renamed copy

    def _count(self) -> int:
        return int(self._starts[-1])

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        bounds = np.cumsum([0, *map(len, batches)])
        runs = [
            (f"{number:08d}", batch, labels[start:stop])
            for number, (batch, start, stop) in enumerate(zip(batches, bounds, bounds[1:]), len(self._layouts))
        ]
        self._release()
        try:
            with staged_copy(self.location, self.durable) as staging:
                self._write_runs(staging, runs)
        finally:
            self._open()

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        return gather_runs(ids, self._starts, self._layouts, self._read_run, self._offsets), self._labels[ids]

    def _close(self) -> None:
        self._release()
