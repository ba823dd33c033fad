"""What a backend's tests need: the contract every store passes, and the checks and helpers it is built from.

>>> from storage.testing import StoreContract
>>> class TestMine(StoreContract):   # doctest: +SKIP
...     backend = "mine"

Imports pytest and hypothesis (test dependencies), unlike the rest of ``storage``.
"""

import pytest

pytest.register_assert_rewrite("storage.testing.assertions", "storage.testing.contract")

from storage.testing.assertions import (  # noqa: E402 - after the rewrite is registered
    assert_images_equal,
    assert_images_match,
    assert_read_match,
    min_psnr,
    psnr,
    store_path,
)
from storage.testing.contract import HEADROOM, StoreContract, family_names, open_and_read, sample_images  # noqa: E402
from storage.testing.isolation import Outcome, run_forked  # noqa: E402

__all__ = [
    "HEADROOM",
    "Outcome",
    "StoreContract",
    "assert_images_equal",
    "assert_images_match",
    "assert_read_match",
    "family_names",
    "min_psnr",
    "open_and_read",
    "psnr",
    "run_forked",
    "sample_images",
    "store_path",
]
