"""Image stores behind one small interface: ``storage.open(backend, location, mode)``.

>>> import storage
>>> with storage.open("hdf5", "cifar.h5", mode="x") as store:   # doctest: +SKIP
...     store.append(images, labels)

Backends come from `REGISTRY`, then from the entry-point group ``image_storage.backends``
(name = "module:StoreClass"), so a package can add one; a built-in name wins. A backend is
listed only when its module, and so its library, imports.
"""

from __future__ import annotations

import errno
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache, cached_property
from importlib import metadata
from types import MappingProxyType

import numpy as np

from storage._base import Capabilities, Options, Store
from storage._errors import DamagedStoreError, damage_reported
from storage.codecs import Codec

__all__ = ["Backend", "Capabilities", "DamagedStoreError", "Options", "Store", "available", "family", "open"]

ENTRY_POINTS = "image_storage.backends"
# name -> "module:class"
REGISTRY = {
    "png": "storage.png_store:PngStore",
    "lmdb": "storage.lmdb_store:LmdbStore",
    "hdf5": "storage.hdf5_store:Hdf5Store",
    "npz": "storage.npz_store:NpzStore",
    "jpeg": "storage.jpeg_store:JpegStore",
    "sqlite": "storage.sqlite_store:SqliteStore",
    "arrow": "storage.arrow_store:ArrowStore",
    "parquet": "storage.parquet_store:ParquetStore",
    "webdataset": "storage.webdataset_store:WebDatasetStore",
    "zarr": "storage.zarr_store:ZarrStore",
    "s3": "storage.s3_store:S3Store",
    "s3-shards": "storage.s3_shards_store:S3ShardsStore",
}
# name -> (backend, write options): the same format written another way, benchmarked as its own row.
VARIANTS = {
    "png-pillow": ("png", {"library": "pillow"}),  # the PNG library the 2019 tutorial used
    "png-level6": ("png", {"compress_level": 6}),  # Pillow's default level, which the classic tutorial used
    "png-level9": ("png", {"compress_level": 9}),
    "png-threads1": ("png", {"threads": 1}),  # encode and decode in the calling thread: what the default's pool buys
    "png-up": ("png", {"filter": "up"}),  # one row filter: large images faster both ways, small ones larger (Png)
    "lmdb-png": ("lmdb", {"encoding": "png"}),
    "lmdb-pickle": ("lmdb", {"encoding": "pickle"}),
    "lmdb-jpeg": ("lmdb", {"encoding": "jpeg"}),
    "lmdb-packed": ("lmdb", {"pack_bytes": 1 << 20}),  # raw pixels of several images to an LMDB value, ~1 MiB
    "hdf5-png": ("hdf5", {"encoding": "png"}),
    "hdf5-jpeg": ("hdf5", {"encoding": "jpeg"}),
    "hdf5-lzf": ("hdf5", {"compression": "lzf"}),
    "hdf5-gzip": ("hdf5", {"compression": "gzip"}),
    "npz-deflate": ("npz", {"compression": "deflate"}),
    "arrow-png": ("arrow", {"encoding": "png"}),  # how Hugging Face datasets keeps image datasets such as CIFAR-10
    "parquet-png": ("parquet", {"encoding": "png"}),  # Hugging Face's image struct in Parquet
    "parquet-jpeg": ("parquet", {"encoding": "jpeg"}),
    "sqlite-png": ("sqlite", {"encoding": "png"}),
    "webdataset-png": ("webdataset", {"encoding": "png"}),
    "webdataset-jpeg": ("webdataset", {"encoding": "jpeg"}),
    "zarr-zstd": ("zarr", {"compressor": "zstd"}),
    "zarr-sharded": ("zarr", {"shard_images": 1024}),  # one image a chunk, 1,024 a shard file
    "zarr-tensorstore": ("zarr", {"library": "tensorstore"}),  # the same parts, written and read through tensorstore
    "s3-c1": ("s3", {"concurrency": 1}),  # one request at a time: every image pays a whole round trip
    "s3-c32": ("s3", {"concurrency": 32}),
    "s3-shards-c1": ("s3-shards", {"concurrency": 1}),
    "s3-shards-c32": ("s3-shards", {"concurrency": 32}),
}
MODES = ("r", "a", "w", "x")


