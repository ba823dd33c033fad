"""zarr through the contract, plus what is its own: each part is a Zarr v3 group that zarr opens alone, its options
(chunks, shards, a compressor) read back through both read paths and both libraries (zarr, tensorstore), which
write the same files and read each other's, and a missing chunk or a forged zarr.json is damage, never zeros.
Skipped where zarr 3 is missing (it needs Python 3.11); the tensorstore cases where tensorstore is."""

from __future__ import annotations

import filecmp
import json
import shutil
import struct
import warnings

import numpy as np
import pytest

import storage
from storage.testing import StoreContract, assert_read_match
from storage.testing.isolation import run_forked

zarr = pytest.importorskip("zarr", minversion="3", reason="the zarr backend needs zarr 3 (Python 3.11 or newer)")
zarr_store = pytest.importorskip("storage.zarr_store")

IMAGES = np.random.default_rng(7).integers(0, 256, (40, 6, 5, 3), dtype=np.uint8)
LABELS = np.arange(40) * 5 - 100
PART = "part-00000000.zarr"
needs_tensorstore = pytest.mark.skipif(zarr_store.tensorstore is None, reason="tensorstore is not installed")


class TestZarr(StoreContract):
    backend = "zarr"


@pytest.fixture(params=["zarr", pytest.param("tensorstore", marks=needs_tensorstore)])
def library(request):
    """What writes and reads the parts of a test: each check at open holds for both."""
    return request.param


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
def test_options_read_back_by_slices_scattered_and_repeated_ids(tmp_path, options, library):
    make(tmp_path / "store", library=library, **options)
    rng = np.random.default_rng(1)
    with storage.open("zarr", tmp_path / "store", library=library) as store:
        assert_read_match(store, None, list(IMAGES), LABELS.tolist())
        for ids in ([39, 0], [5, 5, 6, 2], rng.integers(0, 40, 30).tolist(), [7, 21, 33, 38], list(range(40))[::-3]):
            assert_read_match(store, ids, [IMAGES[i] for i in ids], [LABELS[i] for i in ids])
        assert_read_match(store, slice(11, 29), list(IMAGES[11:29]), LABELS[11:29].tolist())


def test_many_scattered_stretches_read_as_one_selection(tmp_path, library):
    images = np.random.default_rng(2).integers(0, 2**16, (200, 3, 4), dtype=np.uint16)
    with storage.open("zarr", tmp_path / "store", "x", chunk_images=1, library=library) as store:
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
        {"library": "numcodecs"},
        {"library": None},
    ],
    ids=repr,
)
def test_bad_options_are_refused_before_anything_is_written(tmp_path, options):
    with pytest.raises(ValueError, match=r"chunk_images|shard_images|compressor|library"):
        storage.open("zarr", tmp_path / "store", "x", **options)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("options", [{}, {"shard_images": 16}, {"compressor": "zstd"}], ids=repr)
def test_a_missing_chunk_file_is_damage_not_zeros(tmp_path, options, library):
    part = make(tmp_path / "store", chunk_images=8, **options)
    (part / "images" / "c.1.0.0.0").unlink()
    with pytest.raises(storage.DamagedStoreError, match="missing"):
        storage.open("zarr", tmp_path / "store", library=library)


@needs_tensorstore
def test_a_chunk_missing_from_a_shard_is_damage_to_tensorstore(tmp_path):
    """zarr rewrites a shard without an all-zero chunk (write_empty_chunks off): tensorstore refuses to read the
    gap as zeros. (zarr itself reads it as zeros: the shard's index is not checked at open.)"""
    part = make(tmp_path / "store", shard_images=16)
    images = zarr.open_array(part / "images", mode="r+", config={"write_empty_chunks": False})
    images[3] = 0
    with storage.open("zarr", tmp_path / "store", library="tensorstore") as store:
        assert_read_match(store, [2, 20], [IMAGES[2], IMAGES[20]], [LABELS[2], LABELS[20]])
        for ids in ([3], slice(0, 8), [5, 3]):
            with pytest.raises(storage.DamagedStoreError, match="missing"):
                store.read(ids)


