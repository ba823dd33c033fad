"""The object-store backends (s3, s3-shards) against a real S3 server: SeaweedFS started for the run, or your own
store with --s3-endpoint (see the ``s3_root`` fixture in conftest.py)."""

from __future__ import annotations

import datetime
import json
import os
import time

import numpy as np
import pytest

import storage
from storage import DamagedStoreError, codecs
from storage.testing import StoreContract, assert_read_match, run_forked, sample_images
from storage.testing.contract import append_files
from storage.testing.places import ObjectPlace, object_place

if "s3" not in storage.available():
    pytest.skip("obstore is not installed: pip install -e '.[s3]'", allow_module_level=True)

import obstore  # the backends' library: imported, like storage._objects, only where it is installed

from storage import _objects

pytestmark = pytest.mark.s3


class ObjectStoreContract(StoreContract):
    """The contract, with each test's temporary place a fresh prefix in the bucket instead of a directory."""

    @pytest.fixture(autouse=True)
    def _server(self, s3_root: str) -> None:
        """Every test here needs the server: the fixture starts it once for the run."""

    @pytest.fixture
    def tmp_path(self, s3_root: str):
        with object_place() as place:
            yield place


class TestS3(ObjectStoreContract):
    backend = "s3"


class TestS3Shards(ObjectStoreContract):
    backend = "s3-shards"


@pytest.fixture
def place(s3_root: str):
    with object_place() as fresh:
        yield fresh


def client(location: ObjectPlace) -> obstore.store.S3Store:
    return _objects.ObjectLocation.parse(location).client()


def written(name: str, place: ObjectPlace, count: int = 6, **options) -> tuple[ObjectPlace, np.ndarray]:
    images = sample_images(name, count=count, height=8, width=8)
    with storage.open(name, place / "store", "x", **options) as store:
        store.append(images, range(count))
    return place / "store", images


NAMES = ["s3", "s3-shards"]


# --- errors: credentials, an unreachable server, a missing bucket ------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_wrong_credentials_are_a_permission_error_naming_the_endpoint(name, place, monkeypatch) -> None:
    path, _ = written(name, place)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(PermissionError, match=os.environ["AWS_ENDPOINT_URL"]):
        storage.open(name, path)


