"""The SeaweedFS test server (storage/testing/seaweed.py): loopback only, credentials required, nothing left behind."""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from storage.testing import seaweed

pytestmark = [pytest.mark.s3, pytest.mark.skipif(seaweed.find_weed() is None, reason=seaweed.MISSING)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server():
    with seaweed.SeaweedServer() as running:
        yield running


def group(leader: int) -> list[int]:
    """The processes in `leader`'s process group: the server and any children it started."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or it just ended
        if int(fields[2]) == leader:
            found.append(int(entry))
    return found


def address(text: str) -> str:
    """An address from /proc/net/tcp*: hex words in host (little-endian) order."""
    raw = bytes.fromhex(text)
    ip = ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))
    return str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening, and every unconnected UDP socket, owned by `pids`."""
    found = set()
    for pid in pids:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        for kind, wanted in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
            with open(f"/proc/{pid}/net/{kind}") as table:
                for line in table.readlines()[1:]:
                    fields = line.split()
                    if fields[9] in inodes and fields[3] == wanted:
                        host, port = fields[1].split(":")
                        found.add((address(host), int(port, 16)))
    return found


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def status(server: seaweed.SeaweedServer, secret: str | None = None) -> int:
    url = f"{server.endpoint}/{server.bucket}?list-type=2"
    return seaweed.send(seaweed.sign("GET", url, server.access_key, secret or server.secret_key))[0]


def gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie counts: a container's init may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_listens_on_loopback_only(server):
    processes = group(server.pid)
    assert processes == [server.pid]  # weed mini is one process
    sockets = listening(processes)
    assert ("127.0.0.1", port_of(server.endpoint)) in sockets
    assert {host for host, _ in sockets} == {"127.0.0.1"}, sockets


def test_credentials_are_required(server):
    assert seaweed.send(urllib.request.Request(f"{server.endpoint}/{server.bucket}"))[0] == 403
    assert status(server, secret=server.secret_key + "x") == 403
    assert status(server) == 200


def test_environment_reaches_the_bucket(server, monkeypatch):
    obstore = pytest.importorskip("obstore")
    from obstore.store import S3Store

    for name, value in server.environment().items():
        monkeypatch.setenv(name, value)
    store = S3Store(server.bucket)  # everything else from the environment
    obstore.put(store, "environment/probe", b"seen", mode="create")
    assert bytes(obstore.get(store, "environment/probe").bytes()) == b"seen"
    with pytest.raises(obstore.exceptions.AlreadyExistsError):  # conditional writes: If-None-Match answers 412
        obstore.put(store, "environment/probe", b"again", mode="create")


def test_conditional_put(server):
    url = f"{server.endpoint}/{server.bucket}/conditional/{time.time_ns()}"
    for expected in (200, 412):  # If-None-Match: * creates, and then refuses to replace
        put = seaweed.sign("PUT", url, server.access_key, server.secret_key, b"once", {"If-None-Match": "*"})
        assert seaweed.send(put)[0] == expected


def test_stop_leaves_nothing():
    running = seaweed.SeaweedServer(bucket="stopped").start()
    pid, directory = running.pid, running.directory
    ports = {port for _, port in listening(group(pid))}
    running.stop()
    assert gone(pid)
    assert not os.path.exists(directory)
    with socket.socket() as probe:  # nothing listens there any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port_of(running.endpoint)))
    left = [path for path in glob.glob("/tmp/seaweedfs-*.sock") if int(re.findall(r"\d+", path)[-1]) in ports]
    assert left == []
    assert glob.glob(f"/tmp/weed.*.{pid}") == []
    running.stop()  # again: nothing to do


def test_two_servers_at_once(server):
    with seaweed.SeaweedServer(bucket="second") as second:
        assert second.endpoint != server.endpoint
        assert status(second) == 200
        assert status(server) == 200
        crossed = seaweed.sign("GET", f"{second.endpoint}/second", server.access_key, server.secret_key)
        assert seaweed.send(crossed)[0] == 403


def fake_weed(tmp_path: Path, body: str) -> str:
    script = tmp_path / "weed"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_early_exit_is_reported(tmp_path):
    weed = fake_weed(tmp_path, f'exec {shlex.quote(seaweed.find_weed())} "$@" -no.such.flag')
    candidate = seaweed.SeaweedServer(weed=weed)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited with code 2(.|\n)*weed\.log(.|\n)*no\.such\.flag"):
        candidate.start()
    assert time.monotonic() - started < 10
    assert not os.path.exists(candidate.directory)
    assert gone(candidate.pid)


def test_silence_times_out(tmp_path):
    candidate = seaweed.SeaweedServer(weed=fake_weed(tmp_path, "echo listening, honest; exec sleep 60"), timeout=1)
    with pytest.raises(RuntimeError, match=r"did not serve(.|\n)*listening, honest"):
        candidate.start()
    assert not os.path.exists(candidate.directory)
    assert gone(candidate.pid)


def test_command_stops_on_ctrl_c():
    command = [sys.executable, "-m", "storage.testing.seaweed", "--bucket", "command"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        output, deadline = b"", time.monotonic() + 60
        while b"Ctrl+C" not in output and time.monotonic() < deadline and process.poll() is None:
            if select.select([process.stdout], [], [], 1)[0]:
                output += os.read(process.stdout.fileno(), 65536)
        text = output.decode()
        assert "Ctrl+C" in text, process.stderr.read().decode() if process.poll() is not None else text
        variables = dict(re.findall(r"export (\w+)=(\S+)", text))
        pid, directory = re.search(r"pid (\d+), data in (\S+)", text).groups()
        url = f"{variables['AWS_ENDPOINT_URL']}/command?list-type=2"
        signed = seaweed.sign("GET", url, variables["AWS_ACCESS_KEY_ID"], variables["AWS_SECRET_ACCESS_KEY"])
        assert seaweed.send(signed)[0] == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert gone(pid)
    assert not os.path.exists(directory)


START = "from storage.testing.seaweed import SeaweedServer as S; s = S().start(); print(s.pid, s.directory, flush=True)"


def test_interrupted_run_stops_it():
    code = f"{START}; raise KeyboardInterrupt"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "KeyboardInterrupt" in run.stderr
    pid, directory = run.stdout.split()
    assert gone(int(pid))
    assert not os.path.exists(directory)


def test_killed_parent_stops_it():
    code = f"{START}; import time; time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pid, directory = parent.stdout.readline().split()
    finally:
        parent.kill()  # no atexit: only PR_SET_PDEATHSIG can end the server now
        parent.wait()
    deadline = time.monotonic() + 15
    while not gone(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert gone(int(pid))
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # the one thing left behind by a killed parent
