"""Read-many's memory in a fresh process (benchmarks.harness.read_memory): private memory counts what C code
allocates, which tracemalloc misses, and the pages of mapped files are reported apart."""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

import storage
from benchmarks import harness
from benchmarks.data import synthetic
from benchmarks.floor import FLOOR
from benchmarks.tutorial import TUTORIALS

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc/self/status")

SIZE = 64 << 20  # what the stand-ins below allocate or map


class StandIn:
    """Opens like a store (a subject of the harness); its read does `kind` with SIZE bytes and returns 1 byte."""

    local = True

    def __init__(self, kind: str) -> None:
        self.name = kind
        self.kind = kind

    def open(self, path: Path, mode: str = "r", *, durable: bool = True) -> StandInHandle:
        return StandInHandle(self.kind, path)


class StandInHandle:
    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.file = open(path, "rb") if kind == "file map" else None  # noqa: SIM115 - closed by close()
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if self.file else None

    def read(self) -> tuple[np.ndarray, None]:
        if self.kind == "libc malloc":  # allocated, touched and freed by C code: a peak tracemalloc never sees
            libc = ctypes.CDLL(None)
            libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
            libc.free.argtypes = [ctypes.c_void_p]
            block = libc.malloc(SIZE)
            ctypes.memset(block, 1, SIZE)
            libc.free(block)
            return np.ones(1, np.uint8), None
        if self.kind == "anonymous map":  # what C allocators (jemalloc, mimalloc) take from the kernel
            region = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE)
            pages = np.frombuffer(region, np.uint8)
            pages[:] = 1  # in place: no temporary array
            first = pages[:1].copy()
            del pages
            region.close()
            return first, None
        pages = np.frombuffer(self.map, np.uint8)  # "file map": every page of the file, touched
        largest = pages.max(keepdims=True)
        del pages
        return largest, None

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.file.close()

    def __enter__(self) -> StandInHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def mapped_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("memory") / "pages"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, SIZE, np.uint8).tobytes())
    return path


@pytest.mark.parametrize("kind", ["libc malloc", "anonymous map"])
def test_memory_that_c_code_allocates_is_private_though_tracemalloc_misses_it(kind, mapped_file):
    subject = StandIn(kind)
    untraced = harness.peak_memory(lambda: harness.read_all(subject, mapped_file))
    assert untraced < SIZE / 100
    found = harness.read_memory(subject, mapped_file)
    assert SIZE * 0.99 <= found.private < SIZE * 1.1  # freed before the read returned: the peak counts it all the same
    assert found.mapped < SIZE / 10


def test_pages_of_a_mapped_file_are_reported_apart(mapped_file):
    found = harness.read_memory(StandIn("file map"), mapped_file)
    assert SIZE * 0.99 <= found.mapped < SIZE * 1.1
    assert found.private < SIZE / 10


def test_off_linux_there_is_no_figure(monkeypatch, mapped_file):
    monkeypatch.setattr(harness, "PROC_STATUS", mapped_file.parent / "no such file")
    assert harness.read_memory(StandIn("libc malloc"), mapped_file) is None


def test_a_failed_read_is_named(tmp_path):
    with pytest.raises(RuntimeError, match=r"(?s)memory of a read of limit in a fresh process.*FileNotFoundError"):
        harness.read_memory(FLOOR, tmp_path / "missing")


SUBJECTS = [FLOOR, *TUTORIALS.values()] + [
    storage.backend(name) for name in storage.available(variants=False) if storage.backend(name).local
]


@pytest.mark.parametrize("subject", SUBJECTS, ids=lambda subject: subject.name)
def test_read_many_holds_at_least_the_pixels_it_returns(subject, tmp_path):
    images, labels = synthetic(1000, (32, 32, 3))
    harness.store(subject, tmp_path / "store", images, labels, durable=False)
    found = harness.read_memory(subject, tmp_path / "store")
    assert found.private >= 0.9 * images.nbytes
    assert found.mapped >= 0
