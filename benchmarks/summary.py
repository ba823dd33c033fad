"""The answer on screen: one compact table per experiment, count and size, printed at the end of a benchmark run.

Each row is a backend: median time, ratio to the floor (`limit`) where the table has one, ratio to the
floor of its codec (`limit-<codec>`, the codec alone) where it encodes its images, images per second,
bytes on disk per image and their ratio to the raw pixels (store tables), memory, the ratio to the 2019
tutorial's method of the same family where the table has one (`tutorial-png`), and for object stores the requests
a round sent per image. The fastest row is marked with ``*``. Lines stay within 120 columns.

Memory is the peak a round allocated beyond its input (tracemalloc), except in tables whose rows were measured
in a fresh process (read-many): there, private memory over the pixels returned (``× pixels``) and the pages of
mapped files (``mapped``), apart; a row measured by tracemalloc among them (a codec floor, whose images stay in
this process) has its ratio marked ``t``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby

from benchmarks.floor import FLOOR
from benchmarks.report import Result, codec_floor_of, tutorial_of
from benchmarks.tutorial import TUTORIAL_PREFIX

WIDTH = 120
COLUMNS = ("", "backend", "median", "× floor", "× codec", "images/s", "disk/image", "× raw")
TUTORIAL_COLUMN = "× tutorial"  # in tables that have a row of the tutorial's methods
TRACED = "t"  # marks a ratio counted by tracemalloc in a table of fresh-process figures


def duration(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def size(count: float | None) -> str:
    if count is None:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count:.0f} B"


def table(rows: list[Result]) -> list[str]:
    """The lines of one group's table, fastest first."""
    floor = next((row.median for row in rows if row.backend == FLOOR.name), None)
    medians = {row.backend: row.median for row in rows}
    fastest = min(row.median for row in rows)
    requests = any(row.requests_per_image is not None for row in rows)  # a table of object stores
    tutorial = any(row.backend.startswith(TUTORIAL_PREFIX) for row in rows)
    private = any(row.private_memory is not None for row in rows)  # measured in a fresh process (read-many)
    memory = ("× pixels", "mapped") if private else ("peak memory",)
    cells = [(*COLUMNS, *memory, *([TUTORIAL_COLUMN] if tutorial else []), *(["requests/image"] if requests else []))]
    for row in sorted(rows, key=lambda row: row.median):
        disk_ratio = row.disk_per_image / (row.raw_bytes / row.images) if row.disk_per_image and row.raw_bytes else None
        cells.append(
            (
                "*" if row.median == fastest else "",
                row.backend,
                duration(row.median),
                f"{row.median / floor:.2f}" if floor else "",
                f"{row.median / medians[codec]:.2f}" if (codec := codec_floor_of(row.backend)) in medians else "",
                f"{row.reads / row.median:.3g}",
                size(row.disk_per_image),
                f"{disk_ratio:.2f}" if disk_ratio else "",
                *(memory_cells(row) if private else [size(row.peak_memory)]),
                *(
                    [f"{row.median / medians[mine]:.2f}" if (mine := tutorial_of(row.backend)) in medians else ""]
                    if tutorial
                    else []
                ),
                *([f"{row.requests_per_image:.3g}" if row.requests_per_image is not None else ""] if requests else []),
            )
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(cells[0]))]
    left = {0, 1}  # the mark and the backend read left to right; numbers line up on the right
    return [
        "  ".join(
            cell.ljust(width) if column in left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths))
        ).rstrip()[:WIDTH]
        for line in cells
    ]


def memory_cells(row: Result) -> list[str]:
    """Private memory over the pixels returned and the mapped pages (tracemalloc's ratio, marked, where the row
    has no fresh-process figure)."""
    if row.private_memory is not None:
        return [f"{row.private_memory / row.raw_bytes:.2f}", size(row.mapped_memory)]
    if row.peak_memory is not None:
        return [f"{row.peak_memory / row.raw_bytes:.2f}{TRACED}", ""]
    return ["", ""]


def render(rows: Iterable[Result]) -> list[str]:
    """Every group's heading and table, groups in name order."""
    lines = []
    for group, members in groupby(sorted(rows, key=lambda row: row.group), key=lambda row: row.group):
        lines += ["", group, *table(list(members))]
    return lines
