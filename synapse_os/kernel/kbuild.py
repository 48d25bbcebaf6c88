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

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


log = logging.getLogger("synapse.proc")


def run_group(argv: Sequence[str | os.PathLike[str]], *, cwd: Path,
              env: Mapping[str, str] | None = None, timeout: float = MAKE_TIMEOUT_S
              ) -> proc.Result:
    """proc.run for make and kconfig-query: the command runs in its own process group, and
    when anything interrupts the wait (SIGINT, SIGTERM turned into SystemExit, a timeout)
    the whole group is killed, so no make, conf or compiler outlives Synapse."""
    args = tuple(str(a) for a in argv)
    full_env = {**os.environ, **(env or {})}
    start = time.monotonic()
    try:
        child = subprocess.Popen(args, cwd=cwd, env=full_env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True)
    except FileNotFoundError as exc:
        raise OperationError(f"cannot run {args[0]!r}: {exc.strerror}") from exc
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child)
        raise OperationError(
            f"command timed out after {timeout:.0f} s: {shlex.join(args)}") from None
    except BaseException:
        _kill_group(child)
        raise
    duration = time.monotonic() - start
    log.info("ran %s (cwd=%s) in %.2fs -> %d", shlex.join(args), cwd, duration,
             child.returncode)
    result = proc.Result(args, child.returncode, stdout or "", stderr or "", duration)
    if child.returncode != 0:
        detail = proc.tail(result.stderr) or proc.tail(result.stdout)
        raise OperationError(
            f"command failed with exit code {child.returncode}: {shlex.join(args)}"
            + (f"\n{detail}" if detail else "")
        )
    return result


GROUP_GRACE_S = 5.0


def _kill_group(child: subprocess.Popen[str]) -> None:
    """SIGTERM to the whole group, so make deletes its half-written targets and gcc its
    temporary files; then wait until every member is gone (the group outlives its leader
    while members run), and SIGKILL what is left after a grace period."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + GROUP_GRACE_S
    while time.monotonic() < deadline:
        child.poll()  # reap the leader: a zombie still counts as a member
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=2)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP become SystemExit, so temporary build trees are removed and make's
    process group is killed on the way out (SIGINT already raises KeyboardInterrupt)."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


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


# What `make *config` builds kconfig from (present in every kernel since 4.x): a tree
# without one of these cannot resolve anything.
KCONFIG_SOURCES = ("conf.c", "confdata.c", "expr.c", "expr.h", "lkc.h", "menu.c",
                   "symbol.c", "util.c", "lexer.l", "parser.y", "Makefile")


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
    partial = [n for n in KCONFIG_SOURCES if not (source / "scripts" / "kconfig" / n).is_file()]
    if partial:
        raise UserError(
            f"--source {source} has an incomplete scripts/kconfig (no {', '.join(partial[:3])}"
            f"{', ...' if len(partial) > 3 else ''}); unpack the whole kernel source again"
        )
    if not (source / "arch").is_dir():
        raise UserError(
            f"--source {source} has no arch/ directory, so kconfig cannot configure any "
            "architecture; unpack the whole kernel source again"
        )
    if not (source / "arch" / arch / "Kconfig").is_file():
        arches = sorted(p.name for p in (source / "arch").iterdir() if (p / "Kconfig").is_file())
        raise UserError(
            f"--arch {arch} is not an architecture of {source}; "
            f"accepted: {', '.join(arches) or 'none (arch/ has no Kconfig files)'}"
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
    # for a choice member: the choice's own condition, and the member's menu dependency
    choice_dep_value: str = "y"
    choice_dep_expr: str = "y"
    choice_dep_missing: list[str] = field(default_factory=list)
    member_dep_value: str = "y"
    member_dep_expr: str = "y"
    member_dep_missing: list[str] = field(default_factory=list)
    help: str = ""

    def dependency(self, choice_member_dependency: str = "dir_dep"
                   ) -> tuple[str, str, list[str]]:
        """(value, expression, failing terms) of what this symbol depends on, with a choice
        member's dependency read the way this kconfig version records it
        (kernel-config/versions.toml): never the bare `<choice>` placeholder."""
        if self.choice is None:
            return self.dep_value, self.dep_expr, list(self.dep_missing)
        if choice_member_dependency == "member_dep":
            return self.member_dep_value, self.member_dep_expr, list(self.member_dep_missing)
        return (self.dep_value, expand_choice(self.dep_expr, self.choice_dep_expr),
                _expand_missing(self.dep_missing, self.choice_dep_missing))


CHOICE_TERM = re.compile(r"<choice>(?: \[=[ymn]\])?")


def expand_choice(expr: str, choice_expr: str) -> str:
    """'<choice> && SMP [=y]' with <choice> replaced by the choice's own condition."""
    if choice_expr == "y":
        parts = [p for p in expr.split(" && ") if not CHOICE_TERM.fullmatch(p)]
        return " && ".join(parts) or "y"
    wrapped = choice_expr if re.fullmatch(r"[A-Za-z0-9_]+( \[=\w*\])?", choice_expr) \
        else f"({choice_expr})"
    return CHOICE_TERM.sub(lambda _m: wrapped, expr)


