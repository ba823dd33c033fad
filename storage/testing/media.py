"""A full disk and a read-only medium, for real: small tmpfs mounts in a child process's own mount namespace.

``unshare --user --map-root-user --mount`` (util-linux, Linux) gives the child a namespace in which it may
mount without privileges and which nobody else sees. In it, each backend name gets a filesystem of its own;
one Python process fills each through a store (`fill`), the filesystems are remounted read-only, and another
process reads the stores back (`read_back`). Each phase prints one JSON report per name, which the contract
test judges; a crash shows as the run's exit status.

    python -m storage.testing.media PHASE DIRECTORY NAME...
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

import storage

SIZE = 1 << 20  # the filesystem: room for a few batches
BATCH = 16  # images of 64×64 per append, random so that no codec shrinks them
NAMESPACE = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
SCRIPT = """set -e
top=$1 python=$2; shift 2
for name; do mkdir "$top/$name"; mount -t tmpfs -o size={size} tmpfs "$top/$name"; done
"$python" -m storage.testing.media fill "$top" "$@"
for name; do mount -o remount,ro "$top/$name"; done
"$python" -m storage.testing.media read_back "$top" "$@"
"""


@functools.cache
def unavailable() -> str | None:
    """Why no small filesystem can be mounted here, or None when one can."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare and mount (util-linux, Linux)"
    with tempfile.TemporaryDirectory() as directory:
        mount = [*NAMESPACE, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", directory]
        result = subprocess.run(mount, capture_output=True, text=True, check=False)
    return f"cannot mount a tmpfs in a user namespace here: {result.stderr.strip()}" if result.returncode else None


def run(names: list[str], directory: Path) -> tuple[list[dict], subprocess.CompletedProcess]:
    """Both phases for each of `names`, on small filesystems mounted under `directory`: the reports, and the run."""
    command = [*NAMESPACE, "sh", "-c", SCRIPT.format(size=SIZE), "sh", str(directory), sys.executable, *names]
    project = str(Path(storage.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [project, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")], result


def outcome(action: Callable[[], object]) -> dict:
    """What `action` raised, as the errno and class the test judges (all None when it returned)."""
    try:
        action()
    except Exception as error:  # reported, not raised: the parent judges it
        return {"error": type(error).__name__, "errno": getattr(error, "errno", None), "message": str(error)[:300]}
    return {"error": None, "errno": None, "message": ""}


def batch(name: str, number: int) -> tuple[np.ndarray, np.ndarray]:
    """Append number `number`: seeded random 64×64 images in a layout `name` accepts, and their labels."""
    from storage.testing.contract import sample_layout

    dtype, channels = sample_layout(name)
    shape = (BATCH, 64, 64) + ((channels,) if channels else ())
    info = np.iinfo(dtype)
    images = np.random.default_rng(number).integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return images, np.arange(number * BATCH, (number + 1) * BATCH)


def digest(name: str, location: Path) -> tuple[int, str]:
    """How many images the store at `location` holds, and a hash of all of them and their labels."""
    with storage.open(name, location) as store:
        images, labels = store.read(None)
    hashed = hashlib.sha256(np.asarray(labels).tobytes())
    for image in images:
        hashed.update(np.ascontiguousarray(image).tobytes())
    return len(labels), hashed.hexdigest()


def strangers(name: str, directory: Path) -> list[str]:
    """What lies under `directory` that no store there lists as its own (the ballast aside): leftovers."""
    backend = storage.backend(name)
    own = {directory / "ballast"}
    for entry in directory.iterdir():
        if backend.is_store(entry):
            files = backend.files(entry)  # and the directories they lie in, below the store's own
            own |= {entry, *files, *(up for file in files for up in file.parents if entry in up.parents)}
            own.add(backend.store_class.writer_lock(entry))
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path not in own)


def fill(name: str, directory: Path) -> dict:
    """Append until the disk is full, then create a store on the full disk: what each raised, what stayed."""
    location = directory / "store"
    appends = 0
    files = storage.backend(name).files
    with storage.open(name, location, "x") as store:
        for number in range(4 * SIZE // (BATCH * 64 * 64)):
            committed = files(location)
            appended = outcome(lambda n=number: store.append(*batch(name, n)))
            if appended["error"]:
                break
            appends += 1
    orphans = sorted(str(path.relative_to(directory)) for path in set(files(location)) - set(committed))
    ballast = os.open(directory / "ballast", os.O_WRONLY | os.O_CREAT)  # takes what space is left
    while outcome(lambda: os.write(ballast, bytes(4096)))["error"] is None:
        pass
    os.close(ballast)
    created = outcome(lambda: storage.open(name, directory / "new", "x").close())
    with storage.open(name, location) as store:
        expected = [batch(name, n) for n in range(appends)]
        read = outcome(lambda: _matches(store, expected))
    count, hashed = digest(name, location)
    return {
        "appends": appends,
        "append": appended,
        "create": created,
        "read": read,
        "count": count,
        "digest": hashed,
        "strangers": strangers(name, directory) + orphans,
        "new_exists": (directory / "new").exists(),
    }


def _matches(store: storage.Store, expected: list[tuple[np.ndarray, np.ndarray]]) -> None:
    from storage.testing.assertions import assert_read_match

    images = [image for images, _ in expected for image in images]
    labels = [label for _, labels in expected for label in labels]
    assert_read_match(store, None, images, labels)


def read_back(name: str, directory: Path) -> dict:
    """On the read-only medium: read the store, then try to append and to create."""
    location = directory / "store"
    count, hashed = digest(name, location)

    def append() -> None:
        with storage.open(name, location, "a") as store:
            store.append(*batch(name, 0))

    return {
        "count": count,
        "digest": hashed,
        "append": outcome(append),
        "create": outcome(lambda: storage.open(name, directory / "other", "x").close()),
    }


def main(argv: list[str]) -> int:
    phase, directory, *names = argv
    for name in names:
        report = {"fill": fill, "read_back": read_back}[phase](name, Path(directory) / name)
        print(json.dumps({"phase": phase, "name": name, **report}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
