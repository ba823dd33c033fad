"""Figures and a Markdown summary from saved benchmark runs.

    python -m benchmarks.report RUN.json [RUN2.json] [--out DIR] [--formats png,svg]

RUN.json is what ``pytest --benchmark-only --benchmark-json=RUN.json`` (or ``--benchmark-save``)
wrote. For each image size of the first run: store-many and read-many time against image count
per backend on linear and log-log axes (``time_<size>``), both together (``read_write_<size>``),
images per second (``throughput_<size>``), and disk bytes per image with the raw pixel size marked
(``disk_<size>``); the `limit` rows are drawn as the floor. Cold-cache benchmarks (``extra_info``
``page_cache="cold"``) and parallel readers (``workers``), where a run has them, get ``cold_vs_warm``
and ``parallel`` figures. Every figure is written as PNG and SVG, beside ``summary.md``. With a
second run, ``compare`` shows the ratio of its medians to the first run's for every benchmark both
ran. Needs matplotlib (the ``report`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import storage
from benchmarks import floor
from benchmarks.tutorial import TUTORIALS
from storage.codecs import RAW

FLOOR = floor.FLOOR.name  # the row the floor writes in every table
MANY = ("store-many", "read-many")
SINGLE = ("read-one", "read-one-open")  # one image a round (runs before `reads` was recorded do not say so)


@dataclass(frozen=True)
class Result:
    """One benchmark of a saved run."""

    name: str
    group: str  # the table pytest-benchmark printed it in
    experiment: str
    backend: str
    images: int
    reads: int  # images one round reads or writes: fewer than `images` for random and single reads
    size: str
    median: float  # seconds
    iqr: float
    raw_bytes: int  # raw pixel bytes of all its images
    disk_per_image: float | None
    peak_memory: int | None  # bytes one untimed round allocated beyond its input (tracemalloc)
    page_cache: str
    workers: int | None
    requests_per_image: float | None = None  # object stores: requests one untimed round sent, per image
    private_memory: int | None = None  # read-many in a fresh process: peak private bytes above those before it
    mapped_memory: int | None = None  # ... and the bytes of mapped files' pages resident at its end


def load(path: Path) -> list[Result]:
    """The benchmarks of one saved pytest-benchmark JSON run."""
    try:
        benchmarks = json.loads(path.read_text())["benchmarks"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path} is not a pytest-benchmark JSON run: {error}") from error
    results = [found for found in map(result, benchmarks) if found is not None]
    if not results:
        raise ValueError(f"{path} holds no benchmarks of this suite")
    return results


def result(benchmark: dict) -> Result | None:
    """One benchmark as pytest-benchmark saves it (name, group, stats, extra_info); None if not of this suite."""
    info = benchmark.get("extra_info", {})
    if "backend" not in info:
        return None
    experiment = info.get("experiment", benchmark["group"].split()[0])
    return Result(
        name=benchmark["name"],
        group=benchmark["group"] or "",
        experiment=experiment,
        backend=info["backend"],
        images=int(info["images"]),
        reads=int(info.get("reads", 1 if experiment in SINGLE else info["images"])),
        size=info["image_size"],
        median=benchmark["stats"]["median"],
        iqr=benchmark["stats"]["iqr"],
        raw_bytes=int(info["raw_pixel_bytes"]),
        disk_per_image=info.get("disk_bytes_per_image"),
        peak_memory=info.get("peak_memory_bytes"),
        page_cache=info.get("page_cache", ""),
        workers=info.get("workers"),
        requests_per_image=info.get("requests_per_image"),
        private_memory=info.get("private_memory_bytes"),
        mapped_memory=info.get("mapped_memory_bytes"),
    )


def main(argv: list[str] | None = None) -> int:
    parse = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parse.add_argument("runs", nargs="+", type=Path, help="one or two pytest-benchmark JSON files")
    parse.add_argument("--out", type=Path, default=Path("benchmark-report"), help="output directory")
    parse.add_argument("--formats", default="png,svg", help="figure file formats (default png,svg)")
    options = parse.parse_args(argv)
    if len(options.runs) > 2:
        parse.error("give one run, or two to compare")
    try:
        import matplotlib
    except ImportError:
        print("benchmarks.report needs matplotlib: pip install -e '.[report]'", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    try:
        runs = [load(path) for path in options.runs]
    except ValueError as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    if len(runs) == 2 and not {r.name for r in runs[0]} & {r.name for r in runs[1]}:
        print(
            f"report: {options.runs[0]} and {options.runs[1]} share no benchmark (name, backend, count and size), "
            "so there is nothing to compare; give one run, or two runs of the same grid",
            file=sys.stderr,
        )
        return 2
    written = render(
        runs, [path.stem for path in options.runs], options.out, options.formats.split(","), provenance(options.runs[0])
    )
    print("\n".join(str(path) for path in written))
    return 0


def provenance(path: Path) -> list[str]:
    """Where a saved run comes from, as Markdown lines: date, commit, machine, libraries, filesystem."""
    run = json.loads(path.read_text())
    machine, commit = run.get("machine_info", {}), run.get("commit_info", {})
    libraries = ", ".join(f"{name} {version}" for name, version in machine.get("libraries", {}).items())
    cpu = machine.get("cpu", {}).get("brand_raw", "an unknown CPU")
    lines = [
        f"- measured: {run.get('datetime', 'unknown date')[:19].replace('T', ' ')} UTC",
        f"- commit: {commit.get('id', 'unknown')[:12]}{' (with uncommitted changes)' if commit.get('dirty') else ''}",
        f"- machine: {cpu}, {machine.get('cpu_count', '?')} cores, {machine.get('system', '')} "
        f"{machine.get('release', '')}, {machine.get('python_implementation', 'Python')} "
        f"{machine.get('python_version', '')}",
        f"- stores on: {machine.get('store_filesystem', 'unknown filesystem')}",
        f"- libraries: {libraries or 'not recorded'}",
        "- page cache: warm unless a table says cold; times are medians over the run's rounds",
    ]
    return [*lines, ""]


def render(
    runs: list[list[Result]], labels: list[str], out: Path, formats: list[str], about: list[str] = ()
) -> list[Path]:
    """Write every figure the runs allow and summary.md into `out`; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    results = runs[0]
    written = []

    def save(figure, name: str) -> list[Path]:
        import matplotlib.pyplot as plt

        paths = [out / f"{name}.{kind}" for kind in formats]
        for path in paths:
            figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        return paths

    warm_many = [r for r in results if r.experiment in MANY and r.page_cache != "cold" and (r.workers or 1) == 1]
    for size in sorted({r.size for r in warm_many}):
        many = [r for r in warm_many if r.size == size]
        written += save(time_figure(many, size), f"time_{size}")
        written += save(read_write_figure(many, size), f"read_write_{size}")
        written += save(throughput_figure(many, size), f"throughput_{size}")
        stored = [r for r in many if r.disk_per_image is not None]
        if stored:
            written += save(disk_figure(stored, size), f"disk_{size}")
        measured = [r for r in many if memory_of(r) is not None]
        if measured:
            written += save(memory_figure(measured, size), f"memory_{size}")
    if any(r.page_cache == "cold" for r in results):
        written += save(cold_figure(results), "cold_vs_warm")
    if any(r.workers for r in results):
        written += save(parallel_figure(results), "parallel")
    if len(runs) == 2:
        written += save(compare_figure(runs, labels), "compare")
    summary = out / "summary.md"
    summary.write_text(summary_markdown(runs, labels, about))
    return [*written, summary]


