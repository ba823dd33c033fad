"""HDF5: each uniform run of an append is one contiguous (n, H, W[, C]) dataset.

``images/00000000`` holds the pixels in native little-endian types and ``labels/00000000``
their int64 labels; a batch of one shape (the usual case) is a single dataset that reads
straight into a preallocated array, and images of differing shapes fall into several runs.
Appends go to a copy of the file that is renamed over the store (``storage._runs``): HDF5
files are not crash safe while open for writing, so the store is only ever held open read-only.

Options for new runs: ``compression="lzf"`` or ``"gzip"`` stores a run chunked one image per
chunk and compressed by HDF5's filter; ``encoding="png"`` (any codec of ``storage.codecs``)
stores each image encoded, in a variable-length byte dataset whose attributes record the
codec and the images' shape and dtype. A read takes encoded files a few MiB of images at a
time (`ENCODED_BLOCK_BYTES`), so it holds little memory beyond the images it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from storage import codecs
from storage._base import Options
from storage._errors import DamagedStoreError
from storage._reading import is_consecutive
from storage._runs import Layout, RunFileStore

# Attributes are fixed-length byte strings: libhdf5 can crash (SIGSEGV) reading a damaged
# variable-length string attribute, which is what h5py makes of a Python str.
FORMAT = np.bytes_(b"imagestore-hdf5-1")
COMPRESSIONS = (None, "lzf", "gzip")
ENCODED = h5py.vlen_dtype(np.uint8)
FIRST_ENCODING = "png"  # encoded runs written before the codec was recorded are PNG files
ENCODED_BLOCK_BYTES = 1 << 20  # a read of encoded images holds the files of about this many pixel bytes at once


@dataclass(frozen=True)
class Hdf5Options(Options):
    """`encoding`: a codec name for new runs ("raw" pixels, or "png" or "jpeg" files); `compression`: None, "lzf" or
    "gzip" for new raw runs. Any store reads them all."""

    encoding: str = "raw"
    compression: str | None = None

    def __post_init__(self) -> None:
        codecs.get(self.encoding)
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be None, lzf or gzip; got {self.compression!r}")
        if self.encoding != "raw" and self.compression:
            raise ValueError(f"compression applies to raw pixels; {self.encoding} files are compressed already")

    @property
    def codec(self) -> codecs.Codec:
        return codecs.get(self.encoding)


class Hdf5Store(RunFileStore):
    name = "hdf5"
    Options = Hdf5Options

    @classmethod
    def is_store(cls, location: Path) -> bool:
        if not (location.is_file() and h5py.is_hdf5(location)):
            return False
        try:
            with h5py.File(location, "r") as file:
                return file.attrs.get("format") == FORMAT
        except Exception:  # unreadable (h5py raises OSError, KeyError, ...): damaged, or not ours
            return False

    def _create(self, location: Path) -> None:
        with h5py.File(location, "w-") as file:
            file.attrs["format"] = FORMAT
            file.create_group("images")
            file.create_group("labels")

    def _open(self) -> None:
        self._file = h5py.File(self.location, "r")
        if self._file.attrs.get("format") != FORMAT:
            self._file.close()
            raise ValueError(f"{self.location} is an HDF5 file that is no image store")
        self._runs = _own_datasets(self._file, "images")
        self._codecs = [_run_codec(run) for run in self._runs]
        layouts = [
            _encoded_layout(run, codec) if codec else (run.shape[1:], run.dtype)
            for run, codec in zip(self._runs, self._codecs)
        ]
        label_sets = _own_datasets(self._file, "labels")
        if any(labels.dtype.kind != "i" or labels.dtype.itemsize != 8 or labels.ndim != 1 for labels in label_sets):
            raise DamagedStoreError(f"{self.location} holds labels that are not one int64 per image")
        if sum(labels.nbytes for labels in label_sets) > self.location.stat().st_size:  # before they are read
            raise DamagedStoreError(f"{self.location} lists more labels than it can hold")
        labels = [dataset[()].astype(np.int64, copy=False) for dataset in label_sets]
        offsets = [run.id.get_offset() or 0 for run in self._runs]  # where each run's pixels start in the file
        self._found_runs(layouts, [len(run) for run in self._runs], labels, offsets)

    def _release(self) -> None:
        self._file.close()

    def _write_runs(self, staging: Path, runs: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
        with h5py.File(staging, "r+") as file:
            for name, batch, labels in runs:
                self._write_run(file["images"], name, batch)
                file["labels"].create_dataset(name, data=labels)

    def _write_run(self, group: h5py.Group, name: str, batch: np.ndarray) -> None:
        if self.codec is not codecs.RAW:
            files = np.empty(len(batch), ENCODED)
            for position, image in enumerate(batch):
                files[position] = np.frombuffer(self.codec.encode(image), np.uint8)
            run = group.create_dataset(name, data=files, dtype=ENCODED)
            run.attrs.update(
                image_shape=batch.shape[1:],
                image_dtype=np.bytes_(batch.dtype.str.encode("ascii")),
                encoding=np.bytes_(self.codec.name.encode("ascii")),
            )
        elif self.options.compression:
            group.create_dataset(name, data=batch, chunks=(1, *batch.shape[1:]), compression=self.options.compression)
        else:
            group.create_dataset(name, data=batch)

    def _read_run(self, run: int, local: np.ndarray, out: np.ndarray) -> None:
        dataset, codec = self._runs[run], self._codecs[run]
        if not codec:
            if is_consecutive(local):
                dataset.read_direct(out, np.s_[local[0] : local[-1] + 1])
            else:
                rows, pick = _rows_of(dataset, local)
                np.take(rows, pick, axis=0, out=out)
            return
        step = max(1, ENCODED_BLOCK_BYTES // out[0].nbytes)  # the files of a few MiB of images at a time
        for first in range(0, len(local), step):
            rows, pick = _rows_of(dataset, local[first : first + step])
            for position, row in enumerate(pick.tolist(), first):
                out[position] = codec.decode(rows[row], out.shape[1:], out.dtype)


def _rows_of(dataset: h5py.Dataset, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `dataset` that hold the images at `local`, and where each image is among them."""
    low, high = int(local.min()), int(local.max()) + 1
    if high - low <= 2 * len(local):  # dense enough: one contiguous read
        return dataset[low:high], local - low
    unique, pick = np.unique(local, return_inverse=True)  # sparse: h5py point selection wants increasing unique ids
    return dataset[unique], pick.reshape(-1)


