"""Parquet: a directory of Parquet files, one row per image, in the layout Hugging Face ``datasets`` publishes.

Each part (see ``storage/_parts.py`` for the manifest that commits them: an append is durable once the new
manifest has been renamed over the old one) is one Parquet file written by ``pyarrow.parquet``, in row groups of
``row_group_size`` rows, with two columns. ``label`` is int64. ``image`` holds the raw pixels of each image as a
``fixed_size_binary`` value, or, with an ``encoding`` such as ``"png"``, Hugging Face's image struct
``struct<bytes: binary, path: string>`` with the encoded file in ``bytes`` and a null ``path``, plus the
``huggingface`` schema metadata that names the column an ``Image`` feature, so ``datasets`` reads an encoded part
as an image dataset. The schema metadata ``image_layout`` repeats the images' shape, dtype and encoding, so
``pyarrow.parquet.read_table`` alone makes sense of a part.

Reading decodes only the row groups that hold the ids asked for, all in one ``read_row_groups`` call; the
footer's row counts map ids to row groups. Raw pixels of those row groups come out of pyarrow as one values
buffer, which is copied into the result with one NumPy slice or take: no Python per image. Why the unusual
settings (measured on 20,000 32x32 colour images, 61 MB, on the 2-core machine of the results):

- Raw pixels are ``fixed_size_binary``, not ``binary``: pyarrow decoded the whole column in 5 ms against 11 ms,
  and a ``binary`` column's offsets would have to be checked before its values could be taken as equal-size images.
- ``use_dictionary=False``, and statistics for ``label`` only: dictionary-encoding pixels is work that pyarrow
  abandons after a megabyte, and min/max statistics of whole images are bytes nobody filters on.
- ``memory_map=True``, ``pre_buffer=False``, ``use_threads=False``: a part is a local file that never changes
  once listed. The memory map read the column 5% faster than buffered reads. Pre-buffering (coalescing reads,
  meant for object stores) cost 10 us more per call and 10% more on the whole column, and keeps a cache in the
  reader that threads reading at once would share. Threads cost 8 us per call and gained nothing, since one
  column is read. A call for one small row group takes about 9 us.
- No page checksums: writing them doubled the time of an append (35 to 69 ms), and verifying them that of a read
  (15 to 29 ms). Raw pixels are therefore not checksummed, as in arrow; PNG records carry their own.
- Before pyarrow reads a footer, the skeleton has checked that the part is a regular file of plausible size. The
  footer's schema (metadata included) and its total and per-row-group row counts must match the manifest's part.
  The thrift limits come from the part: no string in the footer or a page header is longer than the file, and no
  list longer than the part's rows plus a few (pyarrow's default lets a forged length allocate a million
  elements). pyarrow's errors about a damaged file become ``DamagedStoreError``.

Concurrent readers are safe: a listed part never changes, and each read builds its own column readers over the
shared, read-only memory map (no pre-buffer cache is shared).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage._base import EncodingOptions
from storage._errors import DamagedStoreError
from storage._parts import Part, PartsStore, decode_into
from storage._reading import is_consecutive
from storage.arrow_store import arrow_damage, layout_metadata, pixel_column

COMPRESSIONS = ("snappy", "gzip", "brotli", "lz4", "zstd")  # Parquet's codecs, as pyarrow names them
# Hugging Face's Image feature: its Arrow type, and the schema metadata that makes `datasets` read the column as one.
HF_IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
HF_FEATURES = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}
ROW_GROUP_BYTES = 1 << 20  # the default row group: this many bytes of pixels (see ParquetOptions)
FOOTER_LISTS = 64  # room in the thrift list limit beyond one entry per row: columns, schema elements, encodings
THRIFT_LIMIT = 100 << 20  # pyarrow's default limits (an int32 each): a part's own never go beyond them


@dataclass(frozen=True)
class ParquetOptions(EncodingOptions):
    """`encoding`: a codec name for new parts ("raw" pixels by default); `row_group_size`: rows per row group, or
    None for as many as hold about 1 MiB of pixels (at least one); `compression`: None (pages stored as they are)
    or a Parquet codec for new raw parts. Any store reads them all.

    A read decodes whole row groups, so their size trades a random read (a whole row group decoded for one image)
    against the footer (about 150 bytes per row group, all parsed, and each row group's labels read, when a part is
    opened: about 8 us per row group). A 1 MiB row group decodes in about 0.05 ms, and costs 150 bytes of footer
    and 8 us of opening per MiB of images. A fixed row count suits one image size only: the 100 rows Hugging Face
    ``datasets`` used for image datasets are 0.3 MB of 32x32 colour images but 20 MB of 256x256 ones."""

    row_group_size: int | None = None
    compression: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        size = self.row_group_size
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise ValueError(f"row_group_size must be None or a positive int (rows per row group), got {size!r}")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be None or one of {', '.join(COMPRESSIONS)}; got {self.compression!r}")
        if self.compression is not None and not pa.Codec.is_available(self.compression):
            raise ValueError(f"compression {self.compression!r} is not built into this pyarrow")
        if self.compression is not None and self.encoding != "raw":
            raise ValueError(f"compression applies to raw pixels; {self.encoding} files are compressed already")


def schema(part: Part) -> pa.Schema:
    """The Arrow schema of a part's Parquet file, with the metadata that describes its images."""
    metadata = layout_metadata(part)
    if part.encoding == "raw":
        fields = [pa.field("image", pa.binary(part.image_bytes), nullable=False), pa.field("label", pa.int64(), False)]
    else:  # as `datasets` writes an Image feature: nullable columns, and its features in the metadata
        fields = [pa.field("image", HF_IMAGE), pa.field("label", pa.int64())]
        metadata["huggingface"] = json.dumps({"info": {"features": HF_FEATURES}})
    return pa.schema(fields, metadata=metadata)


