"""Root configuration: hypothesis profiles, and the benchmark grid plugin (benchmarks/plugin.py)."""

import os

try:
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
