"""Real full and read-only file systems for the tests: a small tmpfs mounted in a private mount namespace
(`unshare --mount --map-root-user`), seen only by the one command run inside it and gone when it ends."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@functools.cache
def _can_mount() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _can_mount(), reason="this machine does not allow mount namespaces "
                                                           "(unshare --mount --map-root-user)")


def run_on_tmpfs(mountpoint: Path, options: str, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m ARGS` with a tmpfs (`options`: e.g. `size=200k`, `ro`) over `mountpoint`, created empty."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    script = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", options,
                           str(mountpoint), sys.executable, "-m", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