@pytest.mark.parametrize("name", NAMES)
def test_an_unreachable_server_is_an_os_error_within_seconds(name, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens there
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:9"):
        storage.open(name, "s3://images/anything")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("name", NAMES)
def test_a_missing_bucket_or_prefix_is_file_not_found(name, place) -> None:
    with pytest.raises(FileNotFoundError, match="no such bucket"):
        storage.open(name, "s3://no-such-bucket-here/store")
    with pytest.raises(FileNotFoundError):
        storage.open(name, place / "missing")


@pytest.mark.parametrize("location", ["/tmp/store", "s3://", "s3://images", "s3://images/a/../b", "s3://A_B/x"])
def test_a_location_that_is_no_bucket_and_prefix_is_refused(location) -> None:
    with pytest.raises(ValueError, match=r"s3://bucket/prefix|empty, '\.' or '\.\.'"):
        storage.open("s3", location, "x")


def test_objects_that_are_no_store_are_refused_and_kept(place) -> None:
    obstore.put(client(place / "thing"), "notes.txt", b"mine")
    for mode in "raw":
        with pytest.raises(ValueError, match="holds objects that are no image store"):
            storage.open("s3", place / "thing", mode)
    with pytest.raises(FileExistsError):
        storage.open("s3", place / "thing", "x")
    assert (place / "thing").iterdir() == ["notes.txt"]


def test_bad_options_are_refused_before_anything_is_written(place) -> None:
    for options in ({"concurrency": 0}, {"concurrency": 1.5}, {"shard_bytes": 0}, {"gap_bytes": -1}):
        with pytest.raises(ValueError, match="must be"):
            storage.open("s3-shards", place / "store", "x", **options)
    assert not place.exists()


# --- layouts: objects, requests, bytes ---------------------------------------------------------------


def test_s3_holds_one_object_per_image_and_reads_it_with_one_get(place) -> None:
    path, images = written("s3", place, count=6)
    keys = path.iterdir()
    assert len([key for key in keys if key.startswith("runs/") and not key.endswith("/index")]) == 6
    with storage.open("s3", path) as store:
        store.requests = 0
        assert_read_match(store, [5, 0, 3], [images[5], images[0], images[3]], [5, 0, 3])
        assert store.requests == 3


def test_s3_shards_fill_shards_to_shard_bytes_and_merge_neighbours_into_one_get(place) -> None:
    image_bytes = 8 * 8 * 3
    path, images = written("s3-shards", place, count=20, shard_bytes=5 * image_bytes)
    shards = [key for key in path.iterdir() if key.startswith("runs/") and not key.endswith("/index")]
    assert len(shards) == 4
    with storage.open("s3-shards", path) as store:
        store.requests = 0
        assert_read_match(store, None, list(images), list(range(20)))
        assert store.requests == 4  # one a shard
        store.requests = 0
        assert_read_match(store, [7, 6, 8], [images[7], images[6], images[8]], [7, 6, 8])
        assert store.requests == 1
    with storage.open("s3-shards", path, gap_bytes=0) as store:
        store.requests = 0
        store.read([6, 8])
        assert store.requests == 2  # a gap of one image: apart


@pytest.mark.parametrize("name", NAMES)
def test_concurrency_bounds_the_requests_in_flight(name, place, monkeypatch) -> None:
    one_image_a_shard = {"shard_bytes": 8 * 8 * 3} if name == "s3-shards" else {}
    path, images = written(name, place, count=12, **one_image_a_shard)
    in_flight, most = 0, 0

    def counted(real):
        async def call(*args, **kwargs):
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await real(*args, **kwargs)
            finally:
                in_flight -= 1

        return call

    for function in ("get_async", "get_range_async"):
        monkeypatch.setattr(obstore, function, counted(getattr(obstore, function)))
    with storage.open(name, path, concurrency=3) as store:
        assert_read_match(store, None, list(images), list(range(12)))
    assert most == 3


# --- crash safety: what killed writers leave, and the fork guard -------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_runs_no_manifest_lists_are_swept_once_old(name, place, monkeypatch) -> None:
    path, images = written(name, place, count=4)
    orphan = "runs/0123456789abcdef/000000000"
    obstore.put(client(path), orphan, b"left by a killed writer")
    with storage.open(name, path, "a") as store:
        store.append(images[:1], [9])
    assert orphan in path.iterdir()  # young: maybe another writer's append in flight
    monkeypatch.setattr(_objects, "LEFTOVER_AGE", datetime.timedelta(0))
    with storage.open(name, path, "a") as store:
        store.append(images[:1], [9])
        assert len(store) == 6
    assert orphan not in path.iterdir()


def test_a_forked_child_gets_an_error_not_a_hang(place) -> None:
    path, _ = written("s3", place)
    outcome = run_forked(lambda: len(storage.open("s3", path)), timeout=20)
    assert outcome.error == "RuntimeError", outcome.describe()
    assert "spawn" in outcome.message


# --- damage: only documented errors, before any large allocation -------------------------------------


def manifest_of(path: ObjectPlace) -> tuple[str, dict]:
    key = max(key for key in path.iterdir() if key.startswith("manifest/"))
    return key, json.loads(bytes(obstore.get(client(path), key).bytes()))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "forge",
    [
        lambda runs: runs[0].update(count=10**15),
        lambda runs: runs[0].update(shape=[2**31, 2**31, 3]),
        lambda runs: runs[0].update(dtype="|O"),
        lambda runs: runs[0].update(token="../../etc"),
        lambda runs: runs[0].update(per_object=0),
        lambda runs: runs.append(dict(runs[0])),  # a run listed twice: its index is fine, its objects too
        lambda runs: runs[0].pop("encoding"),
    ],
    ids=["huge-count", "huge-shape", "object-dtype", "token-path", "zero-per-object", "listed-twice", "missing-key"],
)
def test_a_forged_manifest_is_damage_or_reads_what_is_there(name, forge, place) -> None:
    path, images = written(name, place)
    key, manifest = manifest_of(path)
    forge(manifest["runs"])
    obstore.put(client(path), key, json.dumps(manifest).encode())
    try:
        with storage.open(name, path) as store:
            got, labels = store.read()
    except DamagedStoreError:
        return
    assert len(labels) == 12  # the one forgery that stays a valid store
    assert (got[6:] == images).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("what", ["truncate-index", "delete-object", "truncate-object", "garbage-manifest"])
def test_damaged_objects_are_damage(name, what, place) -> None:
    path, _ = written(name, place)
    keys = path.iterdir()
    index = next(key for key in keys if key.endswith("/index"))
    data = next(key for key in keys if key.startswith("runs/") and key != index)
    store_client = client(path)
    if what == "truncate-index":
        obstore.put(store_client, index, bytes(obstore.get(store_client, index).bytes())[:-3])
    elif what == "delete-object":
        obstore.delete(store_client, data)
    elif what == "truncate-object":
        obstore.put(store_client, data, bytes(obstore.get(store_client, data).bytes())[:-1])
    else:
        obstore.put(store_client, manifest_of(path)[0], b"{not json")
    expected = ValueError if what == "garbage-manifest" else DamagedStoreError  # then it is no store of this kind
    with pytest.raises(expected), storage.open(name, path) as store:
        store.read()


def test_the_layouts_are_told_apart(place) -> None:
    path, _ = written("s3", place)
    assert storage.detect(path) == "s3"
    with pytest.raises(ValueError, match="holds a s3 store, not a s3-shards store"):
        storage.open("s3-shards", path)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("encoding", [encoding for encoding in codecs.CODECS if encoding != "raw"])
def test_an_encoded_append_keeps_each_file_as_it_is(name, encoding, place) -> None:
    path = place / "store"
    files = append_files(name, path, encoding=encoding)
    store_client = client(path)
    stored = []
    for run in manifest_of(path)[1]["runs"]:
        ends = np.frombuffer(bytes(obstore.get(store_client, f"runs/{run['token']}/index").bytes()), "<i8")[1::2]
        for number, first in enumerate(range(0, run["count"], run["per_object"])):
            data = bytes(obstore.get(store_client, _objects.object_key(run["token"], number)).bytes())
            bounds = [0, *ends[first : first + run["per_object"]].tolist()]  # where records end, in their object
            stored += [data[start:end] for start, end in zip(bounds, bounds[1:])]
    assert stored == files
    decoded = [codecs.get(encoding).decode(file) for file in files]
    with storage.open(name, path) as store:
        assert_read_match(store, None, decoded, range(len(files)), codecs.RAW)
