"""Variants: each writes its backend's format another way, any name of a backend reads it, and pickles stay shut."""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile

import numpy as np
import pytest

import storage
from benchmarks.contract import assert_read_equal
from benchmarks.data import synthetic

IMAGES, LABELS = synthetic(12, (16, 16, 3))
FAMILIES = sorted({storage.family(name) for name in storage.available()})


def names_of(family: str) -> list[str]:
    return [name for name in storage.available() if storage.family(name) == family]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_name_of_a_backend_reads_a_store_that_all_its_variants_appended_to(family, tmp_path):
    names = names_of(family)
    for position, name in enumerate(names):
        with storage.open(name, tmp_path / "store", "a") as store:
            store.append(IMAGES[position : position + 2], LABELS[position : position + 2])
    expected = [image for position in range(len(names)) for image in IMAGES[position : position + 2]]
    labels = [int(label) for position in range(len(names)) for label in LABELS[position : position + 2]]
    assert storage.detect(tmp_path / "store") == family
    for name in names:
        with storage.open(name, tmp_path / "store") as store:
            assert_read_equal(store, None, expected, labels)
            assert_read_equal(store, [len(expected) - 1, 0], [expected[-1], expected[0]], [labels[-1], labels[0]])


@pytest.mark.parametrize("name", list(storage.VARIANTS))
def test_a_variant_writes_its_options_and_is_named_in_errors(name, tmp_path):
    _, options = storage.VARIANTS[name]
    with storage.open(name, tmp_path / "store", "x") as store:
        assert store.name == name
        assert {key: getattr(store.options, key) for key in options} == options
        with pytest.raises(ValueError, match=f"the {name} backend holds"):
            store.append(np.zeros((1, 2, 2), object), [0])
    with storage.open(name, tmp_path / "store") as store:
        assert len(store) == 0


def store_bytes(name: str, path, images: np.ndarray = IMAGES) -> int:
    """Bytes of the files of a store of `name` holding `images` (sizes, not blocks: the stores are small)."""
    with storage.open(name, path, "x") as store:
        store.append(images, range(len(images)))
        return sum(file.stat().st_size for file in store.files(path))


@pytest.mark.parametrize("name", [n for n in storage.available() if n in storage.VARIANTS and "level" not in n])
def test_a_compressing_variant_stores_smooth_images_in_less_room(name, tmp_path):
    """Plain gradients compress whatever the method (the synthetic benchmark images are harder: see the README)."""
    smooth = np.broadcast_to(np.arange(64, dtype=np.uint8)[:, None, None], (12, 64, 64, 3)).copy()
    variant, plain = (
        store_bytes(name, tmp_path / "a", smooth),
        store_bytes(storage.family(name), tmp_path / "b", smooth),
    )
    if storage.VARIANTS[name][1].get("encoding") == "pickle":
        assert variant >= plain  # a pickle frame around the same bytes
    else:
        assert variant < 0.5 * plain


@pytest.mark.skipif("png-level9" not in storage.available(), reason="png backend not available")
def test_png_levels_trade_time_for_size(tmp_path):
    assert store_bytes("png-level9", tmp_path / "a") <= store_bytes("png", tmp_path / "b")


