"""What the experiments share: store and read the way a round is timed, check what came back, record what it cost.

A subject is a backend (``storage.backend(name)``), the floor (``benchmarks.floor.FLOOR``) or a codec
floor: all open a location like a store, so no experiment asks which one it holds.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import shutil
import traceback
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np

from benchmarks.floor import CodecFloor, Floor, ObjectFloor, pixel_bytes
from benchmarks.tutorial import Tutorial
from storage import Backend
from storage._base import allocated_bytes
from storage.testing import assert_images_match
from storage.testing.places import ADDED_ROUND_TRIP

Subject = Union[Backend, Floor, CodecFloor, Tutorial]
Source = tuple[Union[np.ndarray, list], np.ndarray]
RANDOM_READS = 1000  # ids per round of the random-access benchmarks (fewer when a store holds fewer)


def store(
    subject: Subject,
    path: Path,
    images: np.ndarray | list,
    labels: np.ndarray,
    durable: bool = True,
    files: list[bytes] | None = None,
) -> object:
    """Create a store, append everything, close it (fsynced when `durable`): what a store benchmark times. With
    `files`, the images' files are appended as they are (``encoded=True``) instead of the pixels. The closed store."""
    with subject.open(path, "x", durable=durable) as new_store:
        if files is None:
            new_store.append(images, labels)
        else:
            new_store.append(files, labels, encoded=True)
    return new_store


def files_for(case) -> list[bytes] | None:
    """The files of the case's images, if the dataset keeps them (--store-files) and the subject's encoding is
    their format (a JPEG folder for jpeg, lmdb-jpeg, ...); else None, and the subject stores the pixels."""
    files = case.dataset.files(case.images)
    codec = getattr(case.subject, "codec", None)
    if files is None or not isinstance(case.subject, Backend) or codec is None:
        return None
    signature = {"png": b"\x89PNG", "jpeg": b"\xff\xd8"}.get(codec.name)
    return files if signature and all(file.startswith(signature) for file in files) else None


def copy_store(subject: Subject, source: Path, target: Path) -> None:
    """Make `target` a copy of the closed store at `source` (a codec floor copies what it holds in memory)."""
    if isinstance(subject, (CodecFloor, Floor)):
        subject.copy(source, target)
    elif source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)


def read_all(subject: Subject, path: Path) -> tuple[np.ndarray | list, np.ndarray | None]:
    """Open a store, read every image in id order, close: what a read-many benchmark times."""
    with subject.open(path) as opened:
        return opened.read()


def check_picked(subject: Subject, got_images: object, got_labels: object, images, labels, ids) -> None:
    """What a read of `ids` gave equals those images and labels, within the codec's tolerance (the floor: their
    pixel bytes, and no labels). Checked outside the timed region."""
    expected = [images[i] for i in ids]
    if isinstance(subject, (Floor, ObjectFloor)):
        assert np.array_equal(pixel_bytes(got_images), pixel_bytes(expected))
        return
    assert_images_match(got_images, expected, subject.codec)
    assert np.asarray(got_labels).tolist() == np.asarray(labels)[list(ids)].tolist()


def check_read_back(subject: Subject, got: tuple, images: np.ndarray | list, labels: np.ndarray) -> None:
    """What was read equals what was written, within the codec's tolerance (checked outside the timed region)."""
    got_images, got_labels = got
    if got_labels is None:  # the floor keeps the pixel bytes only
        assert np.array_equal(got_images, pixel_bytes(images))
        return
    if isinstance(images, np.ndarray) and getattr(subject, "stacks", True):  # the tutorial's PNG reader: a list
        assert isinstance(got_images, np.ndarray)
    assert_images_match(got_images, images, subject.codec)
    assert np.array_equal(got_labels, labels)


def random_ids(count: int) -> np.ndarray:
    """The seeded random ids a random-access round reads from a store of `count` images."""
    return np.random.default_rng(0).choice(count, size=min(RANDOM_READS, count), replace=False)


def raw_bytes(images: np.ndarray | list) -> int:
    return int(images.nbytes) if isinstance(images, np.ndarray) else sum(int(image.nbytes) for image in images)


