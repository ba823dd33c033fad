"""The skeleton of a store kept in an S3 object store (s3, s3-shards): objects under one prefix, committed by
numbered manifests that a conditional PUT creates, read and written through obstore.

A location is ``s3://bucket/prefix``. The endpoint and credentials come from the variables every S3 client reads
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``; ``AWS_ALLOW_HTTP=true`` for
a plain-HTTP endpoint), which obstore reads itself. Under the prefix::

    manifest/0000000007.json   generation 7 of the manifest: the runs committed so far, in order
    runs/<token>/000000003     one uniform run of one append: its objects, ``per_object`` records each
    runs/<token>/index         two little-endian int64 per image: its label, and where its record ends in its object

A record is an image's raw pixels, or with an ``encoding`` its encoded file; an object holds ``per_object``
consecutive records, back to back (the layout chooses how many: one for ``s3``, a shard's worth for ``s3-shards``).

Commit point: the manifest. An append writes its runs' objects under fresh random tokens, then creates the next
generation with ``If-None-Match: *`` (obstore's ``mode="create"``), which the server refuses if that generation
exists. A writer that loses the race reads the winner's manifest and tries the generation after it with its runs
added: writers never wait for a lock and never overwrite each other's objects, so no lock object is needed. A run
no manifest lists, left by a killed writer, is never read; the next writer deletes it once it is older than
`LEFTOVER_AGE` (younger ones may be another writer's append in flight). Manifests before the newest
`KEPT_GENERATIONS` are deleted too: a reader that opened one of them still reads its runs, which never change.

Opening lists ``manifest/``, reads the newest generation and every run's index (concurrently). A run's image
count must match its index's size, so a forged count cannot become a huge allocation.

obstore runs requests on a tokio runtime, which a forked child cannot use (it waits forever): a store used in a
process forked after obstore ran raises RuntimeError instead, and says to start workers with "spawn" or
"forkserver".
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime
import errno
import json
import math
import os
import re
import secrets
from abc import abstractmethod
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from storage import codecs
from storage._base import Capabilities, EncodingOptions, Store
from storage._errors import DamagedStoreError
from storage._parts import checked_part
from storage._reading import Batch, gather_runs
from storage.codecs import Codec

SCHEME = "s3://"
MANIFESTS = "manifest/"
RUNS = "runs/"
MAX_MANIFEST_BYTES = 64 << 20
KEPT_GENERATIONS = 8
LEFTOVER_AGE = datetime.timedelta(hours=1)
TIMEOUTS = {"connect_timeout": "5s", "timeout": "120s"}  # an unreachable server is an error within seconds
RETRIES = {
    "max_retries": 2,
    "retry_timeout": datetime.timedelta(seconds=10),
    "backoff": {
        "init_backoff": datetime.timedelta(milliseconds=100),
        "max_backoff": datetime.timedelta(seconds=1),
        "base": 2,
    },
}
T = TypeVar("T")
_SLOTS: contextvars.ContextVar[asyncio.Semaphore] = contextvars.ContextVar("slots")  # requests in flight, per read
_runtime_pid: int | None = None  # the process in which obstore's runtime started


@dataclass(frozen=True)
class ObjectLocation:
    """``s3://bucket/prefix``: where a store's objects live."""

    bucket: str
    prefix: str  # without a slash at either end

    @classmethod
    def parse(cls, location: object) -> ObjectLocation:
        if isinstance(location, ObjectLocation):
            return location
        text = os.fspath(location) if isinstance(location, os.PathLike) else location
        if not isinstance(text, str) or not text.startswith(SCHEME):
            raise ValueError(f"an object store location is s3://bucket/prefix, not {location!r}")
        bucket, _, prefix = text[len(SCHEME) :].partition("/")
        prefix = prefix.strip("/")
        parts = prefix.split("/")
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or not prefix:
            raise ValueError(f"{text!r} names no bucket and prefix: an object store location is s3://bucket/prefix")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"{text!r} has an empty, '.' or '..' part in its prefix")
        return cls(bucket, prefix)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.prefix}"

    def __fspath__(self) -> str:  # so that messages and os.fspath name it; it is no local path
        return str(self)

    @property
    def endpoint(self) -> str:
        return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or "the default S3 endpoint"

    def client(self) -> S3Store:
        """An obstore client for the bucket, rooted at the prefix, configured from the environment."""
        _check_not_forked()
        plain_http = os.environ.get("AWS_ALLOW_HTTP", "").lower() == "true"  # client_options replace obstore's own
        options = {**TIMEOUTS, "allow_http": plain_http}
        return S3Store(self.bucket, prefix=self.prefix, client_options=options, retry_config=RETRIES)


