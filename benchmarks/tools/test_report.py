"""The report: figures and summary from a small run the suite itself saves."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import report

pytest.importorskip("matplotlib", reason="the report needs matplotlib (the 'report' extra)")

ROOT = Path(__file__).resolve().parents[2]
SIZES = ("8x8x3", "16x16")
FIGURES = ("time", "read_write", "throughput", "disk", "memory")


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run of store-many and read-many, 2 backends x 2 counts x 2 sizes, as pytest-benchmark saves it."""
    path = tmp_path_factory.mktemp("run") / "run.json"
    command = [
        *(sys.executable, "-m", "pytest", "--benchmark-only", "-q", "-p", "no:cacheprovider"),
        *("benchmarks/experiments", "-k", "test_store_many or test_read_many", "--backends=npz,hdf5"),
        *("--image-counts=10,40", f"--image-sizes={','.join(SIZES)}", f"--benchmark-json={path}"),
        *("--benchmark-max-time=0.001", "--benchmark-min-rounds=1"),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(path.read_text())


def write(run: dict, path: Path) -> Path:
    path.write_text(json.dumps(run))
    return path


def with_cold_and_parallel_rows(run: dict) -> dict:
    """The run plus, for every read-many row, a cold-cache row (3x slower) and, as test_training.py names
    them in test_training.py, read-many-processes rows with one worker (as fast) and two workers (1.8x faster)."""
    run = copy.deepcopy(run)
    for benchmark in [b for b in run["benchmarks"] if b["extra_info"]["experiment"] == "read-many"]:
        cold, one, two = copy.deepcopy(benchmark), copy.deepcopy(benchmark), copy.deepcopy(benchmark)
        cold["name"] += "-cold"
        cold["extra_info"]["page_cache"] = "cold"
        cold["stats"]["median"] *= 3
        for row, workers in ((one, 1), (two, 2)):
            row["name"] += f"-workers={workers}"
            row["extra_info"].update(experiment="read-many-processes", workers=workers)
        two["stats"]["median"] /= 1.8
        run["benchmarks"] += [cold, one, two]
    return run


@pytest.fixture(scope="module")
def rendered(saved_run: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """The saved run's first size with cold and parallel rows, reported against a copy of itself twice as slow."""
    run = copy.deepcopy(saved_run)
    run["benchmarks"] = [b for b in run["benchmarks"] if b["extra_info"]["image_size"] == SIZES[0]]
    run = with_cold_and_parallel_rows(run)
    slower = copy.deepcopy(run)
    for benchmark in slower["benchmarks"]:
        benchmark["stats"]["median"] *= 2
    where = tmp_path_factory.mktemp("report")
    runs = [str(write(run, where / "before.json")), str(write(slower, where / "after.json"))]
    assert report.main([*runs, "--out", str(where / "out")]) == 0
    return run, where / "out"


def assert_valid_figure(stem: Path, formats: tuple[str, ...] = ("png", "svg")) -> None:
    with Image.open(stem.with_suffix(".png")) as image:
        assert image.format == "PNG"
        image.load()  # decodes the whole file: a truncated PNG fails here
        assert image.width >= 400
        assert image.height >= 250
    assert stem.with_suffix(".png").stat().st_size > 10_000
    if "svg" in formats:
        assert "<svg" in stem.with_suffix(".svg").read_text()[:2000]


def summary_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """(section heading, backend) -> the row's cells."""
    rows, heading = {}, ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        elif line.startswith("| ") and not line.startswith(("| backend", "| ---", "| benchmark", "| test_")):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[heading, cells[0]] = cells
    return rows


def test_report_renders_every_figure(rendered):
    _, out = rendered
    names = [f"{figure}_{SIZES[0]}" for figure in FIGURES] + ["cold_vs_warm", "parallel", "compare"]
    assert {path.name for path in out.iterdir()} == {f"{n}.{kind}" for n in names for kind in ("png", "svg")} | {
        "summary.md"
    }
    for name in names:
        assert_valid_figure(out / name)


def test_summary_numbers_match_the_run(rendered):
    run, out = rendered
    rows = summary_rows((out / "summary.md").read_text())
    assert len(rows) == len(run["benchmarks"]) == 2 * 3 * (2 + 3)  # counts x backends x (2 experiments + 3 more)
    for benchmark in run["benchmarks"]:
        info, median = benchmark["extra_info"], benchmark["stats"]["median"]
        cold = " (cold cache)" if info.get("page_cache") == "cold" else ""
        workers = f" with {info['workers']} workers" if info.get("workers") else ""
        heading = f"{info['experiment']}{cold}{workers}, {info['images']} images of {info['image_size']}"
        _, ms, per_second, mb_per_second, disk, ratio, *memory = rows[heading, info["backend"]]
        floor = rows[heading, "limit"][1]
        assert float(ms) == pytest.approx(1e3 * median, rel=1e-3)
        assert float(per_second) == pytest.approx(info["images"] / median, rel=1e-3)
        assert float(mb_per_second) == pytest.approx(info["raw_pixel_bytes"] / median / 1e6, rel=1e-3)
        assert float(ratio) == pytest.approx(float(ms) / float(floor), rel=1e-2)
        if info["experiment"] == "store-many":
            assert float(disk) == pytest.approx(info["disk_bytes_per_image"], abs=0.5)
        if "private_memory_bytes" in info:  # read-many, measured in a fresh process
            private, mapped = float(memory[0]), float(memory[1])
            assert private == pytest.approx(info["private_memory_bytes"] / info["raw_pixel_bytes"], abs=6e-3)
            assert mapped == pytest.approx(info["mapped_memory_bytes"] / 1e6, rel=1e-2, abs=1e-3)
        else:
            assert float(memory[0]) == pytest.approx(info["peak_memory_bytes"] / 1e6, rel=1e-2)


def test_two_runs_give_a_comparison(rendered):
    run, out = rendered
    ratios = re.findall(r"^\| test_\S+ \| ([0-9.]+) \|$", (out / "summary.md").read_text(), re.MULTILINE)
    assert ratios == ["2.000"] * len(run["benchmarks"])


def test_a_run_missing_backends_and_sizes_still_renders(saved_run, tmp_path):
    partial = copy.deepcopy(saved_run)
    partial["benchmarks"] = [
        b
        for b in partial["benchmarks"]
        if b["extra_info"]["backend"] != "hdf5" and b["extra_info"]["image_size"] == "16x16"
    ]
    run = str(write(partial, tmp_path / "partial.json"))
    assert report.main([run, "--out", str(tmp_path / "out"), "--formats", "png"]) == 0
    assert {path.name for path in (tmp_path / "out").iterdir()} == {f"{f}_16x16.png" for f in FIGURES} | {"summary.md"}
    for figure in FIGURES:
        assert_valid_figure(tmp_path / "out" / f"{figure}_16x16", formats=("png",))
    assert "hdf5" not in (tmp_path / "out" / "summary.md").read_text()


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty.json").write_text("{}")
    assert report.main([str(tmp_path / "empty.json"), "--out", str(tmp_path / "out")]) == 2
    assert "not a pytest-benchmark JSON run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_is_named(saved_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert report.main([str(write(saved_run, tmp_path / "run.json")), "--out", str(tmp_path / "out")]) == 2
    assert "pip install -e '.[report]'" in capsys.readouterr().err


def test_a_run_of_parallel_rows_only_gets_no_empty_time_figures(saved_run, tmp_path):
    run = with_cold_and_parallel_rows(saved_run)
    run["benchmarks"] = [b for b in run["benchmarks"] if b["extra_info"].get("workers")]
    saved = str(write(run, tmp_path / "run.json"))
    assert report.main([saved, "--out", str(tmp_path / "out"), "--formats", "png"]) == 0
    assert {path.name for path in (tmp_path / "out").iterdir()} == {"parallel.png", "summary.md"}


def test_runs_with_no_benchmark_in_common_are_refused(saved_run, tmp_path, capsys):
    other = copy.deepcopy(saved_run)
    for benchmark in other["benchmarks"]:
        benchmark["name"] += "-elsewhere"
    runs = [str(write(saved_run, tmp_path / "a.json")), str(write(other, tmp_path / "b.json"))]
    assert report.main([*runs, "--out", str(tmp_path / "out")]) == 2
    assert "share no benchmark" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_table_with_codec_floor_and_tutorial_rows_gets_ratios_to_them(saved_run, tmp_path):
    run = copy.deepcopy(saved_run)
    npz = next(
        b
        for b in run["benchmarks"]
        if (b["extra_info"]["experiment"], b["extra_info"]["backend"], b["extra_info"]["images"])
        == ("read-many", "npz", 10)
        and b["extra_info"]["image_size"] == SIZES[0]
    )
    for backend, factor in (("png", 40), ("limit-png-imagecodecs-level1", 20), ("tutorial-png", 160)):
        row = copy.deepcopy(npz)
        row["name"], row["extra_info"]["backend"] = row["name"].replace("npz", backend), backend
        row["stats"]["median"] *= factor
        run["benchmarks"].append(row)
    assert (
        report.main([str(write(run, tmp_path / "run.json")), "--out", str(tmp_path / "out"), "--formats", "png"]) == 0
    )
    text = (tmp_path / "out" / "summary.md").read_text()
    rows = summary_rows(text)
    read, store = (f"{experiment}, 10 images of {SIZES[0]}" for experiment in ("read-many", "store-many"))
    assert rows[read, "png"][6:8] == ["2.00", "0.25"]  # x its codec floor, x the tutorial's method of its family
    assert rows[read, "npz"][6:8] == ["", ""]  # raw pixels: no codec floor; no tutorial row of its family here
    assert "| × limit | × codec | × tutorial | private (× pixels) |" in text
    assert len(rows[store, "npz"]) == 7  # a table without those rows gets no such columns
