"""The registry and `storage.open`'s own checks: names, modes and options are refused before anything is touched."""

from __future__ import annotations

import pytest

import storage
from storage.testing import assert_read_match, sample_images

BAD_VALUES = {  # an option value each built-in backend refuses
    "png": {"compress_level": 10},
    "lmdb": {"encoding": "webp"},
    "hdf5": {"compression": "szip"},
    "npz": {"compression": "bzip2"},
    "jpeg": {"quality": 0},
    "arrow": {"encoding": "webp"},
    "webdataset": {"shard_size": 0},
    "parquet": {"compression": "lzo"},
    "sqlite": {"encoding": "webp"},
    "zarr": {"chunk_images": 0},
}
LOCAL = [name for name in storage.available() if storage.backend(name).capabilities.local]  # the others: test_s3.py


def test_unknown_backend_and_mode_are_refused(tmp_path):
    with pytest.raises(ValueError, match="available: " + ", ".join(storage.available())):
        storage.open("tiff", tmp_path / "store", "x")
    with pytest.raises(ValueError, match="mode must be one of"):
        storage.open(storage.available()[0], tmp_path / "store", "rw")
    assert not (tmp_path / "store").exists()


def test_available_lists_backends_whose_libraries_import():
    assert isinstance(storage.available(), tuple)
    assert set(storage.available()) <= set(storage.REGISTRY) | set(storage.VARIANTS)
    assert set(storage.available(variants=False)) <= set(storage.REGISTRY)
    for name in ("png", "lmdb", "hdf5", "npz"):  # their libraries are runtime dependencies
        assert name in storage.available()


@pytest.mark.parametrize("name", storage.available())
def test_a_name_knows_its_family_and_its_options_are_valid(name):
    chosen = storage.backend(name)
    assert storage.family(name) == chosen.family == chosen.store_class.name
    assert chosen.family in storage.available(variants=False)
    assert {key: getattr(chosen.settings(), key) for key in chosen.options} == dict(chosen.options)


@pytest.mark.parametrize("name", [name for name in storage.available(variants=False) if name in LOCAL])
def test_detect_names_the_family_of_a_store(name, tmp_path):
    storage.open(name, tmp_path / "store", "x").close()
    assert storage.detect(tmp_path / "store") == name
    assert storage.detect(tmp_path) is None


@pytest.mark.parametrize("name", LOCAL)
@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"no_such_option": 1}, TypeError),
        ({"durable": "yes"}, TypeError),
        ({"mode": "rw"}, ValueError),
        ("bad value", ValueError),
    ],
    ids=["unknown-option", "durable", "mode", "bad-value"],
)
def test_replacing_with_a_bad_argument_is_refused_and_keeps_the_store(name, options, error, tmp_path):
    images = sample_images(name)
    with storage.open(name, tmp_path / "store", "x") as store:
        store.append(images, [1, 2])
    arguments = {"mode": "w", **(BAD_VALUES[storage.family(name)] if options == "bad value" else options)}
    with pytest.raises(error):
        storage.open(name, tmp_path / "store", **arguments)
    with storage.open(name, tmp_path / "store") as store:
        assert_read_match(store, None, list(images), [1, 2])


def test_an_unknown_option_lists_the_options_a_backend_takes(tmp_path):
    with pytest.raises(TypeError, match="the npz backend has no option 'level'; its options: compression"):
        storage.open("npz", tmp_path / "store", "x", level=1)
    assert not (tmp_path / "store").exists()
