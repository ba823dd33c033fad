"""The storage contract: what every backend promises, as a class a backend's test file subclasses.

``class TestMine(StoreContract): backend = "mine"`` runs each test taking `name` once per name of
the family (the backend and each of its variants) and the family-wide tests once: damaged copies,
crash safety, concurrent readers, and all names sharing one store. Images come back bit-exact from
a lossless codec and within its ``min_psnr`` from a lossy one, always in their dtype and shape;
labels always exactly. Generic tests ask a store's capabilities and codec, never its name.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import io
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage
from storage import _durable, codecs
from storage._durable import STAGING
from storage.testing import media
from storage.testing.assertions import Tolerance, assert_images_match, assert_read_match, store_path
from storage.testing.isolation import run_forked
from storage.testing.strategies import REQUIRED, batches, image_shape, labelled, layouts, mixed_images, rejected_layouts

needs_fork = pytest.mark.skipif(sys.platform == "win32", reason="needs fork")


def local_only(test: Callable) -> Callable:
    """Mark a test of local files (symlinks, FIFOs, file systems): skipped for stores in an object store."""
    test.local_only = True
    return test


DOCUMENTED_ERRORS = ("DamagedStoreError", "ValueError", "FileNotFoundError")  # what a damaged store may raise
HEADROOM = 1 << 30  # a reader may map 1 GiB more than the test process: a forged size needs far more
PREFERRED = ((np.dtype("u1"), 3), (np.dtype("u1"), None), (np.dtype("u2"), None))  # sample layouts, best first


def family_names(family: str) -> list[str]:
    """The names that write `family`'s format: the backend, then its variants."""
    return [name for name in storage.available() if storage.family(name) == family]


def sample_layout(*names: str) -> tuple[np.dtype, int | None]:
    """A (dtype, channels) layout every one of `names` accepts: colour uint8 where they can take it."""
    for layout in (*PREFERRED, *layouts(names[0])):
        if all(layout in layouts(name) for name in names):
            return layout
    raise AssertionError(f"{', '.join(names)} accept no common layout")


def sample_images(*names: str, count: int = 2, height: int = 4, width: int = 5, seed: int = 0) -> np.ndarray:
    """`count` seeded random images of one layout that all of `names` accept."""
    dtype, channels = sample_layout(*names)
    values = np.random.default_rng(seed).integers(0, 256, (count, *image_shape(height, width, channels)))
    return values.astype(dtype)


def tolerance_of(names: list[str]) -> Tolerance:
    """How closely images written by any of `names` come back: bit-exact, or the loosest PSNR bound among them."""
    bounds = [storage.backend(name).codec.min_psnr for name in names if not storage.backend(name).codec.lossless]
    return min(bounds) if bounds else codecs.RAW


def snapshot(store: storage.Store) -> dict[str, int | None]:
    """Every file in the store's directory (or beside its file) with its size, but files a reader may touch; every
    object of a store in an object store."""
    if not store.capabilities.local:
        return dict.fromkeys(store.files(store.path))
    root = store.path if store.capabilities.directory else store.path.parent
    return {
        str(path): path.stat().st_size
        for path in root.rglob("*")
        if path.is_file() and path.name not in store.capabilities.lock_files
    }


def open_and_read(name: str, path: Path) -> int:
    """Open a store, read it all, then each image alone and out of order: its length."""
    with storage.open(name, path) as store:
        images, labels = store.read()
        assert len(images) == len(labels) == len(store)
        for image_id in reversed(range(len(store))):
            store[image_id]
        return len(store)


def damage(files: list[Path], data: st.DataObject) -> str:
    """Truncate, flip bytes of, replace or delete one of `files`; what was done."""
    target = data.draw(st.sampled_from(sorted(files)), label="file")
    content = bytearray(target.read_bytes())
    kind = data.draw(st.sampled_from(["truncate", "flip", "replace", "delete"]), label="kind")
    near_start = st.integers(0, max(0, min(len(content), 4096) - 1))  # headers live here
    anywhere = st.integers(0, max(0, len(content) - 1))
    if kind == "truncate":
        content = content[: data.draw(st.one_of(near_start, anywhere), label="length")]
    elif kind == "flip" and content:
        for position in data.draw(st.lists(st.one_of(near_start, anywhere), min_size=1, max_size=8), label="at"):
            content[position] ^= data.draw(st.integers(1, 255), label="mask")
    elif kind == "replace":
        content = bytearray(data.draw(st.binary(max_size=2 * len(content) + 64), label="bytes"))
    if kind == "delete":
        target.unlink()
    else:
        target.write_bytes(bytes(content))
    return f"{kind} {target.name}"


def draws_data(share: float) -> Callable[[Callable], Callable]:
    """Mark a contract test that takes hypothesis' `data`: each subclass gets its own ``@given`` copy of it,
    running `share` of the settings profile's examples (at least 5), since it runs once per name."""

    def mark(test: Callable) -> Callable:
        test.share_of_examples = share
        return test

    return mark


# Layouts of the files an encoded append is tried with, where the codec holds them: colour, grey, RGBA, 16-bit grey.
ENCODED_LAYOUTS = ((np.dtype("u1"), 3), (np.dtype("u1"), None), (np.dtype("u1"), 4), (np.dtype("u2"), None))


def pillow_file(codec: codecs.Codec, image: np.ndarray, **settings: object) -> bytes:
    """`image` as a file of `codec`'s format written by Pillow, another encoder than the codec's own: a PNG at
    another compression level, a baseline JPEG at quality 80 with 4:2:0 chroma; `settings` override these."""
    from PIL import Image

    buffer = io.BytesIO()
    if codec.name == "png":
        level = 9 if getattr(codec, "level", 1) != 9 else 0
        Image.fromarray(image).save(buffer, format="PNG", **{"compress_level": level, **settings})
    else:
        Image.fromarray(image).save(buffer, format="JPEG", **{"quality": 80, "subsampling": "4:2:0", **settings})
    return buffer.getvalue()


def encoded_files(codec: codecs.Codec, seed: int = 0) -> list[bytes]:
    """Small files of random images for an encoded append, alternately written by `codec` and by Pillow, in runs of
    differing shapes and layouts, the first shape coming back at the end: small enough (under 1 KiB) that every
    format here keeps each in one piece."""
    rng = np.random.default_rng(seed)
    files = []
    for dtype, channels in ENCODED_LAYOUTS:
        if codec.accepts(dtype, image_shape(4, 4, channels)):
            for height, width in ((6, 7), (6, 7), (5, 9)):
                image = rng.integers(0, np.iinfo(dtype).max, image_shape(height, width, channels), endpoint=True)
                files += [codec.encode(image.astype(dtype)), pillow_file(codec, image.astype(dtype))]
    return files + files[:1]


