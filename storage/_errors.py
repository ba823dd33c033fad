"""The one error a store adds to Python's own, and the rule that turns a library's surprise into it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class DamagedStoreError(ValueError):
    """A store whose format marker is present but whose content is damaged or incomplete."""


# What opening and reading raise on purpose; anything else out of a backend's library (h5py's
# KeyError for a broken object, say) is damage. Missing ids (KeyError) and bad arguments
# (TypeError) are reported before a backend touches the store.
INTENDED_ERRORS = (ValueError, FileNotFoundError, PermissionError, BlockingIOError, MemoryError)


@contextmanager
def damage_reported(location: object, backend: str) -> Iterator[None]:
    """Turn a library's unexpected error about a store's content into a DamagedStoreError naming the store."""
    try:
        yield
    except INTENDED_ERRORS:
        raise
    except Exception as error:
        raise DamagedStoreError(
            f"{location} is a damaged or incomplete {backend} store ({type(error).__name__}: {error})"
        ) from error
