"""Root configuration: hypothesis profiles, and the benchmark grid plugin (benchmarks/plugin.py)."""

import contextlib
import os
import secrets

try:
    import pytest
    import pytest_benchmark  # noqa: F401 - the benchmarks' plugin: its absence is named here, not as a bad option
    from hypothesis import HealthCheck, settings
except ImportError as missing:
    raise ImportError(
        f"{missing.name} is not installed: the tests need the test extra, pip install -e '.[test]'"
    ) from None

pytest_plugins = ["benchmarks.plugin"]

# Store I/O makes example times vary, so no deadline; "ci" is thorough, "dev" quick, "stress" a long hunt.
settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("stress", settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    group = parser.getgroup("s3", "object store")
    group.addoption(
        "--s3-endpoint",
        help="URL of your own S3-compatible store for the S3 tests and benchmarks, instead of a SeaweedFS server "
        "started for the run; credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    )
    group.addoption("--s3-bucket", default="images", help="bucket for --s3-endpoint (default: images)")
    group.addoption(
        "--s3-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="a round-trip delay in milliseconds that the kernel adds between the benchmarks and the S3 server "
        "started for the run (netem in a network namespace; needs root): run it on its own, e.g. "
        "pytest --benchmark-only --preset object-store --s3-latency 20",
    )


@pytest.fixture(scope="session")
def s3_root(request):
    """``s3://bucket/prefix`` under which S3 tests and benchmarks put their stores, with the client's variables set
    in the environment: a SeaweedFS server started for the run (stopped at its end), or --s3-endpoint's store. The
    prefix is fresh, and whatever is left under it is deleted at the end."""
    from storage.testing import places, seaweed

    endpoint = request.config.getoption("--s3-endpoint")
    delay = request.config.getoption("--s3-latency")
    if delay and endpoint:
        raise pytest.UsageError("--s3-latency delays the server started for the run, not --s3-endpoint's")
    with contextlib.ExitStack() as stack:
        if endpoint:
            variables = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": str(endpoint.startswith("http:")).lower()}
            bucket = request.config.getoption("--s3-bucket")
        else:
            if seaweed.find_weed() is None:
                pytest.skip(seaweed.MISSING)
            if delay:
                enter_delayed_network(delay)
            server = stack.enter_context(seaweed.SeaweedServer())
            variables, bucket = server.environment(), server.bucket
        saved = {name: os.environ.get(name) for name in [*variables, places.S3_TEST_ROOT, places.ADDED_ROUND_TRIP]}
        root = f"s3://{bucket}/image-store-tests-{secrets.token_hex(4)}"
        os.environ.update(variables, **{places.S3_TEST_ROOT: root, places.ADDED_ROUND_TRIP: f"{delay:g}"})
        try:
            yield root
            places.ObjectPlace(root).remove()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def enter_delayed_network(milliseconds: float) -> None:
    """Move this process into a network namespace whose loopback delays each round trip (storage.testing.latency),
    or skip the S3 cases saying why this machine cannot."""
    from storage import _objects
    from storage.testing import latency

    reason = latency.unavailable(milliseconds)
    if reason:
        pytest.skip(f"--s3-latency: {reason}")
    if _objects._runtime_pid is not None:  # its threads would stay outside the namespace, without the delay
        raise pytest.UsageError("--s3-latency must come before any other S3 test in the run: run the benchmarks alone")
    latency.delay_loopback(milliseconds)
