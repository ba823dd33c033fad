"""Store one image: create a store, append one image, close (fsynced, unless --no-fsync)."""

import pytest

from benchmarks.conftest import measure_store


@pytest.mark.single_image
def test_store_one(benchmark, run_rounds, case, source, fresh_target, durable):
    measure_store(benchmark, run_rounds, "store-one", case, source, fresh_target, durable)
