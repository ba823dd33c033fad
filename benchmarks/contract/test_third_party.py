"""A backend from another package: made visible only through the entry-point group ``image_storage.backends``,
it is listed by ``storage.available()`` after the built-ins, passes the contract and is benchmarked by ``--backends``.

The backends are defined here: a directory of ``.npy`` files (lossless), and the same with pixels rounded to
multiples of 8 (lossy, so that the contract's PSNR comparisons run too). The outer tests write a ``.dist-info``
naming them as entry points and run pytest in subprocesses with it on PYTHONPATH. Only there are the backends
registered, so only there are the contract classes below defined, and only here the outer tests.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from numpy.lib import format as npy

import storage
from storage import codecs
from storage._reading import Batch, stack_or_list
from storage.png_store import PngStore
from storage.testing import StoreContract

ROOT = Path(__file__).resolve().parents[2]
IMAGE_NAME = re.compile(r"\d{9}\.npy")
# What the .dist-info lists; the entry point named png must not replace the built-in png backend.
ENTRY_POINTS = """\
[image_storage.backends]
npy-directory = benchmarks.contract.test_third_party:NpyDirectoryStore
npy-quantized = benchmarks.contract.test_third_party:NpyQuantizedStore
png = benchmarks.contract.test_third_party:NpyDirectoryStore
"""


def save(path: Path, array: np.ndarray, durable: bool) -> None:
    """Write `array` as a .npy file, flushed to disk when `durable`."""
    encoded = io.BytesIO()
    np.save(encoded, array, allow_pickle=False)  # to a file, numpy reports a full disk without its errno
    with path.open("wb") as file:
        file.write(encoded.getbuffer())
        if durable:
            os.fsync(file.fileno())


def load(path: Path) -> np.ndarray:
    """The array in a .npy file, whose header is checked against the file's size before anything is made."""
    if path.exists() and not path.is_file():  # a FIFO would block the read, a device never end it
        raise storage.DamagedStoreError(f"{path} is not a regular file")
    data = path.read_bytes()
    stream = io.BytesIO(data)
    npy.read_magic(stream)
    shape, fortran_order, dtype = npy.read_array_header_1_0(stream)
    if fortran_order or dtype.hasobject or math.prod(shape) * dtype.itemsize != len(data) - stream.tell():
        raise storage.DamagedStoreError(f"{path} does not hold the array its header describes")
    return np.frombuffer(data, dtype, offset=stream.tell()).reshape(shape)


class NpyDirectoryStore(storage.Store):
    """One ``.npy`` file per image, and a labels file, replaced after the images are written: the commit record."""

    name = "npy-directory"
    capabilities = storage.Capabilities(directory=True)
    labels_file = "labels.npy"  # its name marks the directory as a store of this backend

    def _start(self, create: bool) -> None:
        if create:
            self.location.mkdir(exist_ok=True)
            self._commit(np.empty(0, np.int64))
        self._labels = load(self.location / self.labels_file)
        if self._labels.dtype != np.int64 or self._labels.ndim != 1:
            raise storage.DamagedStoreError(f"{self.location / self.labels_file} holds no int64 labels")

    @classmethod
    def is_store(cls, location: Path) -> bool:
        return (location / cls.labels_file).is_file()

    @classmethod
    def files(cls, location: Path) -> list[Path]:
        images = sorted(path for path in location.iterdir() if IMAGE_NAME.fullmatch(path.name))
        return [location / cls.labels_file, *images]

    def _count(self) -> int:
        return len(self._labels)

    def _stored(self, image: np.ndarray) -> np.ndarray:
        """What is kept of an image."""
        return image

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        images = [image for batch in batches for image in batch]
        written = []
        try:
            for image_id, image in enumerate(images, len(self._labels)):
                written.append(self.location / f"{image_id:09d}.npy")
                save(written[-1], self._stored(image), self.durable)
            self._commit(np.concatenate([self._labels, labels]))
        except BaseException:
            if len(load(self.location / self.labels_file)) == len(self._labels):  # not committed: no orphans
                for path in written:
                    path.unlink(missing_ok=True)
            raise

    def _commit(self, labels: np.ndarray) -> None:
        staging = self.location / "labels.tmp"
        try:
            save(staging, labels, self.durable)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        os.replace(staging, self.location / self.labels_file)
        if self.durable:
            directory = os.open(self.location, os.O_RDONLY)
            os.fsync(directory)
            os.close(directory)
        self._labels = labels

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        images = (load(self.location / f"{image_id:09d}.npy") for image_id in ids.tolist())
        return stack_or_list(images, len(ids)), self._labels[ids]

    def _close(self) -> None:
        pass