def describe(benchmark, experiment: str, case, images: np.ndarray | list, **info: object) -> None:
    """Name the table and record what is measured, before the benchmark runs."""
    benchmark.group = case.group(experiment)
    if files_for(case) is not None:  # --store-files: this row's store keeps the files, not its own encoding
        info["stored_files"] = True
        info["backend"] = f"{case.subject.name} (files)"
    delay = float(os.environ.get(ADDED_ROUND_TRIP) or 0)
    if not case.subject.local and delay:  # --s3-latency: every request paid this round trip on top
        benchmark.group += f" +{delay:g}ms"
        info["added_round_trip_ms"] = delay
    benchmark.extra_info.update(
        experiment=experiment,
        backend=info.pop("backend", case.subject.name),
        images=case.images,
        image_size=case.size_label,
        dataset=case.dataset.id,
        raw_pixel_bytes=raw_bytes(images),
        **info,
    )


def record_disk_usage(benchmark, subject: Subject, path: Path, images: int, raw: int) -> None:
    """Bytes allocated on disk, per image and relative to the raw pixels, and the file count, of a closed store
    (nothing for a codec floor, which keeps nothing on disk)."""
    files = subject.files(path)
    if not files:
        return
    allocated = sum(allocated_bytes(file) for file in files) if subject.local else subject.disk_usage(path)
    benchmark.extra_info.update(
        disk_bytes=allocated,
        disk_bytes_per_image=allocated / images,
        disk_ratio_to_raw=allocated / raw,
        files=len(files),
    )


def record_transfers(benchmark, subject: Subject, path: object, images: int, action: Callable, opening: bool) -> None:
    """Requests and bytes per image of one more, untimed ``action(store)`` on a store opened at `path` (with the
    opening's own requests if `opening`): what a cloud bill is made of. Nothing where they are not counted."""
    if subject.local:
        return
    with subject.open(path) as opened:
        if not opening:
            opened.requests = opened.bytes_transferred = 0
        action(opened)
        benchmark.extra_info.update(
            requests=opened.requests,
            requests_per_image=opened.requests / images,
            bytes_transferred_per_image=opened.bytes_transferred / images,
        )


def measure_store(benchmark, run_rounds, experiment: str, case, source: Source, fresh_target, durable: bool) -> None:
    """Time `store` from an empty target every round, then record disk usage and check the last store."""
    images, labels = source
    path, setup = fresh_target
    describe(benchmark, experiment, case, images, durable=durable)
    if not durable:
        benchmark.group += " no-fsync"
    files = files_for(case)
    run_rounds(lambda target: store(case.subject, target, images, labels, durable, files), setup)
    record_disk_usage(benchmark, case.subject, path, case.images, raw_bytes(images))
    if not case.subject.local:  # one more store, untimed, that counts its requests
        setup()
        counted = store(case.subject, path, images, labels, durable, files)
        benchmark.extra_info.update(
            requests=counted.requests,
            requests_per_image=counted.requests / case.images,
            bytes_transferred_per_image=counted.bytes_transferred / case.images,
        )
    check_read_back(case.subject, read_all(case.subject, path), images, labels)


def peak_memory(target: Callable, setup: Callable = lambda: ((), {})) -> int:
    """The most one more round of `target` allocates beyond what exists before it starts (tracemalloc: Python
    and NumPy allocations; not memory maps, nor what C libraries allocate themselves), measured untimed after the
    timed rounds, in this process."""
    args, _ = setup()
    gc.collect()
    tracemalloc.start()
    try:
        target(*args)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


PROC_STATUS = Path("/proc/self/status")  # Linux: the memory counters a fresh process reports about itself


@dataclass(frozen=True)
class ReadMemory:
    """What one read-many cost in memory in a fresh process, in bytes above that process's memory before the open."""

    private: int  # the peak of its anonymous memory: all it allocated (Python, NumPy, C libraries, anonymous maps)
    mapped: int  # pages of mapped files resident at the end of the read, store still open (LMDB's, Arrow's map)


