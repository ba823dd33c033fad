"""Places for test stores in an object store: what ``tmp_path / "store"`` is for the local backends.

The S3 tests' fixture starts a server (or takes the user's, with ``--s3-endpoint``), puts its credentials in the
environment and names a root such as ``s3://images/tests`` in ``S3_TEST_ROOT``; every place is a fresh prefix
below it, and its objects are deleted when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

S3_TEST_ROOT = "S3_TEST_ROOT"
ADDED_ROUND_TRIP = "S3_ADDED_ROUND_TRIP_MS"  # the delay --s3-latency added to every request, for the records


class ObjectPlace:
    """A prefix in an object store that the contract's tests use like a temporary directory: ``place / "store"``,
    ``exists()``, ``iterdir()``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def __truediv__(self, name: str) -> ObjectPlace:
        return ObjectPlace(f"{self.url}/{name}")

    def __fspath__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"ObjectPlace({self.url!r})"

    def iterdir(self) -> list[str]:
        """The keys of every object under this prefix."""
        from storage._objects import ObjectLocation, _listed

        return [entry["path"] for entry in _listed(ObjectLocation.parse(self.url), "")]

    def exists(self) -> bool:
        return bool(self.iterdir())

    def remove(self) -> None:
        from storage._objects import ObjectLocation, _delete

        location = ObjectLocation.parse(self.url)
        _delete(location.client(), self.iterdir())


@contextlib.contextmanager
def object_place() -> Iterator[ObjectPlace]:
    """A fresh, empty prefix under the test root, emptied again afterwards."""
    root = os.environ.get(S3_TEST_ROOT)
    if not root:
        raise RuntimeError(f"no object store for tests: {S3_TEST_ROOT} is not set (the s3_server fixture sets it)")
    place = ObjectPlace(f"{root}/{secrets.token_hex(6)}")
    try:
        yield place
    finally:
        place.remove()