class Run(NamedTuple):
    """One append's uniform run, as a manifest lists it: `count` images of `shape` and `dtype` as `encoding`, held
    `per_object` to an object."""

    token: str
    count: int
    shape: tuple[int, ...]
    dtype: np.dtype
    encoding: str
    per_object: int

    @property
    def codec(self) -> Codec:
        return codecs.get(self.encoding)

    @property
    def image_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class ObjectOptions(EncodingOptions):
    """`encoding` as for every store; `concurrency`: requests in flight at once (1 to 256)."""

    concurrency: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or not 1 <= self.concurrency <= 256
        ):
            raise ValueError(f"concurrency must be an integer from 1 to 256, got {self.concurrency!r}")


class ObjectStore(Store):
    capabilities = Capabilities(directory=True, durability="library", local=False, fork_safe=False)
    Options = ObjectOptions

    # --- what a layout provides --------------------------------------------------------

    @abstractmethod
    def _per_object(self, sizes: np.ndarray) -> int:
        """How many of a new run's records, of these sizes in bytes, go into one object."""

    @abstractmethod
    async def _get_run(self, run: Run, starts: np.ndarray, ends: np.ndarray, local: np.ndarray, out: np.ndarray):
        """Fill `out` with the run's images at `local` (ids counted within the run): record i lies at bytes
        ``starts[i]:ends[i]`` of object ``i // run.per_object``."""

    # --- where the store lives -----------------------------------------------------------

    @classmethod
    def locate(cls, location: object) -> ObjectLocation:
        return ObjectLocation.parse(location)

    @classmethod
    def writer_lock(cls, location: object) -> None:
        return None  # writers race for the next manifest instead

    @classmethod
    def exists(cls, location: ObjectLocation) -> bool:
        return bool(_listed(location, "", limit=1))

    @classmethod
    def is_store(cls, location: ObjectLocation) -> bool:
        """Whether the newest manifest under `location` is this backend's."""
        with reported(location):
            client = location.client()
            newest = _generations(client)[-1:]
            if not newest:
                return False
            head = obstore.get(client, _manifest_key(newest[0]), options={"range": (0, 200)}).bytes()
        return bytes(head).startswith(b'{"format": "%s"' % cls.format_name().encode())

    @classmethod
    def files(cls, location: ObjectLocation) -> list[str]:
        return [f"{location}/{entry['path']}" for entry in _listed(location, "")]

    @classmethod
    def is_free(cls, location: ObjectLocation) -> bool:
        return False

    @classmethod
    def describe(cls, location: ObjectLocation) -> str:
        return "objects that are no image store"

    @classmethod
    def install(
        cls, location: ObjectLocation, options: EncodingOptions, *, durable: bool, name: str, replace: bool
    ) -> None:
        """Create an empty store: a first manifest, or, with `replace`, the next generation with no runs (in one
        conditional PUT, so that a kill leaves the old store or the new one). The old runs are deleted after."""
        with reported(location):
            client = location.client()
            newest = _generations(client)[-1:] if replace else []
            number = newest[0] + 1 if newest else 0
            body = _manifest_bytes(cls.format_name(), [])
            try:
                obstore.put(client, _manifest_key(number), body, mode="create", use_multipart=False)
            except AlreadyExistsError:
                raise FileExistsError(
                    errno.EEXIST, "another writer created the store meanwhile", str(location)
                ) from None
            if replace:
                _delete(client, [e["path"] for e in _listed(location, RUNS)] + [_manifest_key(g) for g in newest])

    @classmethod
    def remove(cls, location: ObjectLocation) -> None:
        with reported(location):
            _delete(location.client(), [entry["path"] for entry in _listed(location, "")])

    @classmethod
    def format_name(cls) -> str:
        return f"imagestore-{cls.name}-1"

    def disk_usage(self) -> int:
        """Bytes of the store's objects (what the server bills; its disk layout is its own)."""
        with reported(self.location):
            return sum(int(entry["size"]) for entry in _collect(self._client, ""))

    # --- the skeleton ----------------------------------------------------------------------

    def _start(self, create: bool) -> None:
        self.requests = 0  # requests this object sent, and the object bytes they moved: for the benchmarks
        self.bytes_transferred = 0
        self._client = self.location.client()
        self._runs: list[Run] = []
        self._spans: list[tuple[np.ndarray, np.ndarray]] = []  # per run: where each record starts and ends
        self._label_runs: list[np.ndarray] = []
        self._generation = -1
        with reported(self.location):
            self._load(self._read_manifest())

    def _read_manifest(self) -> tuple[int, list[Run]]:
        """The newest generation's number and runs."""
        generations = _generations(self._client)
        self._count_request(0)  # the LIST (its answer is not counted in bytes)
        if not generations:
            raise FileNotFoundError(errno.ENOENT, f"no {self.name} store (no manifest)", str(self.location))
        body = self._get_bytes(_manifest_key(generations[-1]), MAX_MANIFEST_BYTES)
        try:
            listed = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise DamagedStoreError(f"{self.location}'s manifest is no manifest ({error})") from None
        if not isinstance(listed, dict) or listed.get("format") != self.format_name():
            raise ValueError(f"{self.location} is no {self.name} image store")
        if set(listed) != {"format", "runs"} or not isinstance(listed["runs"], list):
            raise DamagedStoreError(f"{self.location}'s manifest does not list runs")
        return generations[-1], [self._run(entry) for entry in listed["runs"]]

    def _run(self, entry: object) -> Run:
        """One manifest entry, checked as a part's is (see _parts.py), with its token and records per object."""
        part = checked_part(entry, f"{self.location}'s manifest", extra=("token", "per_object"))
        token, per_object = entry["token"], entry["per_object"]
        if not (isinstance(token, str) and re.fullmatch(r"[0-9a-f]{16}", token)):
            raise DamagedStoreError(f"{self.location}'s manifest lists a run of token {token!r}, which no writer makes")
        if not (isinstance(per_object, int) and per_object > 0):
            raise DamagedStoreError(f"{self.location}'s manifest lists a run of {per_object!r} records an object")
        return Run(token, *part, per_object)

    def _load(self, latest: tuple[int, list[Run]]) -> None:
        """Take the runs of manifest generation `latest` beyond those already loaded, reading their indexes."""
        generation, runs = latest
        if runs[: len(self._runs)] != self._runs:  # replaced meanwhile ("w"): start again
            self._runs, self._spans, self._label_runs = [], [], []
        new = runs[len(self._runs) :]
        for run, index in zip(new, self._gather([self._get_index(run) for run in new])):
            self._runs.append(run)
            self._label_runs.append(index[:, 0])
            self._spans.append(_spans(run, index[:, 1], self.location))
        self._generation = generation
        self._starts = np.cumsum([0, *(run.count for run in self._runs)])
        self._layouts = [(run.shape, run.dtype) for run in self._runs]
        self._labels = np.concatenate(self._label_runs) if self._label_runs else np.empty(0, np.int64)

    async def _get_index(self, run: Run) -> np.ndarray:
        data = await self._get(f"{RUNS}{run.token}/index", 0, None)
        if data.nbytes != 16 * run.count:
            raise DamagedStoreError(
                f"{self.location}: the index of run {run.token} is {data.nbytes} bytes; "
                f"the manifest says the run holds {run.count} images"
            )
        return np.frombuffer(data, "<i8").reshape(run.count, 2).astype(np.int64)

    def _refresh(self) -> None:
        """Read the newest manifest before every append (there is no commit file to compare first): its LIST is
        what tells of other writers' appends."""
        with reported(self.location):
            self._load(self._read_manifest())

    def _count(self) -> int:
        return int(self._starts[-1])

    def _sweep(self) -> None:
        """Delete runs no manifest lists that are older than LEFTOVER_AGE, and all but the newest manifests."""
        with reported(self.location):
            _, runs = self._read_manifest()
            listed = {run.token for run in runs}
            cutoff = datetime.datetime.now(datetime.timezone.utc) - LEFTOVER_AGE
            old = [
                entry["path"]
                for entry in _collect(self._client, RUNS)
                if entry["path"].split("/")[1] not in listed and entry["last_modified"] < cutoff
            ]
            old += [_manifest_key(number) for number in _generations(self._client)[:-KEPT_GENERATIONS]]
            _delete(self._client, old)

    def _append(self, batches: list[np.ndarray], labels: np.ndarray) -> None:
        bounds = np.cumsum([0, *map(len, batches)])
        new_runs = []
        with reported(self.location):
            for batch, start, stop in zip(batches, bounds, bounds[1:]):
                run, puts, ends = self._new_run(batch)
                index = np.stack([labels[start:stop], ends], axis=1).astype("<i8")
                self._gather([*puts, self._put(f"{RUNS}{run.token}/index", index.tobytes())])
                new_runs.append(run)
            generation, runs = self._generation, self._runs
            while True:
                body = _manifest_bytes(self.format_name(), [*runs, *new_runs])
                try:
                    self._count_request(len(body))
                    obstore.put(self._client, _manifest_key(generation + 1), body, mode="create", use_multipart=False)
                    break
                except AlreadyExistsError:  # another writer committed first: add these runs after its
                    generation, runs = self._read_manifest()
            self._load((generation + 1, [*runs, *new_runs]))

    def _new_run(self, batch: np.ndarray) -> tuple[Run, list[Awaitable], np.ndarray]:
        """A new run of `batch`: its manifest entry, the PUTs of its objects, and where each record ends."""
        raw = self.codec is codecs.RAW
        records = None if raw else [self.codec.encode(image) for image in batch]
        image_bytes = math.prod(batch.shape[1:]) * batch.dtype.itemsize
        sizes = np.full(len(batch), image_bytes, np.int64) if raw else np.array([len(r) for r in records], np.int64)
        per_object = self._per_object(sizes)
        run = Run(secrets.token_hex(8), len(batch), batch.shape[1:], batch.dtype, self.codec.name, per_object)
        puts = []
        for number, first in enumerate(range(0, len(batch), per_object)):
            if raw:
                data = batch[first : first + per_object].reshape(-1).view(np.uint8)  # no copy
            else:
                chunk = records[first : first + per_object]
                data = chunk[0] if len(chunk) == 1 else b"".join(chunk)
            puts.append(self._put(object_key(run.token, number), data))
        ends = np.cumsum(sizes)  # within the run, then within each record's object
        ends -= np.concatenate([[0], ends])[np.arange(len(sizes)) // per_object * per_object]
        return run, puts, ends

    def _read(self, ids: np.ndarray) -> tuple[Batch, np.ndarray]:
        def read_run(run: int, local: np.ndarray, out: np.ndarray) -> None:  # the run's requests concurrently
            self._gather([self._get_run(self._runs[run], *self._spans[run], local, out)])

        with reported(self.location):
            return gather_runs(ids, self._starts, self._layouts, read_run), self._labels[ids]

    def _close(self) -> None:
        self._client = None

    # --- requests ------------------------------------------------------------------------

    def _count_request(self, size: int) -> None:
        self.requests += 1
        self.bytes_transferred += size

    def _put(self, key: str, data: object) -> Awaitable:
        size = memoryview(data).nbytes

        async def put() -> None:
            async with _SLOTS.get():
                self._count_request(size)
                await obstore.put_async(self._client, key, data, use_multipart=False)

        return put()

    async def _get(self, key: str, start: int, end: int | None) -> memoryview:
        """Bytes `start` to `end` of an object (the whole object with ``end=None``)."""
        async with _SLOTS.get():
            try:
                if end is None:
                    result = await obstore.get_async(self._client, key)
                    data = memoryview(await result.bytes_async())
                else:
                    data = memoryview(await obstore.get_range_async(self._client, key, start=start, end=end))
            except FileNotFoundError:  # obstore's NotFoundError: an object the manifest implies is gone
                raise DamagedStoreError(f"{self.location}/{key} is missing") from None
            self._count_request(data.nbytes)
            return data

    def _get_bytes(self, key: str, limit: int) -> bytes:
        data = self._gather([self._get(key, 0, None)])[0]
        if data.nbytes > limit:
            raise DamagedStoreError(f"{self.location}/{key} is too large ({data.nbytes} bytes)")
        return bytes(data)

    def _gather(self, jobs: list[Awaitable[T]]) -> list[T]:
        """Run `jobs` concurrently, at most ``options.concurrency`` requests in flight."""
        if not jobs:
            return []

        async def everything() -> list[T]:
            _SLOTS.set(asyncio.Semaphore(self.options.concurrency))  # each task copies this context
            return await asyncio.gather(*jobs)

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(everything())
        with concurrent.futures.ThreadPoolExecutor(1) as thread:  # called from a coroutine: its own loop elsewhere
            return thread.submit(asyncio.run, everything()).result()


def object_key(token: str, number: int) -> str:
    """The key of object `number` of run `token`."""
    return f"{RUNS}{token}/{number:09d}"


def _spans(run: Run, ends: np.ndarray, location: ObjectLocation) -> tuple[np.ndarray, np.ndarray]:
    """Where each record of `run` starts and ends in its object, from the ends its index records; DamagedStoreError
    where they overlap, or where raw records are not the size of the run's images."""
    starts = np.zeros_like(ends)
    starts[1:] = ends[:-1]
    starts[:: run.per_object] = 0
    if (ends <= starts).any() or (run.encoding == "raw" and (ends - starts != run.image_bytes).any()):
        raise DamagedStoreError(f"{location}: the index of run {run.token} records impossible record sizes")
    return starts, ends


def _manifest_key(generation: int) -> str:
    return f"{MANIFESTS}{generation:010d}.json"


def _manifest_bytes(format_name: str, runs: list[Run]) -> bytes:
    entries = [
        {
            "token": r.token,
            "count": r.count,
            "shape": list(r.shape),
            "dtype": r.dtype.str,
            "encoding": r.encoding,
            "per_object": r.per_object,
        }
        for r in runs
    ]
    return json.dumps({"format": format_name, "runs": entries}).encode()


def _generations(client: S3Store) -> list[int]:
    """The manifest generations under the prefix, oldest first."""
    names = (entry["path"][len(MANIFESTS) :] for entry in _collect(client, MANIFESTS))
    return sorted(int(name[:10]) for name in names if re.fullmatch(r"\d{10}\.json", name))


def _listed(location: ObjectLocation, under: str, limit: int | None = None) -> list[dict[str, Any]]:
    with reported(location):
        return _collect(location.client(), under, limit)


def _collect(client: S3Store, under: str, limit: int | None = None) -> list[dict[str, Any]]:
    found = []
    for page in obstore.list(client, prefix=under or None, chunk_size=limit or 1000):
        found.extend(page)
        if limit is not None and len(found) >= limit:
            break
    return found


def _delete(client: S3Store, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):  # S3 deletes at most 1,000 objects a request
        obstore.delete(client, keys[start : start + 1000])


def _check_not_forked() -> None:
    global _runtime_pid
    if _runtime_pid is None:
        _runtime_pid = os.getpid()
    elif _runtime_pid != os.getpid():
        raise RuntimeError(
            "this process was forked after obstore ran in its parent; obstore's runtime cannot run in a forked "
            "child (it would wait forever): start workers with the 'spawn' or 'forkserver' method"
        )


@contextmanager
def reported(location: ObjectLocation) -> Iterator[None]:
    """obstore's errors as Python's: refused credentials PermissionError, a missing bucket FileNotFoundError, an
    unreachable server ConnectionError, each naming the endpoint and the location."""
    try:
        yield
    except (PermissionDeniedError, UnauthenticatedError) as error:
        raise PermissionError(errno.EACCES, f"{location.endpoint} refused the credentials", str(location)) from error
    except BaseError as error:
        text = str(error)
        if any(code in text for code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")):
            raise PermissionError(errno.EACCES, f"{location.endpoint} refused the credentials", str(location)) from None
        if "NoSuchBucket" in text or ("404" in text and "list" in text):
            raise FileNotFoundError(errno.ENOENT, f"no such bucket at {location.endpoint}", str(location)) from error
        if "error sending request" in text or "connect" in text.lower():
            raise ConnectionError(errno.ECONNREFUSED, f"cannot reach {location.endpoint}", str(location)) from error
        raise
