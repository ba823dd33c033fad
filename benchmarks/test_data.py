"""The benchmark data and grid: loaders on small data made here, the generator, and the options."""

from __future__ import annotations

import io
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import storage
from benchmarks.conftest import PRESETS, Case, grid
from benchmarks.data import Dataset, cifar10, folder, parse_size, synthetic

ROOT = Path(__file__).resolve().parent.parent


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
    with pytest.raises(ValueError, match="holds 3 image files in 2 class folders"):
        folder(tmp_path, 4)


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


def test_case_ids_and_groups_read_like_the_experiment():
    case = Case("lmdb", 1000, (32, 32, 3), Dataset("synthetic"))
    assert str(case) == "lmdb-n=1000-32x32x3"
    assert case.group("read-many") == "read-many n=1000 32x32x3"
    assert str(Case("hdf5", None, None, Dataset("cifar10"))) == "hdf5-cifar10"


def test_presets_hold_the_classic_and_large_grids():
    assert PRESETS["classic"] == ((1, 10, 100, 1_000, 10_000, 100_000), ((32, 32, 3),))
    assert {(256, 256, 3), (512, 512, 3)} == set(PRESETS["large"][1])


def collect(*options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_grid_options_choose_the_cells():
    result = collect("benchmarks/test_read_many.py", "--backends=npz,hdf5", "--image-counts=7,9", "--image-sizes=8x8")
    ids = sorted(line.split("[")[1].rstrip("]") for line in result.stdout.splitlines() if "[" in line)
    assert ids == sorted(f"{b}-n={n}-8x8" for b in ("npz", "hdf5", "limit") for n in (7, 9))


class Options:
    """Stands in for pytest's config: the grid options as given on the command line."""

    def __init__(self, **given: str) -> None:
        self.given = {"preset": "default", "dataset": "synthetic", "benchmark_disable": True, **given}

    def getoption(self, name: str) -> object:
        return self.given.get(name)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"backends": "tiff"}, "--backends: tiff not available"),
        ({"preset": "huge"}, "--preset is one of default, classic, large, smoke, training, variants"),
        ({"image_sizes": "32"}, "HxW or HxWxC"),
        ({"image_counts": "0"}, "--image-counts must be positive"),
        ({"dataset": "imagenet"}, "synthetic, cifar10:DIR or folder:DIR"),
    ],
)
def test_bad_grid_options_are_usage_errors(option, message):
    with pytest.raises(pytest.UsageError, match=re.escape(message)):
        grid(Options(**option))


def test_a_bad_option_stops_the_run_before_collection():
    result = collect("benchmarks/test_read_many.py", "--backends=tiff")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--backends: tiff not available" in result.stderr


def test_no_fsync_option_is_recorded_in_the_results(tmp_path):
    command = [
        *(sys.executable, "-m", "pytest", "--benchmark-only", "-q", "-p", "no:cacheprovider", "--no-fsync"),
        *("benchmarks/test_store_many.py", "--backends=npz", "--image-counts=5", "--image-sizes=4x4"),
        *("--benchmark-max-time=0.001", "--benchmark-min-rounds=1", f"--benchmark-json={tmp_path / 'run.json'}"),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:]
    benchmarks = json.loads((tmp_path / "run.json").read_text())["benchmarks"]
    assert {b["extra_info"]["backend"] for b in benchmarks} == {"npz", "limit"}
    for benchmark in benchmarks:
        assert benchmark["extra_info"]["durable"] is False
        assert benchmark["group"] == "store-many n=5 4x4 no-fsync"


def test_variants_run_in_their_preset_or_when_named():
    assert grid(Options()).backends == storage.available(variants=False)
    assert grid(Options(preset="variants")).backends == storage.available()
    assert set(storage.VARIANTS) <= set(grid(Options(preset="variants")).backends)
    assert grid(Options(backends="lmdb,lmdb-pickle")).backends == ("lmdb", "lmdb-pickle")


def test_timing_off_defaults_to_the_smoke_grid():
    assert grid(Options(preset=None)).counts == PRESETS["smoke"][0]
    assert grid(Options(preset=None, benchmark_disable=False)).counts == PRESETS["default"][0]
    assert grid(Options(preset="classic")).counts == PRESETS["classic"][0]


def test_training_experiments_run_in_their_preset_and_in_smoke():
    def selected(*options: str) -> set[str]:
        result = collect("benchmarks/test_grow.py", "benchmarks/test_read_many.py", "--backends=npz", *options)
        return {line.split("::")[0].split("/")[-1] for line in result.stdout.splitlines() if "::" in line}

    assert selected("--benchmark-only") == {"test_read_many.py"}
    assert selected("--benchmark-only", "--preset=training") == {"test_grow.py"}
    assert selected("--benchmark-disable") == {"test_read_many.py", "test_grow.py"}
