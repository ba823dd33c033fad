"""LMDB through the contract, plus what is its own: the record layout and its run records, packed values, stores of
the first format, map growth, its options, forged records, pickled records."""

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
from storage.lmdb_store import FORMAT, FORMAT_1, HEADER, HEADER_IN_PICKLE, KEY, RUN, LmdbStore
from storage.testing import HEADROOM, StoreContract, assert_read_match, open_and_read, run_forked
from storage.testing.contract import append_files, encoded_names, family_names, tolerance_of

IMAGES = np.random.default_rng(3).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
LABELS = np.arange(12) * 3 - 7
SMOOTH = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None], (12, 64, 64, 3)).copy()
PACKED = 16 * 16 * 3 * 5  # pack_bytes for five of IMAGES per value


class TestLmdb(StoreContract):
    backend = "lmdb"


@pytest.fixture
def first_format(monkeypatch):
    """New stores are made in the first format (one record per image, a header in each), as older code made them."""
    monkeypatch.setattr(LmdbStore, "new_format", FORMAT_1)


def store_bytes(name: str, path, images: np.ndarray) -> int:
    with storage.open(name, path, "x") as store:
        store.append(images, range(len(images)))
        return sum(file.stat().st_size for file in store.files(path))


def entries(path) -> list[tuple[bytes, bytes]]:
    """Every key and value of the store at `path`, as stored."""
    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return [(bytes(key), bytes(value)) for key, value in txn.cursor()]


def records(path) -> list[bytes]:
    """The image records of the store at `path`, as stored."""
    return [value for key, value in entries(path) if key.startswith(b"i")]


def runs(path) -> list[tuple]:
    """The run records of the store at `path`: first id, dtype code, ndim, encoding, dims, count, per value, labels."""
    found = []
    for key, value in entries(path):
        if key.startswith(b"R"):
            code, ndim, encoding, *dims, count, per_value = RUN.unpack_from(value)
            labels = np.frombuffer(value, "<i8", offset=RUN.size).tolist()
            found.append((KEY.unpack(key)[1], code, ndim, encoding, tuple(dims), count, per_value, labels))
    return found


def put(path, key: bytes, value: bytes | None) -> None:
    """Write (or with None, delete) one record of the store at `path`, as damage would."""
    with lmdb.open(str(path)) as env, env.begin(write=True) as txn:
        if value is None:
            assert txn.delete(key)
        else:
            txn.put(key, value)


# --- the layout ---------------------------------------------------------------------------------


def test_a_record_holds_the_pixels_alone_and_its_run_the_layout_and_labels(tmp_path):
    grey = np.arange(2 * 5 * 7, dtype=np.uint16).reshape(2, 5, 7)
    with storage.open("lmdb", tmp_path / "store", "x") as store:
        store.append(IMAGES[:3], LABELS[:3])
        store.append([*IMAGES[3:5], *grey], [1, 2, 3, 4])
    keys = [key for key, _ in entries(tmp_path / "store")]
    assert keys == sorted(keys)
    assert keys[:4] == [KEY.pack(b"R", 0), KEY.pack(b"R", 3), KEY.pack(b"R", 5), b"format"]
    assert keys[4:] == [KEY.pack(b"i", image_id) for image_id in range(7)]
    assert records(tmp_path / "store") == [image.tobytes() for image in [*IMAGES[:5], *grey]]
    assert runs(tmp_path / "store") == [
        (0, b"|u1\0", 3, 0, (16, 16, 3), 3, 1, LABELS[:3].tolist()),
        (3, b"|u1\0", 3, 0, (16, 16, 3), 2, 1, [1, 2]),
        (5, b"<u2\0", 2, 0, (5, 7, 0), 2, 1, [3, 4]),
    ]
    assert dict(entries(tmp_path / "store"))[b"format"] == FORMAT


