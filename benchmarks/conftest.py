"""The benchmark grid (backend x image count x image size) and what every benchmark shares.

A benchmark asks for `case` to be parametrised over the grid; ``@pytest.mark.limit_row`` adds
the plain-file floor as backend ``limit``, ``@pytest.mark.single_image`` fixes the count at 1.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import storage
from benchmarks import machine, plain
from benchmarks.contract import assert_images_equal
from benchmarks.data import Dataset, parse_size, size_id
from storage._base import allocated_bytes

PRESETS = {
    "default": ((100, 10_000), ((32, 32, 3),)),
    "classic": ((1, 10, 100, 1_000, 10_000, 100_000), ((32, 32, 3),)),
    "large": ((10, 100, 1_000), ((256, 256, 3), (512, 512, 3))),
    "smoke": ((20, 300), ((32, 32, 3),)),  # timing off: every benchmark once, as a quick correctness check
    "training": ((10_000,), ((32, 32, 3),)),  # the @pytest.mark.training experiments: how training reads
    "variants": ((1_000,), ((32, 32, 3), (256, 256, 3))),  # every backend next to its variants (storage.VARIANTS)
}
WITH_TRAINING = ("smoke", "training")  # the presets that run the training experiments
MAX_ROUNDS = 200
RANDOM_READS = 1000  # ids per round of the random-access benchmarks (fewer when a store holds fewer)


@dataclass(frozen=True)
class Grid:
    backends: tuple[str, ...]
    counts: tuple[int, ...]
    sizes: tuple[tuple[int, ...] | None, ...]  # None: the dataset's own images (cifar10, folder)
    dataset: Dataset
    training: bool = False  # run the @pytest.mark.training experiments (and only they, unless smoke)


@dataclass(frozen=True)
class Case:
    """One cell of the grid; its str is the readable test id, e.g. ``lmdb-n=1000-32x32x3``."""

    backend: str
    count: int | None  # None: a single image, left out of the id
    size: tuple[int, ...] | None
    dataset: Dataset

    @property
    def size_label(self) -> str:
        return size_id(self.size) if self.size else self.dataset.id

    def __str__(self) -> str:
        return "-".join([self.backend, *([f"n={self.count}"] if self.count else []), self.size_label])

    def group(self, experiment: str) -> str:
        """The table this case is printed in: every backend side by side for one experiment, count and size."""
        return " ".join([experiment, *([f"n={self.count}"] if self.count else []), self.size_label])

    @property
    def images(self) -> int:
        return self.count or 1


def grid(config: pytest.Config) -> Grid:
    preset = config.getoption("preset") or ("smoke" if config.getoption("benchmark_disable") else "default")
    try:
        counts, sizes = PRESETS[preset]
    except KeyError:
        raise pytest.UsageError(f"--preset is one of {', '.join(PRESETS)}") from None
    try:
        dataset = Dataset.parse(config.getoption("dataset"))
        if config.getoption("image_counts"):
            counts = tuple(int(count) for count in config.getoption("image_counts").split(","))
        if config.getoption("image_sizes"):
            sizes = tuple(parse_size(size) for size in config.getoption("image_sizes").split(","))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    if min(counts) < 1:
        raise pytest.UsageError("--image-counts must be positive")
    if dataset.kind != "synthetic":
        if config.getoption("image_sizes"):
            raise pytest.UsageError(
                "--image-sizes applies to the synthetic dataset; cifar10 and folder keep their own sizes"
            )
        sizes = (None,)
    backends = storage.available(variants=preset == "variants")
    if config.getoption("backends"):
        backends = tuple(config.getoption("backends").split(","))
        unknown = set(backends) - set(storage.available())
        if unknown:
            raise pytest.UsageError(
                f"--backends: {', '.join(sorted(unknown))} not available; available: {', '.join(storage.available())}"
            )
    return Grid(backends, counts, sizes, dataset, training=preset in WITH_TRAINING)


GRID = pytest.StashKey[Grid]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "limit_row: also run the plain-file floor, as backend 'limit'")
    config.addinivalue_line("markers", "single_image: one image per store instead of the grid's counts")
    config.addinivalue_line("markers", "gate: end-to-end runs of the regression gate (about a minute; pytest -m gate)")
    config.addinivalue_line("markers", "training: how training reads; runs with --preset=training (and smoke)")
    config.stash[GRID] = grid(config)  # bad options stop the run here, as usage errors


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The training experiments run in their own preset (and in smoke); the training preset runs only them."""
    preset = config.getoption("preset")
    if preset == "smoke" or (preset is None and config.getoption("benchmark_disable")):
        return
    wanted = preset == "training"
    kept = [
        item for item in items if "case" not in item.fixturenames or bool(item.get_closest_marker("training")) == wanted
    ]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.stash[GRID]
    backends = chosen.backends + (("limit",) if metafunc.definition.get_closest_marker("limit_row") else ())
    counts = (None,) if metafunc.definition.get_closest_marker("single_image") else chosen.counts
    cases = [Case(b, n, size, chosen.dataset) for n in counts for size in chosen.sizes for b in backends]
    metafunc.parametrize("case", cases, ids=str)