def series(results: list[Result], experiment: str) -> dict[str, list[Result]]:
    """Backend -> its results of `experiment`, by image count."""
    lines = defaultdict(list)
    for result in sorted(results, key=lambda r: r.images):
        if result.experiment == experiment:
            lines[result.backend].append(result)
    return dict(sorted(lines.items(), key=lambda item: (item[0] != FLOOR, item[0])))


def log_log(axis) -> None:
    """Log axes labelled in plain numbers (cheaper to draw than mathtext powers of ten)."""
    axis.set_xscale("log")
    axis.set_yscale("log")
    for scaled in (axis.xaxis, axis.yaxis):
        scaled.set_major_formatter("{x:g}")
        scaled.set_minor_formatter("")


def style(backend: str) -> dict:
    if backend == FLOOR:
        return {"color": "black", "linestyle": ":", "marker": "", "label": "limit (plain file: the floor)"}
    return {"marker": "o", "label": backend}


def time_figure(results: list[Result], size: str):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    figure.subplots_adjust(hspace=0.3, wspace=0.25)
    for row, experiment in enumerate(MANY):
        for column, log in enumerate((False, True)):
            axis = axes[row][column]
            for backend, points in series(results, experiment).items():
                axis.plot([p.images for p in points], [p.median for p in points], **style(backend))
            if log:
                log_log(axis)
            axis.set_title(f"{experiment}, {size} ({'log-log' if log else 'linear'})")
            axis.set_xlabel("images")
            axis.set_ylabel("median time (s)")
            axis.grid(True, alpha=0.3)
    axes[0][0].legend()
    return figure


