"""The grid plugin: options parse into a grid, bad options are one-line usage errors, presets pick experiments."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import storage
from benchmarks import plugin
from benchmarks.data import Dataset
from benchmarks.floor import FLOOR, OBJECT_FLOOR, CodecFloor, merged
from benchmarks.harness import check_picked, check_read_back, read_all, store
from benchmarks.plugin import PRESETS, Case, grid
from storage import codecs

ROOT = Path(__file__).resolve().parents[2]


def test_case_ids_and_groups_read_like_the_experiment():
    case = Case(storage.backend("lmdb"), 1000, (32, 32, 3), Dataset("synthetic"))
    assert str(case) == "lmdb-n=1000-32x32x3"
    assert case.group("read-many") == "read-many n=1000 32x32x3"
    assert str(Case(storage.backend("hdf5"), None, None, Dataset("cifar10"))) == "hdf5-cifar10-32x32x3"
    assert str(Case(FLOOR, 5, (4, 4), Dataset("synthetic"))) == "limit-n=5-4x4"


def test_presets_hold_the_classic_and_large_grids():
    assert PRESETS["classic"].counts == (1, 10, 100, 1_000, 10_000, 100_000)
    assert PRESETS["classic"].sizes == ((32, 32, 3),)
    assert {(256, 256, 3), (512, 512, 3)} == set(PRESETS["large"].sizes)


def test_the_formats_preset_pairs_each_count_with_its_size():
    assert grid(options(preset="formats")).cells() == [(10_000, (32, 32, 3)), (1_000, (256, 256, 3))]
    assert grid(options(preset="formats")).backends == local_names()
    chosen = grid(options(preset="formats", image_counts=(5,)))  # a count given: every size gets it
    assert chosen.cells() == [(5, (32, 32, 3)), (5, (256, 256, 3))]
    floors = [(10_000, (32, 32, 3)), (100_000, (32, 32, 3)), (1_000, (256, 256, 3))]
    assert grid(options(preset="floors")).cells() == floors


def collect(*options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *options]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)


def test_grid_options_choose_the_cells():
    result = collect(
        "benchmarks/experiments/test_read.py::test_read_many",
        "--backends=npz,hdf5",
        "--image-counts=7,9",
        "--image-sizes=8x8",
    )
    ids = sorted(line.split("[")[1].rstrip("]") for line in result.stdout.splitlines() if "[" in line)
    assert ids == sorted(f"{b}-n={n}-8x8" for b in ("npz", "hdf5", "limit") for n in (7, 9))


def test_each_codec_of_the_chosen_backends_gets_a_floor_row_in_store_and_read_tables():
    def rows(experiment: str, backends: str) -> set[str]:
        result = collect(experiment, f"--backends={backends}", "--image-counts=7", "--image-sizes=8x8")
        return {line.split("[")[1].split("-n=")[0] for line in result.stdout.splitlines() if "[" in line}

    chosen = "png,lmdb,lmdb-png,png-level9"
    expected = {*chosen.split(","), "limit", "limit-png-imagecodecs-level1", "limit-png-imagecodecs-level9"}
    assert rows("benchmarks/experiments/test_store.py::test_store_many", chosen) == expected
    assert rows("benchmarks/experiments/test_read.py::test_read_many", "npz,hdf5") == {"npz", "hdf5", "limit"}


def test_the_tutorials_methods_join_their_families_tables_when_asked():
    def rows(*given: str) -> set[str]:
        result = collect("benchmarks/experiments/test_store.py::test_store_many", *given, "--image-counts=7")
        return {line.split("[")[1].split("-n=")[0] for line in result.stdout.splitlines() if "[" in line}

    chosen = ("--backends=png,hdf5", "--image-sizes=8x8")
    assert {"tutorial-png", "tutorial-hdf5"} <= rows(*chosen, "--tutorial")
    assert not {"tutorial-png", "tutorial-hdf5"} & rows(*chosen)
    assert "tutorial-hdf5" not in rows("--backends=png", "--image-sizes=8x8", "--tutorial")  # only beside its family
    assert grid(options(preset="classic")).tutorial
    assert not grid(options()).tutorial


def test_a_codec_floor_gives_back_what_it_encoded(tmp_path):
    floor = CodecFloor(codecs.get("png"))
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    store(floor, tmp_path / "store", images, np.arange(5))
    assert floor.files(tmp_path / "store") == []
    check_read_back(floor, read_all(floor, tmp_path / "store"), images, np.arange(5))
    with pytest.raises(FileNotFoundError):
        read_all(floor, tmp_path / "other")


@pytest.mark.parametrize("uniform", [True, False], ids=["one-size", "mixed-sizes"])
def test_the_floor_reads_the_bytes_of_the_ids_asked_for_also_after_a_copy_and_an_append(uniform, tmp_path):
    rng = np.random.default_rng(1)
    sizes = [(4, 5, 3)] * 9 if uniform else [(4, 5, 3), (2, 7), (6, 6, 3)] * 3
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in sizes]
    images = np.stack(images) if uniform else images  # a batch, as the synthetic datasets are; or a list
    ids = [8, 0, 3, 3, 5]
    store(FLOOR, tmp_path / "store", images[:6], np.arange(6))
    FLOOR.copy(tmp_path / "store", tmp_path / "copy")
    with FLOOR.open(tmp_path / "copy", "a", durable=False) as grown:
        grown.append(images[6:])
    for path, held in ((tmp_path / "store", 6), (tmp_path / "copy", 9)):
        with FLOOR.open(path) as opened:
            check_picked(FLOOR, opened.read(ids[1:4])[0], None, images, None, ids[1:4])
            check_picked(FLOOR, opened.read(slice(4, 12))[0], None, images, None, range(4, held))
            check_picked(FLOOR, [opened[i][0] for i in ids[1:]], None, images, None, ids[1:])
            if held == 9:
                assert opened.read(ids)[1] is None  # no labels: the floor keeps the pixel bytes only
                check_picked(FLOOR, opened.read(ids)[0], None, images, None, ids)
            with pytest.raises(AssertionError):  # the check can fail: other ids' bytes are not these
                check_picked(FLOOR, opened.read([1, 2])[0], None, images, None, [2, 1])


@pytest.mark.s3
def test_the_object_floor_reads_the_bytes_of_the_ids_asked_for_with_the_requests_it_counts(s3_root):
    from storage.testing.places import object_place

    images = np.random.default_rng(2).integers(0, 256, (9, 4, 5, 3), dtype=np.uint8)
    ids = [8, 0, 3, 3, 5]
    with object_place() as place:
        store(OBJECT_FLOOR, place / "floor", images, np.arange(9))
        with OBJECT_FLOOR.open(place / "floor") as opened:
            check_picked(OBJECT_FLOOR, opened.read(ids)[0], None, images, None, ids)
            check_picked(OBJECT_FLOOR, opened.read(slice(4, 12))[0], None, images, None, range(4, 9))
            check_picked(OBJECT_FLOOR, [opened[i][0] for i in ids[1:]], None, images, None, ids[1:])
            assert opened.requests == 1 + 1 + 4  # near ranges share one GET; a slice and an image take one each
            with pytest.raises(AssertionError):  # the check can fail: other ids' bytes are not these
                check_picked(OBJECT_FLOOR, opened.read([1, 2])[0], None, images, None, [2, 1])


def test_the_object_floor_counts_the_gets_that_merged_ranges_take():
    starts, ends = np.array([5000, 0, 10, 10]), np.array([6000, 5, 20, 20])
    assert merged(starts, ends, gap=100) == (2, 20 + 1000)
    assert merged(starts, ends, gap=5000) == (1, 6000)
    assert merged(starts, ends, gap=4) == (3, 5 + 10 + 1000)


def options(**given: object) -> argparse.Namespace:
    """Parsed grid options, as pytest hands them to the plugin; timing on unless told."""
    chosen = {"preset": None, "backends": None, "image_counts": None, "image_sizes": None, "benchmark_disable": False}
    chosen.update(fail_on_bad_image=False, store_files=False, tutorial=False)
    return argparse.Namespace(**{**chosen, "dataset": Dataset("synthetic"), **given})


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (plugin.parse_backends, "tiff", "tiff not available; available: png, lmdb"),
        (
            plugin.parse_preset,
            "huge",
            "'huge' is no preset; presets: default, classic, large, training, variants, formats, floors, object-store, "
            "smoke",
        ),
        (plugin.parse_sizes, "32", "HxW or HxWxC"),
        (plugin.parse_counts, "0", "image counts must be positive"),
        (plugin.parse_counts, "1e4", "image counts are positive integers such as 100,10000; got '1e4'"),
        (plugin.parse_dataset, "imagenet", "synthetic, cifar10:DIR or folder:DIR"),
    ],
)
def test_bad_grid_options_are_refused_with_what_is_allowed(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        parse(text)


def test_image_sizes_with_a_real_dataset_is_a_usage_error(tmp_path):
    chosen = options(dataset=Dataset("folder", tmp_path), image_sizes=((8, 8),))
    with pytest.raises(pytest.UsageError, match="--image-sizes applies to the synthetic dataset"):
        grid(chosen)


def test_a_bad_option_stops_the_run_before_collection_in_one_line():
    result = collect("benchmarks/experiments/test_read.py", "--preset", "unknown")  # the README's spelling
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "Traceback" not in result.stderr
    assert "argument --preset: 'unknown' is no preset; presets: default, classic" in result.stderr


class Options:
    """Stands in for pytest's option parser: what the plugin declares."""

    def __init__(self) -> None:
        self.declared: dict[str, dict] = {}

    def getgroup(self, *names: str) -> Options:
        return self

    def addoption(self, name: str, **declaration: object) -> None:
        self.declared[name] = declaration


