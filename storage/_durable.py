"""Durability and crash safety: files replaced atomically, flushed to disk when asked, and never written or read
through a symlink that someone planted in a store."""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import secrets
import shutil
import stat
import sys

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from storage._errors import DamagedStoreError

STAGING = ".tmp-"  # staging names are `<name>.tmp-<random>`: unique to their writer


def staging_path(path: Path) -> Path:
    """A name no other writer uses, where a new version of `path` is prepared before it replaces `path`."""
    return path.with_name(f"{path.name}{STAGING}{secrets.token_hex(6)}")


def staging_leftovers(path: Path) -> list[Path]:
    """Staging files of `path` that writers killed midway left behind."""
    return [Path(found) for found in glob.glob(glob.escape(str(path)) + STAGING + "*")]


def remove_leftovers(path: Path) -> None:
    """Delete the staging leftovers of `path`; only a writer holding the store's writer lock may."""
    for leftover in staging_leftovers(path):
        leftover.unlink(missing_ok=True)


def replace_atomically(path: Path, data: bytes, durable: bool) -> None:
    """Give `path` the content `data` so that a crash or a reader sees the old or the new file, never a mix."""
    staging = staging_path(path)
    try:
        write_new(staging, data)
        _swap_in(staging, path, durable)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


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
        descriptor = os.open(path, os.O_RDONLY | NO_FOLLOW | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DamagedStoreError(f"{path} is a symlink; a store's files are its own") from None
        raise
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # a FIFO or device would be read forever
            raise DamagedStoreError(f"{path} is not a regular file")
        return file.read()


@contextmanager
def staged_copy(path: Path, durable: bool) -> Iterator[Path]:
    """A copy of `path` to change; it replaces `path` atomically when the block succeeds, else it is removed.

    Readers that have `path` open keep reading the old version; a crash leaves the old version.
    """
    staging = staging_path(path)
    try:
        shutil.copyfile(path, staging)  # a new random name: nothing planted there
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
    while True:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | NO_FOLLOW, 0o644)
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # waits for the writer before
        if _same_file(descriptor, lock):
            break
        os.close(descriptor)  # the store was replaced while this writer waited: lock the new one
    try:
        yield
    finally:
        os.close(descriptor)  # and lets the next one in


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.lstat(path))
    except FileNotFoundError:
        return False


def move_into_place(new: Path, location: Path, replace: bool, durable: bool) -> Path | None:
    """Move the store made at `new` to `location` in one step; a crash leaves the old store there, or the new one.

    `replace`: `location` holds an old store (or an empty directory) to replace; what held the old store is
    returned, at a hidden name beside `location`, for the caller to remove. Without `replace`, FileExistsError if
    anything appeared at `location` meanwhile.
    """
    old = None
    if new.is_dir() and replace and any(location.iterdir()):  # an old store's directory: swap the two
        if _exchange(new, location):
            old = new  # `new`'s name now holds the old store
        else:  # nothing is at `location` between these two renames
            old = location.with_name(f".{location.name}.old-{secrets.token_hex(6)}")
            os.rename(location, old)
            os.rename(new, location)
    elif new.is_dir():
        try:
            os.rename(new, location)  # replaces an empty directory, refuses one that is not empty
        except OSError as error:
            if error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(errno.EEXIST, "a store appeared there meanwhile", str(location)) from None
            raise
    elif replace:
        os.replace(new, location)
    else:
        _move_to_free_name(new, location)
    if durable:
        fsync_path(location.parent)
    return old


def _move_to_free_name(new: Path, location: Path) -> None:
    """Rename the file `new` to `location`, which must be free: a file that appeared there meanwhile is kept."""
    try:
        os.link(new, location)  # unlike a rename, refuses to replace (FileExistsError)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        if os.path.lexists(location):  # a filesystem without hard links: check, then rename
            raise FileExistsError(errno.EEXIST, "a store appeared there meanwhile", str(location)) from None
        os.rename(new, location)
    else:
        new.unlink()


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux `renameat2` with RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_current, rename_exchange = -100, 2
    if renameat2(at_current, os.fsencode(first), at_current, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL):  # an old kernel, or a filesystem that cannot exchange
        return False
    raise OSError(code, os.strerror(code), str(second))
