"""The kernel-added round trip of --s3-latency (storage.testing.latency), where this machine can add one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from storage.testing import latency

REASON = latency.unavailable()

# In a child process (it leaves this one's network alone): a loopback echo's round trip after a 40 ms delay.
CHILD = """
import socket, time
from storage.testing import latency
latency.delay_loopback(40)
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
started = time.perf_counter()
client.sendall(b"x"); peer.recv(1); peer.sendall(b"y"); client.recv(1)
print(time.perf_counter() - started)
"""


def test_the_reason_a_delay_is_unavailable_names_what_is_missing():
    assert REASON is None or "netem" in REASON or "needs" in REASON


@pytest.mark.skipif(REASON is not None, reason=f"{REASON}")
def test_a_delayed_loopback_adds_the_round_trip_in_a_namespace_of_its_own():
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=True)
    assert 0.040 <= float(child.stdout) < 0.5
    assert latency.unavailable() is None  # this process's own network was not touched