def encoded_names(family: str) -> list[str]:
    """The names of `family` whose stores hold encoded files, which an encoded append keeps as they are."""
    return [name for name in family_names(family) if storage.backend(name).codec is not codecs.RAW]


def append_files(name: str, path: Path | str, **options: object) -> list[bytes]:
    """Create a store of `name` at `path` and append `encoded_files` of its codec with ``encoded=True``, labelled
    0, 1, ...: the files, which the store's records must equal byte for byte."""
    files = encoded_files(storage.backend(name).settings(**options).codec)
    with storage.open(name, path, "x", durable=False, **options) as store:
        store.append(files, range(len(files)), encoded=True)
    return files


def other_format_file(codec: codecs.Codec) -> bytes:
    """A good image file of another format than `codec`'s: a JPEG for a PNG codec, else a PNG."""
    image = np.zeros((4, 4, 3), np.uint8)
    return pillow_file(codecs.Jpeg() if codec.name == "png" else codecs.Png(), image)


def refused_kind_file(codec: codecs.Codec, kind: int) -> bytes:
    """A good file of `codec`'s format that its codec refuses (`kind` 0 or 1): a palette PNG or a PNG with a tRNS
    chunk, which the PNG libraries decode differently; a progressive JPEG or a CMYK one, which the codec never
    writes."""
    from PIL import Image

    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    buffer = io.BytesIO()
    if codec.name == "png":
        if kind == 0:
            image.convert("P").save(buffer, format="PNG")
        else:
            image.save(buffer, format="PNG", transparency=(0, 1, 2))
    elif kind == 0:
        image.save(buffer, format="JPEG", progressive=True)
    else:
        image.convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


