"""SQLite through the contract, plus what is its own: the table, the WAL's files beside the store and mode "w",
PNG rows and the option, a forged layout, a missing row, a corrupt file, a message that is no UTF-8 and planted
sidecars."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

import numpy as np
import pytest

import storage
from storage.testing import HEADROOM, StoreContract, assert_read_match, open_and_read, run_forked
from storage.testing.contract import append_files, encoded_names

IMAGES = np.random.default_rng(3).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
LABELS = np.arange(12) * 3 - 7
SMOOTH = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None], (12, 64, 64, 3)).copy()


class TestSqlite(StoreContract):
    backend = "sqlite"


def change(path, statement: str) -> None:
    """Run one SQL statement on the store at `path`, as a plain SQLite client."""
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(statement)


def names(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_a_store_is_an_sqlite_table_of_one_row_per_image(tmp_path):
    path = tmp_path / "store.db"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
        store.append([IMAGES[2, :, :8]], [2**63 - 1])
        assert names(tmp_path) == ["store.db", "store.db-shm", "store.db-wal"]  # no hidden copy of the creation
        assert store.files(path) == [path, tmp_path / "store.db-wal", tmp_path / "store.db-shm"]
    assert names(tmp_path) == ["store.db"]  # the last connection folded the WAL into the file
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA application_id").fetchone() == (int.from_bytes(b"imgs", "big"),)
        assert db.execute("SELECT * FROM images ORDER BY id").fetchall() == [
            (0, -7, "raw |u1 16 16 3", IMAGES[0].tobytes()),
            (1, -4, "raw |u1 16 16 3", IMAGES[1].tobytes()),
            (2, 2**63 - 1, "raw |u1 16 8 3", IMAGES[2, :, :8].tobytes()),
        ]
    assert storage.detect(path) == "sqlite"


def test_a_foreign_sqlite_database_is_no_store_and_is_left_alone(tmp_path):
    path = tmp_path / "other.db"
    change(path, "CREATE TABLE images (id INTEGER PRIMARY KEY, label INTEGER, layout TEXT, pixels BLOB)")
    content = path.read_bytes()
    assert storage.detect(path) is None
    for mode in "raw":
        with pytest.raises(ValueError, match="holds a file that is no image store, not a sqlite store"):
            storage.open("sqlite", path, mode)
    assert path.read_bytes() == content
    assert names(tmp_path) == ["other.db"]  # not even a -shm


def test_mode_w_over_a_store_whose_wal_holds_appends_makes_an_empty_store(tmp_path):
    """A writer killed while its appends were still in the WAL: SQLite would replay that WAL into any new file
    at the path, so mode "w" folds it into the old file first."""
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    pid = os.fork()
    if pid == 0:  # a writer that ends without closing (held by a name: a dropped connection closes itself)
        writer = storage.open("sqlite", path, "a", durable=False)
        writer.append(IMAGES[2:], LABELS[2:])
        os._exit(0)
    os.waitpid(pid, 0)
    assert (tmp_path / "store-wal").stat().st_size > 0
    with storage.open("sqlite", path, "w") as store:
        assert len(store) == 0
        store.append(IMAGES[:1], [9])
    with storage.open("sqlite", path) as store:
        assert_read_match(store, None, [IMAGES[0]], [9])


@pytest.mark.parametrize("mode", ["r", "a"])
def test_mode_w_refuses_a_store_that_is_open_elsewhere(mode, tmp_path):
    """Its connection would keep the WAL at the path, beside the new file."""
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    with storage.open("sqlite", path, mode) as other:
        with pytest.raises(BlockingIOError, match="another connection holds the store"):
            storage.open("sqlite", path, "w")
        assert not [name for name in names(tmp_path) if name.startswith(".")]
        assert_read_match(other, None, list(IMAGES[:2]), LABELS[:2])
    with storage.open("sqlite", path, "w") as store:
        assert len(store) == 0


def test_mode_w_refuses_a_store_too_damaged_to_fold_its_wal_into(tmp_path):
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    content = bytearray(path.read_bytes())
    content[100:] = bytes(len(content) - 100)  # the marked header stays, the rest is gone
    path.write_bytes(bytes(content))
    with pytest.raises(storage.DamagedStoreError):
        storage.open("sqlite", path, "w")
    assert path.read_bytes() == content


def test_png_rows_take_less_room_for_smooth_images_and_mix_with_raw_rows(tmp_path):
    sizes = {}
    for encoding in ("raw", "png"):
        with storage.open("sqlite", tmp_path / encoding, "x", encoding=encoding) as store:
            store.append(SMOOTH, range(12))
        sizes[encoding] = (tmp_path / encoding).stat().st_size
    assert sizes["png"] < 0.5 * sizes["raw"]
    with storage.open("sqlite", tmp_path / "raw", "a", encoding="png") as store:
        store.append(SMOOTH[:2], [12, 13])
        with pytest.raises(ValueError, match="the sqlite backend holds uint8 images"):
            store.append(np.zeros((1, 2, 2), np.float32), [0])
    with storage.open("sqlite", tmp_path / "raw") as store:
        assert_read_match(store, None, [*SMOOTH, *SMOOTH[:2]], range(14))
        assert_read_match(store, [13, 0, 13], [SMOOTH[1], SMOOTH[0], SMOOTH[1]], [13, 0, 13])


def test_bad_option_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="encoding must be one of"):
        storage.open("sqlite", tmp_path / "store", "x", encoding="webp")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("image_id", [0, 1])
@pytest.mark.parametrize(
    "forge",
    ["layout = 'raw |u1 60000 70000 3'", "pixels = substr(pixels, 1, 10)"],
    ids=["layout-claims-more", "blob-cut-short"],
)
def test_a_blob_that_disagrees_with_its_layout_is_damage(forge, image_id, tmp_path):
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    change(path, f"UPDATE images SET {forge} WHERE id = {image_id}")
    outcome = run_forked(lambda: open_and_read("sqlite", path), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()
    assert "recorded layout needs" in outcome.message


def test_a_missing_row_is_damage(tmp_path):
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:4], LABELS[:4])
    change(path, "DELETE FROM images WHERE id = 1")
    with storage.open("sqlite", path) as store:
        for ids in (None, [2, 1], [1, 1]):
            with pytest.raises(storage.DamagedStoreError, match="missing from the store"):
                store.read(ids)
        assert_read_match(store, [3, 0], [IMAGES[3], IMAGES[0]], [LABELS[3], LABELS[0]])


def test_a_corrupt_database_file_is_damage(tmp_path):
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES, LABELS)
    content = bytearray(path.read_bytes())
    content[4096:8192] = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()  # page 2
    path.write_bytes(bytes(content))
    outcome = run_forked(lambda: open_and_read("sqlite", path), headroom=HEADROOM)
    assert outcome.error == "DamagedStoreError", outcome.describe()


def test_an_error_message_quoting_damaged_text_is_damage(tmp_path):
    """SQLite's message quotes the damaged schema, which is no UTF-8: Python fails to decode the message."""
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    content = path.read_bytes()
    path.write_bytes(content.replace(b"CREATE TABLE images", b"CR\xc5ATE TABLE images"))  # "E" ^ 0x80
    with pytest.raises(storage.DamagedStoreError, match=r"damaged (or incomplete )?sqlite store"):
        storage.open("sqlite", path)


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_symlink_at_a_file_beside_the_store_is_refused_not_followed(suffix, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours" * 1000)
    path = tmp_path / "store"
    with storage.open("sqlite", path, "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    (tmp_path / f"store{suffix}").symlink_to(victim)
    for mode in "raw":
        with pytest.raises(storage.DamagedStoreError, match="not a regular file"):
            storage.open("sqlite", path, mode)
    assert victim.read_bytes() == b"not yours" * 1000


@pytest.mark.parametrize("name", encoded_names("sqlite"))
def test_an_encoded_append_keeps_each_file_as_it_is(name, tmp_path):
    files = append_files(name, tmp_path / "store.db")
    with closing(sqlite3.connect(tmp_path / "store.db")) as db:
        assert [row[0] for row in db.execute("SELECT pixels FROM images ORDER BY id")] == files
