"""webdataset through the contract, plus what is its own: the webdataset library streams the shards as they are,
runs are split into shards of `shard_size`, and each shard's index is checked against the shard."""

from __future__ import annotations

import errno
import json
import tarfile

import numpy as np
import pytest
import webdataset

import storage
from storage import _parts, webdataset_store
from storage.testing import StoreContract
from storage.testing.contract import append_files, encoded_names

IMAGES = np.random.default_rng(3).integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
GREY16 = (np.arange(2 * 3 * 7, dtype=np.uint16) * 1543).reshape(2, 3, 7)


class TestWebDataset(StoreContract):
    backend = "webdataset"


def urls(store, count: int) -> str:
    """The brace pattern that webdataset expands to the store's first `count` shards."""
    return f"{store}/part-{{00000000..{count - 1:08d}}}.tar"


def test_webdataset_streams_every_sample_of_every_shard(tmp_path):
    with storage.open("webdataset", tmp_path / "store", "x", shard_size=2) as store:
        store.append(IMAGES, [10, 11, 12, 13, -14])
        store.append(GREY16, [2**40, 0])
    dataset = webdataset.WebDataset(urls(tmp_path / "store", 4), shardshuffle=False).decode()
    samples = list(dataset)
    assert [sample["__key__"] for sample in samples] == [f"{image_id:09d}" for image_id in range(7)]
    assert [sample["cls"] for sample in samples] == [10, 11, 12, 13, -14, 2**40, 0]
    for sample, image in zip(samples, [*IMAGES, *GREY16]):
        assert sample["npy"].dtype == image.dtype
        np.testing.assert_array_equal(sample["npy"], image)


def test_encoded_shards_hold_files_that_webdataset_decodes(tmp_path):
    with storage.open("webdataset", tmp_path / "store", "x", encoding="png") as store:
        store.append(IMAGES, range(5))
    samples = list(webdataset.WebDataset(urls(tmp_path / "store", 1), shardshuffle=False).decode("rgb8"))
    assert [sample["cls"] for sample in samples] == list(range(5))
    for sample, image in zip(samples, IMAGES):
        np.testing.assert_array_equal(sample["png"], image)


def test_runs_are_split_into_shards_and_each_shard_has_its_index(tmp_path):
    with storage.open("webdataset", tmp_path / "store", "x", shard_size=2) as store:
        store.append([*IMAGES[:3], GREY16[0]], [1, 2, 3, 4])
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert [part["count"] for part in manifest["parts"]] == [2, 1, 1]
    assert [path.name for path in storage.backend("webdataset").files(tmp_path / "store")] == [
        "manifest.json",
        "part-00000000.tar",
        "part-00000001.tar",
        "part-00000002.tar",
        "writer.lock",
        "part-00000000.tar.idx",
        "part-00000001.tar.idx",
        "part-00000002.tar.idx",
    ]
    with storage.open("webdataset", tmp_path / "store") as store:
        images, labels = store.read()
    assert labels.tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(images[3], GREY16[0])


def test_the_index_lists_each_image_member_where_tarfile_finds_it(tmp_path):
    with storage.open("webdataset", tmp_path / "store", "x") as store:
        store.append(IMAGES, [5, 6, 7, 8, 9])
    with tarfile.open(tmp_path / "store" / "part-00000000.tar") as tar:
        members = [member for member in tar.getmembers() if member.name.endswith(".npy")]
        assert [member.name for member in tar.getmembers()[:2]] == ["000000000.cls", "000000000.npy"]
        assert tar.extractfile("000000003.cls").read() == b"8"
    index = np.load(tmp_path / "store" / "part-00000000.tar.idx", allow_pickle=False)
    assert index.tolist() == [[member.offset_data, member.size, label] for member, label in zip(members, range(5, 10))]


@pytest.mark.parametrize("shard_size", [0, -1, 1.5, True, "3", None])
def test_a_bad_shard_size_is_refused_before_anything_is_written(tmp_path, shard_size):
    with pytest.raises(ValueError, match="shard_size must be an int of at least 1"):
        storage.open("webdataset", tmp_path / "store", "x", shard_size=shard_size)
    assert not any(tmp_path.iterdir())


def npy_member_offset(store, image_id: int) -> int:
    index = np.load(store / "part-00000000.tar.idx", allow_pickle=False)
    return int(index[image_id, 0])


@pytest.mark.parametrize("ids", [[0, 1, 2], [2, 0, 1], [1]])
def test_a_changed_npy_header_is_damage_when_its_image_is_read(tmp_path, ids):
    with storage.open("webdataset", tmp_path / "store", "x") as store:
        store.append(IMAGES[:3], [1, 2, 3])
    shard = tmp_path / "store" / "part-00000000.tar"
    content = bytearray(shard.read_bytes())
    content[npy_member_offset(tmp_path / "store", 1) + 20] ^= 0x01  # inside the header's text
    shard.write_bytes(bytes(content))
    with storage.open("webdataset", tmp_path / "store") as store:
        np.testing.assert_array_equal(store[0][0], IMAGES[0])
        with pytest.raises(storage.DamagedStoreError, match="header is not its recorded layout's"):
            store.read(ids)


