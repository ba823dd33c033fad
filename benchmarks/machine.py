"""What a saved run records about the machine: enough to tell machines apart, nothing that changes per run."""

from __future__ import annotations

import os
import tempfile
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


def update(machine_info: dict, store_dir: str | None) -> None:
    """Drop the volatile CPU fields and add library versions, backends and the stores' filesystem."""
    for name in VOLATILE_CPU_FIELDS:
        machine_info.get("cpu", {}).pop(name, None)
    machine_info["libraries"] = library_versions()
    machine_info["backends"] = storage.available()
    machine_info["store_filesystem"] = filesystem(Path(store_dir or tempfile.gettempdir()))
    machine_info["cpu_count"] = os.cpu_count()
