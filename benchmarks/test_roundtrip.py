"""Contract: every backend returns exactly what it was given (hypothesis round-trips)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import storage
from benchmarks.contract import assert_images_equal, assert_read_equal, store_path
from benchmarks.strategies import REQUIRED, batches, image_shape, labelled, mixed_images
from storage import _durable

each_backend = pytest.mark.parametrize("backend", storage.available())


@each_backend
@given(data=st.data())
def test_single_image_roundtrip(backend, data):
    image, label = data.draw(batches(backend, 1, 1))[0], data.draw(st.integers(-(2**63), 2**63 - 1))
    with store_path(backend) as path:
        with storage.open(backend, path, "x") as store:
            store.append([image], [label])
        with storage.open(backend, path) as store:
            got, got_label = store[0]
            assert_images_equal([got], [image])
            assert got_label == label
            assert type(got_label) is int


@each_backend
@given(data=st.data())
def test_uniform_batch_roundtrip(backend, data):
    images, labels = data.draw(labelled(batches(backend)))
    with store_path(backend) as path:
        with storage.open(backend, path, "x") as store:
            store.append(images, np.array(labels, dtype=np.int64))
        with storage.open(backend, path) as store:
            assert len(store) == len(images)
            assert_read_equal(store, None, list(images), labels)


@each_backend
@given(data=st.data())
def test_mixed_shape_batch_roundtrip(backend, data):
    images, labels = data.draw(labelled(mixed_images(backend)))
    with store_path(backend) as path:
        with storage.open(backend, path, "x") as store:
            store.append(images, labels)
        with storage.open(backend, path) as store:
            assert_read_equal(store, None, images, labels)
            for image_id, (image, label) in enumerate(zip(images, labels)):
                got, got_label = store[image_id]
                assert_images_equal([got], [image])
                assert got_label == label


@each_backend
@given(data=st.data())
def test_appends_across_reopen_roundtrip(backend, data):
    appends = data.draw(st.lists(labelled(batches(backend) | mixed_images(backend)), min_size=1, max_size=4))
    expected_images, expected_labels = [], []
    with store_path(backend) as path:
        for images, labels in appends:
            with storage.open(backend, path, "a") as store:
                assert len(store) == len(expected_images)
                store.append(images, labels)
            expected_images += list(images)
            expected_labels += labels
        with storage.open(backend, path) as store:
            assert_read_equal(store, None, expected_images, expected_labels)


@each_backend
@given(data=st.data())
def test_read_ids_roundtrip(backend, data):
    """Shuffled and repeated ids, and slices, come back in the order asked for."""
    images, labels = data.draw(labelled(batches(backend) | mixed_images(backend)))
    count = len(images)
    ids = data.draw(st.lists(st.integers(0, count - 1), max_size=3 * count) | st.slices(count))
    selected = range(count)[ids] if isinstance(ids, slice) else ids
    with store_path(backend) as path, storage.open(backend, path, "x") as store:
        store.append(images, labels)
        if not len(selected):
            assert store.read(ids)[0] == []
            return
        assert_read_equal(store, ids, [images[i] for i in selected], [labels[i] for i in selected])


@each_backend
@pytest.mark.parametrize(("dtype", "channels"), REQUIRED, ids=lambda v: str(v))
def test_required_layouts_roundtrip(backend, dtype, channels, tmp_path):
    """Every backend holds uint8 grey, 1/3/4-channel and 2-D uint16 images, at full value range."""
    info = np.iinfo(dtype)
    image = np.linspace(info.min, info.max, 5 * 7 * (channels or 1)).astype(dtype).reshape(image_shape(5, 7, channels))
    with storage.open(backend, tmp_path / "store", "x") as store:
        store.append(image[np.newaxis], [2**63 - 1])
    with storage.open(backend, tmp_path / "store") as store:
        assert_read_equal(store, [0], [image], [2**63 - 1])


@each_backend
def test_equal_size_layouts_roundtrip(backend, tmp_path):
    """Images of different layouts but equal byte counts come back in their own layouts."""
    wide = np.arange(4 * 8, dtype=np.uint8).reshape(4, 8)
    deep = np.arange(4 * 4, dtype=np.uint16).reshape(4, 4) * 4099
    images = [wide, deep, wide[:, ::-1].copy(), deep.T.copy()]
    with storage.open(backend, tmp_path / "store", "x") as store:
        store.append(images, [0, 1, 2, 3])
    with storage.open(backend, tmp_path / "store") as store:
        assert_read_equal(store, None, images, [0, 1, 2, 3])
        assert_read_equal(store, [3, 0], [images[3], images[0]], [3, 0])


@each_backend
def test_durable_setting_is_stated_and_can_be_traded_for_speed(backend, tmp_path, monkeypatch):
    """Appends fsync unless the store is opened with durable=False (LMDB fsyncs in C, out of sight here)."""
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(1, 4, 5, 3)
    fsyncs = []
    monkeypatch.setattr(os, "fsync", lambda descriptor: fsyncs.append(descriptor))
    monkeypatch.setattr(_durable, "_syncfs", lambda directory: fsyncs.append(directory) or True)
    for durable in (True, False):
        with storage.open(backend, tmp_path / f"store-{durable}", "x", durable=durable) as store:
            assert store.durable is durable
            fsyncs.clear()
            store.append(image, [7])
            assert bool(fsyncs) == (durable and storage.family(backend) != "lmdb")
        with storage.open(backend, tmp_path / f"store-{durable}") as store:
            assert_read_equal(store, None, list(image), [7])
    with pytest.raises(TypeError, match="durable must be True or False"):
        storage.open(backend, tmp_path / "store-bad", "x", durable="yes")
    assert not (tmp_path / "store-bad").exists()
