"""Run a function in a forked child, so that a crash, a hang or a runaway allocation is seen, not suffered."""

from __future__ import annotations

import json
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    """How a forked call ended: its result, the exception it raised, or the signal that ended it."""

    result: object = None
    error: str | None = None  # exception class name
    message: str = ""
    signal: int | None = None
    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            return "timed out"
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"{self.error}: {self.message}" if self.error else f"returned {self.result!r}"


def address_space() -> int:
    """Bytes of virtual memory this process has mapped now (Linux), else 0."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        return 0


def run_forked(function: Callable[[], object], timeout: float = 20.0, headroom: int | None = None) -> Outcome:
    """Call `function` in a forked child that may map at most `headroom` bytes more than this process has.

    The result must be small and JSON-serialisable (it travels back through a pipe).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any of the parent's cleanup
        os.close(read_end)
        try:
            if headroom and address_space():
                limit = address_space() + headroom
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                report = {"result": function()}
            except BaseException as error:  # every way out is reported
                report = {"error": type(error).__name__, "message": str(error)[:500]}
            with os.fdopen(write_end, "w") as pipe:
                json.dump(report, pipe)
        finally:
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            return Outcome(timed_out=True)
        time.sleep(0.002)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    status = waited[1]
    if os.WIFSIGNALED(status):
        return Outcome(signal=os.WTERMSIG(status))
    return Outcome(**json.loads(data))