@pytest.mark.parametrize("name", encoded_names("lmdb"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store")
    assert records(tmp_path / "store") == files


def test_an_append_counts_what_another_process_committed_since(tmp_path):
    """One store object appends, another process appends, the first appends again: its ids follow the other's and
    it reads all three appends with their labels."""
    with storage.open("lmdb", tmp_path / "store", "x", map_size=64 * 1024) as store:
        store.append(IMAGES[:1], LABELS[:1])
        grow = (
            "import numpy as np, storage, sys\n"
            "with storage.open('lmdb', sys.argv[1], 'a') as other:\n"
            "    other.append(np.full((200, 64, 64, 3), 9, np.uint8), range(200))\n"
        )
        subprocess.run([sys.executable, "-c", grow, str(tmp_path / "store")], check=True)
        assert len(store) == 1  # the other's append shows after this store's own
        store.append(IMAGES[1:3], LABELS[1:3])  # raised lmdb.MapResizedError once
        assert len(store) == 203
        images, labels = store.read()
        assert labels.tolist() == [LABELS[0], *range(200), *LABELS[1:3]]
        assert [image.shape for image in images[:2]] == [(16, 16, 3), (64, 64, 3)]
        assert_read_match(store, [201, 202, 0], [IMAGES[1], IMAGES[2], IMAGES[0]], [LABELS[1], LABELS[2], LABELS[0]])
        assert (np.stack(images[1:201]) == 9).all()


# --- packed values ------------------------------------------------------------------------------


@pytest.mark.parametrize("pack_bytes", [1, PACKED, 1 << 20])
def test_packed_values_read_back_whichever_ids_are_asked(pack_bytes, tmp_path):
    """Runs packed several images to a value, the last value of each run holding fewer, beside an unpacked and a
    PNG run: slices within a value, across values and across runs, scattered and repeated ids, single images."""
    images, labels = np.concatenate([IMAGES, IMAGES[::-1]]), np.arange(24) - 5
    with storage.open("lmdb", tmp_path / "store", "x", pack_bytes=pack_bytes) as store:
        store.append(images[:12], labels[:12])
        store.append(images[12:13], labels[12:13])
    with storage.open("lmdb-png", tmp_path / "store", "a") as store:
        store.append(images[13:16], labels[13:16])
    with storage.open("lmdb", tmp_path / "store", "a", pack_bytes=pack_bytes) as store:
        store.append(images[16:], labels[16:])
    with storage.open("lmdb", tmp_path / "store") as store:
        for ids in (None, slice(1, 4), slice(3, 11), slice(4, 20), slice(11, 13), [23, 0, 7, 7, 14, 3], [6], [12]):
            selected = range(24)[ids] if isinstance(ids, slice) else range(24) if ids is None else ids
            assert_read_match(store, ids, [images[i] for i in selected], [labels[i] for i in selected])
        for image_id in reversed(range(24)):
            image, label = store[image_id]
            assert image.tobytes() == images[image_id].tobytes()
            assert label == labels[image_id]
    per_value = [found[6] for found in runs(tmp_path / "store")]
    assert per_value == [min(12, max(1, pack_bytes // 768)), 1, 1, min(8, max(1, pack_bytes // 768))]
    expected_records = sum(-(-count // per) for count, per in zip([12, 1, 3, 8], per_value))
    assert len(records(tmp_path / "store")) == expected_records


def test_a_packed_value_fills_whole_pages(tmp_path):
    """32x32x3 images (3 KiB) packed to about 1 MiB: a count of them that fills whole pages (340, 255 pages), so that
    each value lands at the same place in memory relative to its page."""
    images = np.zeros((700, 32, 32, 3), np.uint8)
    with storage.open("lmdb", tmp_path / "store", "x", pack_bytes=1 << 20) as store:
        store.append(images, range(700))
    assert [len(record) for record in records(tmp_path / "store")] == [340 * 3072, 340 * 3072, 20 * 3072]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoding": "webp"}, "encoding must be one of raw, png, pickle, jpeg"),
        ({"map_size": 0}, "map_size must be a positive int"),
        ({"pack_bytes": 0}, "pack_bytes must be None or a positive int"),
        ({"pack_bytes": True}, "pack_bytes must be None or a positive int"),
        ({"pack_bytes": 1 << 20, "encoding": "png"}, "pack_bytes packs raw pixels"),
    ],
    ids=["encoding", "map_size", "pack_bytes", "pack_bytes-bool", "pack_bytes-png"],
)
def test_bad_option_is_refused_and_writes_nothing(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        storage.open("lmdb", tmp_path / "store", "x", **options)
    assert not any(tmp_path.iterdir())


# --- stores of the first format -------------------------------------------------------------------


def test_stores_of_the_first_format_stay_readable_and_appendable(tmp_path, monkeypatch):
    """A store that every name appended to in the first format: every name reads it and appends to it, still in the
    first format (a header in each record, no run records), and each reads what all wrote."""
    names = family_names("lmdb")
    images = np.random.default_rng(4).integers(0, 256, (4 * len(names), 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "store"
    with monkeypatch.context() as patched:
        patched.setattr(LmdbStore, "new_format", FORMAT_1)
        for position, name in enumerate(names):
            with storage.open(name, path, "a") as store:
                store.append(images[2 * position : 2 * position + 2], [position, -position])
    for position, name in enumerate(names, len(names)):
        with storage.open(name, path, "a") as store:
            store.append(images[2 * position : 2 * position + 2], [position, -position])
    assert dict(entries(path))[b"format"] == FORMAT_1
    assert runs(path) == []
    stored = records(path)
    assert len(stored) == len(images)  # a record per image, each a header and its pixels or file, or a pickle frame
    assert all(record.startswith(b"\x80\x05") or HEADER.unpack_from(record)[2] in (0, 1, 3) for record in stored)
    labels = [label for position in range(2 * len(names)) for label in (position, -position)]
    tolerance = tolerance_of(names)
    for name in names:
        with storage.open(name, path) as store:
            assert_read_match(store, None, list(images), labels, tolerance)
            assert_read_match(store, [len(labels) - 1, 0], [images[-1], images[0]], [labels[-1], 0], tolerance)


@pytest.mark.parametrize("name", encoded_names("lmdb"))
def test_a_first_format_record_is_a_header_and_the_file(name, tmp_path, first_format):
    files = append_files(name, tmp_path / "store")
    assert [record[HEADER.size :] for record in records(tmp_path / "store")] == files
    assert run_forked(lambda: open_and_read(name, tmp_path / "store")).result == len(files)


def test_a_first_format_header_claiming_a_larger_image_is_rejected(tmp_path, first_format):
    with storage.open("lmdb", tmp_path / "store", "x") as store:
        store.append(IMAGES[:2], [0, 1])
    value = records(tmp_path / "store")[1]
    put(tmp_path / "store", KEY.pack(b"i", 1), HEADER.pack(b"|u1", 3, 0, 60_000, 70_000, 3, 1) + value[HEADER.size :])
    outcome = run_forked(lambda: open_and_read("lmdb", tmp_path / "store"), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert "recorded layout needs" in outcome.message


# --- damage -------------------------------------------------------------------------------------


DAMAGE = "lacks|another length"  # a missing packed value shows as a value of the wrong length where it was


@pytest.mark.parametrize("missing", [0, 3, 9])
@pytest.mark.parametrize("scattered", [False, True], ids=["all", "scattered"])
@pytest.mark.parametrize("layout", ["new", "first", "packed"])
def test_a_missing_record_is_damage_not_a_shifted_read(missing, scattered, layout, tmp_path, monkeypatch):
    if layout == "first":
        monkeypatch.setattr(LmdbStore, "new_format", FORMAT_1)
    images = np.arange(11 * 4 * 5 * 3, dtype=np.uint8).reshape(11, 4, 5, 3)
    options = {"pack_bytes": 3 * 60} if layout == "packed" else {}
    with storage.open("lmdb", tmp_path / "store", "x", **options) as store:
        store.append(images, range(11))
    if layout == "packed":  # values at ids 0, 3, 6, 9: take away the one that holds `missing`
        missing -= missing % 3
    put(tmp_path / "store", KEY.pack(b"i", missing), None)
    with storage.open("lmdb", tmp_path / "store") as store, pytest.raises(storage.DamagedStoreError, match=DAMAGE):
        store.read([9, missing] if scattered else None)


def forge_run(record: bytes, **fields: int) -> bytes:
    """A run record with some of its fields replaced: code, ndim, encoding, height, width, channels, count, per."""
    names = ("code", "ndim", "encoding", "height", "width", "channels", "count", "per")
    values = dict(zip(names, RUN.unpack_from(record)))
    values.update(fields)
    return RUN.pack(*(values[name] for name in names)) + record[RUN.size :]


# (id, how a run record or an image record of a store of IMAGES[:6] in runs of 4 and 2 is changed, message)
FORGED = [
    ("count-beyond-its-labels", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, count=5)}, "lists 5"),
    (
        "count-and-labels-beyond-the-file",
        lambda path, record: {KEY.pack(b"R", 4): forge_run(record, count=200_000) + bytes(8 * 199_996)},
        "more pixels",
    ),
    (
        "shape-beyond-the-file",
        lambda path, record: {KEY.pack(b"R", 0): forge_run(record, height=60_000, width=70_000)},
        "more pixels",
    ),
    ("zero-side", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, width=0)}, "describes no run"),
    ("unused-side", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, ndim=2)}, "describes no run"),
    ("dtype", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, code=b"|O")}, "lmdb record header"),
    ("dtype-code", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, code=b"\xff")}, "unknown dtype code"),
    ("encoding", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, encoding=9)}, "describes no run"),
    ("per-value-beyond-count", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, per=5)}, "no run"),
    ("per-value-zero", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, per=0)}, "describes no run"),
    ("packed-png", lambda path, record: {KEY.pack(b"R", 0): forge_run(record, encoding=1, per=2)}, "packs encoded"),
    ("short", lambda path, record: {KEY.pack(b"R", 0): record[: RUN.size - 1]}, "shorter than its header"),
    ("runs-apart", lambda path, record: {KEY.pack(b"R", 4): None, KEY.pack(b"R", 5): b"x"}, "do not follow"),
    ("longer-image", lambda path, record: {KEY.pack(b"i", 2): IMAGES[2].tobytes() + b"x"}, "another length"),
    ("shorter-image", lambda path, record: {KEY.pack(b"i", 4): IMAGES[4].tobytes()[:-1]}, "another length"),
]


