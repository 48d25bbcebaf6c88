"""Running the kernel's own kconfig on a source tree, without touching that tree.

Every make runs with `O=<scratch dir>`, so the user's source tree is only read. A tree
that was configured in place (it has a .config or include/config, which kbuild refuses
with O=) is first copied in its Kconfig-relevant part (Kconfig*, Makefile*, Kbuild*,
scripts/, arch/*/configs) into the scratch dir.

Dependency questions are answered by `kernel-config/kconfig-query.c`, compiled against the
scripts/kconfig objects make just built, and run with the exact environment make gave
`scripts/kconfig/conf` (captured through a recipe-shell wrapper), so Kconfig macros such
as $(CC) and $(cc-option,...) evaluate the same way they did for the .config.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from synapse_os import proc
from synapse_os.errors import OperationError, UserError
from synapse_os.resources import data_dir

# tool -> how to install it (Debian/Ubuntu, Arch)
BUILD_TOOLS: tuple[tuple[str, str], ...] = (
    ("make", "apt-get install make (Arch: pacman -S make)"),
    ("gcc", "apt-get install gcc (Arch: pacman -S gcc)"),
    ("flex", "apt-get install flex (Arch: pacman -S flex)"),
    ("bison", "apt-get install bison (Arch: pacman -S bison)"),
)
PERL_HINT = "apt-get install perl (Arch: pacman -S perl)"
MAKE_TIMEOUT_S = 900
COPY_NAMES = re.compile(r"^(Kconfig|Makefile|Kbuild).*")
CONF_COMMAND = re.compile(r"scripts/kconfig/conf\s+(?:-s\s+)?--\S+\s+([^\s;]+)")
SKIP_SUFFIXES = (".o", ".cmd", ".d", ".a", ".so", ".ko")

CAPTURE_SHELL = """#!/bin/sh
# Recipe shell for make: records the environment of the kconfig `conf` run, then runs
# the recipe with /bin/sh as usual.
for last in "$@"; do :; done
case "$last" in
*scripts/kconfig/conf*)
    env -0 > "$SYNAPSE_KCONFIG_ENV"
    printf '%s' "$last" > "$SYNAPSE_KCONFIG_CMD" ;;
esac
exec /bin/sh "$@"
"""


def check_tools(names: Iterable[tuple[str, str]] = BUILD_TOOLS) -> None:
    """UserError naming the first missing build tool and how to install it."""
    for name, hint in names:
        if shutil.which(name) is None:
            raise UserError(
                f"'{name}' is needed to run the kernel's kconfig but was not found on PATH; "
                f"install it with: {hint}"
            )


def kernel_version(source: Path) -> str:
    """'6.1.192' from the top-level Makefile's VERSION/PATCHLEVEL/SUBLEVEL/EXTRAVERSION."""
    fields: dict[str, str] = {}
    with (source / "Makefile").open(errors="replace") as f:
        for _, line in zip(range(20), f, strict=False):
            m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", line)
            if m:
                fields[m.group(1)] = m.group(2)
    if "VERSION" not in fields or "PATCHLEVEL" not in fields:
        raise UserError(f"{source}/Makefile has no VERSION/PATCHLEVEL: not a Linux source tree")
    version = f"{fields['VERSION']}.{fields['PATCHLEVEL']}.{fields.get('SUBLEVEL') or 0}"
    return version + fields.get("EXTRAVERSION", "")


def check_source(source: Path, arch: str) -> str:
    """The kernel version of a source tree, or a UserError saying what is wrong with it."""
    if not source.exists():
        raise UserError(f"--source {source} does not exist; pass an unpacked Linux source tree")
    if not source.is_dir():
        raise UserError(f"--source {source} is not a directory; pass an unpacked Linux source tree")
    needed = ("Makefile", "Kconfig", "scripts/kconfig/conf.c")
    missing = [p for p in needed if not (source / p).is_file()]
    if missing:
        raise UserError(
            f"--source {source} is not a Linux kernel source tree (no {missing[0]}); "
            "pass the top directory of an unpacked kernel source"
        )
    if not (source / "arch" / arch / "Kconfig").is_file():
        arches = sorted(p.name for p in (source / "arch").iterdir() if (p / "Kconfig").is_file())
        raise UserError(
            f"--arch {arch} is not an architecture of {source}; accepted: {', '.join(arches)}"
        )
    return kernel_version(source)


def is_configured_in_place(source: Path, arch: str) -> bool:
    """True when kbuild would refuse `make O=...` ("source tree is not clean")."""
    return (
        (source / ".config").exists()
        or (source / "include" / "config").exists()
        or (source / "arch" / arch / "include" / "generated").exists()
    )


def copy_kconfig_tree(source: Path, dest: Path, arch: str) -> None:
    """Copy what kconfig and the config targets read: Kconfig/Makefile/Kbuild files, scripts/
    and arch/*/configs, without the in-place configuration and build products."""
    skip_dirs = {source / "include" / "config", source / "include" / "generated",
                 source / "arch" / arch / "include" / "generated", source / ".git"}
    for root, dirs, files in os.walk(source):
        here = Path(root)
        dirs[:] = [d for d in dirs if here / d not in skip_dirs]
        rel = here.relative_to(source)
        whole = rel.parts[:1] == ("scripts",) or (
            len(rel.parts) >= 3 and rel.parts[0] == "arch" and rel.parts[2] == "configs"
        )
        for name in files:
            if name == ".config" and here == source:
                continue
            if (whole and not name.endswith(SKIP_SUFFIXES)) or COPY_NAMES.match(name):
                target = dest / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(here / name, target, follow_symlinks=True)