def read_write_figure(results: list[Result], size: str):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5.5))
    colours = {}
    for experiment, line in zip(MANY, ("-", "--")):
        for backend, points in series(results, experiment).items():
            look = style(backend) | {"linestyle": ":" if backend == FLOOR else line}
            look["label"] = f"{backend} {experiment.split('-')[0]}"
            if backend in colours:
                look["color"] = colours[backend]
            (drawn,) = axis.plot([p.images for p in points], [p.median for p in points], **look)
            colours[backend] = drawn.get_color()
    log_log(axis)
    axis.set_title(f"store (solid) and read (dashed) of {size} images; dotted: plain-file floor")
    axis.set_xlabel("images")
    axis.set_ylabel("median time (s)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small", ncol=2)
    return figure


def throughput_figure(results: list[Result], size: str):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    figure.subplots_adjust(wspace=0.25)
    for axis, experiment in zip(axes, MANY):
        for backend, points in series(results, experiment).items():
            axis.plot([p.images for p in points], [p.images / p.median for p in points], **style(backend))
        log_log(axis)
        axis.set_title(f"{experiment}, {size}")
        axis.set_xlabel("images")
        axis.set_ylabel("images per second")
        axis.grid(True, alpha=0.3)
    axes[0].legend()
    return figure


def disk_figure(results: list[Result], size: str):
    import matplotlib.pyplot as plt

    largest = max(r.images for r in results)
    shown = sorted((r for r in results if r.images == largest and r.backend != FLOOR), key=lambda r: r.backend)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    bars = axis.bar([r.backend for r in shown], [r.disk_per_image for r in shown], color="tab:blue")
    axis.bar_label(bars, fmt="%.0f")
    raw = results[0].raw_bytes / results[0].images
    axis.axhline(raw, color="black", linestyle=":", label=f"raw pixels: {raw:.0f} B")
    axis.set_title(f"disk per image, {largest} images of {size}")
    axis.set_ylabel("bytes allocated per image")
    axis.legend()
    return figure


def memory_of(result: Result) -> int | None:
    """A result's private memory in a fresh process where it has one (read-many), else tracemalloc's peak."""
    return result.peak_memory if result.private_memory is None else result.private_memory


