"""A round-trip delay on the loopback, added by the kernel, for S3 benchmarks as on a real network.

`delay_loopback(milliseconds)` moves this process into a network namespace of its own (``unshare(CLONE_NEWNET)``),
brings its loopback up and gives it netem's delay, half the round trip on each direction's way out. A server
started afterwards (the S3 fixture's) runs inside the namespace too, so every request between the benchmark and
the server pays the round trip, and nothing else on the machine does. It needs Linux, root (or CAP_NET_ADMIN),
``ip`` and ``tc`` from iproute2, and a kernel with netem (CONFIG_NET_SCH_NETEM); `unavailable()` says what is
missing, checked in a throwaway namespace first.

A namespace belongs to the thread that entered it and to the threads and processes it starts later: call this
before anything starts threads that talk to the network (obstore's runtime, above all), as the fixture does.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys

CLONE_NEWNET = 0x40000000


def _commands(milliseconds: float) -> list[list[str]]:
    return [
        ["ip", "link", "set", "lo", "up"],
        ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", f"{milliseconds / 2:g}ms"],
    ]


def unavailable(milliseconds: float = 2.0) -> str | None:
    """Why a delay cannot be added here, or None."""
    if not sys.platform.startswith("linux"):
        return "a kernel-added delay needs Linux (network namespaces and netem)"
    missing = [tool for tool in ("unshare", "ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"a kernel-added delay needs {', '.join(missing)} (util-linux, iproute2)"
    script = " && ".join(" ".join(command) for command in _commands(milliseconds))
    trial = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    if trial.returncode:
        reason = trial.stderr.strip().splitlines()[-1] if trial.stderr.strip() else f"exit {trial.returncode}"
        return (
            f"this machine cannot add a delay with netem in a network namespace ({reason}; it needs root and a kernel "
            "with CONFIG_NET_SCH_NETEM)"
        )
    return None


def delay_loopback(milliseconds: float) -> None:
    """Enter a new network namespace whose loopback delays every round trip by `milliseconds`."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed: a new network namespace needs root")
    for command in _commands(milliseconds):
        subprocess.run(command, check=True, capture_output=True, timeout=30)
