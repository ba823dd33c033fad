"""The benchmark grid as a pytest plugin: options, presets, the cases, and the fixtures experiments share.

Registered by the root ``conftest.py``. An experiment asks for `case` to be parametrised over the
grid (backend × image count × image size); ``@pytest.mark.limit_row`` adds the floor
(``benchmarks.floor``) as the row ``limit``, ``@pytest.mark.single_image`` fixes the count at 1,
and ``@pytest.mark.training`` puts an experiment in the training preset.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

import storage
from benchmarks import machine, report, summary
from benchmarks.data import Dataset, parse_size, size_id
from benchmarks.floor import FLOOR, OBJECT_FLOOR, CodecFloor
from benchmarks.harness import Source, Subject, files_for, peak_memory, store
from benchmarks.tutorial import TUTORIALS
from storage.codecs import RAW, Codec
from storage.testing.places import ObjectPlace

CIFAR = (32, 32, 3)


@dataclass(frozen=True)
class Preset:
    """A named grid; `training`: True runs only the training experiments, False all others, None every one."""

    counts: tuple[int, ...]
    sizes: tuple[tuple[int, ...], ...]
    about: str
    training: bool | None = False
    variants: bool = False  # every variant beside its backend, unless --backends says otherwise
    paired: bool = False  # counts[i] goes with sizes[i] only, rather than every count with every size
    object_store: bool | None = False  # the object-store backends rather than the local ones; None: both
    tutorial: bool = False  # the 2019 tutorial's methods beside their backends (benchmarks.tutorial)


PRESETS = {
    "default": Preset((100, 10_000), (CIFAR,), "100 and 10,000 images of 32x32x3"),
    "classic": Preset(
        (1, 10, 100, 1_000, 10_000, 100_000),
        (CIFAR,),
        "the 2019 tutorial's 1 to 100,000 of 32x32x3, with its methods as rows",
        tutorial=True,
    ),
    "large": Preset((10, 100, 1_000), ((256, 256, 3), (512, 512, 3)), "10 to 1,000 images of 256x256x3 and 512x512x3"),
    "training": Preset((10_000,), (CIFAR,), "the training-read experiments only, 10,000 of 32x32x3", training=True),
    "variants": Preset(
        (1_000,), (CIFAR, (256, 256, 3)), "1,000 of 32x32x3 and 256x256x3, every variant too", variants=True
    ),
    "formats": Preset(
        (10_000, 1_000),
        (CIFAR, (256, 256, 3)),
        "10,000 of 32x32x3 and 1,000 of 256x256x3, every experiment, backend and variant",
        training=None,
        variants=True,
        paired=True,
    ),
    "floors": Preset(
        (10_000, 100_000, 1_000),
        (CIFAR, CIFAR, (256, 256, 3)),
        "10,000 and 100,000 of 32x32x3 and 1,000 of 256x256x3, every backend and variant, the tutorial's methods "
        "beside them: the grid of the floors issue",
        variants=True,
        paired=True,
        tutorial=True,
    ),
    "object-store": Preset(
        (10_000, 1_000),
        (CIFAR, (256, 256, 3)),
        "the object-store backends (s3, s3-shards, 1, 8 and 32 requests in flight) at 10,000 of 32x32x3 and 1,000 "
        "of 256x256x3, every experiment that makes sense remotely",
        training=None,
        variants=True,
        paired=True,
        object_store=True,
    ),
    "smoke": Preset(
        (20, 300),
        (CIFAR,),
        "20 and 300 images, every experiment and backend (object stores too); the default with timing off",
        None,
        object_store=None,
        tutorial=True,
    ),
}
MAX_ROUNDS = 200


def parse_preset(text: str) -> str:
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"{text!r} is no preset; presets: {', '.join(PRESETS)}")
    return text


def parse_backends(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in storage.available()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'no backend'} not available; available: {', '.join(storage.available())}"
        )
    return names


def parse_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(count) for count in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"image counts are positive integers such as 100,10000; got {text!r}"
        ) from None
    if min(counts) < 1:
        raise argparse.ArgumentTypeError(f"image counts must be positive; got {text!r}")
    return counts


def parse_sizes(text: str) -> tuple[tuple[int, ...], ...]:
    try:
        return tuple(parse_size(size) for size in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_dataset(text: str) -> Dataset:
    try:
        return Dataset.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("image storage", "image storage benchmark grid")
    presets = "; ".join(f"{name}: {preset.about}" for name, preset in PRESETS.items())
    group.addoption("--preset", type=parse_preset, help=f"named grid (default: default). {presets}")
    group.addoption(
        "--backends",
        type=parse_backends,
        help="comma-separated backends and variants from storage.available(), e.g. lmdb,lmdb-png "
        "(default: every backend; with --preset=variants or formats, every variant too)",
    )
    group.addoption("--image-counts", type=parse_counts, help="comma-separated image counts, e.g. 100,10000")
    group.addoption("--image-sizes", type=parse_sizes, help="comma-separated HxWxC or HxW sizes, e.g. 32x32x3,64x64")
    group.addoption(
        "--dataset",
        type=parse_dataset,
        default=Dataset("synthetic"),
        help="synthetic, cifar10:DIR (CIFAR-10 python batches) or folder:DIR (class-per-folder images)",
    )
    group.addoption(
        "--fail-on-bad-image",
        action="store_true",
        help="with --dataset folder:DIR, stop at an image that cannot be decoded (default: leave it out and warn)",
    )
    group.addoption(
        "--store-files",
        action="store_true",
        help="with --dataset folder:DIR, backends whose encoding is the files' format (jpeg, parquet-jpeg, ...) "
        "keep the files as they are (append(..., encoded=True)) instead of encoding the decoded pixels again",
    )
    group.addoption(
        "--no-fsync",
        action="store_true",
        help="store benchmarks open stores with durable=False: no fsync, the page-cache cost only",
    )
    group.addoption("--store-dir", help="directory for the stores under test (default: pytest's temporary directory)")
    group.addoption(
        "--tutorial",
        action="store_true",
        help="add the 2019 tutorial's methods (tutorial-png, tutorial-hdf5) to the store-many and read-many tables "
        "beside their backends (the classic preset has them)",
    )


@dataclass(frozen=True)
class Grid:
    backends: tuple[str, ...]
    counts: tuple[int, ...]
    sizes: tuple[tuple[int, ...] | None, ...]  # None: the dataset's own images (cifar10, folder)
    dataset: Dataset
    training: bool | None = False  # as Preset.training
    paired: bool = False  # as Preset.paired
    tutorial: bool = False  # as Preset.tutorial

    def cells(self) -> list[tuple[int, tuple[int, ...] | None]]:
        """The (count, size) cells, in order."""
        if self.paired:
            return list(zip(self.counts, self.sizes))
        return [(count, size) for count in self.counts for size in self.sizes]


def grid(options: argparse.Namespace) -> Grid:
    """The grid the (parsed) command-line options choose; pytest.UsageError for a combination that makes none."""
    name = options.preset or ("smoke" if options.benchmark_disable else "default")
    preset = PRESETS[name]
    counts = options.image_counts or preset.counts
    sizes = options.image_sizes or preset.sizes
    dataset = replace(options.dataset, strict=options.fail_on_bad_image, as_files=options.store_files)
    if options.store_files and dataset.kind != "folder":
        raise pytest.UsageError("--store-files applies to --dataset folder:DIR, whose images are files")
    if dataset.kind != "synthetic":
        if options.image_sizes:
            raise pytest.UsageError("--image-sizes applies to the synthetic dataset; cifar10 and folder keep their own")
        sizes = (None,)
        try:
            dataset.check(max(counts))
        except ValueError as error:
            raise pytest.UsageError(f"{error}; choose counts with --image-counts") from None
    backends = options.backends or tuple(
        name for name in storage.available(variants=preset.variants) if _kept(name, preset)
    )
    paired = preset.paired and not (options.image_counts or options.image_sizes or dataset.kind != "synthetic")
    tutorial = (preset.tutorial or options.tutorial) and dataset.kind != "folder"  # a folder's images may differ
    return Grid(backends, counts, sizes, dataset, preset.training, paired, tutorial)


def _kept(name: str, preset: Preset) -> bool:
    """Whether a preset runs a backend by default: object-store backends in the object-store presets only."""
    return preset.object_store is None or storage.backend(name).capabilities.local != preset.object_store


@dataclass(frozen=True)
class Case:
    """One cell of the grid; its str is the readable test id, e.g. ``lmdb-n=1000-32x32x3``."""

    subject: Subject
    count: int | None  # None: a single image, left out of the id
    size: tuple[int, ...] | None
    dataset: Dataset

    @property
    def size_label(self) -> str:
        return size_id(self.size) if self.size else self.dataset.size_label(self.images)

    def __str__(self) -> str:
        return "-".join([self.subject.name, *([f"n={self.count}"] if self.count else []), self.size_label])

    def group(self, experiment: str) -> str:
        """The table this case is printed in: every backend side by side for one experiment, count and size."""
        return " ".join([experiment, *([f"n={self.count}"] if self.count else []), self.size_label])

    @property
    def images(self) -> int:
        return self.count or 1


FREE_PAGE_REPORTING = (
    "this VM hands free memory back to its host (virtio-balloon free page reporting): a round that touches memory "
    "freed a moment before can take many times longer (docs/benchmarks.md, 'Memory the host takes back')"
)
GRID = pytest.StashKey[Grid]()
ROWS = pytest.StashKey[list]()  # what the summary at the end shows, one row per finished benchmark


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "limit_row: also run the floor (benchmarks.floor), as the row 'limit'")
    config.addinivalue_line(
        "markers", "codec_floor: also run each codec of the chosen backends alone, as the rows 'limit-<codec>'"
    )
    config.addinivalue_line("markers", "tutorial_row: also run the 2019 tutorial's methods (benchmarks.tutorial)")
    config.addinivalue_line("markers", "single_image: one image per store instead of the grid's counts")
    config.addinivalue_line("markers", "gate: end-to-end runs of the regression gate (about a minute; pytest -m gate)")
    config.addinivalue_line("markers", "s3: against a real S3 server (SeaweedFS, started for the run)")
    config.addinivalue_line("markers", "training: how training reads; runs with --preset=training (and smoke)")
    config.stash[GRID] = grid(config.option)  # a combination that makes no grid stops the run here
    config.stash[ROWS] = []
    if config.getoption("benchmark_only", False) and config.option.verbose == 0:
        config.option.verbose = 1  # one line per cell, named when it starts: a long cell shows what it is


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the experiments the preset runs (the training ones, the others, or all), and with --benchmark-only
    only benchmarks: the tests are deselected rather than listed as skipped."""
    only_benchmarks = config.getoption("benchmark_only", False)
    kept = [
        item
        for item in items
        if runs_in(config.stash[GRID], item) and not (only_benchmarks and "benchmark" not in item.fixturenames)
    ]
    if len(kept) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@functools.cache