def test_options_are_declared_once_with_parsers_and_help_lists_every_preset():
    declared = Options()
    plugin.pytest_addoption(declared)
    assert declared.declared["--preset"]["type"] is plugin.parse_preset
    assert declared.declared["--image-counts"]["type"] is plugin.parse_counts
    for name, preset in PRESETS.items():
        assert f"{name}: {preset.about}" in declared.declared["--preset"]["help"]


def test_no_fsync_option_is_recorded_in_the_results(tmp_path):
    command = [
        *(sys.executable, "-m", "pytest", "--benchmark-only", "-q", "-p", "no:cacheprovider", "--no-fsync"),
        *("benchmarks/experiments/test_store.py::test_store_many", "--backends=npz"),
        *("--image-counts=5", "--image-sizes=4x4"),
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
    assert grid(options()).backends == local_names(variants=False)
    assert grid(options(preset="variants")).backends == local_names()
    assert {"png-level6", "lmdb-png", "npz-deflate"} <= set(grid(options(preset="variants")).backends)
    assert grid(options(backends=("lmdb", "lmdb-pickle"))).backends == ("lmdb", "lmdb-pickle")


def test_timing_off_defaults_to_the_smoke_grid():
    assert grid(options(benchmark_disable=True)).counts == PRESETS["smoke"].counts
    assert grid(options()).counts == PRESETS["default"].counts
    assert grid(options(preset="classic")).counts == PRESETS["classic"].counts
    assert grid(options(image_counts=(7,))).counts == (7,)


class Collected:
    """Stands in for a collected test: its fixtures and markers."""

    def __init__(self, *fixtures: str, marker: str = "") -> None:
        self.fixturenames = fixtures
        self.marker = marker

    def get_closest_marker(self, name: str) -> str | None:
        return self.marker if name == self.marker else None


@pytest.mark.parametrize(
    ("chosen", "runs"),
    [
        (options(), {"read-many", "a contract test"}),
        (options(preset="training"), {"grow", "a contract test"}),
        (options(benchmark_disable=True), {"read-many", "grow", "a contract test"}),
        (options(preset="smoke"), {"read-many", "grow", "a contract test"}),
    ],
    ids=["default", "training", "timing-off", "smoke"],
)
def test_training_experiments_run_in_their_preset_and_in_smoke(chosen, runs):
    tests = {
        "read-many": Collected("case", "benchmark"),
        "grow": Collected("case", "benchmark", marker="training"),
        "a contract test": Collected("tmp_path"),
    }
    assert {name for name, test in tests.items() if plugin.runs_in(grid(chosen), test)} == runs


def test_the_training_preset_deselects_the_other_experiments():
    result = collect(
        "benchmarks/experiments/test_training.py::test_grow",
        "benchmarks/experiments/test_read.py::test_read_many",
        "--backends=npz",
        "--preset=training",
    )
    assert {line.split("::")[1].split("[")[0] for line in result.stdout.splitlines() if "::" in line} == {"test_grow"}
    assert "deselected" in result.stdout


def local_names(variants: bool = True) -> tuple[str, ...]:
    """The backends a preset for local stores runs: all but those of object stores."""
    return tuple(name for name in storage.available(variants) if storage.backend(name).capabilities.local)


@pytest.mark.skipif("s3" not in storage.available(), reason="obstore is not installed")
def test_the_object_store_preset_runs_the_object_store_backends_only():
    chosen = grid(options(preset="object-store"))
    assert chosen.backends == tuple(name for name in storage.available() if not storage.backend(name).local)
    assert {"s3", "s3-c1", "s3-c32", "s3-shards", "s3-shards-c1", "s3-shards-c32"} <= set(chosen.backends)
    assert chosen.cells() == [(10_000, (32, 32, 3)), (1_000, (256, 256, 3))]
