"""PNG: one PNG file per image, labels in an index file beside them (the classic "disk" method).

The index is replaced (write a new one, rename it over the old) only after the PNG files of a
batch are on disk, so it is the commit record: ``len(store)`` is the number of index records,
and a PNG without one (left by an interrupted append) is ignored and later overwritten.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from storage import _png
from storage._base import Batch, DamagedStoreError, Store, make_durable, replace_atomically, stack_or_list, staging_path

INDEX = "index.bin"
MAGIC = b"imagestore-png\x00\x01"  # 16 bytes, then one RECORD per image
RECORD = np.dtype([("label", "<i8"), ("one_channel_axis", "u1")])  # was (H, W, 1), stored as grey
IMAGE_NAME = re.compile(r"\d{9}\.png")


class PngStore(Store):
    name = "png"
    holds = _png.HOLDS
    is_directory = True

    def __init__(
        self,
        path: Path,
        writable: bool,
        create: bool,
        *,
        compress_level: int = _png.DEFAULT_LEVEL,
        durable: bool = True,
    ) -> None:
        """`compress_level`: zlib level 0-9 for new PNG files (1 favours speed, 9 size);
        `durable`: flush each append to disk (fsync) before it returns."""
        _png.check_level(compress_level)
        super().__init__(path, writable, durable)
        self.compress_level = compress_level
        index = path / INDEX
        if create:
            path.mkdir(exist_ok=True)
            replace_atomically(index, MAGIC, durable)
        data = index.read_bytes()
        if not data.startswith(MAGIC) or (len(data) - len(MAGIC)) % RECORD.itemsize:
            raise DamagedStoreError(f"{index} is not a complete png store index")
        self._records = np.frombuffer(data, RECORD, offset=len(MAGIC))

    @classmethod
    def is_store(cls, path: Path) -> bool:
        index = path / INDEX
        if not index.is_file():
            return False
        with index.open("rb") as file:
            return file.read(len(MAGIC)) == MAGIC

    @classmethod
    def files(cls, path: Path) -> list[Path]:
        images = [Path(entry.path) for entry in os.scandir(path) if IMAGE_NAME.fullmatch(entry.name)]
        return [*filter(Path.exists, [path / INDEX, staging_path(path / INDEX)]), *sorted(images)]

    @classmethod
    def accepts(cls, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        return _png.accepts(dtype, shape)

    def _image_path(self, image_id: int) -> Path:
        return self.path / f"{image_id:09d}.png"

    def _count(self) -> int:
        return len(self._records)

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        records = np.empty(len(labels), RECORD)
        records["label"] = labels
        one_channel = [batch.ndim == 4 and batch.shape[-1] == 1 for batch in batches]
        records["one_channel_axis"] = np.repeat(one_channel, [len(batch) for batch in batches])
        written = []
        image_id = len(self._records)
        for batch in batches:
            for image in batch:
                path = self._image_path(image_id)
                path.write_bytes(_png.encode(image, self.compress_level))
                written.append(path)
                image_id += 1
        if self.durable:
            make_durable(written, self.path)
        records = np.concatenate([self._records, records])
        replace_atomically(self.path / INDEX, MAGIC + records.tobytes(), self.durable)
        self._records = records

    def _decode(self, image_id: int) -> np.ndarray:
        array = _png.decode(self._image_path(image_id).read_bytes())
        return array[..., np.newaxis] if self._records["one_channel_axis"][image_id] else array

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        images = stack_or_list((self._decode(image_id) for image_id in ids.tolist()), len(ids))
        return images, self._records["label"][ids]

    def _close(self) -> None:
        pass  # every file is closed as soon as it has been written or read
