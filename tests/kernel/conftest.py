"""The real Linux trees the kernel tests resolve against: Debian's linux-source-6.1 and
linux-source-6.12 (every supported line in kernel-config/versions.toml).

Each is extracted once per tarball into ~/.cache/synapse (never into the repository),
keyed by the tarball's sha256 and under a file lock, so parallel test processes and later
sessions share it (synapse_os.kernel.trees); the trees are only ever read by the code
under test. A missing package fails the test with its apt-get command.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from synapse_os.errors import UserError
from synapse_os.kernel.trees import prepared_tree
from tests.conftest import need_tool

REPO = Path(__file__).resolve().parents[2]
SERIES = ("6.1", "6.12")  # the supported lines, each proven on its real tree


def real_tree(series: str) -> Path:
    for tool in ("make", "gcc", "flex", "bison", "perl"):
        need_tool(tool, f"apt-get install {tool}")
    try:
        return prepared_tree(series)
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kernel_tree() -> Path:
    """Debian's 6.1 tree: the default for tests that are not about version differences."""
    return real_tree("6.1")


@pytest.fixture(scope="session")
def kernel_tree_612() -> Path:
    return real_tree("6.12")


@pytest.fixture(scope="session", params=SERIES, ids=[f"linux-{s}" for s in SERIES])
def any_tree(request: pytest.FixtureRequest) -> Path:
    """Each supported line's real tree in turn."""
    return real_tree(request.param)


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
