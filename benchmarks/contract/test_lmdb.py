"""LMDB through the contract, plus what is its own: map growth, its options, a forged header, pickled records."""

from __future__ import annotations

import pickle
import pickletools
import subprocess
import sys
import threading

import lmdb
import numpy as np
import pytest

import storage
from storage.lmdb_store import HEADER, HEADER_IN_PICKLE, KEY
from storage.testing import HEADROOM, StoreContract, assert_read_match, open_and_read, run_forked
from storage.testing.contract import append_files, encoded_names

IMAGES = np.random.default_rng(3).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
LABELS = np.arange(12) * 3 - 7
SMOOTH = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None], (12, 64, 64, 3)).copy()


class TestLmdb(StoreContract):
    backend = "lmdb"


def store_bytes(name: str, path, images: np.ndarray) -> int:
    with storage.open(name, path, "x") as store:
        store.append(images, range(len(images)))
        return sum(file.stat().st_size for file in store.files(path))


def records(path) -> list[bytes]:
    """The image records of the store at `path`, as stored."""
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return [bytes(value) for key, value in txn.cursor() if key.startswith(b"i")]


def test_map_grows_from_a_tiny_initial_map(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)  # 3.7 MB in one append
    with storage.open("lmdb", tmp_path / "store", "x", map_size=64 * 1024) as store:
        store.append(big, range(300))
        for start in range(0, 300, 30):  # and many small appends after it
            store.append(big[start : start + 30], range(start, start + 30))
    with storage.open("lmdb", tmp_path / "store", map_size=64 * 1024) as store:
        assert_read_match(store, None, list(big) * 2, [*range(300), *range(300)])


@pytest.mark.parametrize("map_size", [1, 4096])
def test_a_map_too_small_to_create_a_store_in_starts_larger(map_size, tmp_path):
    with storage.open("lmdb", tmp_path / "store", "x", map_size=map_size) as store:
        store.append(IMAGES, LABELS)
        assert_read_match(store, None, list(IMAGES), LABELS)


@pytest.mark.parametrize("name", ["lmdb", "lmdb-png"])
def test_threads_keep_reading_while_an_append_grows_the_map(name, tmp_path):
    """LMDB may resize a map only while no transaction of the process is open: reading threads must not be
    caught by an append that grows it (they got false DamagedStoreErrors, and segfaults with PNG records)."""
    failures = []
    done = threading.Event()
    with storage.open(name, tmp_path / "store", "x", durable=False, map_size=64 * 1024) as store:
        store.append(np.zeros((1, 64, 64, 3), np.uint8), [0])

        def read_until_done() -> None:
            try:
                while not done.is_set():
                    images, labels = store.read(None)
                    failures.extend(label for image, label in zip(images, labels) if image.max() != label)
            except Exception as error:  # reported below, in the test's thread
                failures.append(error)

        readers = [threading.Thread(target=read_until_done) for _ in range(3)]
        for reader in readers:
            reader.start()
        for value in range(1, 25):
            store.append(np.full((20, 64, 64, 3), value, np.uint8), [value] * 20)
        done.set()
        for reader in readers:
            reader.join()
    assert failures == []


def test_an_append_adopts_a_map_that_another_process_grew(tmp_path):
    with storage.open("lmdb", tmp_path / "store", "x", map_size=64 * 1024) as store:
        store.append(IMAGES[:1], LABELS[:1])
        grow = (
            "import numpy as np, storage, sys\n"
            "with storage.open('lmdb', sys.argv[1], 'a') as other:\n"
            "    other.append(np.zeros((200, 64, 64, 3), np.uint8), range(200))\n"
        )
        subprocess.run([sys.executable, "-c", grow, str(tmp_path / "store")], check=True)
        store.append(IMAGES[1:2], LABELS[1:2])  # raised lmdb.MapResizedError
        assert len(store) == 202


def test_appending_to_a_damaged_store_is_damage(tmp_path):
    with storage.open("lmdb", tmp_path / "store", "x") as store:
        store.append(IMAGES, LABELS)
    data = tmp_path / "store" / "data.mdb"
    content = bytearray(data.read_bytes())
    half = len(content) // 2
    content[half:] = np.random.default_rng(5).integers(0, 256, len(content) - half, dtype=np.uint8).tobytes()
    data.write_bytes(bytes(content))
    outcome = run_forked(lambda: storage.open("lmdb", tmp_path / "store", "a").append(IMAGES[:1], [0]))
    assert outcome.error in ("DamagedStoreError", "ValueError", None), outcome.describe()  # not lmdb's own


