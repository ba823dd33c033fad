"""zarr through the contract, plus what is its own: each part is a Zarr v3 group that zarr opens alone, its options
(chunks, shards, a compressor) read back through both read paths, and a missing chunk or a forged zarr.json is
damage, never zeros. Skipped where zarr 3 is missing (it needs Python 3.11)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

import storage
from storage.testing import StoreContract, assert_read_match

zarr = pytest.importorskip("zarr", minversion="3", reason="the zarr backend needs zarr 3 (Python 3.11 or newer)")

IMAGES = np.random.default_rng(7).integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
LABELS = np.arange(40) * 5 - 100
PART = "part-00000000.zarr"


class TestZarr(StoreContract):
    backend = "zarr"


def make(path, **options):
    with storage.open("zarr", path, "x", **options) as store:
        store.append(IMAGES, LABELS)
    return path / PART


def test_each_part_is_a_zarr_group_that_zarr_reads_alone(tmp_path):
    part = make(tmp_path / "store", chunk_images=16)
    group = zarr.open_group(part, mode="r")
    images, labels = group["images"], group["labels"]
    assert (images.shape, images.dtype, images.chunks) == ((40, 6, 5, 3), np.uint8, (16, 6, 5, 3))
    np.testing.assert_array_equal(images[:], IMAGES)
    assert (labels.dtype, labels[:].tolist()) == (np.int64, LABELS.tolist())
    chunk_files = sorted(path.name for path in (part / "images").iterdir())
    assert chunk_files == ["c.0.0.0.0", "c.1.0.0.0", "c.2.0.0.0", "zarr.json"]


def test_chunks_default_to_about_a_mebibyte(tmp_path):
    with storage.open("zarr", tmp_path / "store", "x") as store:
        store.append(np.zeros((700, 32, 32, 3), np.uint8), range(700))
        store.append(np.zeros((3, 1024, 1024), np.uint16), range(3))
        store.append(np.zeros((2, 4, 4), np.uint8), range(2))
    parts = [tmp_path / "store" / f"part-0000000{number}.zarr" for number in range(3)]
    chunks = [zarr.open_array(part / "images", mode="r").chunks[0] for part in parts]
    assert chunks == [341, 1, 2]


def test_shards_hold_one_image_a_chunk_by_default(tmp_path):
    part = make(tmp_path / "store", shard_images=16)
    images = zarr.open_array(part / "images", mode="r")
    assert (images.chunks, images.shards) == ((1, 6, 5, 3), (16, 6, 5, 3))
    assert sorted(path.name for path in (part / "images").iterdir()) == [
        "c.0.0.0.0",
        "c.1.0.0.0",
        "c.2.0.0.0",
        "zarr.json",
    ]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"chunk_images": 1},
        {"chunk_images": 3},
        {"chunk_images": 64},
        {"shard_images": 8},
        {"chunk_images": 4, "shard_images": 12},
        {"chunk_images": 5, "shard_images": 200},
        {"compressor": "zstd"},
        {"compressor": "blosc-lz4", "chunk_images": 7},
    ],
    ids=repr,
)
def test_options_read_back_by_slices_scattered_and_repeated_ids(tmp_path, options):
    make(tmp_path / "store", **options)
    rng = np.random.default_rng(1)
    with storage.open("zarr", tmp_path / "store") as store:
        assert_read_match(store, None, list(IMAGES), LABELS.tolist())
        for ids in ([39, 0], [5, 5, 6, 2], rng.integers(0, 40, 30).tolist(), [7, 21, 33, 38], list(range(40))[::-3]):
            assert_read_match(store, ids, [IMAGES[i] for i in ids], [LABELS[i] for i in ids])
        assert_read_match(store, slice(11, 29), list(IMAGES[11:29]), LABELS[11:29].tolist())


def test_many_scattered_stretches_read_as_one_selection(tmp_path):
    images = np.random.default_rng(2).integers(0, 2**16, (200, 3, 4), dtype=np.uint16)
    with storage.open("zarr", tmp_path / "store", "x", chunk_images=1) as store:
        store.append(images, range(200))
        ids = list(range(199, 0, -2))  # 100 stretches of one chunk each, in reverse
        assert_read_match(store, ids, [images[i] for i in ids], ids)


@pytest.mark.parametrize(
    "options",
    [
        {"chunk_images": 0},
        {"chunk_images": 2.0},
        {"chunk_images": True},
        {"shard_images": -1},
        {"chunk_images": 4, "shard_images": 6},
        {"compressor": "lzma"},
        {"compressor": "zstd", "shard_images": 10},
    ],
    ids=repr,
)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, options):
    with pytest.raises(ValueError, match=r"chunk_images|shard_images|compressor"):
        storage.open("zarr", tmp_path / "store", "x", **options)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("options", [{}, {"shard_images": 16}, {"compressor": "zstd"}], ids=repr)
def test_a_missing_chunk_file_is_damage_not_zeros(tmp_path, options):
    part = make(tmp_path / "store", chunk_images=8, **options)
    (part / "images" / "c.1.0.0.0").unlink()
    with pytest.raises(storage.DamagedStoreError, match="missing"):
        storage.open("zarr", tmp_path / "store")


def test_an_all_zero_chunk_is_written_and_read(tmp_path):
    images = np.zeros((6, 2, 2), np.uint8)
    images[4:] = 9
    with storage.open("zarr", tmp_path / "store", "x", chunk_images=2) as store:
        store.append(images, range(6))
    assert (tmp_path / "store" / PART / "images" / "c.0.0.0").is_file()
    with storage.open("zarr", tmp_path / "store") as store:
        assert_read_match(store, None, list(images), list(range(6)))


def test_a_truncated_raw_chunk_is_damage(tmp_path):
    part = make(tmp_path / "store", chunk_images=8)
    chunk = part / "images" / "c.2.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with pytest.raises(storage.DamagedStoreError, match=r"c\.2\.0\.0\.0"):
        storage.open("zarr", tmp_path / "store")


@pytest.mark.parametrize(
    ("forge", "message"),
    [
        (lambda meta: meta.update(shape=[400, 6, 5, 3]), "as the manifest says"),
        (lambda meta: meta.update(shape=[40, 6, 5]), "dimensions"),
        # newer zarr refuses a 2-byte type whose bytes codec names no endianness before this module can compare
        (lambda meta: meta.update(data_type="uint16"), "as the manifest says|endian"),
        (lambda meta: meta["chunk_grid"]["configuration"].update(chunk_shape=[2**40, 6, 5, 3]), "chunks"),
        (lambda meta: meta["chunk_grid"]["configuration"].update(chunk_shape=[8, 1, 5, 3]), "chunks"),
        (lambda meta: meta["codecs"].append({"name": "gzip", "configuration": {"level": 1}}), "codecs"),
        (lambda meta: meta.update(codecs=[{"name": "no-such-codec"}]), "no-such-codec"),
        (lambda meta: meta.update(zarr_format=2), "zarr_format"),
    ],
    ids=["count", "axes", "dtype", "huge-chunks", "partial-images", "gzip", "unknown-codec", "format"],
)
def test_a_forged_zarr_json_is_damage(tmp_path, forge, message):
    part = make(tmp_path / "store", chunk_images=8)
    meta_file = part / "images" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    forge(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(storage.DamagedStoreError, match=message):
        storage.open("zarr", tmp_path / "store")


def test_forged_labels_are_damage(tmp_path):
    part = make(tmp_path / "store")
    meta_file = part / "labels" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta.update(data_type="int32", codecs=[{"name": "bytes", "configuration": {"endian": "little"}}])
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(storage.DamagedStoreError):
        storage.open("zarr", tmp_path / "store")


def test_an_array_directory_that_is_a_symlink_is_not_followed(tmp_path):
    part = make(tmp_path / "store")
    outside = tmp_path / "outside"
    shutil.move(part / "images", outside)
    (part / "images").symlink_to(outside)
    with pytest.raises(storage.DamagedStoreError, match="not a directory"):
        storage.open("zarr", tmp_path / "store")


FORGED_HEADERS = {  # a huge decompressed size, then bytes that are no compressed data
    "zstd": struct.pack("<IBI", 0xFD2FB528, 0xA0, 2**32 - 1) + bytes(32),  # single segment, 4-byte content size
    "blosc-lz4": struct.pack("<BBBBIII", 2, 1, 0x21, 1, 2**31, 2**16, 48) + bytes(32),  # nbytes, blocksize, cbytes
}


@pytest.mark.parametrize("compressor", FORGED_HEADERS)
def test_a_compressed_chunk_that_records_a_huge_size_is_damage_before_it_is_decoded(tmp_path, compressor):
    """numcodecs allocates the size a chunk's header records: each chunk's, the padded last one's too, must be the
    chunk's own size."""
    images = np.random.default_rng(4).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    images[10:] = 0  # a chunk that compresses well, and one that does not
    with storage.open("zarr", tmp_path / "store", "x", compressor=compressor, chunk_images=8) as store:
        store.append(images, range(20))
    with storage.open("zarr", tmp_path / "store") as store:
        assert_read_match(store, None, list(images), list(range(20)))
    (tmp_path / "store" / PART / "images" / "c.1.0.0.0").write_bytes(FORGED_HEADERS[compressor])
    with pytest.raises(storage.DamagedStoreError, match="records a size"):
        storage.open("zarr", tmp_path / "store")