def read_memory(subject: Subject, path: Path) -> ReadMemory | None:
    """The private and mapped memory of one more read-many of the store at `path`, in a fresh process; None off
    Linux (or where the peak cannot be reset).

    A process started from the fork server (never the pytest process: nothing it freed is reused) imports what it
    needs (every backend's library, as a first ``storage.open`` does, and what the subject's codec imports on first
    use), hands the heap's free pages back (`_trim_heap`), reads its counters from /proc/self/status, resets its
    peak resident size (``echo 5 > /proc/self/clear_refs``: VmHWM becomes the current VmRSS), then opens the store,
    reads every image (the calls of `read_all`), reads the counters again with the store still open, and closes
    it. VmHWM, the kernel's peak of anonymous plus file-backed plus shared resident pages, then holds the peak of
    the read. Of it:

    - mapped: the resident pages of mapped files and shared memory (RssFile + RssShmem: a store on tmpfs counts
      here too) at the end of the read, above those before the open: what LMDB's or Arrow's memory map holds;
    - private: VmHWM less those mapped pages, above the anonymous pages before the open (RssAnon): the peak of
      everything the process allocated, C libraries' own buffers and anonymous maps included, the images it
      returns too.

    The kernel updates these counters lazily (per CPU or per thread), so each may be off by a few hundred kB
    (measured here: 0.2-0.4% of a 64 MiB read). The split is right when the mapped pages are at their most at the
    end of the read, which holds for every backend here (a map grows as it is read and goes at close). A reader
    that unmapped pages before it returned would have them counted as private, never hidden.
    """
    if not PROC_STATUS.exists():
        return None
    context = multiprocessing.get_context("forkserver")
    receiving, sending = context.Pipe(duplex=False)
    portable = subject.name if isinstance(subject, Backend) else subject  # a Backend's options do not pickle
    child = context.Process(target=_read_in_fresh_process, args=(sending, portable, str(path)), daemon=True)
    child.start()
    sending.close()
    try:
        outcome, found = receiving.recv()
    except EOFError:  # it died (a crash in a library, say) before it could answer
        outcome, found = "failed", "the process ended without an answer"
    finally:
        receiving.close()
        child.join()
    if outcome == "failed":
        raise RuntimeError(f"measuring the memory of a read of {subject.name} in a fresh process: {found}")
    return found


def record_read_memory(benchmark, subject: Subject, path: Path) -> None:
    """`read_memory` of one more, untimed read-many, as ``private_memory_bytes`` and ``mapped_memory_bytes``, when
    benchmarks run. Not for object stores, nor for a codec floor, whose images stay in this process: those keep
    the tracemalloc figure every round records (``peak_memory_bytes``)."""
    if benchmark.disabled or not subject.local or isinstance(subject, CodecFloor):
        return
    found = read_memory(subject, path)
    if found is not None:
        benchmark.extra_info.update(private_memory_bytes=found.private, mapped_memory_bytes=found.mapped)


def _read_in_fresh_process(sending, subject: Subject | str, path: str) -> None:
    """`read_memory`'s child: import, count, reset the peak, read, count, close; send (outcome, ReadMemory)."""
    try:
        import storage

        storage.available()  # every backend's module and library, as the first storage.open imports them
        subject = storage.backend(subject) if isinstance(subject, str) else subject
        codec = getattr(subject, "codec", None)
        if codec is not None:  # the codec's library, which it imports on first use
            tiny = np.zeros((8, 8, 3), np.uint8)
            codec.decode(codec.encode(tiny), tiny.shape, tiny.dtype)
        gc.collect()
        _trim_heap()
        before = _memory_counters()
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
        except OSError:  # a kernel before 4.0, or a /proc mounted read-only: VmHWM would be the whole life's peak
            sending.send(("done", None))
            return
        opened = subject.open(Path(path))
        got = opened.read()
        read = _memory_counters()
        opened.close()
        peak = _memory_counters()["VmHWM"]
        del got
        mapped = read["RssFile"] + read["RssShmem"]
        sending.send(
            (
                "done",
                ReadMemory(
                    private=peak - mapped - before["RssAnon"],
                    mapped=mapped - before["RssFile"] - before["RssShmem"],
                ),
            )
        )
    except BaseException:
        sending.send(("failed", traceback.format_exc()))
    finally:
        sending.close()


def _trim_heap() -> None:
    """Hand the heap's free pages back to the kernel (glibc's ``malloc_trim``), so that a read reusing memory freed
    by the imports counts as private memory rather than hiding in what was resident before; elsewhere, nothing."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _memory_counters() -> dict[str, int]:
    """This process's peak resident size and its anonymous, file-backed and shared resident pages, in bytes."""
    counters = {}
    with open(PROC_STATUS) as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
                counters[name] = int(value.split()[0]) * 1024  # the kernel writes kB
    return counters