def memory_figure(results: list[Result], size: str):
    """Memory of store-many and read-many at the largest count, per backend, with the raw pixels marked: the peak
    a round allocated beyond its input (tracemalloc) or, where measured in a fresh process, its private memory,
    with the pages of mapped files stacked on it, hatched."""
    import matplotlib.pyplot as plt

    largest = max(r.images for r in results)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    figure.subplots_adjust(wspace=0.3)
    for axis, experiment in zip(axes, MANY):
        shown = sorted(
            (r for r in results if r.images == largest and r.experiment == experiment), key=lambda r: r.backend
        )
        names, private = [r.backend for r in shown], [memory_of(r) / 1e6 for r in shown]
        bars = axis.bar(names, private, color="tab:purple")
        axis.bar_label(bars, fmt="%.3g")
        mapped = [(r.mapped_memory or 0) / 1e6 for r in shown]
        if any(mapped):
            axis.bar(names, mapped, bottom=private, color="tab:purple", alpha=0.3, hatch="//", label="mapped files")
        if shown:
            axis.axhline(shown[0].raw_bytes / 1e6, color="black", linestyle=":", label="raw pixels")
            axis.legend()
        fresh = any(r.private_memory is not None for r in shown)
        axis.set_title(f"{experiment}: {'private' if fresh else 'peak'} memory, {largest} images of {size}")
        axis.set_ylabel("MB above a fresh process before it" if fresh else "MB allocated beyond the input")
        axis.tick_params(axis="x", labelrotation=45)
    return figure


def cold_figure(results: list[Result]):
    """Cold-cache median over the warm one, per backend and benchmark that ran both ways."""
    import matplotlib.pyplot as plt

    warm = {(r.experiment, r.backend, r.images, r.size): r for r in results if r.page_cache == "warm"}
    pairs = [
        (f"{r.backend} {r.experiment} n={r.images} {r.size}", r.median / warm[key].median)
        for r in results
        if r.page_cache == "cold" and (key := (r.experiment, r.backend, r.images, r.size)) in warm
    ]
    return ratio_bars(plt, pairs, "cold-cache time / warm-cache time")


def parallel_figure(results: list[Result]):
    """Speed-up of k workers over one, per backend and benchmark."""
    import matplotlib.pyplot as plt

    single = {(r.experiment, r.backend, r.images, r.size): r for r in results if r.workers == 1}
    pairs = [
        (f"{r.backend} {r.experiment} n={r.images} {r.size} x{r.workers}", single[key].median / r.median)
        for r in results
        if r.workers and r.workers > 1 and (key := (r.experiment, r.backend, r.images, r.size)) in single
    ]
    return ratio_bars(plt, pairs, "speed-up over one worker", higher_is_better=True)


def compare_figure(runs: list[list[Result]], labels: list[str]):
    import matplotlib.pyplot as plt

    first = {r.name: r for r in runs[0]}
    pairs = [(r.name, r.median / first[r.name].median) for r in runs[1] if r.name in first]
    return ratio_bars(plt, pairs, f"median of {labels[1]} / median of {labels[0]} (log scale)", log=True)


def ratio_bars(plt, pairs: list[tuple[str, float]], title: str, log: bool = False, higher_is_better: bool = False):
    figure, axis = plt.subplots(figsize=(9, 1.2 + 0.28 * max(len(pairs), 1)))
    names = [name for name, _ in pairs]
    ratios = [ratio for _, ratio in pairs]
    colours = ["tab:green" if (ratio > 1) == higher_is_better else "tab:red" for ratio in ratios]
    axis.barh(names, [ratio - 1 for ratio in ratios], left=1, color=colours)  # bars grow from 1x
    axis.axvline(1, color="black", linewidth=1)
    if log:
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter("{x:g}x")
        axis.xaxis.set_minor_formatter("{x:g}x")
    axis.invert_yaxis()
    axis.set_title(title)
    axis.tick_params(axis="y", labelsize="small")
    return figure


def heading(result: Result) -> str:
    """The summary table a result belongs to: experiment, cache state, workers, count and size."""
    cold = " (cold cache)" if result.page_cache == "cold" else ""
    workers = f" with {result.workers} workers" if result.workers else ""
    return f"{result.experiment}{cold}{workers}, {result.images} images of {result.size}"


