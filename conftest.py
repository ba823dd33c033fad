"""Root configuration: hypothesis profiles (and, in benchmarks/, the benchmark grid options)."""

import os

from hypothesis import HealthCheck, settings

# Store I/O makes example times vary, so no deadline; "ci" is thorough, "dev" quick.
settings.register_profile("dev", max_examples=15, deadline=None)
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