def codec_floor(codec: Codec) -> CodecFloor:
    """One codec floor per codec and settings for the session: its read rows decode what its builds encoded."""
    return CodecFloor(codec)


def runs_in(chosen: Grid, item: pytest.Item) -> bool:
    """Whether a collected test runs in this grid: every test that is no experiment does."""
    if chosen.training is None or "case" not in item.fixturenames:
        return True
    return bool(item.get_closest_marker("training")) == chosen.training


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.stash[GRID]
    subjects = [storage.backend(name) for name in chosen.backends]
    if metafunc.definition.get_closest_marker("limit_row"):  # where the grid's stores live: plain file or object
        subjects.append(FLOOR if any(subject.local for subject in subjects) or not subjects else OBJECT_FLOOR)
    if metafunc.definition.get_closest_marker("tutorial_row") and chosen.tutorial:
        families = {storage.backend(name).family for name in chosen.backends}
        subjects += [tutorial for family, tutorial in TUTORIALS.items() if family in families]
    if metafunc.definition.get_closest_marker("codec_floor"):
        encoded = {s.codec for s in subjects if s not in (FLOOR, OBJECT_FLOOR) and s.codec is not RAW}
        subjects += [codec_floor(codec) for codec in sorted(encoded, key=lambda codec: codec.label)]
    if metafunc.definition.get_closest_marker("single_image"):
        cells = [(None, size) for size in dict.fromkeys(chosen.sizes)]
    else:
        cells = chosen.cells()
    cases = [Case(subject, n, size, chosen.dataset) for n, size in cells for subject in subjects]
    marked = [pytest.param(case, marks=() if case.subject.local else pytest.mark.s3) for case in cases]
    metafunc.parametrize("case", marked, ids=str)  # the s3 mark: cases that need the S3 server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """After a benchmark ran, keep what the summary shows of it."""
    yield
    benchmark = getattr(item, "funcargs", {}).get("benchmark")
    if benchmark is not None and not benchmark.disabled and benchmark.stats is not None:
        stats = {"median": benchmark.stats.stats.median, "iqr": benchmark.stats.stats.iqr}
        saved = {"name": benchmark.name, "group": benchmark.group, "stats": stats, "extra_info": benchmark.extra_info}
        row = report.result(saved)  # read as the report reads a saved run
        if row is not None:
            item.config.stash[ROWS].append(row)


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables: the answer is the last thing on screen
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.write_sep("=", "image storage: every backend side by side (* the fastest)")
    for line in summary.render(rows):
        terminalreporter.write_line(line)
    terminalreporter.write_line(
        "\nmedian: of the rounds; × floor: to the floor (limit: one plain file, or one object for object stores);"
        "\n× codec: to the same codec alone, in memory (limit-<codec>); disk/image: bytes allocated (object stores:"
        "\nbytes stored), × raw: to the raw pixels; peak memory: the most one untimed round allocated beyond its input"
        "\n(Python and NumPy allocations; memory maps and libraries' own C allocations are not counted);"
        "\n× pixels, mapped (read-many): one more read in a fresh process, its private memory over the pixels it"
        "\nreturns (all it allocated; t: tracemalloc's figure) and the pages of mapped files it held;"
        "\n× tutorial: to the 2019 tutorial's method of the backend's family (tutorial-png, tutorial-hdf5);"
        "\nrequests/image: object stores' requests in one more, untimed round."
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    chosen, lines = config.stash[GRID], []
    if chosen.dataset.kind == "folder":
        lines.append("image storage: " + chosen.dataset.listing(max(chosen.counts)).describe(chosen.dataset.directory))
    if config.getoption("benchmark_only", False) and machine.free_page_reporting():
        lines.append(f"image storage: {FREE_PAGE_REPORTING}")
    return lines


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine.update(machine_info, config.getoption("store_dir"))


@pytest.hookimpl(hookwrapper=True)
def pytest_benchmark_compare_machine_info(machine_info: dict, compared_benchmark: dict) -> Iterator[None]:
    """pytest-benchmark's check that two runs come from one machine, without what each run measures anew."""
    with machine.volatile_fields_aside(machine_info, compared_benchmark["machine_info"]):
        yield


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
def case_root(case: Case, request: pytest.FixtureRequest, store_root: Path):
    """Where this case's stores go: the local store root, or for an object store a prefix in the S3 bucket of the
    run (the ``s3_root`` fixture: a SeaweedFS server, or --s3-endpoint's store)."""
    if case.subject.local:
        return store_root
    return ObjectPlace(request.getfixturevalue("s3_root"))


@pytest.fixture
def source(case: Case, store_root: Path) -> Source:
    """The images and labels of this case, made or loaded outside any timed region."""
    skip_unless_room(case, store_root)
    try:
        return case.dataset.load(case.images, case.size)
    except ValueError as error:  # a real dataset with fewer images than asked for
        pytest.skip(str(error))


@dataclass
class BuiltStores:
    """Stores built once per session for the read benchmarks, outside any timed region."""

    root: Path
    built: dict
    request: pytest.FixtureRequest

    def get(self, case: Case, images: np.ndarray | list, labels: np.ndarray) -> Path:
        key = (case.subject.name, case.images, case.size, case.dataset)
        if key not in self.built:
            root = self.root if case.subject.local else ObjectPlace(self.request.getfixturevalue("s3_root"))
            path = root / f"{case}-read"
            store(case.subject, path, images, labels, files=files_for(case))
            self.built[key] = path
        return self.built[key]


@pytest.fixture(scope="session")
def built_stores(store_root: Path, request: pytest.FixtureRequest) -> BuiltStores:
    return BuiltStores(store_root, {}, request)


@pytest.fixture(scope="session")
def durable(pytestconfig: pytest.Config) -> bool:
    """Whether store benchmarks fsync (the default) or, with --no-fsync, measure the page-cache cost only."""
    return not pytestconfig.getoption("no_fsync")


@pytest.fixture
def fresh_target(case: Case, case_root):
    """A setup for `benchmark.pedantic`: every round gets an empty target path (cleared outside timing)."""
    path = case_root / f"{case}-store"

    def setup():
        if isinstance(path, ObjectPlace):
            path.remove()
        elif path.is_dir():
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

    def run(target, setup=_no_setup):
        if benchmark.disabled:
            return benchmark.pedantic(target, setup=setup)
        args, _ = setup()
        start = time.perf_counter()
        target(*args)
        elapsed = max(time.perf_counter() - start, 1e-9)
        min_rounds = int(pytestconfig.getoption("benchmark_min_rounds"))  # defaults arrive as strings
        max_time = float(pytestconfig.getoption("benchmark_max_time"))
        rounds = min(MAX_ROUNDS, max(min_rounds, math.ceil(max_time / elapsed)))
        result = benchmark.pedantic(target, setup=setup, rounds=rounds)
        benchmark.extra_info["peak_memory_bytes"] = peak_memory(target, setup)
        return result

    return run


def _no_setup():
    return (), {}
