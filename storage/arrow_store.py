"""Arrow: a directory of Arrow IPC files read through memory maps, as Hugging Face ``datasets`` reads its cache.

Each part (see ``storage/_parts.py`` for the manifest that commits them) is one IPC file holding one record batch
with two columns: ``image``, the raw pixels of each image as a ``fixed_size_binary`` value (or, with an
``encoding`` such as ``"png"``, the encoded file as ``large_binary``), and ``label`` as int64. The schema's metadata
repeats the images' shape, dtype and encoding, so ``pyarrow.ipc.open_file`` alone makes sense of a part. Raw pixels
of a part lie back to back in the file: a read copies them straight from the memory map into the result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa

from storage._errors import DamagedStoreError
from storage._parts import Part, PartsStore, decode_into
from storage._reading import is_consecutive


@contextmanager
def arrow_damage(path: Path, kind: str) -> Iterator[None]:
    """pyarrow's errors about a damaged file (ArrowInvalid is a ValueError too, and a column name that is no UTF-8
    a UnicodeDecodeError) as DamagedStoreError naming the part; MemoryError passes (ArrowMemoryError too)."""
    try:
        yield
    except (DamagedStoreError, MemoryError):
        raise
    except (pa.ArrowException, ValueError) as error:
        raise DamagedStoreError(f"{path} is a damaged {kind} file ({type(error).__name__}: {error})") from None


def layout_metadata(part: Part) -> dict[str, str]:
    """Schema metadata that repeats a part's image layout, so that the file alone makes sense."""
    return {"image_layout": json.dumps({"shape": list(part.shape), "dtype": part.dtype.str, "encoding": part.encoding})}


def pixel_column(images: np.ndarray) -> pa.Array:
    """Raw images as a fixed_size_binary column over their own memory (no copy)."""
    pixels = pa.py_buffer(images.reshape(-1).view(np.uint8))
    return pa.Array.from_buffers(pa.binary(images[0].nbytes), len(images), [None, pixels])


class Mapped:
    """An open part: its memory map, and the columns read through it."""

    def __init__(self, path: Path, part: Part) -> None:
        self.file = pa.memory_map(str(path))  # arrow keeps the map alive while a buffer of it is in use
        try:
            with arrow_damage(path, "Arrow"):
                self._read_columns(path, part)
        except BaseException:
            self.file.close()
            raise

    def _read_columns(self, path: Path, part: Part) -> None:
        reader = pa.ipc.open_file(self.file)
        if reader.num_record_batches != 1 or reader.schema != schema(part):
            raise DamagedStoreError(f"{path} is not the Arrow file its manifest describes")
        batch = reader.get_batch(0)
        batch.validate(full=True)  # offsets and lengths within their buffers, before any is used
        images, labels = batch.column(0), batch.column(1)
        if batch.num_rows != part.count or images.null_count or labels.null_count or images.offset:
            raise DamagedStoreError(f"{path} does not hold {part.count} images with labels")
        self.labels = labels.to_numpy().copy()
        if part.encoding == "raw":
            pixels = np.frombuffer(images.buffers()[1], part.dtype, part.count * int(np.prod(part.shape)))
            self.pixels = pixels.reshape(part.count, *part.shape)
        else:
            self.offsets = np.frombuffer(images.buffers()[1], np.int64, part.count + 1)
            self.data = memoryview(images.buffers()[2]).cast("B")  # pyarrow's are signed bytes ("b")

    def records(self, local: np.ndarray):
        for image_id in local.tolist():
            yield self.data[self.offsets[image_id] : self.offsets[image_id + 1]]


def schema(part: Part) -> pa.Schema:
    """The schema of a part's IPC file."""
    image = pa.binary(part.image_bytes) if part.encoding == "raw" else pa.large_binary()
    return pa.schema(
        [pa.field("image", image, nullable=False), pa.field("label", pa.int64(), nullable=False)],
        metadata=layout_metadata(part),
    )


class ArrowStore(PartsStore):
    name = "arrow"
    suffix = ".arrow"

    def _write_part(self, path: Path, images: np.ndarray, labels: np.ndarray) -> None:
        part = Part(len(images), images.shape[1:], images.dtype, self.codec.name)
        if part.encoding == "raw":
            column = pixel_column(images)
        else:
            column = pa.array([self.codec.encode(image) for image in images], pa.large_binary())
        batch = pa.record_batch([column, pa.array(labels, pa.int64())], schema=schema(part))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)

    def _open_part(self, path: Path, part: Part) -> tuple[Mapped, np.ndarray]:
        mapped = Mapped(path, part)
        return mapped, mapped.labels

    def _read_part(self, handle: Mapped, part: Part, local: np.ndarray, out: np.ndarray) -> None:
        if part.encoding != "raw":
            decode_into(part, handle.records(local), out)
        elif is_consecutive(local):
            out[...] = handle.pixels[local[0] : local[-1] + 1]
        else:
            np.take(handle.pixels, local, axis=0, out=out)

    def _close_part(self, handle: Mapped) -> None:
        handle.file.close()
