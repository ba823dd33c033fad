"""The benchmark data: the synthetic generator and the loaders, on small data made here."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import storage
from benchmarks.data import Dataset, UnreadableImageWarning, cifar10, folder, list_folder, parse_size, synthetic
from benchmarks.harness import files_for, store
from benchmarks.plugin import Case

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_is_deterministic_and_prefix_stable():
    images, labels = synthetic(300, (32, 32, 3))
    again, again_labels = synthetic(300, (32, 32, 3))
    fewer, _ = synthetic(257, (32, 32, 3))
    assert images.dtype == np.uint8
    assert images.shape == (300, 32, 32, 3)
    assert np.array_equal(images, again)
    assert np.array_equal(labels, again_labels)
    assert np.array_equal(fewer, images[:257])  # a smaller run is a prefix of a larger one
    assert synthetic(2, (20, 30))[0].shape == (2, 20, 30)


def test_synthetic_images_look_natural_not_like_noise():
    """Smooth (neighbours close) yet varied, and PNG compresses them, unlike uniform noise."""
    images, _ = synthetic(64, (32, 32, 3))
    neighbour_step = np.abs(np.diff(images.astype(np.int16), axis=2)).mean()
    assert neighbour_step < 12  # uniform noise would give about 85
    assert images.std() > 30
    encoded = io.BytesIO()
    Image.fromarray(images[0]).save(encoded, format="PNG")
    assert encoded.tell() < images[0].nbytes


def write_cifar_batch(path, images_chw: np.ndarray, labels: list[int]) -> None:
    with path.open("wb") as file:
        pickle.dump({b"data": images_chw.reshape(len(labels), -1), b"labels": labels}, file)


def test_cifar10_loader_reads_python_batches_in_order(tmp_path):
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    second = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(tmp_path / "data_batch_1", first, [0, 1, 2])
    write_cifar_batch(tmp_path / "data_batch_2", second, [9, 8])
    images, labels = cifar10(tmp_path, 4)
    assert images.shape == (4, 32, 32, 3)
    assert images.flags.c_contiguous
    assert np.array_equal(images[:3], first.transpose(0, 2, 3, 1))
    assert np.array_equal(images[3], second[0].transpose(1, 2, 0))
    assert labels.tolist() == [0, 1, 2, 9]
    with pytest.raises(ValueError, match="holds 5 CIFAR-10 images"):
        cifar10(tmp_path, 6)


def test_folder_loader_labels_by_sorted_class_folder(tmp_path):
    cat, dog = np.full((4, 5, 3), 10, np.uint8), np.full((6, 2), 200, np.uint8)
    (tmp_path / "dog").mkdir()
    (tmp_path / "cat").mkdir()
    Image.fromarray(cat).save(tmp_path / "cat" / "a.png")
    Image.fromarray(dog).save(tmp_path / "dog" / "b.png")
    Image.fromarray(cat).convert("P").save(tmp_path / "dog" / "c.png")  # a palette image becomes RGB
    images, labels = folder(tmp_path, 3)
    assert labels.tolist() == [0, 1, 1]
    assert np.array_equal(images[0], cat)
    assert np.array_equal(images[1], dog)
    assert images[2].shape == (4, 5, 3)
    with pytest.raises(ValueError, match="holds 3 images in 2 class folders; 3 of them readable, not 4"):
        folder(tmp_path, 4)


def folder_as_people_have_it(root) -> None:
    """Three readable images, a truncated one, a text file and a .DS_Store in two class folders, and an empty one."""
    for name in ("ant", "bee", "cow"):
        (root / name).mkdir()
    image = np.arange(6 * 7 * 3, dtype=np.uint8).reshape(6, 7, 3)
    Image.fromarray(image).save(root / "ant" / "1.png")
    Image.fromarray(image[::-1].copy()).save(root / "ant" / "2.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "ant" / "3.png")
    (root / "ant" / "3.png").write_bytes((root / "ant" / "3.png").read_bytes()[:5000])  # truncated
    (root / "ant" / "README.txt").write_text("where these came from")
    (root / "bee" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    Image.fromarray(image[:, ::-1].copy()).save(root / "bee" / "4.png")


def test_a_folder_as_people_have_it_skips_what_is_no_image_and_names_what_is_broken(tmp_path):
    folder_as_people_have_it(tmp_path)
    listing = list_folder(tmp_path, 10)
    assert listing.classes == 3
    assert sorted(path.name for path in listing.others) == [".DS_Store", "README.txt"]
    assert "holds 4 images in 3 class folders; 2 files that are no images skipped" in listing.describe(tmp_path)
    with pytest.warns(UnreadableImageWarning, match=r"3\.png left out: not a readable image"):
        images, labels = folder(tmp_path, 3)
    assert [image.shape for image in images] == [(6, 7, 3)] * 3
    assert labels.tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match=r"3\.png is not a readable image"):
        folder(tmp_path, 3, strict=True)


def test_a_folder_that_cannot_give_the_count_says_what_it_holds(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds 0 images in 0 class folders, not class subfolders with images"):
        Dataset("folder", tmp_path / "empty").check(1)
    folder_as_people_have_it(tmp_path)
    Dataset("folder", tmp_path).check(4)
    with pytest.raises(ValueError, match="holds 4 images in 4 class folders; 2 files that are no images"):
        Dataset("folder", tmp_path).check(5)


def test_real_datasets_are_labelled_by_their_image_size(tmp_path):
    folder_as_people_have_it(tmp_path)
    assert Dataset("folder", tmp_path).size_label(2) == "folder-6x7x3"
    assert Dataset("folder", tmp_path).size_label(4) == "folder-mixed"  # the 64x64 one among them
    (tmp_path / "grey" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "grey" / "only" / "5.png")
    assert Dataset("folder", tmp_path / "grey").size_label(1) == "folder-2x2"
    assert Dataset("cifar10", tmp_path).size_label(10) == "cifar10-32x32x3"


@pytest.mark.parametrize(("text", "size"), [("32x32x3", (32, 32, 3)), ("64X48", (64, 48))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["32", "32x0x3", "axb", "1x2x3x4"])
def test_parse_size_refuses_nonsense(text):
    with pytest.raises(ValueError, match="HxW or HxWxC"):
        parse_size(text)


def test_dataset_option_parsing(tmp_path):
    assert Dataset.parse("synthetic") == Dataset("synthetic")
    assert Dataset.parse(f"folder:{tmp_path}") == Dataset("folder", tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        Dataset.parse(f"cifar10:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="synthetic, cifar10:DIR or folder:DIR"):
        Dataset.parse("imagenet")


def jpeg_folder(root, count: int = 6) -> list[bytes]:
    """`count` Pillow JPEGs (quality 90, 4:2:0) in two class folders; their bytes in the order a folder lists them."""
    images = synthetic(count, (24, 32, 3))[0]
    for position, image in enumerate(images):
        (root / f"class-{position % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / f"class-{position % 2}" / f"{position:02d}.jpg", quality=90)
    return [path.read_bytes() for path in sorted(root.glob("class-*/*.jpg"))]


@pytest.mark.skipif("jpeg" not in storage.available(), reason="simplejpeg is not installed")
def test_store_files_keeps_a_folders_files_as_they_are_where_the_encoding_is_theirs(tmp_path):
    files = jpeg_folder(tmp_path / "photos")
    dataset = Dataset("folder", tmp_path / "photos", as_files=True)
    assert dataset.files(6) == files
    assert dataset.id == "folder+files"
    jpeg = Case(storage.backend("jpeg"), 6, None, dataset)
    assert files_for(jpeg) == files
    for other in ("npz", "lmdb-png"):  # raw pixels, or another encoding: they store the pixels
        assert files_for(Case(storage.backend(other), 6, None, dataset)) is None
    assert files_for(Case(storage.backend("jpeg"), 6, None, Dataset("folder", tmp_path / "photos"))) is None
    images, labels = dataset.load(6, None)
    store(jpeg.subject, tmp_path / "store", images, labels, files=files)
    assert [path.read_bytes() for path in sorted((tmp_path / "store").glob("*.jpg"))] == files


def test_store_files_runs_the_benchmarks_on_a_jpeg_folder_and_needs_a_folder(tmp_path):
    jpeg_folder(tmp_path / "photos")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/experiments/test_store.py",
        "benchmarks/experiments/test_read.py",
    ]
    command += ["--benchmark-disable", "-q", "-p", "no:cacheprovider", "--image-counts=6", f"--store-dir={tmp_path}"]
    backends = ",".join(name for name in ("jpeg", "parquet-jpeg", "npz") if name in storage.available())
    run = subprocess.run(
        [*command, f"--dataset=folder:{tmp_path / 'photos'}", "--store-files", f"--backends={backends}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:]
    refused = subprocess.run([*command, "--store-files"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert refused.returncode != 0
    assert "--store-files applies to --dataset folder:DIR" in refused.stderr
