"""Root configuration: hypothesis profiles (and, in benchmarks/, the benchmark grid options)."""

import os

from hypothesis import HealthCheck, settings

# Store I/O makes example times vary, so no deadline; "ci" is thorough, "dev" quick, "stress" a long hunt.
settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("stress", settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    group = parser.getgroup("image storage", "image storage benchmark grid")
    group.addoption(
        "--preset",
        help="named grid: default, classic (1 to 100,000 images of 32x32x3), large (256x256x3 and 512x512x3), "
        "training (the training-read experiments only), variants (1,000 images of 32x32x3 and 256x256x3, every "
        "backend and variant) or smoke (20 and 300 images, every experiment; the default when timing is off, "
        "--benchmark-disable)",
    )
    group.addoption(
        "--backends",
        help="comma-separated backends and variants, e.g. lmdb,lmdb-png (default: every backend; with "
        "--preset=variants, every variant too)",
    )
    group.addoption("--image-counts", help="comma-separated image counts, e.g. 100,10000 (overrides the preset's)")
    group.addoption(
        "--image-sizes", help="comma-separated HxWxC or HxW sizes, e.g. 32x32x3,64x64 (overrides the preset's)"
    )
    group.addoption(
        "--dataset",
        default="synthetic",
        help="synthetic, cifar10:DIR (CIFAR-10 python batches) or folder:DIR (class-per-folder images)",
    )
    group.addoption(
        "--no-fsync",
        action="store_true",
        help="store benchmarks open stores with durable=False: no fsync, the page-cache cost only",
    )
    group.addoption("--store-dir", help="directory for the stores under test (default: pytest's temporary directory)")