@dataclass
class SymbolInfo:
    """What the kernel's kconfig says about one symbol, evaluated against a .config."""

    name: str
    known: bool
    type: str = ""
    value: str = ""
    visible: str = "n"
    dep_value: str = "y"
    dep_expr: str = "y"
    dep_missing: list[str] = field(default_factory=list)
    rev_value: str = "n"
    rev_terms: list[str] = field(default_factory=list)
    prompts: list[tuple[str, str, str]] = field(default_factory=list)  # text, cond, value
    defaults: list[tuple[str, str, str]] = field(default_factory=list)  # value, cond, value
    ranges: list[tuple[str, str]] = field(default_factory=list)
    choice: str | None = None
    choice_members: list[tuple[str, str]] = field(default_factory=list)
    help: str = ""


def parse_query_output(text: str) -> dict[str, SymbolInfo]:
    infos: dict[str, SymbolInfo] = {}
    current: SymbolInfo | None = None
    help_lines: list[str] | None = None
    for line in text.splitlines():
        if help_lines is not None:
            if line == "help_end":
                assert current is not None
                current.help = "\n".join(help_lines)
                help_lines = None
            else:
                help_lines.append(line[1:])
            continue
        key, _, rest = line.partition("\t")
        parts = rest.split("\t")
        if key in ("symbol", "unknown"):
            current = SymbolInfo(name=rest, known=key == "symbol")
            infos[rest] = current
            continue
        if current is None:
            continue
        if key == "end":
            current = None
        elif key in ("type", "value", "visible", "dep_value", "dep_expr", "rev_value"):
            setattr(current, key, rest)
        elif key == "dep_missing":
            current.dep_missing.append(rest)
        elif key == "rev_term":
            current.rev_terms.append(rest)
        elif key == "prompt" and len(parts) == 3:
            current.prompts.append((parts[0], parts[1], parts[2]))
        elif key == "default" and len(parts) == 3:
            current.defaults.append((parts[0], parts[1], parts[2]))
        elif key == "range" and len(parts) == 2:
            current.ranges.append((parts[0], parts[1]))
        elif key == "choice":
            current.choice = rest
        elif key == "choice_member" and len(parts) == 2:
            current.choice_members.append((parts[0], parts[1]))
        elif key == "help_begin":
            help_lines = []
    return infos


class KconfigBuild:
    """A scratch kbuild output directory for one source tree (see the module docstring)."""

    def __init__(self, source: Path, workdir: Path, arch: str = "x86") -> None:
        self.arch = arch
        self.workdir = workdir
        self.original_source = source.resolve()
        if is_configured_in_place(self.original_source, arch):
            self.source = workdir / "kconfig-tree"
            copy_kconfig_tree(self.original_source, self.source, arch)
        else:
            self.source = self.original_source
        self.objtree = workdir / "build"
        self.objtree.mkdir(parents=True, exist_ok=True)
        self._shell = workdir / "capture-shell"
        self._shell.write_text(CAPTURE_SHELL)
        self._shell.chmod(0o755)
        self._env_file = workdir / "kconfig.env"
        self._cmd_file = workdir / "kconfig.cmd"
        self._query: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.objtree / ".config"

    def make(self, target: str, *variables: str) -> proc.Result:
        argv = [
            "make", "-s", "-C", str(self.source), f"O={self.objtree}", f"ARCH={self.arch}",
            "KCONFIG_CONFIG=.config", f"SHELL={self._shell}", *variables, target,
        ]
        env = {
            "SYNAPSE_KCONFIG_ENV": str(self._env_file),
            "SYNAPSE_KCONFIG_CMD": str(self._cmd_file),
        }
        return proc.run(argv, cwd=self.workdir, env=env, timeout=MAKE_TIMEOUT_S)

    def defconfig(self) -> None:
        self.make("defconfig")

    def olddefconfig(self) -> None:
        self.make("olddefconfig")

    def localmodconfig(self, lsmod_file: Path) -> None:
        check_tools([("perl", PERL_HINT)])
        self.make("localmodconfig", f"LSMOD={lsmod_file}")

    def _conf_environment(self) -> tuple[dict[str, str], str]:
        try:
            raw = self._env_file.read_bytes()
            command = self._cmd_file.read_text()
        except FileNotFoundError:
            raise OperationError(
                "make ran without invoking scripts/kconfig/conf; cannot evaluate Kconfig"
            ) from None
        env = dict(
            item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item
        )
        # the recipe runs `scripts/kconfig/conf [-s] --<mode> <Kconfig>`, maybe among others
        m = CONF_COMMAND.search(command)
        return env, m.group(1) if m else "Kconfig"

    def _build_query(self) -> Path:
        if self._query is None:
            kconfig_objs = self.objtree / "scripts" / "kconfig"
            objects = sorted(p for p in kconfig_objs.glob("*.o") if p.name != "conf.o")
            includes = [kconfig_objs, self.source / "scripts" / "kconfig",
                        self.source / "scripts" / "include"]
            exe = self.workdir / "kconfig-query"
            proc.run(
                ["gcc", "-O1", "-w", *(f"-I{d}" for d in includes if d.is_dir()), "-o", exe,
                 data_dir("kernel-config") / "kconfig-query.c", *objects],
                cwd=self.workdir,
            )
            self._query = exe
        return self._query

    def query(self, symbols: Iterable[str], help_text: bool = False) -> dict[str, SymbolInfo]:
        """Ask the kernel's kconfig about symbols (names without CONFIG_) against .config."""
        names = list(dict.fromkeys(symbols))
        if not names:
            return {}
        exe = self._build_query()
        env, kconfig = self._conf_environment()
        args: list[str | os.PathLike[str]] = [exe, kconfig, ".config"]
        args += ["--help-text"] if help_text else []
        args += names
        result = proc.run(args, cwd=self.objtree, env=env, timeout=MAKE_TIMEOUT_S)
        return parse_query_output(result.stdout)
