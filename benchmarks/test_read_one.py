"""Read one image: open a store of N, read one image, close; and one image from a store already open."""

import itertools

import numpy as np

import storage
from benchmarks.conftest import describe
from benchmarks.contract import assert_images_equal


def test_read_one(benchmark, run_rounds, case, source, built_stores):
    images, labels = source
    path = built_stores.get(case, images, labels)
    image_id = case.images // 2
    describe(benchmark, "read-one", case, images, page_cache="warm", image_id=image_id)

    def open_read_close():
        with storage.open(case.backend, path) as store:
            return store[image_id]

    image, label = run_rounds(open_read_close)
    assert_images_equal([image], [images[image_id]])
    assert label == labels[image_id]


def test_read_one_open_store(benchmark, case, source, built_stores):
    """The per-sample cost inside a training loop: ids in a seeded shuffled order, store kept open."""
    images, labels = source
    path = built_stores.get(case, images, labels)
    describe(benchmark, "read-one-open", case, images, page_cache="warm", order="shuffled")
    ids = itertools.cycle(np.random.default_rng(0).permutation(case.images).tolist())
    with storage.open(case.backend, path) as store:

        def read_next():
            image_id = next(ids)
            return image_id, store[image_id]

        image_id, (image, label) = benchmark(read_next)
    assert_images_equal([image], [images[image_id]])
    assert label == labels[image_id]