@pytest.mark.skipif("npz-deflate" not in storage.available(), reason="npz backend not available")
def test_deflated_npz_is_what_numpy_savez_compressed_writes(tmp_path):
    with storage.open("npz-deflate", tmp_path / "store.npz", "x") as store:
        store.append(IMAGES, LABELS)
    with zipfile.ZipFile(tmp_path / "store.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    with np.load(tmp_path / "store.npz", allow_pickle=False) as archive:
        assert np.array_equal(archive["images_00000000"], IMAGES)


@pytest.mark.skipif("hdf5-gzip" not in storage.available(), reason="hdf5 backend not available")
@pytest.mark.parametrize(("name", "compression"), [("hdf5-lzf", "lzf"), ("hdf5-gzip", "gzip")])
def test_compressed_hdf5_runs_are_chunked_one_image_a_chunk(name, compression, tmp_path):
    import h5py

    with storage.open(name, tmp_path / "store.h5", "x") as store:
        store.append(IMAGES, LABELS)
    with h5py.File(tmp_path / "store.h5", "r") as file:
        run = file["images/00000000"]
        assert (run.compression, run.chunks) == (compression, (1, 16, 16, 3))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("lmdb", {"encoding": "jpeg"}, "encoding must be one of raw, png, pickle"),
        ("hdf5", {"encoding": "jpeg"}, "encoding must be one of raw, png"),
        ("hdf5", {"compression": "szip"}, "compression must be None, lzf or gzip"),
        ("hdf5-png", {"compression": "gzip"}, "png files are compressed already"),
        ("npz", {"compression": "bzip2"}, "compression must be None or deflate"),
        ("png", {"compress_level": 10}, "compress_level must be an int from 0 to 9"),
    ],
)
def test_bad_option_is_refused_and_writes_nothing(name, options, message, tmp_path):
    if name not in storage.available():
        pytest.skip(f"{name} not available")
    with pytest.raises(ValueError, match=message):
        storage.open(name, tmp_path / "store", "x", **options)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif("lmdb" not in storage.available(), reason="lmdb is not installed")
def test_an_option_given_to_open_narrows_what_the_store_accepts(tmp_path):
    with storage.open("lmdb", tmp_path / "store", "x", encoding="png") as store:
        assert store.codec.name == "png"
        with pytest.raises(ValueError, match="the lmdb backend holds uint8 images"):
            store.append(np.zeros((1, 2, 2), np.float32), [0])
        assert len(store) == 0


def pickled_records(path) -> list[bytes]:
    import lmdb

    with lmdb.open(str(path), readonly=True, lock=False) as env, env.begin() as txn:
        return [bytes(value) for key, value in txn.cursor() if key.startswith(b"i")]


@pytest.mark.skipif("lmdb-pickle" not in storage.available(), reason="lmdb is not installed")
def test_pickled_records_are_real_pickles_yet_never_unpickled(tmp_path, monkeypatch):
    with storage.open("lmdb-pickle", tmp_path / "store", "x") as store:
        store.append(IMAGES, LABELS)
    record = pickled_records(tmp_path / "store")[0]
    assert [op.name for op, _, _ in pickletools.genops(record)][-2:] == ["MEMOIZE", "STOP"]
    _, pixels = pickle.loads(record)  # noqa: S301 - bytes this test just wrote, to show what the record is
    assert pixels == IMAGES[0].tobytes()

    def refuse(*args, **kwargs):
        raise AssertionError("stored data was unpickled")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    with storage.open("lmdb-pickle", tmp_path / "store") as store:
        assert_read_equal(store, None, list(IMAGES), LABELS.tolist())


class Payload:
    """What a hostile pickle would ask the reader to import and call."""

    def __reduce__(self):
        return (print, ("unpickled",))


@pytest.mark.skipif("lmdb-pickle" not in storage.available(), reason="lmdb is not installed")
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
    import lmdb

    from storage.lmdb_store import HEADER_IN_PICKLE, KEY

    with storage.open("lmdb-pickle", tmp_path / "store", "x") as store:
        store.append(IMAGES[:2], LABELS[:2])
    record = pickled_records(tmp_path / "store")[1]
    header, pixels = record[HEADER_IN_PICKLE], IMAGES[1].tobytes()
    with lmdb.open(str(tmp_path / "store")) as env, env.begin(write=True) as txn:
        txn.put(KEY.pack(b"i", 1), forge(record, header, pixels))
    with storage.open("lmdb-pickle", tmp_path / "store") as store:
        with pytest.raises(storage.DamagedStoreError, match="pickle frame this store did not write"):
            store.read()
        assert_read_equal(store, [0], [IMAGES[0]], [LABELS[0]])
    assert "unpickled" not in capsys.readouterr().out


def test_png_decoding_checks_the_recorded_layout():
    from storage import codecs

    png = codecs.get("png")
    encoded = png.encode(IMAGES[0])
    assert np.array_equal(png.decode(io.BytesIO(encoded).getvalue(), (16, 16, 3), np.dtype("u1")), IMAGES[0])
    with pytest.raises(storage.DamagedStoreError, match="not uint8 \\(16, 16, 4\\)"):
        png.decode(encoded, (16, 16, 4), np.dtype("u1"))