MEMORY_LEGEND = (
    "- memory: peak memory is the most one untimed round allocated beyond its input (tracemalloc: Python and NumPy "
    "allocations); read-many tables show instead its peak private memory in a fresh process, all it allocated, C "
    "libraries included, over the pixels it returns, and apart the pages of mapped files it held (LMDB's, Arrow's "
    "memory maps); a codec floor's images stay in this process, so its ratio is tracemalloc's"
)


def codec_floor_of(backend: str) -> str | None:
    """The name of the row of `backend`'s codec alone, or None for raw pixels and names not available here."""
    tutorial = next((method for method in TUTORIALS.values() if method.name == backend), None)
    if tutorial is None and backend not in storage.available():
        return None
    codec = tutorial.codec if tutorial else storage.backend(backend).codec
    return None if codec is RAW else floor.codec_floor_name(codec)


def tutorial_of(backend: str) -> str | None:
    """The row of the tutorial's method for `backend`'s family (``tutorial-png`` for png-pillow), or None."""
    if backend not in storage.available():
        return None
    method = TUTORIALS.get(storage.backend(backend).family)
    return method.name if method else None


def megabytes(count: int | None) -> str:
    return "" if count is None else f"{count / 1e6:.3g}"


def memory_markdown(result: Result) -> str:
    """The private and mapped cells of a row of a table measured in a fresh process."""
    if result.private_memory is not None:
        return f"{result.private_memory / result.raw_bytes:.2f} | {megabytes(result.mapped_memory)}"
    if result.peak_memory is not None:
        return f"{result.peak_memory / result.raw_bytes:.2f} (tracemalloc) | "
    return " | "


def summary_markdown(runs: list[list[Result]], labels: list[str], about: list[str] = ()) -> str:
    """One table per experiment, count and size: median, images/s, MB/s, bytes per image, ratio to the floor, and
    where the table has those rows, to the codec floor and to the tutorial's method of the backend's family."""
    lines = [f"# Benchmark summary: {labels[0]}", "", *about, MEMORY_LEGEND, ""]
    tables = defaultdict(list)
    for result in runs[0]:
        tables[heading(result)].append(result)
    for title, results in sorted(tables.items()):
        medians = {r.backend: r.median for r in results}
        floor = medians.get(FLOOR)
        fresh = any(r.private_memory is not None for r in results)
        memory = "private (× pixels) | mapped (MB)" if fresh else "peak memory (MB)"
        against = {"× codec": codec_floor_of, "× tutorial": tutorial_of}  # a column where a row has that row
        against = {name: of for name, of in against.items() if any(of(r.backend) in medians for r in results)}
        lines += [f"## {title}", ""]
        lines += [
            f"| backend | median (ms) | images/s | MB/s | bytes/image | × limit | {' | '.join(against)}"
            f"{' | ' if against else ''}{memory} |",
            f"| --- |{' ---: |' * (6 + len(against) + fresh)}",
        ]
        for r in sorted(results, key=lambda r: r.median):
            disk = "" if r.disk_per_image is None else f"{r.disk_per_image:.0f}"
            ratio = "" if floor is None else f"{r.median / floor:.2f}"
            ratios = [
                f"{r.median / medians[mine]:.2f}" if (mine := of(r.backend)) in medians else ""
                for of in against.values()
            ]
            memory_cells = memory_markdown(r) if fresh else megabytes(r.peak_memory)
            lines.append(
                f"| {r.backend} | {1e3 * r.median:.4g} | {r.reads / r.median:.4g} | "
                f"{r.raw_bytes / r.images * r.reads / r.median / 1e6:.4g} | {disk} | {ratio} | "
                f"{''.join(cell + ' | ' for cell in ratios)}{memory_cells} |"
            )
        lines.append("")
    if len(runs) == 2:
        first = {r.name: r for r in runs[0]}
        lines += [f"## {labels[1]} against {labels[0]}", "", "| benchmark | ratio of medians |", "| --- | ---: |"]
        lines += [f"| {r.name} | {r.median / first[r.name].median:.3f} |" for r in runs[1] if r.name in first]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