def test_an_all_zero_chunk_is_written_and_read(tmp_path, library):
    images = np.zeros((6, 2, 2), np.uint8)
    images[4:] = 9
    with storage.open("zarr", tmp_path / "store", "x", chunk_images=2, library=library) as store:
        store.append(images, range(6))
    assert (tmp_path / "store" / PART / "images" / "c.0.0.0").is_file()
    with storage.open("zarr", tmp_path / "store", library=library) as store:
        assert_read_match(store, None, list(images), list(range(6)))


def test_a_truncated_raw_chunk_is_damage(tmp_path, library):
    part = make(tmp_path / "store", chunk_images=8)
    chunk = part / "images" / "c.2.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:-1])
    with pytest.raises(storage.DamagedStoreError, match=r"c\.2\.0\.0\.0"):
        storage.open("zarr", tmp_path / "store", library=library)


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
def test_a_forged_zarr_json_is_damage(tmp_path, forge, message, library):
    part = make(tmp_path / "store", chunk_images=8)
    meta_file = part / "images" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    forge(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(storage.DamagedStoreError, match=message):
        storage.open("zarr", tmp_path / "store", library=library)


def test_forged_labels_are_damage(tmp_path, library):
    part = make(tmp_path / "store")
    meta_file = part / "labels" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta.update(data_type="int32", codecs=[{"name": "bytes", "configuration": {"endian": "little"}}])
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(storage.DamagedStoreError):
        storage.open("zarr", tmp_path / "store", library=library)


def test_an_array_directory_that_is_a_symlink_is_not_followed(tmp_path, library):
    part = make(tmp_path / "store")
    outside = tmp_path / "outside"
    shutil.move(part / "images", outside)
    (part / "images").symlink_to(outside)
    with pytest.raises(storage.DamagedStoreError, match="not a directory"):
        storage.open("zarr", tmp_path / "store", library=library)


FORGED_HEADERS = {  # a huge decompressed size, then bytes that are no compressed data
    "zstd": struct.pack("<IBI", 0xFD2FB528, 0xA0, 2**32 - 1) + bytes(32),  # single segment, 4-byte content size
    "blosc-lz4": struct.pack("<BBBBIII", 2, 1, 0x21, 1, 2**31, 2**16, 48) + bytes(32),  # nbytes, blocksize, cbytes
}


@pytest.mark.parametrize("compressor", FORGED_HEADERS)
def test_a_compressed_chunk_that_records_a_huge_size_is_damage_before_it_is_decoded(tmp_path, compressor, library):
    """numcodecs allocates the size a chunk's header records: each chunk's, the padded last one's too, must be the
    chunk's own size."""
    images = np.random.default_rng(4).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    images[10:] = 0  # a chunk that compresses well, and one that does not
    with storage.open("zarr", tmp_path / "store", "x", compressor=compressor, chunk_images=8, library=library) as store:
        store.append(images, range(20))
    with storage.open("zarr", tmp_path / "store", library=library) as store:
        assert_read_match(store, None, list(images), list(range(20)))
    (tmp_path / "store" / PART / "images" / "c.1.0.0.0").write_bytes(FORGED_HEADERS[compressor])
    with pytest.raises(storage.DamagedStoreError, match="records a size"):
        storage.open("zarr", tmp_path / "store", library=library)


@needs_tensorstore
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"shard_images": 16},
        {"chunk_images": 4, "shard_images": 12},
        {"compressor": "zstd"},
        {"compressor": "blosc-lz4"},
    ],
    ids=repr,
)
def test_both_libraries_write_the_same_files_and_read_each_others(tmp_path, options):
    images = IMAGES.copy()
    images[8:16] = 0  # an all-zero chunk is written by both
    stores = {library: tmp_path / library for library in ("zarr", "tensorstore")}
    for library, path in stores.items():
        with storage.open("zarr", path, "x", library=library, **options) as store:
            store.append(images, LABELS)
            store.append(images[:5, :4], LABELS[:5])  # a second part, of another shape
    files = {
        library: sorted(f.relative_to(path) for f in path.rglob("*") if f.is_file()) for library, path in stores.items()
    }
    assert files["zarr"] == files["tensorstore"]
    if "compressor" not in options:  # compressed bytes are the compressor's to choose
        assert all(filecmp.cmp(stores["zarr"] / f, stores["tensorstore"] / f, shallow=False) for f in files["zarr"])
    expected = [*images, *images[:5, :4]]
    for path in stores.values():
        for library in stores:
            with storage.open("zarr", path, library=library) as store:
                assert_read_match(store, None, expected, [*LABELS, *LABELS[:5]])
                ids = [41, 3, 3, 39, 12, 0]
                assert_read_match(store, ids, [expected[i] for i in ids], [[*LABELS, *LABELS[:5]][i] for i in ids])