def _expand_missing(missing: list[str], choice_missing: list[str]) -> list[str]:
    out: list[str] = []
    for term in missing:
        out += choice_missing if CHOICE_TERM.fullmatch(term) else [term]
    return out


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
        elif key in ("type", "value", "visible", "dep_value", "dep_expr", "rev_value",
                     "choice_dep_value", "choice_dep_expr", "member_dep_value",
                     "member_dep_expr"):
            setattr(current, key, rest)
        elif key in ("dep_missing", "choice_dep_missing", "member_dep_missing"):
            getattr(current, key).append(rest)
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


class QuerySession:
    """Questions to a running `kconfig-query KCONFIG -` (see KconfigBuild.session)."""

    def __init__(self, child: subprocess.Popen[str], stderr_file: Path) -> None:
        self._child = child
        self._stderr = stderr_file

    def _ask(self, command: str) -> str:
        child = self._child
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(command + "\n")
            child.stdin.flush()
        except BrokenPipeError:
            pass  # the read below reports the exit
        lines: list[str] = []
        while True:
            line = child.stdout.readline()
            if not line:
                detail = proc.tail(self._stderr.read_text(errors="replace"))
                raise OperationError(
                    f"kconfig-query exited while answering {command.split()[0]!r}"
                    + (f"\n{detail}" if detail else ""))
            line = line.rstrip("\n")
            if line == "ok":
                return "\n".join(lines)
            if line.startswith("error "):
                raise OperationError(f"kconfig-query: {line.removeprefix('error ')}")
            lines.append(line)

    def read(self, config: str = ".config") -> None:
        """Evaluate later questions against `config` (relative to the build dir)."""
        self._ask(f"read {config}")

    def query(self, symbols: Iterable[str]) -> dict[str, SymbolInfo]:
        names = list(dict.fromkeys(symbols))
        if not names:
            return {}
        return parse_query_output(self._ask("query " + " ".join(names)))


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
            "make", "-s", f"-j{os.cpu_count() or 1}", "-C", str(self.source), f"O={self.objtree}",
            f"ARCH={self.arch}",
            "KCONFIG_CONFIG=.config", f"SHELL={self._shell}", *variables, target,
        ]
        env = {
            "SYNAPSE_KCONFIG_ENV": str(self._env_file),
            "SYNAPSE_KCONFIG_CMD": str(self._cmd_file),
        }
        return run_group(argv, cwd=self.workdir, env=env)

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
            run_group(
                ["gcc", "-O1", "-w", *(f"-I{d}" for d in includes if d.is_dir()), "-o", exe,
                 data_dir("kernel-config") / "kconfig-query.c", *objects],
                cwd=self.workdir,
            )
            self._query = exe
        return self._query

    @contextlib.contextmanager
    def session(self) -> Iterator[QuerySession]:
        """One kconfig-query process that parses Kconfig once and answers questions
        against successive .config files (each Kconfig parse runs the tree's toolchain
        probes: seconds). Killed with its process group on any interruption."""
        exe = self._build_query()
        env, kconfig = self._conf_environment()
        errors = (self.workdir / "kconfig-query.stderr").open("w")
        start = time.monotonic()
        child = subprocess.Popen(
            [str(exe), kconfig, "-"], cwd=self.objtree, env={**os.environ, **env}, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
            start_new_session=True)
        try:
            yield QuerySession(child, self.workdir / "kconfig-query.stderr")
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=MAKE_TIMEOUT_S)
            log.info("ran %s %s - (session, cwd=%s) in %.2fs -> %d", exe, kconfig, self.objtree,
                     time.monotonic() - start, child.returncode)
        except BaseException:
            _kill_group(child)
            raise
        finally:
            errors.close()

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
        result = run_group(args, cwd=self.objtree, env=env)
        return parse_query_output(result.stdout)
