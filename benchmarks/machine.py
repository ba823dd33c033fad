"""What a saved run records about the machine: enough to tell machines apart, and what its filesystem costs.

Everything but `VOLATILE_FIELDS` stays the same from run to run on one machine, so that pytest-benchmark's comparison
of two runs (``--benchmark-compare``) sees one machine; `volatile_fields_aside` keeps the others out of it.
`file_creation` is measured on every run: creating files is what a directory store spends most of a store round
on, and on a virtual disk its cost drifts from day to day. `free_page_reporting` says whether memory that stays free
for a moment goes back to the host, which makes the next touch of it slow (docs/benchmarks.md, "Memory the host
takes back").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import storage

LIBRARIES = (
    "numpy",
    "Pillow",
    "imagecodecs",
    "simplejpeg",
    "lmdb",
    "h5py",
    "pyarrow",
    "zarr",
    "tensorstore",
    "webdataset",
    "obstore",
    "pytest-benchmark",
)
VOLATILE_CPU_FIELDS = ("hz_actual", "hz_actual_friendly")  # the live clock: differs on every run
VOLATILE_FIELDS = ("file_creation",)  # measured by every run: left out when two runs' machines are compared
BALLOONS = Path("/sys/bus/virtio/drivers/virtio_balloon")  # a VM's memory balloon devices, where Linux lists them
REPORTING_FEATURE = 5  # VIRTIO_BALLOON_F_REPORTING: the guest hands the host the memory it has free
CREATED_FILES = 200  # per batch; 7 batches take about 0.1 s where a file takes 100 us
CREATED_BYTES = 4096


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def filesystem(path: Path) -> str:
    """Type of the filesystem holding `path` (from /proc/mounts), or "unknown"."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    found = [
        (point, kind) for point, kind in mounts if resolved == point or resolved.startswith(point.rstrip("/") + "/")
    ]
    return max(found, key=lambda mount: len(mount[0]))[1] if found else "unknown"


def _create(directory: Path, count: int) -> list[float]:
    """Seconds to create each of `count` new files in `directory`, write `CREATED_BYTES` to it and close it (no
    fsync)."""
    directory.mkdir()
    data, flags = b"\0" * CREATED_BYTES, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    took = []
    for name in [str(directory / f"{number:09d}.png") for number in range(count)]:
        start = time.perf_counter()
        descriptor = os.open(name, flags, 0o644)
        os.write(descriptor, data)
        os.close(descriptor)
        took.append(time.perf_counter() - start)
    return took


def file_creation(directory: Path, count: int = CREATED_FILES, rounds: int = 3) -> dict[str, float]:
    """What creating a file costs on the filesystem of `directory`: the median microseconds per new file of 4 KiB
    (created, written and closed, no fsync) in a fresh directory right after creating files (`fresh_us`) and right
    after deleting as many (`after_deleting_us`, how a store round starts: ``benchmarks.plugin.fresh_target``),
    `rounds` of `count` files each, alternated, after `count` untimed ones (the first files after a quiet moment
    cost several times more)."""
    scratch = Path(tempfile.mkdtemp(prefix=".file-creation-", dir=directory))
    fresh: list[float] = []
    after: list[float] = []
    try:
        _create(scratch / "warm-up", count)
        for number in range(rounds):
            fresh += _create(scratch / f"fresh{number}", count)
            shutil.rmtree(scratch / f"fresh{number}")
            after += _create(scratch / f"after{number}", count)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    microseconds = {"fresh_us": statistics.median(fresh) * 1e6, "after_deleting_us": statistics.median(after) * 1e6}
    return {**{name: round(value, 1) for name, value in microseconds.items()}, "files": count * rounds}


def free_page_reporting(balloons: Path = BALLOONS) -> bool:
    """Whether this machine is a VM whose kernel hands free memory back to the host (virtio-balloon free page
    reporting): the host then takes the pages away, and touching them again costs a fault in the host each."""
    try:
        features = [device.read_text() for device in balloons.glob("virtio*/features")]
    except OSError:  # not readable here: nothing known
        return False
    return any(bits[REPORTING_FEATURE : REPORTING_FEATURE + 1] == "1" for bits in features)


@contextlib.contextmanager
def volatile_fields_aside(*machine_infos: dict) -> Iterator[None]:
    """Hold the `VOLATILE_FIELDS` of each of `machine_infos` aside for the block (while two runs' machines are
    compared), and put them back after it."""
    aside = [{name: info.pop(name) for name in VOLATILE_FIELDS if name in info} for info in machine_infos]
    try:
        yield
    finally:
        for info, fields in zip(machine_infos, aside):
            info.update(fields)


def update(machine_info: dict, store_dir: str | None) -> None:
    """Drop the volatile CPU fields and add library versions, backends, the stores' filesystem, whether the host takes
    free memory back (`free_page_reporting`) and what creating a file costs (`file_creation`; left out where the
    directory cannot be written)."""
    for name in VOLATILE_CPU_FIELDS:
        machine_info.get("cpu", {}).pop(name, None)
    where = Path(store_dir or tempfile.gettempdir())
    machine_info["libraries"] = library_versions()
    machine_info["backends"] = storage.available()
    machine_info["store_filesystem"] = filesystem(where)
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["free_page_reporting"] = free_page_reporting()
    with contextlib.suppress(OSError):  # a directory that cannot be written: not measured
        machine_info["file_creation"] = file_creation(where)