@pytest.mark.parametrize("missing", [0, 3, 9])
@pytest.mark.parametrize("scattered", [False, True], ids=["all", "scattered"])
def test_a_missing_record_is_damage_not_a_shifted_read(missing, scattered, tmp_path):
    images = np.arange(11 * 4 * 5 * 3, dtype=np.uint8).reshape(11, 4, 5, 3)
    with storage.open("lmdb", tmp_path / "store", "x") as store:
        store.append(images, range(11))
    with lmdb.open(str(tmp_path / "store")) as env, env.begin(write=True) as txn:  # ten records left, one gone
        assert txn.delete(KEY.pack(b"i", missing))
    with storage.open("lmdb", tmp_path / "store") as store, pytest.raises(storage.DamagedStoreError, match="lacks"):
        store.read([9, missing] if scattered else None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoding": "webp"}, "encoding must be one of raw, png, pickle, jpeg"),
        ({"map_size": 0}, "map_size must be a positive int"),
    ],
    ids=["encoding", "map_size"],
)
def test_bad_option_is_refused_and_writes_nothing(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        storage.open("lmdb", tmp_path / "store", "x", **options)
    assert not any(tmp_path.iterdir())


def test_an_option_given_to_open_narrows_what_the_store_accepts(tmp_path):
    with storage.open("lmdb", tmp_path / "store", "x", encoding="png") as store:
        assert store.codec.name == "png"
        with pytest.raises(ValueError, match="the lmdb backend holds uint8 images"):
            store.append(np.zeros((1, 2, 2), np.float32), [0])
        assert len(store) == 0


def test_png_records_store_smooth_images_in_less_room_and_pickles_in_more(tmp_path):
    plain = store_bytes("lmdb", tmp_path / "plain", SMOOTH)
    assert store_bytes("lmdb-png", tmp_path / "png", SMOOTH) < 0.5 * plain
    assert store_bytes("lmdb-pickle", tmp_path / "pickle", SMOOTH) >= plain  # a pickle frame around the same bytes


def test_header_claiming_a_larger_image_is_rejected(tmp_path):
    with storage.open("lmdb", tmp_path / "store", "x") as store:
        store.append(IMAGES[:2], [0, 1])
    with lmdb.open(str(tmp_path / "store")) as env, env.begin(write=True) as txn:
        value = bytes(txn.get(KEY.pack(b"i", 1)))
        txn.put(KEY.pack(b"i", 1), HEADER.pack(b"|u1", 3, 0, 60_000, 70_000, 3, 1) + value[HEADER.size :])
    outcome = run_forked(lambda: open_and_read("lmdb", tmp_path / "store"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert "recorded layout needs" in outcome.message


def test_pickled_records_are_real_pickles_yet_never_unpickled(tmp_path, monkeypatch):
    with storage.open("lmdb-pickle", tmp_path / "store", "x") as store:
        store.append(IMAGES, LABELS)
    record = records(tmp_path / "store")[0]
    assert [op.name for op, _, _ in pickletools.genops(record)][-2:] == ["MEMOIZE", "STOP"]
    _, pixels = pickle.loads(record)  # noqa: S301 - bytes this test just wrote, to show what the record is
    assert pixels == IMAGES[0].tobytes()

    def refuse(*args, **kwargs):
        raise AssertionError("stored data was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with storage.open("lmdb-pickle", tmp_path / "store") as store:
        assert_read_match(store, None, list(IMAGES), LABELS.tolist())


class Payload:
    """What a hostile pickle would ask the reader to import and call."""

    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.parametrize(
    "forge",
    [
        lambda record, header, pixels: pickle.dumps((header, Payload()), protocol=5),
        lambda record, header, pixels: pickle.dumps([header, pixels], protocol=5),
        lambda record, header, pixels: pickle.dumps((header, pixels), protocol=5)[:-1] + b"\x85.",
        lambda record, header, pixels: record[:-2] + b"R.",  # REDUCE in place of the tuple
    ],
    ids=["object", "list", "other-opcode", "reduce"],
)
def test_a_pickle_this_store_did_not_write_is_damage(forge, tmp_path, capsys):
    with storage.open("lmdb-pickle", tmp_path / "store", "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    record = records(tmp_path / "store")[1]
    header, pixels = record[HEADER_IN_PICKLE], IMAGES[1].tobytes()
    with lmdb.open(str(tmp_path / "store")) as env, env.begin(write=True) as txn:
        txn.put(KEY.pack(b"i", 1), forge(record, header, pixels))
    with storage.open("lmdb-pickle", tmp_path / "store") as store:
        with pytest.raises(storage.DamagedStoreError, match="pickle frame this store did not write"):
            store.read()
        assert_read_match(store, [0], [IMAGES[0]], [LABELS[0]])
    assert "unpickled" not in capsys.readouterr().out


@pytest.mark.parametrize("name", encoded_names("lmdb"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store")
    assert [record[HEADER.size :] for record in records(tmp_path / "store")] == files