@pytest.mark.parametrize("forge", [case[1] for case in FORGED], ids=[case[0] for case in FORGED])
def test_a_forged_run_or_image_record_is_damage_before_anything_large_is_allocated(forge, tmp_path):
    """A forged count, shape, layout or length in the records of a store: DamagedStoreError when it is opened or
    read, in a forked child that may allocate only 1 GiB more (a forged 60,000x70,000 image needs 12.6 GB)."""
    path = tmp_path / "store"
    with storage.open("lmdb", path, "x") as store:
        store.append(IMAGES[:4], LABELS[:4])
        store.append(IMAGES[4:6], LABELS[4:6])
    record = dict(entries(path))[KEY.pack(b"R", 0)]
    changes = forge(path, record)
    if KEY.pack(b"R", 5) in changes:  # the second run moved one id on
        changes[KEY.pack(b"R", 5)] = dict(entries(path))[KEY.pack(b"R", 4)]
    for key, value in changes.items():
        put(path, key, value)
    outcome = run_forked(lambda: open_and_read("lmdb", path), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    message = next(case[2] for case in FORGED if case[1] is forge)
    assert message in outcome.message, outcome.message


@pytest.mark.parametrize("length", [2 * 768 + 1, 2 * 768 - 1, 3 * 768])
def test_a_packed_value_of_another_length_is_damage(length, tmp_path):
    with storage.open("lmdb", tmp_path / "store", "x", pack_bytes=2 * 768) as store:
        store.append(IMAGES[:5], LABELS[:5])
    put(tmp_path / "store", KEY.pack(b"i", 2), bytes(length))
    with storage.open("lmdb", tmp_path / "store") as store:
        for ids in (None, [3], slice(1, 3)):
            with pytest.raises(storage.DamagedStoreError, match="another length"):
                store.read(ids)
        assert_read_match(store, [4, 0, 1], [IMAGES[4], IMAGES[0], IMAGES[1]], [LABELS[4], LABELS[0], LABELS[1]])


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


# --- the map ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("options", [{}, {"encoding": "png"}, {"pack_bytes": 1 << 20}], ids=["raw", "png", "packed"])
def test_threads_keep_reading_while_an_append_grows_the_map(options, tmp_path):
    """LMDB may resize a map only while no transaction of the process is open: reading threads must not be
    caught by an append that grows it (they got false DamagedStoreErrors, and segfaults with PNG records)."""
    failures = []
    done = threading.Event()
    with storage.open("lmdb", tmp_path / "store", "x", durable=False, map_size=64 * 1024, **options) as store:
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


# --- options and encodings ----------------------------------------------------------------------


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


# --- pickled records ----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["new", "first"])
def test_pickled_records_are_real_pickles_yet_never_unpickled(layout, tmp_path, monkeypatch):
    if layout == "first":
        monkeypatch.setattr(LmdbStore, "new_format", FORMAT_1)
    with storage.open("lmdb-pickle", tmp_path / "store", "x") as store:
        store.append(IMAGES, LABELS)
    record = records(tmp_path / "store")[0]
    assert [op.name for op, _, _ in pickletools.genops(record)][-2:] == ["MEMOIZE", "STOP"]
    header, pixels = pickle.loads(record)  # noqa: S301 - bytes this test just wrote, to show what the record is
    assert pixels == IMAGES[0].tobytes()
    assert HEADER.unpack(header)[-1] == LABELS[0]

    def refuse(*args, **kwargs):
        raise AssertionError("stored data was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with storage.open("lmdb-pickle", tmp_path / "store") as store:
        assert_read_match(store, None, list(IMAGES), LABELS.tolist())
        assert_read_match(store, [3, 1], [IMAGES[3], IMAGES[1]], [LABELS[3], LABELS[1]])


class Payload:
    """What a hostile pickle would ask the reader to import and call."""

    def __reduce__(self):
        return (print, ("unpickled",))


def other_label(record, header, pixels):
    """The frame of the same pixels under another label than its run lists."""
    fields = list(HEADER.unpack(header))
    fields[-1] += 1
    return pickle.dumps((HEADER.pack(*fields), pixels), protocol=5)


@pytest.mark.parametrize(
    "forge",
    [
        lambda record, header, pixels: pickle.dumps((header, Payload()), protocol=5),
        lambda record, header, pixels: pickle.dumps([header, pixels], protocol=5),
        lambda record, header, pixels: pickle.dumps((header, pixels), protocol=5)[:-1] + b"\x85.",
        lambda record, header, pixels: record[:-2] + b"R.",  # REDUCE in place of the tuple
        other_label,
    ],
    ids=["object", "list", "other-opcode", "reduce", "other-label"],
)
@pytest.mark.parametrize("layout", ["new", "first"])
def test_a_pickle_this_store_did_not_write_is_damage(forge, layout, tmp_path, capsys, monkeypatch):
    if layout == "first":
        if forge is other_label:
            pytest.skip("a first-format record is its own label's record")
        monkeypatch.setattr(LmdbStore, "new_format", FORMAT_1)
    with storage.open("lmdb-pickle", tmp_path / "store", "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    record = records(tmp_path / "store")[1]
    header, pixels = record[HEADER_IN_PICKLE], IMAGES[1].tobytes()
    put(tmp_path / "store", KEY.pack(b"i", 1), forge(record, header, pixels))
    with storage.open("lmdb-pickle", tmp_path / "store") as store:
        with pytest.raises(storage.DamagedStoreError, match="pickle frame this store did not write"):
            store.read()
        assert_read_match(store, [0], [IMAGES[0]], [LABELS[0]])
    assert "unpickled" not in capsys.readouterr().out
