"""Durability and crash safety: files replaced atomically, flushed to disk when asked, and never written or read
through a symlink that someone planted in a store."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from storage._errors import DamagedStoreError


def staging_path(path: Path) -> Path:
    """Where a new version of `path` is prepared before it replaces `path`."""
    return path.with_name(path.name + ".tmp")


def replace_atomically(path: Path, data: bytes, durable: bool) -> None:
    """Give `path` the content `data` so that a crash or a reader sees the old or the new file, never a mix."""
    staging = staging_path(path)
    write_new(staging, data)
    _swap_in(staging, path, durable)


NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def write_new(path: Path, data: bytes) -> None:
    """Write `path` as a new file: whatever was at that name (a leftover, or a symlink) is removed, not followed."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def read_own(path: Path) -> bytes:
    """The bytes of a file of a store; DamagedStoreError if it is a symlink, which could lead out of the store."""
    try:
        descriptor = os.open(path, os.O_RDONLY | NO_FOLLOW)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DamagedStoreError(f"{path} is a symlink; a store's files are its own") from None
        raise
    with os.fdopen(descriptor, "rb") as file:
        return file.read()


@contextmanager
def staged_copy(path: Path, durable: bool) -> Iterator[Path]:
    """A copy of `path` to change; it replaces `path` atomically when the block succeeds, else it is removed.

    Readers that have `path` open keep reading the old version; a crash leaves the old version.
    """
    staging = staging_path(path)
    staging.unlink(missing_ok=True)  # a leftover, or a symlink planted there: never written through
    shutil.copyfile(path, staging)
    try:
        yield staging
        _swap_in(staging, path, durable)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _swap_in(staging: Path, path: Path, durable: bool) -> None:
    """Rename the finished `staging` over `path`: the file is complete on disk before its name is."""
    if durable:
        fsync_path(staging)
    os.replace(staging, path)
    if durable:
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush one file or directory to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def make_durable(files: Sequence[Path], directory: Path) -> None:
    """Flush new `files` and their `directory` entry to disk.

    On Linux one ``syncfs`` of the directory's filesystem does this for any number of files
    at the cost of a few fsyncs; elsewhere each file is flushed in turn.
    """
    if len(files) > 8 and _syncfs(directory):
        return
    for file in files:
        fsync_path(file)
    fsync_path(directory)


def _syncfs(directory: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        return libc.syncfs(descriptor) == 0
    finally:
        os.close(descriptor)


@contextmanager
def taking_turns(lock: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on the file `lock` for the block, so that writers take turns: processes, and store
    objects of one process alike. The file is made if missing, never through a symlink. Without flock (Windows),
    or with no `lock`, nothing is held."""
    if lock is None or fcntl is None:
        yield
        return
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # waits for the writer before
        yield
    finally:
        os.close(descriptor)  # and lets the next one in
