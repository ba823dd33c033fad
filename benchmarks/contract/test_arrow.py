"""arrow through the contract, plus what is its own: pyarrow opens each part alone, and raw pixels are read
straight out of the memory map."""

from __future__ import annotations

import errno
import json

import numpy as np
import pyarrow as pa
import pytest

import storage
from storage.testing import StoreContract, assert_read_match
from storage.testing.contract import append_files, encoded_names

IMAGES = np.arange(3 * 4 * 5 * 3, dtype=np.uint8).reshape(3, 4, 5, 3)


class TestArrow(StoreContract):
    backend = "arrow"


def test_each_part_is_an_arrow_file_that_describes_itself(tmp_path):
    with storage.open("arrow", tmp_path / "store", "x") as store:
        store.append(IMAGES, [7, 8, 9])
        store.append(IMAGES[:1, :, :, 0], [10])
    with pa.memory_map(str(tmp_path / "store" / "part-00000000.arrow")) as file:
        table = pa.ipc.open_file(file).read_all()
    layout = json.loads(table.schema.metadata[b"image_layout"])
    assert layout == {"shape": [4, 5, 3], "dtype": "|u1", "encoding": "raw"}
    assert table.column("label").to_pylist() == [7, 8, 9]
    pixels = np.frombuffer(b"".join(table.column("image").to_pylist()), np.uint8).reshape(IMAGES.shape)
    np.testing.assert_array_equal(pixels, IMAGES)
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == [
        "manifest.json",
        "part-00000000.arrow",
        "part-00000001.arrow",
        "writer.lock",
    ]


def test_encoded_parts_hold_the_encoded_files(tmp_path):
    with storage.open("arrow", tmp_path / "store", "x", encoding="png") as store:
        store.append(IMAGES, [1, 2, 3])
    with pa.memory_map(str(tmp_path / "store" / "part-00000000.arrow")) as file:
        table = pa.ipc.open_file(file).read_all()
    assert table.schema.field("image").type == pa.large_binary()
    assert all(record.startswith(b"\x89PNG") for record in table.column("image").to_pylist())


def test_an_error_after_the_manifest_was_replaced_keeps_the_committed_parts(tmp_path, monkeypatch):
    """Flushing the directory can fail after the new manifest is in place: the parts it lists must stay."""
    from storage import _parts

    replace = _parts.replace_atomically

    def replace_then_fail(*args, **kwargs):
        replace(*args, **kwargs)
        raise OSError(errno.EIO, "the directory could not be flushed")

    with storage.open("arrow", tmp_path / "store", "x") as store:
        store.append(IMAGES[:1], [1])
        monkeypatch.setattr(_parts, "replace_atomically", replace_then_fail)
        with pytest.raises((OSError, storage.DamagedStoreError), match="could not be flushed"):  # as append reports it
            store.append(IMAGES[1:], [2, 3])
    with storage.open("arrow", tmp_path / "store") as store:
        assert_read_match(store, None, list(IMAGES), [1, 2, 3])


@pytest.mark.parametrize("name", encoded_names("arrow"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store")
    parts = sorted((tmp_path / "store").glob("part-*.arrow"))
    assert len(parts) > 1  # one a shape and layout
    stored = []
    for part in parts:
        with pa.memory_map(str(part)) as file:
            stored += pa.ipc.open_file(file).read_all().column("image").to_pylist()
    assert stored == files