# (id, encoded images made from one good file, error, message): image 0 is good, image 1 is not
BAD_FILES = [
    ("truncated", lambda codec, good: [good, good[: len(good) // 2]], ValueError, "the file of image 1"),
    ("end-cut-off", lambda codec, good: [good, good[:-12]], ValueError, "the file of image 1"),
    ("cut-in-header", lambda codec, good: [good, good[:20]], ValueError, "file of image 1 is refused"),
    ("empty", lambda codec, good: [good, b""], ValueError, "file of image 1 is refused"),
    ("text", lambda codec, good: [good, b"not an image file"], ValueError, "is no"),
    ("other-format", lambda codec, good: [good, other_format_file(codec)], ValueError, "is no"),
    ("refused-kind", lambda codec, good: [good, refused_kind_file(codec, 0)], ValueError, "file of image 1 is refused"),
    ("refused-kind-2", lambda codec, good: [good, refused_kind_file(codec, 1)], ValueError, "image 1 is refused"),
    (
        "pixel-array",
        lambda codec, good: [good, np.frombuffer(good, np.uint8)],
        TypeError,
        "image 1 must be an encoded file",
    ),
    (
        "file-name",
        lambda codec, good: [good, "image.png"],
        TypeError,
        "image 1 must be an encoded file (bytes, bytearray or memoryview), not str",
    ),
    ("one-bytes-object", lambda codec, good: good, TypeError, "must be a sequence of files"),
    ("an-array-of-files", lambda codec, good: np.array([good, good]), TypeError, "must be a sequence of files"),
]


# (id, bad images and labels made from two good images, error, message); {shape} is the bad images' shape
BAD_APPENDS = [
    ("one-label-short", lambda good: (good, [1]), ValueError, "2 images but 1 labels"),
    ("one-label-over", lambda good: (good, [1, 2, 3]), ValueError, "2 images but 3 labels"),
    ("float-label", lambda good: (good, [1, 2.0]), TypeError, "label 2.0 at position 1 is not an integer"),
    ("text-label", lambda good: (good, [1, "2"]), TypeError, "is not an integer"),
    ("bool-label", lambda good: (good, [True, 2]), TypeError, "is not an integer"),
    ("float-label-array", lambda good: (good, np.array([1.0, 2.0])), TypeError, "float64"),
    ("labels-not-a-sequence", lambda good: (good, 3), TypeError, "labels must be a sequence"),
    ("label-beyond-int64", lambda good: (good, [1, 2**63]), ValueError, "does not fit in int64"),
    (
        "uint64-label-beyond-int64",
        lambda good: (good, np.array([1, 2**63], dtype=np.uint64)),
        ValueError,
        "does not fit in int64",
    ),
    ("one-row", lambda good: (good[0, 0], [1, 2, 3, 4]), ValueError, "shape (N, H, W) or (N, H, W, C), got {shape}"),
    ("too-many-axes", lambda good: (good[:, np.newaxis, np.newaxis], [1, 2]), ValueError, "got {shape}"),
    ("empty-side", lambda good: (np.zeros((2, 0, 5), good.dtype), [1, 2]), ValueError, "of shape (0, 5)"),
    ("object-dtype", lambda good: (good.astype(object), [1, 2]), ValueError, "object"),
    ("flat-image", lambda good: ([good[0], np.zeros(5, good.dtype)], [1, 2]), ValueError, "of shape (5,)"),
    ("text-image", lambda good: ([good[0], "text"], [1, 2]), ValueError, "<U4"),
    ("text-images", lambda good: ("text", [1]), TypeError, "images must be an array or a sequence"),
]
# Images of different layouts but 32 bytes each: a store must not mix up one layout with another.
EQUAL_SIZE = (
    np.arange(32, dtype=np.uint8).reshape(4, 8),
    (np.arange(16, dtype=np.uint16) * 4099).reshape(4, 4),
    np.arange(32, dtype=np.uint8).reshape(8, 4),
    np.arange(8, dtype=np.float32).reshape(2, 4),
)
CRASH_BATCH, CRASH_APPENDS, CRASH_TRIALS = 20, 6, 6  # images per append, appends by the killed writer, kills
CREATION_TRIALS = 16  # kills while creating or replacing a store, half of each
READ_BATCH, READ_APPENDS, READERS = 20, 12, 2  # images per append, appends while readers read, reader processes
WRITE_BATCH, WRITE_APPENDS = 20, 8  # images per append, appends by each of two writers at once


class StoreContract:
    """Subclass with ``backend = "<family name>"``; add tests of what is particular to that backend."""

    backend: ClassVar[str]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Run each test that takes `name` once per name of the family, with a readable id."""
        names = family_names(self.backend)
        if "layout" in metafunc.fixturenames:  # only the required layouts that a name accepts
            cases = [(name, layout) for name in names for layout in REQUIRED if layout in layouts(name)]
            ids = [f"{name}-{layout[0]}{'' if layout[1] is None else f'x{layout[1]}'}" for name, layout in cases]
            metafunc.parametrize(("name", "layout"), cases, ids=ids)
        elif "name" in metafunc.fixturenames:
            metafunc.parametrize("name", names)
        if "other" in metafunc.fixturenames:  # other backends whose stores live where this one's do
            local = storage.backend(self.backend).capabilities.local
            others = [f for f in storage.available(variants=False) if f != self.backend]
            metafunc.parametrize("other", [f for f in others if storage.backend(f).capabilities.local == local])

    @pytest.fixture(autouse=True)
    def _skip_local_only(self, request: pytest.FixtureRequest) -> None:
        test = getattr(getattr(request.function, "hypothesis", None), "inner_test", request.function)
        if getattr(test, "local_only", False) and not storage.backend(self.backend).capabilities.local:
            pytest.skip("a test of local files: this backend's stores live in an object store")

    def __init_subclass__(cls, **kwargs: object) -> None:
        """Give the subclass its own ``@given`` copy of each test that draws data, made now: with the settings
        profile the test run loaded. pytest makes an instance per test, which is all that differs between
        executors here, so that health check is off."""
        super().__init_subclass__(**kwargs)
        profile = settings.default
        checks = [*profile.suppress_health_check, HealthCheck.differing_executors]
        for attribute, test in vars(StoreContract).items():
            current = getattr(cls, attribute)
            inner = getattr(getattr(current, "hypothesis", None), "inner_test", current)
            if hasattr(test, "share_of_examples") and inner is test:
                examples = max(5, round(profile.max_examples * test.share_of_examples))
                chosen = settings(profile, max_examples=examples, suppress_health_check=checks)
                setattr(cls, attribute, chosen(given(data=st.data())(test)))

    @pytest.fixture
    def store(self, name: str, tmp_path: Path):
        """An open, writable store of `name` holding two sample images, labelled 7 and 8."""
        with storage.open(name, tmp_path / "store", "x", durable=False) as store:
            store.append(sample_images(name), [7, 8])
            yield store

    # --- round trips -------------------------------------------------------------------------
    # Round trips skip fsync (durable=False): what comes back does not depend on it, and it is slow. Each
    # runs half the profile's examples, for every name of the family.

    @draws_data(share=0.5)
    def test_single_image_roundtrip(self, name: str, data: st.DataObject) -> None:
        image, label = data.draw(batches(name, 1, 1))[0], data.draw(st.integers(-(2**63), 2**63 - 1))
        with store_path(name) as path:
            with storage.open(name, path, "x", durable=False) as store:
                store.append([image], [label])
            with storage.open(name, path) as store:
                got, got_label = store[0]
                assert_images_match([got], [image], store.codec)
                assert got_label == label
                assert type(got_label) is int

    @draws_data(share=0.5)
    def test_uniform_batch_roundtrip(self, name: str, data: st.DataObject) -> None:
        images, labels = data.draw(labelled(batches(name)))
        with store_path(name) as path:
            with storage.open(name, path, "x", durable=False) as store:
                store.append(images, np.array(labels, dtype=np.int64))
            with storage.open(name, path) as store:
                assert len(store) == len(images)
                assert_read_match(store, None, list(images), labels)

    @draws_data(share=0.5)
    def test_mixed_shape_batch_roundtrip(self, name: str, data: st.DataObject) -> None:
        images, labels = data.draw(labelled(mixed_images(name)))
        with store_path(name) as path:
            with storage.open(name, path, "x", durable=False) as store:
                store.append(images, labels)
            with storage.open(name, path) as store:
                assert_read_match(store, None, images, labels)
                for image_id, (image, label) in enumerate(zip(images, labels)):
                    got, got_label = store[image_id]
                    assert_images_match([got], [image], store.codec)
                    assert got_label == label

    @draws_data(share=0.5)
    def test_appends_across_reopen_roundtrip(self, name: str, data: st.DataObject) -> None:
        appends = data.draw(st.lists(labelled(batches(name) | mixed_images(name)), min_size=1, max_size=3))
        expected_images, expected_labels = [], []
        with store_path(name) as path:
            for images, labels in appends:
                with storage.open(name, path, "a", durable=False) as store:
                    assert len(store) == len(expected_images)
                    store.append(images, labels)
                expected_images += list(images)
                expected_labels += labels
            with storage.open(name, path) as store:
                assert_read_match(store, None, expected_images, expected_labels)

    @draws_data(share=0.5)
    def test_read_ids_roundtrip(self, name: str, data: st.DataObject) -> None:
        """Shuffled and repeated ids, and slices, come back in the order asked for."""
        images, labels = data.draw(labelled(batches(name) | mixed_images(name)))
        count = len(images)
        ids = data.draw(st.lists(st.integers(0, count - 1), max_size=3 * count) | st.slices(count))
        selected = range(count)[ids] if isinstance(ids, slice) else ids
        with store_path(name) as path, storage.open(name, path, "x", durable=False) as store:
            store.append(images, labels)
            if not len(selected):
                assert store.read(ids)[0] == []
                return
            assert_read_match(store, ids, [images[i] for i in selected], [labels[i] for i in selected])

    def test_required_layouts_roundtrip(self, name: str, layout: tuple, tmp_path: Path) -> None:
        """The usual layouts (uint8 grey, 1/3/4 channels, 2-D uint16) that a backend accepts, at full value range."""
        dtype, channels = layout
        info = np.iinfo(dtype)
        image = np.linspace(info.min, info.max, 5 * 7 * (channels or 1)).astype(dtype)
        image = image.reshape(image_shape(5, 7, channels))
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(image[np.newaxis], [2**63 - 1])
        with storage.open(name, tmp_path / "store") as store:
            assert_read_match(store, [0], [image], [2**63 - 1])

    def test_equal_size_layouts_roundtrip(self, name: str, tmp_path: Path) -> None:
        """Images of different layouts but equal byte counts come back in their own layouts."""
        chosen = storage.backend(name)
        images = [image for image in EQUAL_SIZE if chosen.accepts(image.dtype, image.shape)]
        assert len(images) >= 2, f"{name} accepts fewer than two of the equal-size layouts"
        images += [image[::-1].copy() for image in images]
        labels = list(range(len(images)))
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(images, labels)
        with storage.open(name, tmp_path / "store") as store:
            assert_read_match(store, None, images, labels)
            assert_read_match(store, [len(images) - 1, 0], [images[-1], images[0]], [labels[-1], 0])

    def test_durable_setting_is_stated_and_can_be_traded_for_speed(self, name: str, tmp_path: Path, monkeypatch):
        """Appends flush to disk unless opened with durable=False (a library that commits durably does it unseen)."""
        images = sample_images(name, count=1)
        flushes = []
        monkeypatch.setattr(os, "fsync", lambda descriptor: flushes.append(descriptor))
        if hasattr(os, "fdatasync"):
            monkeypatch.setattr(os, "fdatasync", lambda descriptor: flushes.append(descriptor))
        monkeypatch.setattr(_durable, "_syncfs", lambda directory: flushes.append(directory) or True)
        seen_by_python = storage.backend(name).capabilities.durability != "library"
        for durable in (True, False):
            with storage.open(name, tmp_path / f"store-{durable}", "x", durable=durable) as store:
                assert store.durable is durable
                flushes.clear()
                store.append(images, [7])
                assert bool(flushes) == (durable and seen_by_python)
            with storage.open(name, tmp_path / f"store-{durable}") as store:
                assert_read_match(store, None, list(images), [7])
        with pytest.raises(TypeError, match="durable must be True or False"):
            storage.open(name, tmp_path / "store-bad", "x", durable="yes")
        assert not (tmp_path / "store-bad").exists()

    # --- bad input and misuse: a clear error, and nothing written -----------------------------

    @pytest.mark.parametrize(
        ("make", "error", "message"), [case[1:] for case in BAD_APPENDS], ids=[c[0] for c in BAD_APPENDS]
    )
    def test_bad_append_raises_and_writes_nothing(self, store, make, error, message) -> None:
        good, _ = store.read()
        images, labels = make(good)
        before = snapshot(store)
        with pytest.raises(error, match=re.escape(message.format(shape=getattr(images, "shape", None)))):
            store.append(images, labels)
        assert len(store) == 2
        assert snapshot(store) == before
        assert_read_match(store, None, list(good), [7, 8], codecs.RAW)

    def test_unsupported_layout_names_backend_and_writes_nothing(self, name: str, tmp_path: Path) -> None:
        good = sample_images(name)
        with storage.open(name, tmp_path / "store", "x") as store:
            before = snapshot(store)
            for dtype, channels in rejected_layouts(name):
                image = np.zeros(image_shape(3, 3, channels), dtype)
                with pytest.raises(ValueError, match=f"the {re.escape(name)} backend holds .*; got a {dtype} image"):
                    store.append([good[0], image], [1, 2])
            assert len(store) == 0
            assert snapshot(store) == before

    def test_sides_beyond_any_format_are_not_accepted(self, store) -> None:
        dtype, channels = sample_layout(store.name)
        for side in (2**31, 2**32):
            for shape in ((side, 1), (1, side)):
                assert not store.accepts(dtype, shape + ((channels,) if channels else ()))

    def test_empty_append_is_a_no_op(self, store) -> None:
        good, _ = store.read()
        before = snapshot(store)
        store.append(np.empty((0, *good.shape[1:]), good.dtype), [])
        store.append([], np.array([], dtype=np.int64))
        assert len(store) == 2
        assert snapshot(store) == before

    @pytest.mark.parametrize("image_id", [2, 3, -1, 2**40])
    def test_id_out_of_range_raises_key_error(self, store, image_id: int) -> None:
        with pytest.raises(KeyError) as caught:
            store[image_id]
        assert caught.value.args == (image_id,)
        with pytest.raises(KeyError) as caught:
            store.read([0, image_id, 1])
        assert caught.value.args == (image_id,)

    def test_ids_beyond_int64_raise_key_error(self, store) -> None:
        with pytest.raises(KeyError) as caught:
            store.read([0, 2**70])
        assert caught.value.args == (2**70,)

    def test_a_batch_in_a_memoryview_is_taken(self, name: str, tmp_path: Path) -> None:
        images = sample_images(name, count=3)
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(memoryview(images), [1, 2, 3])
            assert_read_match(store, None, list(images), [1, 2, 3])

    # --- encoded appends: files kept as they are --------------------------------------------------

    def test_encoded_files_are_kept_and_read_back_as_their_codec_decodes_them(self, name: str, tmp_path: Path) -> None:
        """Files written by the codec and by another encoder, in runs of differing shapes, after an append of
        arrays: each reads back bit-exactly as the codec decodes that file (for JPEG too), through a reopen. A store
        of raw pixels refuses files and writes nothing."""
        codec = storage.backend(name).codec
        images = sample_images(name)
        with storage.open(name, tmp_path / "store", "x", durable=False) as store:
            store.append(images, [-1, -2])
            if codec is codecs.RAW:
                before = snapshot(store)
                files = encoded_files(codecs.Png())
                with pytest.raises(ValueError, match=r"holds raw pixels, so it cannot keep encoded files.*encoding"):
                    store.append(files, range(len(files)), encoded=True)
                assert len(store) == 2
                assert snapshot(store) == before
                return
            files = encoded_files(codec)
            store.append([bytearray(files[0]), memoryview(files[1]), *files[2:]], range(len(files)), encoded=True)
        expected = [codec.decode(file) for file in files]
        with storage.open(name, tmp_path / "store") as store:
            assert len(store) == 2 + len(files)
            assert_read_match(store, slice(2, None), expected, range(len(files)), codecs.RAW)
            for image_id in reversed(range(len(files))):
                got, label = store[2 + image_id]
                assert_images_match([got], [expected[image_id]], codecs.RAW)
                assert label == image_id
            assert_read_match(store, [0, 1], list(images), [-1, -2])

    @pytest.mark.parametrize(
        ("make", "error", "message"), [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES]
    )
    def test_bad_encoded_files_are_refused_and_write_nothing(self, store, make, error, message) -> None:
        """Each bad file is refused with an error naming it, and nothing is written; a store of raw pixels refuses
        every encoded append alike, before it looks at the files."""
        good, _ = store.read()
        codec = codecs.Png() if store.codec is codecs.RAW else store.codec
        file = codec.encode(good[0])  # sample images are uint8 colour where a store takes them, as PNG does
        if store.codec is codecs.RAW:
            error, message = ValueError, "holds raw pixels"
        before = snapshot(store)
        with pytest.raises(error, match=re.escape(message)):
            store.append(make(codec, file), [1, 2], encoded=True)
        with pytest.raises(TypeError, match="encoded must be True or False"):
            store.append([file], [1], encoded=1)
        assert len(store) == 2
        assert snapshot(store) == before
        assert_read_match(store, None, list(good), [7, 8], codecs.RAW)

    @pytest.mark.parametrize("ids", [1, "01", [0.0, 1.0], [[0, 1]], [True]], ids=repr)
    def test_ids_of_wrong_type_raise_type_error(self, store, ids) -> None:
        with pytest.raises(TypeError, match="ids must be"):
            store.read(ids)

    def test_empty_selection_reads_nothing(self, store) -> None:
        images, labels = store.read([])
        assert images == []
        assert labels.dtype == np.int64
        assert len(labels) == 0
        assert store.read(slice(5, 9))[0] == []

    def test_missing_store_read_only_raises_file_not_found(self, name: str, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            storage.open(name, tmp_path / "missing")
        assert not (tmp_path / "missing").exists()

    @pytest.mark.parametrize("make", [Path.mkdir, lambda path: path.write_bytes(b"")], ids=["directory", "file"])
    @local_only
    def test_exclusive_create_on_existing_path_raises_file_exists(self, name: str, tmp_path: Path, make) -> None:
        make(tmp_path / "taken")
        with pytest.raises(FileExistsError):
            storage.open(name, tmp_path / "taken", "x")

    def test_writing_to_read_only_store_is_refused(self, name: str, tmp_path: Path) -> None:
        storage.open(name, tmp_path / "store", "x").close()
        with storage.open(name, tmp_path / "store") as store:
            with pytest.raises(io.UnsupportedOperation, match="read-only"):
                store.append(sample_images(name), [1, 2])
            assert len(store) == 0

    @pytest.mark.parametrize("mode", ["r", "a", "w"])
    def test_store_of_another_backend_is_refused_and_kept(self, name: str, other: str, mode: str, tmp_path: Path):
        images = sample_images(other)
        with storage.open(other, tmp_path / "store", "x", durable=False) as kept:
            kept.append(images, [1, 2])
        with pytest.raises(ValueError, match=f"holds a {re.escape(other)} store, not a {re.escape(name)} store"):
            storage.open(name, tmp_path / "store", mode)
        with storage.open(other, tmp_path / "store") as kept:
            assert_read_match(kept, None, list(images), [1, 2])

    @pytest.mark.parametrize("mode", ["r", "a", "w"])
    @pytest.mark.parametrize(
        ("make", "description"),
        [
            (lambda path: path.write_bytes(b"not a store"), "a file that is no image store"),
            (
                lambda path: (path.mkdir(), (path / "notes.txt").write_text("mine")),
                "a directory that is no image store",
            ),
        ],
        ids=["file", "directory"],
    )
    @local_only
    def test_something_that_is_no_store_is_refused_and_kept(self, name, mode, make, description, tmp_path) -> None:
        path = tmp_path / "thing"
        make(path)
        before = {str(p): p.stat().st_size for p in tmp_path.rglob("*")}
        with pytest.raises(ValueError, match=f"holds {description}, not a {re.escape(name)} store"):
            storage.open(name, path, mode)
        assert {str(p): p.stat().st_size for p in tmp_path.rglob("*")} == before

    @needs_fork
    @pytest.mark.parametrize("mode", ["r", "a", "w", "x"])
    @local_only
    def test_a_special_file_is_refused_without_waiting(self, name: str, mode: str, tmp_path: Path) -> None:
        """A FIFO at the path: reading it to see what it is would wait for a writer forever."""
        os.mkfifo(tmp_path / "fifo")

        def opened() -> str:
            try:
                storage.open(name, tmp_path / "fifo", mode)
            except (ValueError, FileExistsError) as error:
                return type(error).__name__
            return "opened"

        outcome = run_forked(opened, timeout=10)
        assert outcome.result == ("FileExistsError" if mode == "x" else "ValueError"), outcome.describe()
        assert run_forked(lambda: storage.detect(tmp_path / "fifo"), timeout=10).result is None

    @needs_fork
    @local_only
    def test_a_fifo_in_place_of_a_file_of_the_store_is_refused_without_waiting(self, tmp_path: Path) -> None:
        """Each file of a directory store in turn replaced by a FIFO: opening and reading end at once, in success or
        a documented error (the store's own path is the test above)."""
        template = tmp_path / "template"
        with storage.open(self.backend, template, "x") as store:
            store.append(sample_images(self.backend), [1, 2])
        if not template.is_dir():
            pytest.skip("a single-file store: its path is the only file, checked by the test above")
        for file in storage.backend(self.backend).files(template):
            copy = tmp_path / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(template, copy)
            (copy / file.relative_to(template)).unlink()
            os.mkfifo(copy / file.relative_to(template))
            outcome = run_forked(functools.partial(open_and_read, self.backend, copy), timeout=10)
            assert not outcome.timed_out, f"{file.name}: {outcome.describe()}"
            assert outcome.signal is None, f"{file.name}: {outcome.describe()}"
            assert outcome.error in (None, *DOCUMENTED_ERRORS), f"{file.name}: {outcome.describe()}"

    @local_only
    def test_a_store_stays_where_it_was_opened(self, name: str, tmp_path: Path, monkeypatch) -> None:
        """Opened by a relative path, it keeps reading and appending there after the working directory moves."""
        images = sample_images(name, count=4)
        for place in ("here", "elsewhere"):
            (tmp_path / place).mkdir()
        with storage.open(name, tmp_path / "elsewhere" / "store", "x") as other:
            other.append(images[3:], [9])
        monkeypatch.chdir(tmp_path / "here")
        with storage.open(name, "store", "x") as store:
            store.append(images[:2], [1, 2])
            monkeypatch.chdir(tmp_path / "elsewhere")
            store.append(images[2:3], [3])
            assert_read_match(store, None, list(images[:3]), [1, 2, 3])
        with storage.open(name, tmp_path / "elsewhere" / "store") as other:
            assert_read_match(other, None, list(images[3:]), [9])

    @local_only
    def test_a_store_opened_through_a_symlink_is_the_store(self, name: str, tmp_path: Path) -> None:
        images = sample_images(name, count=3)
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(images[:1], [1])
        (tmp_path / "link").symlink_to(tmp_path / "store")
        with storage.open(name, tmp_path / "link", "a") as store:
            store.append(images[1:], [2, 3])
        assert (tmp_path / "link").is_symlink()
        with storage.open(name, tmp_path / "store") as store:
            assert_read_match(store, None, list(images), [1, 2, 3])

    @local_only
    def test_symlinks_planted_in_a_store_are_not_followed(self, name: str, tmp_path: Path) -> None:
        """Each file of a store, and a staging name of each (as a killed writer leaves it), in turn made a symlink to
        a file outside: reading and appending either work on the store's own data or raise a documented error; the
        outside file is untouched."""
        images = sample_images(name, count=3)
        template = tmp_path / "template"
        with storage.open(name, template, "x") as store:
            store.append(images[:2], [1, 2])
        victim = tmp_path / "victim"
        files = storage.backend(name).files(template)
        planted_at = [
            *(path.relative_to(template.parent) for path in files),
            *(path.with_name(path.name + STAGING + "0").relative_to(template.parent) for path in files),
        ]
        for planted in planted_at:
            victim.write_bytes(b"not yours" * 1000)
            copy = tmp_path / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            copy.mkdir()
            (shutil.copytree if template.is_dir() else shutil.copy2)(template, copy / template.name)
            link = copy / planted
            link.unlink(missing_ok=True)
            link.symlink_to(victim)
            try:
                with storage.open(name, copy / template.name, "a") as store:
                    assert_read_match(store, None, list(images[:2]), [1, 2])
                    store.append(images[2:], [3])
                    assert_read_match(store, None, list(images), [1, 2, 3])
            except (ValueError, OSError):  # documented: DamagedStoreError (a ValueError), or the OS refusing a link
                pass
            assert victim.read_bytes() == b"not yours" * 1000, f"{planted} led a write outside the store"

    def test_replace_mode_empties_a_store_of_its_own_backend(self, name: str, tmp_path: Path) -> None:
        images = sample_images(name)
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(images, [1, 2])
        with storage.open(name, tmp_path / "store", "w") as store:
            assert len(store) == 0
            store.append(images[:1], [5])
        with storage.open(name, tmp_path / "store") as store:
            assert_read_match(store, None, [images[0]], [5])

    def test_close_is_idempotent_and_closed_store_refuses_use(self, name: str, tmp_path: Path) -> None:
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(sample_images(name), [1, 2])
        store.close()
        with pytest.raises(ValueError, match="is closed"):
            store.read()
        with pytest.raises(ValueError, match="is closed"):
            len(store)

    def test_disk_usage_counts_allocated_bytes_of_the_store_files(self, name: str, tmp_path: Path) -> None:
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(sample_images(name, count=50, height=32, width=32), range(50))
            files = store.files(store.path)
            assert files
            assert store.disk_usage() > 0
            if store.capabilities.local:
                assert store.disk_usage() == sum(os.stat(file).st_blocks * 512 for file in files)

    def test_unknown_option_is_refused_and_writes_nothing(self, name: str, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match=f"the {re.escape(name)} backend has no option 'no_such_option'"):
            storage.open(name, tmp_path / "store", "x", no_such_option=1)
        assert not any(tmp_path.iterdir())

    # --- names of one family ---------------------------------------------------------------

    def test_a_name_writes_with_its_options_and_is_named_in_errors(self, name: str, tmp_path: Path) -> None:
        options = dict(storage.backend(name).options)
        with storage.open(name, tmp_path / "store", "x") as store:
            assert store.name == name
            assert {key: getattr(store.options, key) for key in options} == options
            with pytest.raises(ValueError, match=f"the {re.escape(name)} backend holds"):
                store.append(np.zeros((1, 2, 2), object), [0])
        with storage.open(name, tmp_path / "store") as store:
            assert len(store) == 0

    def test_every_name_reads_a_store_that_all_names_appended_to(self, tmp_path: Path) -> None:
        names = family_names(self.backend)
        images = sample_images(*names, count=2 * len(names), height=16, width=16)
        for position, name in enumerate(names):
            with storage.open(name, tmp_path / "store", "a") as store:
                store.append(images[2 * position : 2 * position + 2], [position, -position])
        labels = [label for position in range(len(names)) for label in (position, -position)]
        assert storage.detect(tmp_path / "store") == self.backend
        tolerance = tolerance_of(names)
        for name in names:
            with storage.open(name, tmp_path / "store") as store:
                assert_read_match(store, None, list(images), labels, tolerance)
                assert_read_match(store, [len(images) - 1, 0], [images[-1], images[0]], [labels[-1], 0], tolerance)

    # --- damaged stores: only documented errors, never a crash, a hang or a huge allocation ----

    @needs_fork
    @draws_data(share=1.0)
    @local_only
    def test_damaged_store_gives_documented_errors_only(self, tmp_path_factory, data: st.DataObject) -> None:
        """One file of a copy is truncated, flipped, replaced or deleted; opening and reading it in a forked
        child either works or raises a documented error."""
        template, _ = damage_template(self.backend, tmp_path_factory)
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "store"
            (shutil.copytree if template.is_dir() else shutil.copy2)(template, path)
            done = damage(storage.backend(self.backend).files(path), data)
            outcome = run_forked(lambda: open_and_read(self.backend, path), timeout=30, headroom=HEADROOM)
        assert not outcome.timed_out, f"{done}: {outcome.describe()}"
        assert outcome.signal is None, f"{done}: {outcome.describe()}"
        assert outcome.error in (None, *DOCUMENTED_ERRORS), f"{done}: {outcome.describe()}"

    @needs_fork
    @local_only
    def test_undamaged_template_reads_in_a_forked_child(self, tmp_path_factory) -> None:
        """The harness itself: an intact store reads fine in the child, within the memory headroom."""
        template, count = damage_template(self.backend, tmp_path_factory)
        outcome = run_forked(lambda: open_and_read(self.backend, template), timeout=30, headroom=HEADROOM)
        assert outcome.result == count, outcome.describe()

    @needs_fork
    @local_only
    def test_flipped_pixel_byte(self, name: str, tmp_path: Path) -> None:
        """A changed byte where the image's pixels (else its encoding) lie in the store's files: a checksummed
        store or codec reports it; others may give back the changed pixel, but nothing undocumented."""
        image = sample_images(name, count=1, height=64, width=64, seed=5)[0]
        path = tmp_path / "store"
        with storage.open(name, path, "x") as store:
            store.append(image[np.newaxis], [1])
            checksummed = store.capabilities.checksummed or store.codec.checksummed
            encoded = store.codec.encode(image)
        files = {file: bytearray(file.read_bytes()) for file in storage.backend(name).files(path)}
        raw = image.tobytes()
        found = [(file, needle) for needle in (raw, encoded) for file in files if needle in files[file]]
        if found:
            target, needle = found[0]
            at = files[target].index(needle) + len(needle) // 2
        else:  # neither: the middle of the largest file
            target, needle = max(files, key=lambda file: len(files[file])), b""
            at = len(files[target]) // 2
        files[target][at] ^= 0x10
        target.write_bytes(bytes(files[target]))
        outcome = run_forked(lambda: storage.open(name, path).read()[0][0].tobytes().hex(), headroom=HEADROOM)
        assert outcome.error in (None, "DamagedStoreError"), outcome.describe()
        if checksummed:
            assert outcome.error == "DamagedStoreError", outcome.describe()
        elif outcome.error is None and needle == raw:
            flipped = bytearray(raw)
            flipped[len(raw) // 2] ^= 0x10
            assert outcome.result == flipped.hex()
        elif outcome.error is None:
            assert len(outcome.result) == 2 * len(raw)

    # --- crash safety and concurrent readers (how an append commits: once per family) --------

    @needs_fork
    def test_killed_append_leaves_the_completed_appends(self, tmp_path: Path) -> None:
        """A writer killed with SIGKILL mid-append leaves whole appends: at least those it reported, at most
        one more, and the store takes a further append. No fsync (durable=False): a killed process loses
        nothing that reached the page cache, so fsync only matters for power loss, which this cannot stage."""

        def new_store(path: Path) -> None:
            with storage.open(self.backend, path, "x", durable=False) as store:
                store.append(*numbered_batch(self.backend, 0, CRASH_BATCH))

        new_store(tmp_path / "timing")
        started = time.perf_counter()
        writer, pipe = start_writer(self.backend, tmp_path / "timing")  # an undisturbed run sets the kill times
        writer.join()
        duration = time.perf_counter() - started
        assert completed_appends(pipe) == CRASH_APPENDS
        seeded = random.Random(f"crash-{self.backend}")
        for trial in range(CRASH_TRIALS):
            path = tmp_path / f"store-{trial}"
            new_store(path)
            writer, pipe = start_writer(self.backend, path)
            time.sleep(seeded.uniform(0, duration))
            with contextlib.suppress(ProcessLookupError):  # a writer that ended already: a fork server reaped it
                os.kill(writer.pid, signal.SIGKILL)
            writer.join()
            reported = completed_appends(pipe)
            with storage.open(self.backend, path) as store:
                assert len(store) % CRASH_BATCH == 0, f"trial {trial}: {len(store)} images, not whole batches"
                appended = len(store) // CRASH_BATCH - 1
                assert reported <= appended <= min(reported + 1, CRASH_APPENDS), (
                    f"trial {trial}: {reported=}, {appended=}"
                )
                assert_read_match(store, None, *numbered_batches(self.backend, appended + 1, CRASH_BATCH))
            with storage.open(self.backend, path, "a", durable=False) as store:  # leftovers are no obstacle
                store.append(*numbered_batch(self.backend, appended + 1, CRASH_BATCH))
            with storage.open(self.backend, path) as store:
                assert_read_match(store, None, *numbered_batches(self.backend, appended + 2, CRASH_BATCH))

    @needs_fork
    def test_a_killed_creation_leaves_the_old_store_or_a_new_one(self, tmp_path: Path) -> None:
        """Creating (mode "x") and replacing (mode "w") killed at random moments: the path then holds nothing, the
        old store whole or a new empty one, and mode "a" opens it."""
        images = sample_images(self.backend)
        seeded = random.Random(f"creation-{self.backend}")
        window = 0.01  # seconds: a fork starts at once; another start method at once too, its modules preloaded
        for trial in range(CREATION_TRIALS):
            path = tmp_path / f"store-{trial}"
            replacing = trial % 2 == 1
            if replacing:
                with storage.open(self.backend, path, "x") as store:
                    store.append(images, [1, 2])
            creator = processes(self.backend).Process(target=create, args=(self.backend, path, "wx"[trial % 2 == 0]))
            started = time.perf_counter()
            creator.start()
            if trial == 0:  # an undisturbed creation: kill times range over it
                creator.join()
                window = max(window, time.perf_counter() - started)
                with storage.open(self.backend, path, "a") as store:
                    assert len(store) == 0
                continue
            time.sleep(seeded.uniform(0, window))
            with contextlib.suppress(ProcessLookupError):
                os.kill(creator.pid, signal.SIGKILL)
            creator.join()
            with storage.open(self.backend, path, "a") as store:
                assert len(store) in ((0, 2) if replacing else (0,)), f"trial {trial}: {len(store)} images"
                if len(store):
                    assert_read_match(store, None, list(images), [1, 2])

    @local_only
    def test_replace_mode_keeps_a_directory_that_holds_other_files(self, name: str, tmp_path: Path) -> None:
        if not storage.backend(name).capabilities.directory:
            pytest.skip("a single-file store: mode 'w' replaces just that file")
        images = sample_images(name)
        with storage.open(name, tmp_path / "store", "x") as store:
            store.append(images, [1, 2])
        (tmp_path / "store" / "notes.txt").write_text("mine")
        with pytest.raises(ValueError, match=r"notes\.txt"):
            storage.open(name, tmp_path / "store", "w")
        assert (tmp_path / "store" / "notes.txt").read_text() == "mine"
        with storage.open(name, tmp_path / "store") as store:
            assert_read_match(store, None, list(images), [1, 2])

    @local_only
    def test_a_full_disk_and_a_read_only_medium_lose_nothing(self, tmp_path: Path) -> None:
        """On small filesystems of their own: appending until the disk is full, and creating a store on the full
        disk, raise ENOSPC and leave the committed appends whole with no leftovers; read-only, the stores read
        back the same, and appending or creating raises EROFS. Never a crash, never DamagedStoreError."""
        reason = media.unavailable()
        if reason:
            pytest.skip(reason)
        names = family_names(self.backend)
        reports, run = media.run(names, tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        found = {(report["phase"], report["name"]): report for report in reports}
        for name in names:
            full, read_only = found["fill", name], found["read_back", name]
            assert full["appends"] >= 1, f"{name}: not one append fitted"
            for attempt, code in (
                (full["append"], errno.ENOSPC),
                (full["create"], errno.ENOSPC),
                (read_only["append"], errno.EROFS),
                (read_only["create"], errno.EROFS),
            ):
                assert (attempt["error"], attempt["errno"]) == ("OSError", code), f"{name}: {attempt}"
            assert full["read"]["error"] is None, f"{name}: {full['read']['message']}"
            assert full["count"] == full["appends"] * media.BATCH, name
            assert full["strangers"] == [], f"{name} left files behind"
            assert not full["new_exists"], f"{name}: a store that could not be created is there"
            assert (read_only["count"], read_only["digest"]) == (full["count"], full["digest"]), name

    @needs_fork
    def test_two_writers_take_turns_and_lose_nothing(self, tmp_path: Path) -> None:
        """Two processes append to one store at once: every append of both is there, whole, its pixels with its
        labels, and nothing else."""
        path = tmp_path / "store"
        with storage.open(self.backend, path, "x", durable=False) as store:
            store.append(*numbered_batch(self.backend, 0, WRITE_BATCH))
        writers = [
            processes(self.backend).Process(
                target=append_numbered,
                args=(self.backend, path, range(1 + w * WRITE_APPENDS, 1 + (w + 1) * WRITE_APPENDS), WRITE_BATCH),
            )
            for w in (0, 1)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
            assert writer.exitcode == 0, f"a writer ended with {writer.exitcode}"
        with storage.open(self.backend, path) as store:
            images, labels = store.read()
            codec = store.codec
        assert len(labels) == (1 + 2 * WRITE_APPENDS) * WRITE_BATCH
        found = []
        for start in range(0, len(labels), WRITE_BATCH):
            number = int(labels[start]) // WRITE_BATCH
            expected_images, expected_labels = numbered_batch(self.backend, number, WRITE_BATCH)
            assert labels[start : start + WRITE_BATCH].tolist() == expected_labels.tolist(), f"append {number} split"
            assert_images_match(images[start : start + WRITE_BATCH], expected_images, codec)
            found.append(number)
        assert sorted(found) == list(range(1 + 2 * WRITE_APPENDS))

    def test_threads_sharing_a_store_read_whole_appends_while_one_appends(self, tmp_path: Path) -> None:
        """One store object, two threads reading it over and over while the main thread appends: every read is a
        prefix of whole appends, bit-exact, and nothing is lost."""
        expected_images, expected_labels = numbered_batches(self.backend, READ_APPENDS + 1, READ_BATCH)
        failures, reads = [], []
        done = threading.Event()
        with storage.open(self.backend, tmp_path / "store", "x", durable=False) as store:
            store.append(*numbered_batch(self.backend, 0, READ_BATCH))

            def read_until_done() -> None:
                try:
                    while not done.is_set():
                        images, labels = store.read()
                        count = len(labels)
                        assert count % READ_BATCH == 0, f"read {count} images: not whole appends"
                        assert labels.tolist() == expected_labels[:count]
                        assert_images_match(images, expected_images[:count], store.codec)
                        reads.append(count)
                except BaseException as error:  # reported by the main thread
                    failures.append(error)

            readers = [threading.Thread(target=read_until_done) for _ in range(READERS)]
            for reader in readers:
                reader.start()
            for number in range(1, READ_APPENDS + 1):
                store.append(*numbered_batch(self.backend, number, READ_BATCH))
            done.set()
            for reader in readers:
                reader.join()
            assert not failures, failures[0]
            assert reads
            assert_read_match(store, None, expected_images, expected_labels)

    @needs_fork
    def test_readers_see_a_consistent_prefix_while_a_writer_appends(self, tmp_path: Path, tmp_path_factory) -> None:
        """Two reader processes read while a third appends: every read is whole appends, never fewer than the
        reader saw before; afterwards every append is there."""
        path, done = tmp_path / "store", tmp_path_factory.mktemp("signals") / "writer-done"
        with storage.open(self.backend, path, "x") as store:
            store.append(*numbered_batch(self.backend, 0, READ_BATCH))

        start = processes(self.backend).Process
        reports = [tmp_path_factory.mktemp("reports") / f"reader-{number}.txt" for number in range(READERS)]
        readers = [start(target=report_reads, args=(self.backend, path, done, report)) for report in reports]
        writer = start(target=append_numbered, args=(self.backend, path, range(1, READ_APPENDS + 1), READ_BATCH, 0.005))
        for process in [*readers, writer]:
            process.start()
        writer.join(60)
        done.touch()
        for reader in readers:
            reader.join(60)
        assert writer.exitcode == 0, f"the writer ended with {writer.exitcode}"
        for report in reports:
            assert report.read_text().startswith("ok"), report.read_text()
        with storage.open(self.backend, path) as store:
            assert_read_match(store, None, *numbered_batches(self.backend, READ_APPENDS + 1, READ_BATCH))


TEMPLATES: dict[tuple[str, Path], tuple[Path, int]] = {}  # (family, session's temporary root) -> damage template


def damage_template(family: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A small store that every name of `family` appended to (colour and 16-bit grey images where accepted), and
    how many images it holds."""
    key = (family, tmp_path_factory.getbasetemp())
    if key not in TEMPLATES:
        TEMPLATES[key] = write_template(family, tmp_path_factory.mktemp(family) / "store")
    return TEMPLATES[key]


def write_template(family: str, path: Path) -> tuple[Path, int]:
    count = 0
    for name in family_names(family):
        wanted = dict.fromkeys([(np.dtype("u1"), 3), (np.dtype("u2"), None), sample_layout(name)])
        with storage.open(name, path, "a") as store:
            for dtype, channels in (layout for layout in wanted if layout in layouts(name)):
                shape = (3, *image_shape(4 + count % 3, 5, channels))
                store.append(np.arange(math.prod(shape)).reshape(shape).astype(dtype), [-1, 2**40, 7])
                count += 3
    return path, count


def numbered_batch(family: str, number: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Append `number` of a crash or concurrency test: `size` images that differ for every number, and labels
    that count on from the appends before it."""
    images = sample_images(family, count=size, height=8, width=8, seed=number)
    return images, np.arange(size) + number * size


def numbered_batches(family: str, appends: int, size: int) -> tuple[list[np.ndarray], list[int]]:
    """The images and labels of appends 0 to `appends` - 1, in order."""
    batches = [numbered_batch(family, number, size) for number in range(appends)]
    return [image for images, _ in batches for image in images], [int(label) for _, ls in batches for label in ls]


def processes(family: str) -> multiprocessing.context.BaseContext:
    """How the tests start processes that use `family`'s stores: forked, unless its library cannot run in a forked
    child; then from a fork server that has imported the contract but used no store."""
    if storage.backend(family).capabilities.fork_safe:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # children start in milliseconds: kill times stay meaningful
    return context


def create(family: str, path: Path, mode: str) -> None:
    """Create (or replace) a store: what the killed-creation test interrupts."""
    storage.open(family, path, mode).close()


def append_numbered(family: str, path: Path, numbers: range, size: int, pause: float = 0.0, reports=None) -> None:
    """Append the numbered batches `numbers` of `size` images, sending a byte through the connection `reports` after
    each, pausing `pause` seconds between them."""
    with storage.open(family, path, "a", durable=False) as store:
        for number in numbers:
            store.append(*numbered_batch(family, number, size))
            if reports is not None:
                reports.send_bytes(b".")
            time.sleep(pause)


def start_writer(family: str, path: Path):
    """Start a process that appends batches 1 to CRASH_APPENDS, reporting after each; (process, connection)."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    appends = range(1, CRASH_APPENDS + 1)
    writer = processes(family).Process(
        target=append_numbered, args=(family, path, appends, CRASH_BATCH), kwargs={"reports": sender}
    )
    writer.start()
    sender.close()
    return writer, receiver


def completed_appends(receiver) -> int:
    """How many appends a writer, now ended, reported through `receiver`."""
    count = 0
    with receiver:
        while receiver.poll(1.0):  # a pipe a killed writer's children still hold open would never end: a timeout
            try:
                receiver.recv_bytes()
            except EOFError:
                break
            count += 1
    return count


def report_reads(family: str, path: Path, done: Path, report: Path) -> None:
    """A reader process: writes what it saw, or what went wrong, to `report`."""
    try:
        report.write_text(f"ok {read_until(family, path, done)}")
    except BaseException as error:
        report.write_text(f"{type(error).__name__}: {error}")


def read_until(family: str, path: Path, done: Path) -> list[int]:
    """Read the whole store again and again until `done` exists; the sizes seen, each checked."""
    expected_images, expected_labels = numbered_batches(family, READ_APPENDS + 1, READ_BATCH)
    seen = []
    while not done.exists() or len(seen) < 3:
        with storage.open(family, path) as store:
            images, labels = store.read()
            codec = store.codec
        count = len(labels)
        if count % READ_BATCH or count < max(seen, default=READ_BATCH):
            raise AssertionError(f"read {count} images after {seen}: not a growing prefix of whole appends")
        assert_images_match(images, expected_images[:count], codec)
        assert labels.tolist() == expected_labels[:count]
        seen.append(count)
    return seen