def _free_memory() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def skip_unless_room(case: Case, where: Path) -> None:
    """Skip a cell whose data would not fit the free memory (source + result) or disk (two stores)."""
    if case.size is None:
        return  # a real dataset's size is only known once loaded; it was downloaded to this disk already
    raw = case.images * math.prod(case.size)
    memory, disk, gib = _free_memory(), shutil.disk_usage(where).free, 1 << 30
    if 3 * raw > memory:
        pytest.skip(f"{case} needs about {3 * raw / gib:.1f} GiB of memory; {memory / gib:.1f} GiB available")
    if 2 * raw > disk:
        pytest.skip(f"{case} needs about {2 * raw / gib:.1f} GiB of disk in {where}; {disk / gib:.1f} GiB free")


@pytest.fixture(scope="session")
def store_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = request.config.getoption("store_dir")
    root = Path(chosen) / f"image-storage-{os.getpid()}" if chosen else tmp_path_factory.mktemp("stores")
    root.mkdir(parents=True, exist_ok=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def source(case: Case, store_root: Path) -> tuple[np.ndarray | list, np.ndarray]:
    """The images and labels of this case, made or loaded outside any timed region."""
    skip_unless_room(case, store_root)
    try:
        return case.dataset.load(case.images, case.size)
    except ValueError as error:  # a real dataset with fewer images than asked for
        pytest.skip(str(error))


def store(backend: str, path: Path, images: np.ndarray | list, labels: np.ndarray, durable: bool = True) -> None:
    """Create a store, append everything, close it (fsynced when `durable`): what a store benchmark times."""
    if backend == "limit":
        plain.write(path, plain.pixel_bytes(images), durable)
        return
    with storage.open(backend, path, "x", durable=durable) as new_store:
        new_store.append(images, labels)


def read_all(backend: str, path: Path, nbytes: int) -> tuple[np.ndarray | list, np.ndarray | None]:
    """Open a store, read every image in id order, close: what a read-many benchmark times."""
    if backend == "limit":
        return plain.read(path, nbytes), None
    with storage.open(backend, path) as opened:
        return opened.read()


def assert_read_back(backend: str, got: tuple, images: np.ndarray | list, labels: np.ndarray) -> None:
    """What was read equals what was written (checked outside the timed region)."""
    got_images, got_labels = got
    if backend == "limit":
        assert np.array_equal(got_images, plain.pixel_bytes(images))
        return
    if isinstance(images, np.ndarray):
        assert isinstance(got_images, np.ndarray)
        assert got_images.dtype == images.dtype
        assert np.array_equal(got_images, images)
    else:
        assert_images_equal(got_images, images)
    assert np.array_equal(got_labels, labels)


def measure_store(benchmark, run_rounds, experiment: str, case: Case, source, fresh_target, durable: bool) -> None:
    """Time `store` from an empty target every round, then record disk usage and check the last store."""
    images, labels = source
    path, setup = fresh_target
    describe(benchmark, experiment, case, images, durable=durable)
    if not durable:
        benchmark.group += " no-fsync"
    payload = plain.pixel_bytes(images) if case.backend == "limit" else images  # flattened outside timing
    run_rounds(lambda target: store(case.backend, target, payload, labels, durable), setup)
    record_disk_usage(benchmark, case, path, raw_bytes(images))
    assert_read_back(case.backend, read_all(case.backend, path, raw_bytes(images)), images, labels)


@dataclass
class BuiltStores:
    """Stores built once per session for the read benchmarks, outside any timed region."""

    root: Path
    built: dict

    def get(self, case: Case, images: np.ndarray | list, labels: np.ndarray) -> Path:
        key = (case.backend, case.images, case.size, case.dataset)
        if key not in self.built:
            path = self.root / f"{case}-read"
            store(case.backend, path, images, labels)
            self.built[key] = path
        return self.built[key]


@pytest.fixture(scope="session")
def durable(pytestconfig: pytest.Config) -> bool:
    """Whether store benchmarks fsync (the default) or, with --no-fsync, measure the page-cache cost only."""
    return not pytestconfig.getoption("no_fsync")


@pytest.fixture(scope="session")
def built_stores(store_root: Path) -> BuiltStores:
    return BuiltStores(store_root, {})


@pytest.fixture
def fresh_target(case: Case, store_root: Path):
    """A setup for `benchmark.pedantic`: every round gets an empty target path (cleared outside timing)."""
    path = store_root / f"{case}-store"

    def setup():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        return (path,), {}

    yield path, setup
    setup()


@pytest.fixture
def run_rounds(benchmark, pytestconfig: pytest.Config):
    """``run_rounds(target, setup)``: `benchmark.pedantic` with enough rounds to fill --benchmark-max-time.

    At least --benchmark-min-rounds; one untimed round first measures the cost (and, for reads,
    warms the page cache). With benchmarking disabled, one plain call.
    """

    def run(target, setup=no_setup):
        if benchmark.disabled:
            return benchmark.pedantic(target, setup=setup)
        args, _ = setup()
        start = time.perf_counter()
        target(*args)
        elapsed = max(time.perf_counter() - start, 1e-9)
        min_rounds = int(pytestconfig.getoption("benchmark_min_rounds"))  # defaults arrive as strings
        max_time = float(pytestconfig.getoption("benchmark_max_time"))
        rounds = min(MAX_ROUNDS, max(min_rounds, math.ceil(max_time / elapsed)))
        return benchmark.pedantic(target, setup=setup, rounds=rounds)

    return run


def no_setup():
    return (), {}


def describe(benchmark, experiment: str, case: Case, images: np.ndarray | list, **info: object) -> None:
    """Name the table and record what is measured, before the benchmark runs."""
    benchmark.group = case.group(experiment)
    benchmark.extra_info.update(
        experiment=experiment,
        backend=case.backend,
        images=case.images,
        image_size=case.size_label,
        dataset=case.dataset.id,
        raw_pixel_bytes=raw_bytes(images),
        **info,
    )


def random_ids(count: int) -> np.ndarray:
    """The seeded random ids a random-access round reads from a store of `count` images."""
    return np.random.default_rng(0).choice(count, size=min(RANDOM_READS, count), replace=False)


def raw_bytes(images: np.ndarray | list) -> int:
    return int(images.nbytes) if isinstance(images, np.ndarray) else sum(int(image.nbytes) for image in images)


def record_disk_usage(benchmark, case: Case, path: Path, raw: int) -> None:
    """Bytes allocated on disk, per image and relative to the raw pixels, and the file count, of a closed store."""
    files = [path] if case.backend == "limit" else storage.backend(case.backend).files(path)
    allocated = sum(allocated_bytes(file) for file in files)
    benchmark.extra_info.update(
        disk_bytes=allocated,
        disk_bytes_per_image=allocated / case.images,
        disk_ratio_to_raw=allocated / raw,
        files=len(files),
    )


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine.update(machine_info, config.getoption("store_dir"))
