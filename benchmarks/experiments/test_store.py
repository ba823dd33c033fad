"""Storing: create a store, append images, close, fsynced unless --no-fsync; every round from an empty target.

- store-one: one image;
- store-many: N images in one call, beside the floor row `limit` (the same pixel bytes to one plain file).
"""

import pytest

from benchmarks.harness import measure_store


@pytest.mark.single_image
def test_store_one(benchmark, run_rounds, case, source, fresh_target, durable):
    measure_store(benchmark, run_rounds, "store-one", case, source, fresh_target, durable)


@pytest.mark.limit_row
@pytest.mark.tutorial_row
@pytest.mark.codec_floor
def test_store_many(benchmark, run_rounds, case, source, fresh_target, durable):
    measure_store(benchmark, run_rounds, "store-many", case, source, fresh_target, durable)