@dataclass(frozen=True)
class Quantized(codecs.Codec):
    """uint8 pixels rounded to a multiple of 8: at most 4 off, so a PSNR of at least 36 dB."""

    name = "quantized"
    holds = "uint8 images"
    lossless = False
    min_psnr = 36.0

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        return dtype == np.uint8 and len(shape) in (2, 3)

    def encode(self, image: np.ndarray) -> bytes:
        return np.minimum((image.astype(np.uint16) + 4) // 8 * 8, 255).astype(np.uint8).tobytes()

    def decode(self, data: codecs.Data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return codecs.RAW.decode(data, shape, dtype)


@dataclass(frozen=True)
class QuantizedOptions(storage.Options):
    @property
    def codec(self) -> codecs.Codec:
        return Quantized()


class NpyQuantizedStore(NpyDirectoryStore):
    """The same files, of images rounded by `Quantized`: a lossy backend."""

    name = "npy-quantized"
    labels_file = "quantized-labels.npy"
    Options = QuantizedOptions

    def _stored(self, image: np.ndarray) -> np.ndarray:
        return self.codec.decode(self.codec.encode(image), image.shape, image.dtype)


if "npy-directory" in storage.available():  # in the subprocess that registered the backends

    class TestNpyDirectory(StoreContract):
        backend = "npy-directory"

    class TestNpyQuantized(StoreContract):
        backend = "npy-quantized"

    def test_entry_points_come_after_the_built_ins_which_they_cannot_replace():
        plugged_in = ("npy-directory", "npy-quantized")
        assert storage.available()[-2:] == storage.available(variants=False)[-2:] == plugged_in
        assert set(storage.available()[:-2]) <= set(storage.REGISTRY) | set(storage.VARIANTS)
        assert storage.backend("png").store_class is PngStore  # the entry point named png is ignored

else:  # in the test run itself

    class Run(NamedTuple):
        process: subprocess.Popen
        log: Path

    @pytest.fixture(scope="module")
    def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
        """The contract and a benchmark, each run by pytest in a subprocess whose PYTHONPATH holds a .dist-info
        that lists the backends above as entry points; started together, so that they overlap."""
        folder = tmp_path_factory.mktemp("third-party")
        dist_info = folder / "npy_directory_backend-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: npy-directory-backend\nVersion: 1.0\n")
        (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
        environment = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
            "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "dev"),  # the built-ins get the thorough one
        }
        pytest_run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        contract = [__file__, "--benchmark-disable", "-k", "not TestNpyQuantized or roundtrip or every_name"]
        benchmark = [
            *("--benchmark-only", "benchmarks/experiments/test_store.py", "-k", "test_store_many"),
            *("--backends=npy-directory", "--image-counts=5", "--image-sizes=4x4"),
            *("--benchmark-max-time=0.001", "--benchmark-min-rounds=1"),
        ]
        outputs = {
            "contract": f"--junitxml={folder / 'report.xml'}",
            "benchmark": f"--benchmark-json={folder / 'run.json'}",
        }
        started = {}
        for name, arguments in {"contract": contract, "benchmark": benchmark}.items():
            log = folder / f"{name}.log"
            with log.open("w") as output:
                command = [*pytest_run, *arguments, outputs[name]]
                process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)
            started[name] = Run(process, log)
        yield started
        for run in started.values():
            run.process.kill()  # nothing happens to one that has finished
            run.process.wait()

    def finished(run: Run) -> Path:
        """The folder of the run's output files, once the run has passed."""
        run.process.wait(timeout=300)
        assert run.process.returncode == 0, run.log.read_text()[-4000:]
        return run.log.parent

    def test_entry_point_backends_are_listed_and_pass_the_contract(runs):
        """The lossless backend passes every contract test; the lossy one, which shares its files, the round trips
        and the test of names sharing a store: those compare images, so they take the PSNR path."""
        report = finished(runs["contract"]) / "report.xml"
        ran: dict[str, set[str]] = {}
        for case in ElementTree.parse(report).iter("testcase"):
            assert not list(case), ElementTree.tostring(case, encoding="unicode")[:1000]  # failed or skipped
            ran.setdefault(case.get("classname").rsplit(".", 1)[-1], set()).add(case.get("name").split("[")[0])
        contract = {name for name in dir(StoreContract) if name.startswith("test_")}
        assert ran == {
            "TestNpyDirectory": contract,
            "TestNpyQuantized": {name for name in contract if "roundtrip" in name or "every_name" in name},
            "test_third_party": {"test_entry_points_come_after_the_built_ins_which_they_cannot_replace"},
        }

    def test_a_benchmark_runs_an_entry_point_backend(runs):
        rows = json.loads((finished(runs["benchmark"]) / "run.json").read_text())["benchmarks"]
        assert {row["name"] for row in rows} == {
            "test_store_many[npy-directory-n=5-4x4]",
            "test_store_many[limit-n=5-4x4]",
        }
        assert {row["extra_info"]["backend"] for row in rows} == {"npy-directory", "limit"}