def save(path, index: np.ndarray) -> None:
    with path.open("wb") as file:  # np.save would add ".npy" to a path
        np.save(file, index, allow_pickle=False)


def forge(column: int, image_id: int, value):
    def change(index: np.ndarray) -> None:
        index[image_id, column] = value(index) if callable(value) else value

    return change


FORGERIES = {
    "offset-past-the-end": (forge(0, 1, 1 << 40), "outside"),
    "offset-off-a-block": (forge(0, 0, lambda index: index[0, 0] + 1), "outside"),
    "offset-before-any-header": (forge(0, 0, 0), "outside"),
    "negative-size": (forge(1, 0, -5), "outside"),
    "size-to-the-end-of-int64": (forge(1, 2, 2**63 - 1), "outside"),
    "overlapping": (forge(0, 1, lambda index: index[0, 0]), "overlap"),
    "size-other-than-the-layout": (forge(1, 1, lambda index: index[1, 1] - 1), "size other than the layout"),
    "unequal-spacing": (forge(0, 2, lambda index: index[2, 0] + 512), "not equally spaced"),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_an_index_that_disagrees_with_its_shard_is_damage_at_open(tmp_path, forgery):
    change, message = FORGERIES[forgery]
    with storage.open("webdataset", tmp_path / "store", "x") as store:
        store.append(IMAGES[:3], [1, 2, 3])
    path = tmp_path / "store" / "part-00000000.tar.idx"
    index = np.load(path, allow_pickle=False)
    change(index)
    save(path, index)
    with pytest.raises(storage.DamagedStoreError, match=message):
        storage.open("webdataset", tmp_path / "store")


def test_an_index_of_another_length_is_damage(tmp_path):
    with storage.open("webdataset", tmp_path / "store", "x") as store:
        store.append(IMAGES[:3], [1, 2, 3])
    path = tmp_path / "store" / "part-00000000.tar.idx"
    save(path, np.load(path)[:2])
    with pytest.raises(storage.DamagedStoreError, match="not 3 rows of 3 int64"):
        storage.open("webdataset", tmp_path / "store")
    (tmp_path / "store" / "part-00000000.tar").write_bytes(b"")
    with pytest.raises(storage.DamagedStoreError):
        storage.open("webdataset", tmp_path / "store")


def test_shards_and_indexes_the_manifest_does_not_list_are_swept_and_the_listed_kept(tmp_path):
    with storage.open("webdataset", tmp_path / "store", "x") as store:
        store.append(IMAGES[:2], [1, 2])
    for name in ("part-00000001.tar", "part-00000001.tar.idx", "part-00000007.tar.idx", "part-00000000.tar.idx.tmp-1"):
        (tmp_path / "store" / name).write_bytes(b"left by a killed writer")
    with storage.open("webdataset", tmp_path / "store", "a") as store:
        store.append(IMAGES[2:3], [3])
        images, labels = store.read()
    assert labels.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(images, IMAGES[:3])
    assert sorted(path.name for path in (tmp_path / "store").iterdir()) == [
        "manifest.json",
        "part-00000000.tar",
        "part-00000000.tar.idx",
        "part-00000001.tar",
        "part-00000001.tar.idx",
        "writer.lock",
    ]


def test_an_append_that_fails_before_its_commit_leaves_no_shard_or_index(tmp_path, monkeypatch):
    with storage.open("webdataset", tmp_path / "store", "x", shard_size=2) as store:
        store.append(IMAGES[:2], [1, 2])
        before = sorted(path.name for path in (tmp_path / "store").iterdir())

        def full_disk(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_parts, "replace_atomically", full_disk)
        with pytest.raises(OSError, match="No space left"):
            store.append(IMAGES, range(5))
        assert sorted(path.name for path in (tmp_path / "store").iterdir()) == before
        monkeypatch.undo()
        store.append(IMAGES[2:], [3, 4, 5])
    with storage.open("webdataset", tmp_path / "store") as store:
        images, labels = store.read()
    assert labels.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(images, IMAGES)


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_reads_that_span_more_than_one_read_at_a_time_land_in_order(tmp_path, monkeypatch, encoding):
    with storage.open("webdataset", tmp_path / "store", "x", encoding=encoding) as store:
        store.append(IMAGES, range(5))
    monkeypatch.setattr(webdataset_store, "SPAN_BYTES", 5000)  # a few samples a read
    with storage.open("webdataset", tmp_path / "store") as store:
        for ids in (slice(None), slice(1, 5), [4, 0, 2], [3, 3]):
            images, labels = store.read(ids)
            np.testing.assert_array_equal(images, IMAGES[ids])
            assert labels.tolist() == np.arange(5)[ids].tolist()


@pytest.mark.parametrize("name", encoded_names("webdataset"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store", shard_size=2)  # runs cut into shards
    shards = len(list((tmp_path / "store").glob("part-*.tar")))
    samples = list(webdataset.WebDataset(urls(tmp_path / "store", shards), shardshuffle=False))
    extension = webdataset_store.EXTENSIONS.get(storage.backend(name).codec.name, storage.backend(name).codec.name)
    assert [sample["cls"] for sample in samples] == [str(number).encode() for number in range(len(files))]
    assert [sample[extension] for sample in samples] == files