class Opened:
    """An open part: its Parquet file, where each row group starts, and its labels."""

    def __init__(self, path: Path, part: Part) -> None:
        self.path = path
        with arrow_damage(path, "Parquet"):
            self.file = pq.ParquetFile(
                str(path),
                memory_map=True,
                pre_buffer=False,
                thrift_string_size_limit=min(max(os.lstat(path).st_size, 1024), THRIFT_LIMIT),
                thrift_container_size_limit=min(part.count + FOOTER_LISTS, THRIFT_LIMIT),
            )
        try:
            with arrow_damage(path, "Parquet"):
                self.starts, self.labels = self._check(part)
        except BaseException:
            self.file.close()
            raise

    def _check(self, part: Part) -> tuple[np.ndarray, np.ndarray]:
        """Where each row group starts, and the labels, once the footer agrees with the manifest's `part`."""
        footer = self.file.metadata
        rows = [footer.row_group(group).num_rows for group in range(footer.num_row_groups)]
        if not self.file.schema_arrow.equals(schema(part), check_metadata=True):
            raise DamagedStoreError(f"{self.path} is not the Parquet file its manifest describes")
        if footer.num_rows != part.count or sum(rows) != part.count or min(rows, default=0) < 1:
            raise DamagedStoreError(f"{self.path} does not hold the {part.count} rows its manifest lists")
        labels = self.file.read(columns=["label"], use_threads=False).column(0)
        if labels.null_count:
            raise DamagedStoreError(f"{self.path} has rows without a label")
        return np.cumsum([0, *rows]), labels.to_numpy()

    def read(self, part: Part, local: np.ndarray, out: np.ndarray) -> None:
        """Fill `out` with the images at `local`, decoding only the row groups that hold them."""
        groups = np.searchsorted(self.starts, local, side="right") - 1
        consecutive = is_consecutive(local)
        if consecutive:  # the row groups from the first id's to the last id's
            needed = np.arange(groups[0], groups[-1] + 1)
            rows = local - self.starts[groups[0]]
        else:
            needed = np.unique(groups)
            lengths = self.starts[needed + 1] - self.starts[needed]
            firsts = np.cumsum(lengths) - lengths  # where each row group starts in what is read
            rows = local - self.starts[groups] + firsts[np.searchsorted(needed, groups)]
        with arrow_damage(self.path, "Parquet"):
            column = self.file.read_row_groups(needed.tolist(), columns=["image"], use_threads=False).column(0)
        if len(column) != (self.starts[needed + 1] - self.starts[needed]).sum() or column.null_count:
            raise DamagedStoreError(f"{self.path} has row groups that do not hold the rows its footer lists")
        if part.encoding == "raw":
            copy_pixels(column, part, rows, consecutive, out)
        else:
            decode_into(part, records(column.chunks, rows, self.path), out)

    def close(self) -> None:
        self.file.close()


