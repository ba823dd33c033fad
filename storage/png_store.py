"""PNG: one PNG file per image, labels in an index file beside them (the classic "disk" method).

The index is replaced (write a new one, rename it over the old) only after the PNG files of a
batch are on disk, so it is the commit record: ``len(store)`` is the number of index records,
and a PNG without one (left by an interrupted append) is ignored and later overwritten.

An encoded append (``append(files, labels, encoded=True)``) writes the user's PNG files as they are, so that
``compress_level`` applies only to the files the store writes itself.

`ImageFileStore` is this layout for any codec: the jpeg store is the same with ``.jpg`` files
and its own index magic, so that each backend knows its own stores.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from storage._base import Capabilities, Options, Store
from storage._durable import make_durable, read_own, remove_leftovers, replace_atomically, staging_leftovers, write_new
from storage._errors import DamagedStoreError
from storage._reading import Batch, stack_or_list
from storage.codecs import PNG_LIBRARIES, Png

INDEX = "index.bin"
MAGIC = b"imagestore-png\x00\x01"  # 16 bytes, then one RECORD per image
RECORD = np.dtype([("label", "<i8"), ("one_channel_axis", "u1")])  # was (H, W, 1), stored as grey


class ImageFileStore(Store):
    """A directory of one encoded file per image (``000000000<suffix>``, ...) and an index of labels, which is the
    commit record. A subclass names its index `magic` (16 bytes) and its files' `suffix`; its Options choose the
    codec, whose ``decode(data)`` gives a grey image as 2-D."""

    magic: ClassVar[bytes]
    suffix: ClassVar[str]
    capabilities = Capabilities(directory=True)

    def _start(self, create: bool) -> None:
        index = self.location / INDEX
        if create:
            self.location.mkdir(exist_ok=True)
            replace_atomically(index, self.magic, self.durable)
        data = read_own(index)
        if not data.startswith(self.magic) or (len(data) - len(self.magic)) % RECORD.itemsize:
            raise DamagedStoreError(f"{index} is not a complete {type(self).name} store index")
        self._records = np.frombuffer(data, RECORD, offset=len(self.magic))

    @classmethod
    def is_store(cls, location: Path) -> bool:
        index = location / INDEX
        if not index.is_file():
            return False
        with index.open("rb") as file:
            return file.read(len(cls.magic)) == cls.magic

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        name = re.compile(rf"\d{{9}}{re.escape(cls.suffix)}")
        images = [Path(entry.path) for entry in os.scandir(location) if name.fullmatch(entry.name)]
        own = [location / INDEX, cls.writer_lock(location)]
        return [*filter(Path.exists, own), *staging_leftovers(location / INDEX), *sorted(images)]

    def _sweep(self) -> None:
        remove_leftovers(self.location / INDEX)

    def _commit_file(self) -> Path:
        return self.location / INDEX  # replaced atomically by every append

    def _image_path(self, image_id: int) -> Path:
        return self.location / f"{image_id:09d}{self.suffix}"

    def _count(self) -> int:
        return len(self._records)

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        records = np.empty(len(labels), RECORD)
        records["label"] = labels
        one_channel = [batch.ndim == 4 and batch.shape[-1] == 1 for batch in batches]
        records["one_channel_axis"] = np.repeat(one_channel, [len(batch) for batch in batches])
        written = []
        image_id = len(self._records)
        try:
            for batch in batches:
                for image in batch:
                    path = self._image_path(image_id)
                    written.append(path)  # before writing: a write that fails midway leaves a file too
                    write_new(path, self.codec.encode(image))
                    image_id += 1
            if self.durable:
                make_durable(written, self.location)
            records = np.concatenate([self._records, records])
            replace_atomically(self.location / INDEX, self.magic + records.tobytes(), self.durable)
        except BaseException:
            if self._committed_count() == len(self._records):  # not committed (a full disk, say): no orphans
                for path in written:
                    path.unlink(missing_ok=True)
            raise
        self._records = records

    def _committed_count(self) -> int:
        return ((self.location / INDEX).stat().st_size - len(self.magic)) // RECORD.itemsize

    def _decode(self, image_id: int) -> np.ndarray:
        array = self.codec.decode(read_own(self._image_path(image_id)))
        return array[..., np.newaxis] if self._records["one_channel_axis"][image_id] else array

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        images = stack_or_list((self._decode(image_id) for image_id in ids.tolist()), len(ids))
        return images, self._records["label"][ids]

    def _close(self) -> None:
        pass  # every file is closed as soon as it has been written or read


@dataclass(frozen=True)
class PngOptions(Options):
    """`compress_level`: zlib's level for new PNG files, 0-9 (1 favours speed, 9 size); `library`: what writes and
    reads them, "imagecodecs" or "pillow"."""

    compress_level: int = 1
    library: str = PNG_LIBRARIES[0]

    def __post_init__(self) -> None:
        Png(self.compress_level, self.library)  # checks the level and the library

    @property
    def codec(self) -> Png:
        return Png(self.compress_level, self.library)


class PngStore(ImageFileStore):
    name = "png"
    Options = PngOptions
    magic = MAGIC
    suffix = ".png"
