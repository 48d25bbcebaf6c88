"""The real Linux tree the kernel tests resolve against: Debian's linux-source-6.1.

Extracted once into ~/.cache/synapse (never into the repository), under a file lock so
parallel test processes do not collide; the tree is only ever read by the code under test.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from tests.conftest import need_tool

TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
CACHE = Path(os.environ.get("SYNAPSE_CACHE", Path.home() / ".cache" / "synapse"))
MARKER = ".synapse-extracted"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kernel_tree() -> Path:
    for tool in ("make", "gcc", "flex", "bison", "perl"):
        need_tool(tool, f"apt-get install {tool}")
    dest = CACHE / "linux-source-6.1"
    if (dest / MARKER).exists():
        return dest
    if not TARBALL.exists():
        pytest.fail(f"{TARBALL} is missing; install it with: apt-get install linux-source-6.1",
                    pytrace=False)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "linux-source-6.1.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / MARKER).exists():
            tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix=".extract-"))
            subprocess.run(["tar", "-xJf", TARBALL, "-C", tmp], check=True)
            (tmp / "linux-source-6.1" / MARKER).write_text(f"extracted from {TARBALL}\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp / "linux-source-6.1", dest)
            shutil.rmtree(tmp)
    return dest


def synapse(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "synapse_os.cli", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, env=env,
    )


def write_profile(path: Path, kernel_yaml: str, extra_top: str = "") -> Path:
    """A minimal valid profile with the given `kernel:` section body."""
    path.write_text(
        "synapse: 1\nname: kernel-test\n" + extra_top + "kernel:\n"
        + textwrap.indent(textwrap.dedent(kernel_yaml).strip() + "\n", "  ")
    )
    return path