def _own_datasets(file: h5py.File, group: str) -> list[h5py.Dataset]:
    """The datasets of a group, in name order, each held in the file itself: a link (soft or to another file), a
    dataset stored in external files, or a virtual dataset would make a read reach outside the store."""

    def check_hard_link(parent: h5py.Group, name: str) -> None:
        if parent.id.links.get_info(name.encode()).type != h5py.h5l.TYPE_HARD:  # looked at, not followed
            raise DamagedStoreError(f"{file.filename}: {parent.name}/{name} is a link, not part of the store")

    check_hard_link(file, group)
    parent = file[group]
    found = []
    for name in sorted(parent):
        check_hard_link(parent, name)
        dataset = parent[name]
        if not isinstance(dataset, h5py.Dataset) or dataset.external or dataset.is_virtual:
            raise DamagedStoreError(f"{file.filename}: {group}/{name} keeps its data outside the store")
        found.append(dataset)
    return found


def _run_codec(run: h5py.Dataset) -> codecs.Codec | None:
    """The codec of a run of encoded images, or None for a run of pixels."""
    if run.dtype != ENCODED:
        return None
    name = bytes(run.attrs.get("encoding", FIRST_ENCODING.encode())).decode("ascii", "replace")
    try:
        return codecs.get(name)
    except ValueError as error:
        if name in codecs.MISSING:  # a codec whose library is not installed here: no damage
            raise
        raise DamagedStoreError(f"{run.name} records an unknown encoding: {error}") from None


def _encoded_layout(run: h5py.Dataset, codec: codecs.Codec) -> Layout:
    """The shape and dtype of the images a run of encoded files holds, as its attributes record them."""
    shape = tuple(int(side) for side in run.attrs["image_shape"])
    dtype = np.dtype(bytes(run.attrs["image_dtype"]).decode("ascii"))
    if run.ndim != 1 or min(shape, default=0) < 1 or not codec.accepts(dtype, shape):
        raise DamagedStoreError(f"{run.name} records {codec.name} files of {dtype} images of shape {shape}")
    return shape, dtype
