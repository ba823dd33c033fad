"""Image stores behind one small interface: ``storage.open(backend, path, mode)``.

>>> import storage
>>> with storage.open("hdf5", "cifar.h5", mode="x") as store:   # doctest: +SKIP
...     store.append(images, labels)
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
from functools import cache
from pathlib import Path

from storage._base import DamagedStoreError, Store, damage_reported

__all__ = ["DamagedStoreError", "Store", "available", "family", "open"]

# name -> "module:class"; a backend is listed only when its module (and so its library) imports.
REGISTRY = {
    "png": "storage.png_store:PngStore",
    "lmdb": "storage.lmdb_store:LmdbStore",
    "hdf5": "storage.hdf5_store:Hdf5Store",
    "npz": "storage.npz_store:NpzStore",
}
# name -> (backend, write options): the same format written another way, benchmarked as its own row.
VARIANTS = {
    "png-level6": ("png", {"compress_level": 6}),  # Pillow's default level, which the classic tutorial used
    "png-level9": ("png", {"compress_level": 9}),
    "lmdb-png": ("lmdb", {"encoding": "png"}),
    "lmdb-pickle": ("lmdb", {"encoding": "pickle"}),
    "hdf5-png": ("hdf5", {"encoding": "png"}),
    "hdf5-lzf": ("hdf5", {"compression": "lzf"}),
    "hdf5-gzip": ("hdf5", {"compression": "gzip"}),
    "npz-deflate": ("npz", {"compression": "deflate"}),
}
MODES = ("r", "a", "w", "x")


@cache
def _backends() -> dict[str, type[Store]]:
    found = {}
    for name, target in REGISTRY.items():
        module_name, class_name = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found[name] = getattr(module, class_name)
    for name, (base, options) in VARIANTS.items():
        if base in found:
            found[name] = found[base].variant(name, options)
    return found


def available(variants: bool = True) -> tuple[str, ...]:
    """Names of the backends (and their variants) whose libraries import, in registry order."""
    return tuple(name for name in _backends() if variants or name in REGISTRY)


def family(name: str) -> str:
    """The backend whose format a backend or variant writes: ``family("lmdb-png") == "lmdb"``."""
    return VARIANTS[name][0] if name in VARIANTS else name


def backend(name: str) -> type[Store]:
    """The store class of a backend; ValueError lists the available ones."""
    try:
        return _backends()[name]
    except KeyError:
        raise ValueError(f"unknown or unavailable backend {name!r}; available: {', '.join(available())}") from None


def detect(path: str | os.PathLike) -> str | None:
    """Name of the backend whose store is at `path`, or None."""
    return next((name for name in available(variants=False) if backend(name).is_store(Path(path))), None)


def open(name: str, path: str | os.PathLike, mode: str = "r", **options: object) -> Store:
    """Open the `name` store at `path`.

    Modes: "r" read-only (must exist), "a" read/append (create if missing), "w" create or
    replace a store of the same backend, "x" create (FileExistsError if `path` exists).
    `options` are the backend's keyword options (for example ``map_size`` for lmdb); they add to
    and override a variant's own.
    """
    cls = backend(name)
    if options.keys() - {"durable"}:  # write options: checks of what the store accepts must see them
        cls = cls.variant(name, {key: value for key, value in options.items() if key != "durable"})
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    durable = options.get("durable", True)
    if not isinstance(durable, bool):
        raise TypeError(f"durable must be True or False, got {durable!r}")
    path = Path(path)
    exists = os.path.lexists(path)
    if exists and mode == "x":
        raise FileExistsError(errno.EEXIST, "a file or directory already exists", str(path))
    if not exists and mode == "r":
        raise FileNotFoundError(errno.ENOENT, f"no {name} store", str(path))
    if exists and mode == "r":  # a read-only open changes nothing, so let the backend check the format itself
        try:
            with damage_reported(path, name):
                return cls(path, writable=False, create=False, durable=durable, **cls.options)
        except Exception as error:
            if isinstance(error, (BlockingIOError, MemoryError)) or cls.is_store(path):
                raise
            damage = f" ({error})" if isinstance(error, DamagedStoreError) else ""
            raise ValueError(f"{path} holds {_describe(path)}, not a {name} store{damage}") from error
    create = not exists
    if exists and not cls.is_store(path):
        if not (mode in "aw" and cls.is_directory and path.is_dir() and not any(path.iterdir())):
            raise ValueError(f"{path} holds {_describe(path)}, not a {name} store")
        create = True  # an empty directory is a fine place for a new directory store
    elif exists and mode == "w":
        _remove(cls, path)
        create = True
    with damage_reported(path, name):
        return cls(path, writable=mode != "r", create=create, durable=durable, **cls.options)


def _describe(path: Path) -> str:
    found = detect(path)
    if found:
        return f"a {found} store"
    if path.is_dir():
        return "a directory that is no image store" if any(path.iterdir()) else "an empty directory"
    return "a file that is no image store"


def _remove(cls: type[Store], path: Path) -> None:
    """Delete the files of a store of `cls`, and nothing else."""
    for file in cls.files(path):
        file.unlink()
    if cls.is_directory:
        with contextlib.suppress(OSError):  # the directory holds something else too: keep it and that
            path.rmdir()
