"""The answer on screen: one compact table per experiment, count and size, printed at the end of a benchmark run.

Each row is a backend: median time, ratio to the floor (`limit`) where the table has one, images per
second, bytes on disk per image and their ratio to the raw pixels (store tables), and the peak memory a
round allocated beyond its input. The fastest row is marked with ``*``. Lines stay within 120 columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby

from benchmarks.floor import FLOOR

WIDTH = 120
COLUMNS = ("", "backend", "median", "× floor", "images/s", "disk/image", "× raw", "peak memory")


@dataclass(frozen=True)
class Row:
    """What the summary shows of one finished benchmark."""

    group: str
    backend: str
    median: float  # seconds
    images: int  # per round
    disk_per_image: float | None = None
    raw_per_image: float | None = None
    peak_memory: int | None = None  # bytes

    @classmethod
    def of(cls, group: str, median: float, info: dict) -> Row:
        images = int(info.get("images", 1))
        raw = info.get("raw_pixel_bytes")
        return cls(
            group=group,
            backend=info.get("backend", "?"),
            median=median,
            images=int(info.get("reads", images)),  # a random or single read takes fewer than the store holds
            disk_per_image=info.get("disk_bytes_per_image"),
            raw_per_image=raw / images if raw else None,
            peak_memory=info.get("peak_memory_bytes"),
        )


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


def table(rows: list[Row]) -> list[str]:
    """The lines of one group's table, fastest first."""
    floor = next((row.median for row in rows if row.backend == FLOOR.name), None)
    fastest = min(row.median for row in rows)
    cells = [COLUMNS]
    for row in sorted(rows, key=lambda row: row.median):
        disk_ratio = row.disk_per_image / row.raw_per_image if row.disk_per_image and row.raw_per_image else None
        cells.append(
            (
                "*" if row.median == fastest else "",
                row.backend,
                duration(row.median),
                f"{row.median / floor:.2f}" if floor else "",
                f"{row.images / row.median:.3g}",
                size(row.disk_per_image),
                f"{disk_ratio:.2f}" if disk_ratio else "",
                size(row.peak_memory),
            )
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    left = {0, 1}  # the mark and the backend read left to right; numbers line up on the right
    return [
        "  ".join(
            cell.ljust(width) if column in left else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(line, widths))
        ).rstrip()[:WIDTH]
        for line in cells
    ]


def render(rows: Iterable[Row]) -> list[str]:
    """Every group's heading and table, groups in name order."""
    lines = []
    for group, members in groupby(sorted(rows, key=lambda row: row.group), key=lambda row: row.group):
        lines += ["", group, *table(list(members))]
    return lines