def copy_pixels(column: pa.ChunkedArray, part: Part, rows: np.ndarray, consecutive: bool, out: np.ndarray) -> None:
    """Copy `rows` (counting up by one if `consecutive`) of a raw pixel column into `out`: its values buffer,
    viewed as images, with one slice or take."""
    chunk = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()  # pyarrow gives one chunk here
    values = np.frombuffer(chunk.buffers()[1], np.uint8, len(chunk) * part.image_bytes, chunk.offset * part.image_bytes)
    pixels = values.view(part.dtype).reshape(len(chunk), *part.shape)
    if consecutive:
        out[...] = pixels[rows[0] : rows[-1] + 1]
    else:
        np.take(pixels, rows, axis=0, out=out)


def records(chunks: list[pa.StructArray], rows: np.ndarray, path: Path) -> Iterator[memoryview]:
    """The encoded files at `rows` (numbered across the chunks of Hugging Face image structs), in that order."""
    bounds = np.cumsum([0, *map(len, chunks)])
    files = []
    for chunk in chunks:
        data = chunk.flatten()[0]  # the `bytes` field, with the struct's offset applied
        if data.null_count:
            raise DamagedStoreError(f"{path} holds an image without bytes (a path alone is no record of a store)")
        buffers = data.buffers()
        offsets = np.frombuffer(buffers[1], np.int32, len(data) + 1, data.offset * 4)
        files.append((offsets, memoryview(buffers[2] or b"").cast("B")))  # pyarrow's buffers are signed chars
    for row, number in zip(rows.tolist(), (np.searchsorted(bounds, rows, side="right") - 1).tolist()):
        offsets, data = files[number]
        position = row - bounds[number]
        yield data[offsets[position] : offsets[position + 1]]


class ParquetStore(PartsStore):
    name = "parquet"
    suffix = ".parquet"
    Options = ParquetOptions

    def _write_part(self, path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        part = Part(len(images), images.shape[1:], images.dtype, self.codec.name)
        rows = self.options.row_group_size or max(1, ROW_GROUP_BYTES // part.image_bytes)
        compression = self.options.compression or "NONE"
        with pq.ParquetWriter(
            str(path), schema(part), compression=compression, use_dictionary=False, write_statistics=["label"]
        ) as writer:
            for start in range(0, part.count, rows):  # a row group at a time: encoded records never pile up
                group = self._row_group(part, images[start : start + rows], labels[start : start + rows])
                writer.write_table(group, row_group_size=rows)

    def _row_group(self, part: Part, images: np.ndarray, labels: np.ndarray) -> pa.Table:
        if part.encoding == "raw":
            column = pixel_column(images)
        else:
            files = pa.array([self.codec.encode(image) for image in images], pa.binary())
            column = pa.StructArray.from_arrays([files, pa.nulls(len(images), pa.string())], fields=list(HF_IMAGE))
        return pa.Table.from_arrays([column, pa.array(labels, pa.int64())], schema=schema(part))

    def _open_part(self, path: Path, part: Part) -> tuple[Opened, np.ndarray]:
        opened = Opened(path, part)
        return opened, opened.labels

    def _read_part(self, handle: Opened, part: Part, local: np.ndarray, out: np.ndarray) -> None:
        handle.read(part, local, out)

    def _close_part(self, handle: Opened) -> None:
        handle.close()
