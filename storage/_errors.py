"""The one error a store adds to Python's own, and the rule that turns a library's surprise into it."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class DamagedStoreError(ValueError):
    """A store whose format marker is present but whose content is damaged or incomplete."""


# What opening and reading raise on purpose; anything else out of a backend's library (h5py's
# KeyError for a broken object, say) is damage. Missing ids (KeyError) and bad arguments
# (TypeError) are reported before a backend touches the store.
INTENDED_ERRORS = (ValueError, FileNotFoundError, PermissionError, BlockingIOError, MemoryError)
MEDIUM_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the disk is full, over quota, or read-only


def medium_error(error: BaseException) -> OSError | None:
    """The medium's own complaint (full, over quota, read-only) in an error, as an OSError with its errno.

    Libraries wrap it: lmdb and h5py raise their own classes whose message holds the system's text."""
    for code in MEDIUM_ERRORS:
        if getattr(error, "errno", None) == code:
            return error if isinstance(error, OSError) else OSError(code, str(error))
        if os.strerror(code) in str(error):
            return OSError(code, f"{os.strerror(code)} ({type(error).__name__}: {error})")
    return None


@contextmanager
def damage_reported(location: object, backend: str) -> Iterator[None]:
    """Turn a library's unexpected error about a store's content into a DamagedStoreError naming the store."""
    try:
        yield
    except INTENDED_ERRORS:
        raise
    except Exception as error:
        medium = medium_error(error)
        if medium is error:
            raise
        if medium is not None:
            raise medium from error
        raise DamagedStoreError(
            f"{location} is a damaged or incomplete {backend} store ({type(error).__name__}: {error})"
        ) from error
