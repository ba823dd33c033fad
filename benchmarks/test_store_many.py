"""Store many: create a store, append N images in one call, close (fsynced, unless --no-fsync).

The `limit` row writes the same pixel bytes to one plain file and fsyncs it.
"""

import pytest

from benchmarks.conftest import measure_store


@pytest.mark.limit_row
def test_store_many(benchmark, run_rounds, case, source, fresh_target, durable):
    measure_store(benchmark, run_rounds, "store-many", case, source, fresh_target, durable)