@needs_tensorstore
def test_the_variant_moves_pixels_and_labels_through_tensorstore(tmp_path, monkeypatch):
    opened, read_by = [], set()
    real_open, real_fill = zarr_store.tensorstore_array, zarr_store.fill
    monkeypatch.setattr(
        zarr_store, "tensorstore_array", lambda *args, **kw: opened.append(kw) or real_open(*args, **kw)
    )
    monkeypatch.setattr(zarr_store, "fill", lambda images, *args: read_by.add(type(images)) or real_fill(images, *args))
    with storage.open("zarr-tensorstore", tmp_path / "store", "x") as store:
        store.append(IMAGES, LABELS)
        assert_read_match(store, [4, 1, 39], [IMAGES[4], IMAGES[1], IMAGES[39]], [*LABELS[[4, 1, 39]]])
        assert_read_match(store, slice(3, 9), list(IMAGES[3:9]), [*LABELS[3:9]])
    assert opened == [{"write": True}] * 2 + [{}] * 2  # images and labels written, then opened to read
    assert read_by == {zarr_store.tensorstore.TensorStore}


def test_tensorstore_missing_refuses_the_option_and_hides_the_variant(monkeypatch):
    monkeypatch.setattr(zarr_store, "tensorstore", None)
    with pytest.raises(ValueError, match="tensorstore"):
        zarr_store.ZarrOptions(library="tensorstore")
    assert not storage._builds(zarr_store.ZarrStore, storage.VARIANTS["zarr-tensorstore"][1])
    zarr_store.ZarrOptions()  # the default still builds


@needs_tensorstore
def test_a_process_forked_after_tensorstore_ran_reads_through_zarr(tmp_path):
    """tensorstore aborts a process forked after its threads ran: there, the variant reads through zarr, and
    warns."""
    make(tmp_path / "store", library="tensorstore")
    with storage.open("zarr-tensorstore", tmp_path / "store") as store:
        assert_read_match(store, [1], [IMAGES[1]], [LABELS[1]])  # tensorstore has run here

        def read_in_child():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                images, labels = store.read([5, 3])  # a handle opened before the fork
                with storage.open("zarr-tensorstore", tmp_path / "store") as again:  # and one opened after
                    more, _ = again.read()
            same = np.array_equal(images, IMAGES[[5, 3]]) and np.array_equal(more, IMAGES)
            return [same, labels.tolist(), sorted({warning.category.__name__ for warning in caught})]

        outcome = run_forked(read_in_child, timeout=30)
    assert outcome.result == [True, LABELS[[5, 3]].tolist(), ["RuntimeWarning"]], outcome.describe()


@pytest.mark.parametrize(
    ("code", "raised"),
    [(28, OSError), (30, OSError), (2, storage.DamagedStoreError), (None, storage.DamagedStoreError)],
)
def test_a_tensorstore_error_naming_the_systems_is_that_os_error(tmp_path, code, raised):
    """A full disk or a read-only medium, as tensorstore reports them, is the system's OSError; a missing file and
    the rest are damage."""
    named = "" if code is None else f" [os_error_code='{code}']"
    with pytest.raises(raised) as caught, zarr_store.zarr_errors(tmp_path):
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{tmp_path}/c.0.0.0"{named}')
    assert raised is not OSError or (caught.type, caught.value.errno) == (OSError, code)


@needs_tensorstore
def test_through_tensorstore_stores_are_not_fork_safe_so_workers_start_by_spawn():
    assert storage.backend("zarr").capabilities.fork_safe
    assert not storage.backend("zarr-tensorstore").capabilities.fork_safe
    assert storage.backend("zarr-tensorstore").capabilities.local