@dataclass(frozen=True)
class Backend:
    """A name that `open` takes: a store class and, for a variant, the options it writes with."""

    name: str
    store_class: type[Store]
    family: str  # the backend whose format this name writes: itself, unless a variant
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def capabilities(self) -> Capabilities:
        """Its stores' capabilities, with this name's options (zarr-tensorstore is not fork-safe, say)."""
        return self.store_class.capabilities_for(self.settings())

    @property
    def local(self) -> bool:
        """Whether its stores are local files (else objects in an object store)."""
        return self.store_class.capabilities.local

    def settings(self, **options: object) -> Options:
        """The backend's options: this name's, overridden by `options`; ValueError or TypeError if bad."""
        known = {option.name for option in fields(self.store_class.Options)}
        unknown = sorted(options.keys() - known)
        if unknown:
            takes = ", ".join(sorted(known)) or "none"
            raise TypeError(f"the {self.name} backend has no option {unknown[0]!r}; its options: {takes}")
        return self.store_class.Options(**{**self.options, **options})

    @cached_property
    def codec(self) -> Codec:
        """How this name writes new images (its options' codec)."""
        return self.settings().codec

    @property
    def holds(self) -> str:
        return self.codec.holds

    def accepts(self, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
        """Whether a store of this name takes one image of this dtype and shape."""
        return self.codec.accepts(dtype, shape)

    def open(self, location: str | os.PathLike, mode: str = "r", *, durable: bool = True, **options: object) -> Store:
        """``storage.open`` under this name."""
        return open(self.name, location, mode, durable=durable, **options)

    def is_store(self, location: str | os.PathLike) -> bool:
        try:
            located = self.store_class.locate(location)
        except ValueError:  # a location of another kind: a local path, for a backend of an object store
            return False
        return self.store_class.is_store(located)

    def files(self, location: str | os.PathLike) -> list:
        return self.store_class.files(self.store_class.locate(location))

    def disk_usage(self, location: str | os.PathLike) -> int:
        """Bytes the store at `location` takes: allocated on disk, or its objects' sizes in an object store."""
        with self.open(location) as opened:
            return opened.disk_usage()


def _load(target: str) -> type[Store] | None:
    module_name, class_name = target.split(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        return None


def _builds(store_class: type[Store], options: Mapping[str, object]) -> bool:
    """Whether a variant's options can be built here: not where the codec they name is missing (jpeg without
    simplejpeg), which its backend's Options refuse with a ValueError."""
    try:
        store_class.Options(**options)
    except ValueError:
        return False
    return True


def _entry_points() -> list[metadata.EntryPoint]:
    found = metadata.entry_points()
    return list(found.select(group=ENTRY_POINTS) if hasattr(found, "select") else found.get(ENTRY_POINTS, []))


@cache
def _backends() -> dict[str, Backend]:
    """Built-in backends, their variants, then entry points not named like either, each if its module imports."""
    found = {}
    for name, target in REGISTRY.items():
        store_class = _load(target)
        if store_class is not None:
            found[name] = Backend(name, store_class, name)
    for name, (base, options) in VARIANTS.items():
        if base in found and _builds(found[base].store_class, options):
            found[name] = Backend(name, found[base].store_class, base, MappingProxyType(options))
    for point in sorted(_entry_points(), key=lambda point: point.name):
        store_class = None if point.name in REGISTRY or point.name in VARIANTS else _load(point.value)
        if store_class is not None:
            found[point.name] = Backend(point.name, store_class, point.name)
    return found


def available(variants: bool = True) -> tuple[str, ...]:
    """Names of the backends (and their variants) whose libraries import: built-ins, variants, then entry points."""
    return tuple(name for name, entry in _backends().items() if variants or name == entry.family)


def family(name: str) -> str:
    """The backend whose format a backend or variant writes: ``family("lmdb-png") == "lmdb"``."""
    return backend(name).family


def backend(name: str) -> Backend:
    """The backend called `name`; ValueError lists the available ones."""
    try:
        return _backends()[name]
    except KeyError:
        raise ValueError(f"unknown or unavailable backend {name!r}; available: {', '.join(available())}") from None


def detect(location: str | os.PathLike) -> str | None:
    """Name of the backend whose store is at `location`, or None (also for a FIFO or device, which is not read)."""
    if _special(location):
        return None
    return next((name for name in available(variants=False) if backend(name).is_store(location)), None)


def open(name: str, location: str | os.PathLike, mode: str = "r", *, durable: bool = True, **options: object) -> Store:
    """Open the `name` store at `location`.

    Modes: "r" read-only (must exist), "a" read/append (create if missing), "w" create or
    replace a store of the same backend, "x" create (FileExistsError if anything is there).
    `durable`: appends are on disk when they return. `options` are the backend's keyword
    options (``map_size`` for lmdb, say); they override a variant's own. Bad options and
    modes are refused before anything is touched.
    """
    chosen = backend(name)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not isinstance(durable, bool):
        raise TypeError(f"durable must be True or False, got {durable!r}")
    settings = chosen.settings(**options)
    cls = chosen.store_class
    location = cls.locate(location)
    exists = cls.exists(location)
    if exists and mode == "x":
        raise FileExistsError(errno.EEXIST, "a file or directory already exists", str(location))
    if exists and cls.capabilities.local and _special(location):
        raise ValueError(f"{location} is a special file (a FIFO, socket or device), not a {name} store")
    if not exists and mode == "r":
        raise FileNotFoundError(errno.ENOENT, f"no {name} store", str(location))

    def opened(writable: bool, create: bool) -> Store:
        with damage_reported(location, name):
            return cls(location, settings, writable=writable, create=create, durable=durable, name=name)

    if exists and mode == "r":  # a read-only open changes nothing, so let the backend check the format itself
        try:
            return opened(writable=False, create=False)
        except Exception as error:
            if isinstance(error, (BlockingIOError, MemoryError)) or cls.is_store(location):
                raise
            damage = f" ({error})" if isinstance(error, DamagedStoreError) else ""
            raise ValueError(f"{location} holds {_describe(cls, location)}, not a {name} store{damage}") from error
    holds_store = exists and cls.is_store(location)
    if exists and not holds_store and not (mode in "aw" and cls.is_free(location)):
        raise ValueError(f"{location} holds {_describe(cls, location)}, not a {name} store")
    if mode == "w" or not holds_store:
        try:
            cls.install(location, settings, durable=durable, name=name, replace=exists)
        except FileExistsError:  # another process created the store meanwhile: join it, or refuse as "x" does
            if mode != "a" or not cls.is_store(location):
                raise
    return opened(writable=True, create=False)


def _special(location: str | os.PathLike) -> bool:
    """Whether `location` is a FIFO, socket or device: reading one to see what it holds could wait forever."""
    return os.path.exists(location) and not (os.path.isdir(location) or os.path.isfile(location))


def _describe(cls: type[Store], location: object) -> str:
    found = detect(location)
    return f"a {found} store" if found else cls.describe(location)
