"""The summary at the end of a benchmark run: one compact table per group, and a run on a folder as people have it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import report, summary
from benchmarks.report import Result
from benchmarks.tools.test_data import folder_as_people_have_it

ROOT = Path(__file__).resolve().parents[2]


def row(
    backend: str, median: float, disk_per_image: float | None = None, raw_per_image: float = 3072.0, **more: object
) -> Result:
    """A finished read-many benchmark of 1,000 images, as pytest-benchmark keeps it."""
    info = {"backend": backend, "images": 1000, "image_size": "32x32x3", "raw_pixel_bytes": int(1000 * raw_per_image)}
    if disk_per_image is not None:
        info["disk_bytes_per_image"] = disk_per_image
    info.update(more)
    group = "read-many n=1000 32x32x3"
    return report.result({"name": backend, "group": group, "stats": {"median": median, "iqr": 0.0}, "extra_info": info})


def test_a_table_sorts_by_median_marks_the_fastest_and_divides_by_the_floor():
    lines = summary.table(
        [
            row("png", 0.4, disk_per_image=2200.0, raw_per_image=3072.0, peak_memory_bytes=3_500_000),
            row("limit", 0.002, disk_per_image=3072.0, raw_per_image=3072.0),
            row("npz", 0.004, peak_memory_bytes=3_100_000),
        ]
    )
    header, fastest, second, slowest = (line.split() for line in lines)
    assert header[:2] == ["backend", "median"]
    assert fastest[:3] == ["*", "limit", "2"]
    assert second[:4] == ["npz", "4", "ms", "2.00"]
    assert slowest[:5] == ["png", "400", "ms", "200.00", "2.5e+03"]
    assert slowest[-5:] == ["2.2", "kB", "0.72", "3.5", "MB"]


def test_an_encoding_backend_is_divided_by_its_codec_floor_too():
    lines = summary.table(
        [row("png", 0.4), row("limit", 0.002), row("limit-png-imagecodecs-level1", 0.32), row("npz", 0.004)]
    )
    png = next(line.split() for line in lines if line.split()[0] == "png")
    assert png[:5] == ["png", "400", "ms", "200.00", "1.25"]
    npz = next(line.split() for line in lines if line.split()[0] == "npz")
    assert npz[3:5] == ["2.00", "2.5e+05"]  # raw pixels: no codec ratio, images/s follows


def test_a_backend_is_divided_by_the_tutorials_method_of_its_family():
    lines = summary.table(
        [row("png-pillow", 0.5), row("png", 0.2), row("tutorial-png", 0.8), row("limit-png-pillow-level6", 0.7)]
    )
    assert lines[0].split()[-2:] == ["×", "tutorial"]
    cells = {tokens[0]: tokens for tokens in (line.lstrip("* ").split() for line in lines[1:])}
    assert cells["png"][-1] == "0.25"
    assert cells["png-pillow"][-1] == "0.62"
    assert cells["tutorial-png"][-1] == "1.25e+03"  # images/s: no ratio to itself
    assert cells["tutorial-png"][3] == "1.14"  # over its own codec floor, Pillow at level 6
    assert "tutorial" not in summary.table([row("npz", 0.004), row("limit", 0.002)])[0]


def test_a_table_measured_in_a_fresh_process_shows_private_memory_over_the_pixels_and_mapped_pages_apart():
    lines = summary.table(
        [
            row("lmdb", 0.01, private_memory_bytes=3_133_440, mapped_memory_bytes=4_210_000, peak_memory_bytes=9),
            row("limit", 0.002, private_memory_bytes=3_072_000, mapped_memory_bytes=0, peak_memory_bytes=9),
            row("limit-png-imagecodecs-level1", 0.3, peak_memory_bytes=6_144_000),  # tracemalloc's only
        ]
    )
    assert lines[0].endswith("× pixels   mapped")
    assert "peak memory" not in lines[0]
    limit, lmdb, codec = (line.split() for line in lines[1:])
    assert limit[-3:] == ["1.00", "0", "B"]
    assert lmdb[-3:] == ["1.02", "4.21", "MB"]
    assert codec[-1] == "2.00t"
    store_table = summary.table([row("lmdb", 0.01, peak_memory_bytes=3_500_000), row("limit", 0.002)])
    assert store_table[0].endswith("peak memory")
    assert store_table[2].split()[-2:] == ["3.5", "MB"]


def test_object_store_tables_show_the_requests_per_image():
    lines = summary.table([row("s3", 3.0, requests_per_image=1.0003), row("limit", 0.03, requests_per_image=0.0001)])
    assert lines[0].split()[-1] == "requests/image"
    assert lines[2].split()[0] == "s3"
    assert lines[2].split()[-1] == "1"
    plain = summary.table([row("npz", 0.004), row("limit", 0.002)])
    assert "requests" not in plain[0]


def test_every_line_fits_120_columns():
    long_name = "a-backend-with-a-very-long-name-from-another-package"
    rows = [
        row(long_name, 123.456, disk_per_image=1e12, raw_per_image=1.0, peak_memory_bytes=10**15),
        row("limit", 1e-9),
    ]
    assert all(len(line) <= summary.WIDTH for line in summary.render(rows))
    codec_floor = "limit-png-imagecodecs-level1"  # the longest name in a read-many table, with wide figures
    wide = {"disk_per_image": 123_456.0, "private_memory_bytes": 12_345 * 3_072_000, "mapped_memory_bytes": 10**15}
    fresh = [row("png", 123.456, **wide), row(codec_floor, 1.234, peak_memory_bytes=10**15), row("limit", 0.0001)]
    assert all(len(line) < summary.WIDTH for line in summary.table(fresh))  # under the cut: nothing was cut off


def test_a_run_on_a_folder_as_people_have_it_ends_with_the_summary_and_names_the_broken_file(tmp_path):
    folder_as_people_have_it(tmp_path)
    command = [
        *(sys.executable, "-m", "pytest", "--benchmark-only", "-p", "no:cacheprovider"),
        *("benchmarks/experiments/test_store.py::test_store_many", "--backends=npz,hdf5", "--image-counts=3"),
        *(f"--dataset=folder:{tmp_path}", "--benchmark-max-time=0.001", "--benchmark-min-rounds=1"),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    out = result.stdout
    assert "holds 4 images in 3 class folders; 2 files that are no images skipped (README.txt, .DS_Store)" in out
    assert "3.png left out: not a readable image" in out
    assert "SKIPPED" not in out
    table = out[out.index("image storage: every backend side by side") :].splitlines()
    assert "store-many n=3 folder-mixed" in table  # the truncated image is 64x64x3
    backends = [line.split()[1] for line in table if line.startswith("*")]
    assert len(backends) == 1
    assert backends[0] in ("npz", "hdf5", "limit")
    assert all(len(line) <= 120 for line in table)
    assert "passed" in out.rstrip().splitlines()[-1]
    assert out.index("image storage: every backend") > out.index("benchmark 'store-many n=3 folder-mixed'")
