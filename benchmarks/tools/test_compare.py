"""The regression gate: its verdicts, an A/A comparison, and a slowdown injected into a copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import machine
from benchmarks.compare import ComparisonError, Samples, judge, parser, rounds_needed, running_order

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("storage", "benchmarks", "conftest.py", "pyproject.toml")
# Small and quick, but large enough that one read takes milliseconds rather than microseconds.
SUBSET = [
    "benchmarks/experiments/test_read.py",
    "-k",
    "test_read_many",
    "--backends=npz,hdf5",
    "--image-counts=5000",
    "--image-sizes=32x32x3",
    "--benchmark-max-time=0.05",
    "--benchmark-min-rounds=5",
]
SLOW_NPZ_READ = """

import time as _time

_read_once = NpzStore._read


def _read_late(self, ids):  # injected by test_compare: every read waits 5 ms first
    _time.sleep(0.005)
    return _read_once(self, ids)


NpzStore._read = _read_late
"""
# Reading twice was tried first: the second read reuses the first's freshly faulted pages, so it
# slowed reads by only about 1.4x, which a noisy machine can hide from six rounds.

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="the comparison checks revisions out with git")


DEFAULTS = parser().parse_args(["HEAD"])


@pytest.mark.parametrize(
    ("head_scale", "noise", "verdict"),
    [
        (1.5, 0.01, "REGRESSED: slower"),  # large and significant
        (1.1, 0.01, ""),  # significant but under the 20% threshold
        (1.5, 0.6, ""),  # large on average but within the rounds' noise
        (0.5, 0.01, "faster"),
    ],
)
def test_judge_flags_only_large_significant_slowdowns(head_scale, noise, verdict):
    wobble = [1 + noise * step for step in (0.0, 0.5, -0.5, 1.0, -1.0)]
    base = Samples([1e-3 * w for w in wobble])
    head = Samples([1e-3 * head_scale * w for w in reversed(wobble)])
    assert judge("test_x", base, head, DEFAULTS).verdict == verdict


def test_judge_corrects_for_the_number_of_benchmarks_judged():
    base = Samples([1.00e-3, 1.01e-3, 0.99e-3, 1.02e-3, 0.98e-3])
    head = Samples([1.5 * t for t in base.medians])
    assert judge("test_x", base, head, DEFAULTS, judged=1).verdict == "REGRESSED: slower"
    # the same complete separation among ten benchmarks: 10 / C(10, 5) = 0.04 is no longer significant
    assert judge("test_x", base, head, DEFAULTS, judged=10).verdict == ""


def test_too_few_rounds_are_refused_with_the_number_needed():
    rounds_needed(10, parser().parse_args(["HEAD", "--rounds", "7"]))
    with pytest.raises(ComparisonError, match="--rounds 7 or more"):
        rounds_needed(10, parser().parse_args(["HEAD", "--rounds", "5"]))
    with pytest.raises(ComparisonError, match="--rounds 5 or more"):
        rounds_needed(1, parser().parse_args(["HEAD", "--rounds", "4"]))


def test_each_side_runs_first_in_half_of_the_rounds():
    firsts = [running_order(n)[0] for n in range(6)]
    assert firsts.count("base") == firsts.count("head") == 3
    assert all(sorted(running_order(n)) == ["base", "head"] for n in range(6))


def test_judge_flags_disk_growth_beyond_tolerance():
    times = [1e-3, 1.01e-3, 0.99e-3, 1.02e-3, 0.98e-3]
    grown = judge("test_x", Samples(times, [3000.0] * 5), Samples(times, [3100.0] * 5), DEFAULTS)
    assert grown.verdict == "REGRESSED: bigger on disk"
    same = judge("test_x", Samples(times, [3000.0] * 5), Samples(times, [3010.0] * 5), DEFAULTS)
    assert same.verdict == ""


def test_judge_flags_peak_memory_growth_in_every_round():
    times = [1e-3, 1.01e-3, 0.99e-3, 1.02e-3, 0.98e-3]
    megabytes = [1.0, 1.01, 0.99, 1.0, 1.005]
    base = Samples(times, memory=[m * 1e6 for m in megabytes])
    grown = judge("test_x", base, Samples(times, memory=[m * 1.1e6 for m in megabytes]), DEFAULTS)
    assert grown.verdict == "REGRESSED: more memory"
    overlapping = [1.1e6, 1.0e6, 1.12e6, 1.1e6, 1.095e6]
    assert judge("test_x", base, Samples(times, memory=overlapping), DEFAULTS).verdict == ""
    small = Samples(times, memory=[m * 30e3 for m in megabytes])  # +10% of 30 kB: a few Python objects
    assert judge("test_x", small, Samples(times, memory=[m * 33e3 for m in megabytes]), DEFAULTS).verdict == ""
    unmeasured = judge("test_x", Samples(times), Samples(times, memory=[2e6] * 5), DEFAULTS)
    assert unmeasured.memory_growth is None


def test_saved_machine_info_is_stable_and_complete(tmp_path):
    info = {"cpu": {"brand_raw": "Some CPU", "hz_actual": [2_900_000_000, 0], "hz_actual_friendly": "2.9 GHz"}}
    machine.update(info, str(tmp_path))
    assert info["cpu"] == {"brand_raw": "Some CPU"}
    assert set(info["libraries"]) == set(machine.LIBRARIES)
    assert info["libraries"]["numpy"][0].isdigit()
    assert info["backends"]
    assert info["store_filesystem"]
    if sys.platform == "linux":
        assert info["store_filesystem"] != "unknown"
    creation = info["file_creation"]
    assert 0 < creation["fresh_us"] < 1e6
    assert 0 < creation["after_deleting_us"] < 1e6
    assert list(tmp_path.iterdir()) == []  # its scratch files are gone
    assert isinstance(info["free_page_reporting"], bool)


@pytest.mark.parametrize(("features", "reporting"), [(None, False), ("0110000001", False), ("0110010101", True)])
def test_free_page_reporting_is_read_from_the_balloons_features(features, reporting, tmp_path):
    if features:
        (tmp_path / "virtio3").mkdir()
        (tmp_path / "virtio3" / "features").write_text(features + "\n")
    assert machine.free_page_reporting(tmp_path) is reporting
    assert machine.free_page_reporting(tmp_path / "absent") is False


def test_two_runs_machines_are_compared_without_what_each_run_measures_anew():
    current = {"cpu": {"brand_raw": "Some CPU"}, "file_creation": {"fresh_us": 90.0}}
    saved = {"cpu": {"brand_raw": "Some CPU"}, "file_creation": {"fresh_us": 150.0}}
    with machine.volatile_fields_aside(current, saved):
        assert current == saved
    assert current["file_creation"] == {"fresh_us": 90.0}  # both put back
    assert saved["file_creation"] == {"fresh_us": 150.0}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of this project (uncommitted changes included) as a one-commit git repository."""
    copy = tmp_path / "project"
    copy.mkdir()
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, copy / name)
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *command]
        subprocess.run(git, cwd=copy, check=True, capture_output=True)
    return copy


def run_compare(project: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(project))
    # six rounds: the fewest with which a benchmark among three can be flagged (3 / C(12, 6) < 0.01)
    command = [sys.executable, "-m", "benchmarks.compare", "HEAD", "--rounds", "6", "--", *SUBSET]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, check=False)


def rows(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines() if line.startswith("test_")}


@pytest.mark.gate
@needs_git
def test_same_revision_reports_no_regression(project):
    result = run_compare(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No regression." in result.stdout
    assert set(rows(result.stdout)) == {f"test_read_many[{b}-n=5000-32x32x3]" for b in ("limit", "npz", "hdf5")}
    assert "REGRESSED" not in result.stdout


@pytest.mark.gate
@needs_git
def test_injected_slowdown_is_reported(project):
    with (project / "storage" / "npz_store.py").open("a") as module:
        module.write(SLOW_NPZ_READ)
    result = run_compare(project)
    assert result.returncode == 1, result.stdout + result.stderr
    found = rows(result.stdout)
    assert "REGRESSED: slower" in found["test_read_many[npz-n=5000-32x32x3]"]
    assert "REGRESSED" not in found["test_read_many[hdf5-n=5000-32x32x3]"]
    assert "1 regressed." in result.stdout
