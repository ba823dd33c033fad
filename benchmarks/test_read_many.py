"""Read many: open a store, read all N images in id order into memory, close (warm page cache).

The `limit` row reads the same pixel bytes from one plain file into a fresh array.
"""

import pytest

from benchmarks.conftest import assert_read_back, describe, raw_bytes, read_all


@pytest.mark.limit_row
def test_read_many(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    path = built_stores.get(case, images, labels)
    describe(benchmark, "read-many", case, images, page_cache="warm")
    nbytes = raw_bytes(images)
    got = run_rounds(lambda: read_all(case.backend, path, nbytes))
    assert_read_back(case.backend, got, images, labels)
