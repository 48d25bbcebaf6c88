"""One test per class of the trust-boundary findings: injection through values, risk
words, loader limits, output ownership and modes, validate ⊇ render. Each goes through
the real CLI or the real consumer (bash) and fails on code without the boundary."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from synapse_os.errors import UserError
from synapse_os.profile.risks import MITIGATIONS_ACK, SECURITY_ACK
from synapse_os.render.escape import FILTERS, UnsafeValue, conf_field, shell_word, unit_value
from tests.conftest import PROFILES, REPO

TEMPLATE_DIRS = ("overlays", "systemd", "install", "iso")
BASE = (
    "synapse: 1\nname: t\nbase: arch\nhardware: {ram: 16G}\n"
    "runtime:\n  models:\n    main: {path: /var/lib/synapse/models/m.gguf}\n"
)


def cli(*args: str | Path, cwd: Path = REPO, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synapse_os.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def refused(tmp_path: Path, text: str, expect: str) -> None:
    """validate and render both exit 2 with one sentence naming `expect`; nothing written."""
    profile = tmp_path / "p.yaml"
    profile.write_text(text)
    for args in (("validate", profile), ("render", profile, "-o", tmp_path / "out")):
        res = cli(*args)
        assert res.returncode == 2, res.stdout + res.stderr
        assert expect in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "out").exists()


INJECTIONS = {
    "disk target runs before any guard": (
        "disk: {target: '/dev/disk/by-id/x$(touch${IFS}pwned)'}\n", "disk.target"),
    "timezone ends the chroot heredoc": (
        'timezone: "UTC\\nCHROOT\\ntouch /tmp/pwned\\n"\n', "timezone"),
    "runtime user adds a root ExecStartPre": (
        BASE.replace("runtime:\n", "runtime:\n  user: \"synapse\\nExecStartPre=+/bin/sh\"\n")
        .replace("synapse: 1\nname: t\nbase: arch\nhardware: {ram: 16G}\n", ""),
        "runtime.user"),
    "model path adds a line to the unit": (
        BASE.replace("/var/lib/synapse/models/m.gguf", '"/m.gguf\\nExecStartPre=+/bin/sh"')
        .replace("synapse: 1\nname: t\nbase: arch\nhardware: {ram: 16G}\n", ""),
        "runtime.models.main.path"),
    "sysctl value adds core_pattern": (
        'sysctl: {vm.swappiness: "10\\nkernel.core_pattern=|/bin/sh"}\n', "sysctl"),
    "makepkg flags run a command when sourced": (
        "makepkg: {cflags: '-O2 $(touch /tmp/pwned)'}\n", "makepkg.cflags"),
    "package name is an option to pacstrap": ("packages: {extra: [--noconfirm]}\n",
                                              "packages.extra"),
    "journald retention adds a line": ('journald: {max_retention: "1d\\nStorage=none"}\n',
                                       "journald.max_retention"),
    "zram expression hides a comment and a newline": (
        'memory: {zram: {size: "min(ram, #\\n4096)"}}\n', "memory.zram.size"),
    "size with a trailing newline": ('disk: {esp_size: "512M\\n"}\n', "disk.esp_size"),
    "cpu list with a trailing newline": (
        'kernel: {source: custom, tick: full, nohz_full_cpus: "2-7\\n"}\n',
        "kernel.nohz_full_cpus"),
    "kernel config value adds a symbol": (
        'kernel: {source: custom, extra: {CONFIG_X: "y\\nCONFIG_MODULE_SIG=n"}}\n',
        "kernel.extra"),
    "root as the service user": (
        "runtime:\n  user: root\n  models:\n    main: {path: /m.gguf}\n", "runtime.user"),
    "provenance outside the state directory": (
        "runtime:\n  provenance: /etc/cron.d/x\n  models:\n    main: {path: /m.gguf}\n",
        "runtime.provenance"),
    "service host that is not an address": (
        "runtime:\n  host: '0.0.0.0 --api-key x'\n  models:\n    main: {path: /m.gguf}\n",
        "runtime.host"),
    "service host with an interface scope": (  # ipaddress takes any text after '%'
        "runtime:\n  host: 'fe80::1%$x;y'\n  models:\n    main: {path: /m.gguf}\n",
        "runtime.host"),
    "container bind with another mount's options": (
        "runtime:\n  isolation: nspawn\n  sandboxing: none\n"
        "  models:\n    main: {path: '/m.gguf:/etc:rw'}\n", "runtime.models.main.path"),
}


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_injection_through_values_is_refused(case: str, tmp_path: Path) -> None:
    body, key = INJECTIONS[case]
    head = "synapse: 1\nname: t\nbase: arch\nhardware: {ram: 16G}\n"
    refused(tmp_path, head + body if not body.startswith("synapse") else body, key)


@pytest.mark.parametrize("value", ["$(touch x)", "a'b", 'a"b', "a b", "`x`", "\\", "*", "~",
                                   "!x", "-n", "", "é ü", "a\tb"])
def test_shell_word_round_trips_through_bash(value: str, tmp_path: Path) -> None:
    if "\t" in value:
        with pytest.raises(UnsafeValue):
            shell_word(value)
        return
    script = f"v={shell_word(value)}\nprintf '%s' \"$v\"\n"
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.stdout == value
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\u2028b", "a\x85b"])
def test_every_filter_refuses_line_breaks(value: str) -> None:
    for name, escape in FILTERS.items():
        with pytest.raises(UnsafeValue):
            escape([value]) if name == "sh_words" else escape(value)


def test_unit_and_field_filters_refuse_their_syntax() -> None:
    for bad in ("%h", "a b", "$x", '"x"', "a;b", "\\x"):
        with pytest.raises(UnsafeValue):
            unit_value(bad)
    for bad in ("a b", "%h", '"', ""):
        with pytest.raises(UnsafeValue):
            conf_field(bad)
    assert unit_value("/var/lib/synapse/models/m.gguf") == "/var/lib/synapse/models/m.gguf"


def test_every_template_value_goes_through_a_filter() -> None:
    """`{{ x }}` without one of the escape filters (or |int for numbers) is a lint error."""
    allowed = set(FILTERS) | {"int"}
    bad = []
    templates = [p for d in TEMPLATE_DIRS for p in sorted((REPO / d).glob("*.j2"))]
    templates += sorted((REPO / "build").glob("*/*.in")) + sorted((REPO / "build").glob("*/*.j2"))
    assert len(templates) > 20
    for path in templates:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for expr in re.findall(r"\{\{(.*?)\}\}", line):
                last = expr.rsplit("|", 1)
                if len(last) < 2 or last[1].strip().split("(")[0] not in allowed:
                    bad.append(f"{path.relative_to(REPO)}:{n}: {{{{{expr}}}}}")
    assert not bad, "\n".join(bad)


# --- risk words ------------------------------------------------------------------------

HEAD = "synapse: 1\nname: t\n"


@pytest.mark.parametrize("word", ["spectre_v2=off", "pti=off", "nopti", "mds=off",
                                  "nospectre_v1", "retbleed=off", "l1tf=off"])
def test_mitigation_words_need_the_acknowledgement(word: str, tmp_path: Path) -> None:
    refused(tmp_path, HEAD + f"boot: {{cmdline: [{word}]}}\n", "boot.mitigations_risk")
    ok = tmp_path / "ok.yaml"
    ok.write_text(HEAD + f"boot: {{cmdline: [{word}], mitigations_risk: '{MITIGATIONS_ACK}'}}\n")
    assert cli("validate", ok).returncode == 0


@pytest.mark.parametrize("word", ["init=/bin/sh", "rdinit=/x", "systemd.run=/bin/sh",
                                  "systemd.debug_shell", "rd.break", "single", "emergency",
                                  "systemd.unit=rescue.target"])
def test_code_running_words_are_refused_even_acknowledged(word: str, tmp_path: Path) -> None:
    refused(tmp_path, HEAD + f"boot: {{cmdline: [{word}], mitigations_risk: '{MITIGATIONS_ACK}'}}\n"
            f"security_risk: '{SECURITY_ACK}'\n", "a profile never runs code")


@pytest.mark.parametrize("key", ["kernel.core_pattern", "kernel.modprobe", "kernel.poweroff_cmd",
                                 "kernel.usermodehelper.bset", "fs.binfmt_misc.register"])
def test_code_running_sysctls_are_refused(key: str, tmp_path: Path) -> None:
    refused(tmp_path, HEAD + f"sysctl: {{{key}: core}}\nsecurity_risk: '{SECURITY_ACK}'\n",
            "a profile never runs code")


@pytest.mark.parametrize("setting", ["sysctl: {kernel.randomize_va_space: 0}",
                                     "sysctl: {kernel.kptr_restrict: 0}",
                                     "sysctl: {kernel.yama.ptrace_scope: 0}",
                                     "boot: {cmdline: [nokaslr]}",
                                     "boot: {cmdline: [apparmor=0]}"])
def test_weakening_settings_need_security_risk(setting: str, tmp_path: Path) -> None:
    refused(tmp_path, HEAD + setting + "\n", "security_risk")
    ok = tmp_path / "ok.yaml"
    ok.write_text(HEAD + setting + f"\nsecurity_risk: '{SECURITY_ACK}'\n")
    assert cli("validate", ok).returncode == 0
    safe = tmp_path / "safe.yaml"
    safe.write_text(HEAD + "sysctl: {kernel.randomize_va_space: 2, kernel.kptr_restrict: 1}\n")
    assert cli("validate", safe).returncode == 0


# --- loader limits ---------------------------------------------------------------------

def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
              f"*{chr(97 + i)}]" for i in range(8)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("synapse: 1\nname: t\n" + "\n".join(lines) + "\n")
    assert len(bomb.read_bytes()) < 600
    start = time.monotonic()
    res = cli("validate", bomb)
    assert res.returncode == 2 and "aliases" in res.stderr, res.stderr
    assert time.monotonic() - start < 20


def test_extends_refuses_devices_fifos_and_non_yaml(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    for target, expect in ((link, "not a regular file"), (fifo, "not a regular file"),
                           (Path("/etc/passwd"), "ending in .yaml")):
        child = tmp_path / "child.yaml"
        child.write_text(f"extends: {target}\nname: c\n")
        done: list[subprocess.CompletedProcess[str]] = []
        worker = threading.Thread(target=lambda d=done, c=child: d.append(cli("validate", c)))
        worker.start()
        worker.join(30)
        if not done:  # blocked on the FIFO: unblock a waiting reader, then fail
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            worker.join(60)
            pytest.fail(f"validate blocked reading {target}")
        assert done[0].returncode == 2 and expect in done[0].stderr, done[0].stderr


def test_extends_never_quotes_a_file_that_is_not_a_profile(tmp_path: Path) -> None:
    secret = "$6$saltsalt$Yx1mAq9verysecrethash"
    for body in (f"root:{secret}:19000:0:99999:7:::\n",
                 f"password: [{secret}\n",  # a YAML syntax error
                 f"token: {secret}\n",
                 f"name: '{secret}'\n"):  # would fail validation quoting the value
        target = tmp_path / "secrets.yml"
        target.write_text(body)
        child = tmp_path / "child.yaml"
        child.write_text(f"extends: {target}\nsynapse: 1\n")
        res = cli("validate", child)
        assert res.returncode == 2
        assert "saltsalt" not in res.stderr and "secret" not in res.stderr.replace(
            str(target), ""), res.stderr


def test_no_template_cache_is_written_or_read(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    res = cli("render", PROFILES / "stock-baseline.yaml", "-o", tmp_path / "out",
              env={"XDG_CACHE_HOME": str(cache), "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr
    assert not cache.exists() or not any(cache.rglob("*"))


# --- render output ownership and modes --------------------------------------------------

def test_render_refuses_a_foreign_directory_with_a_manifest(tmp_path: Path) -> None:
    foreign = tmp_path / "webapp"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    (foreign / "index.html").write_text("<html>keep me</html>")
    res = cli("render", PROFILES / "stock-baseline.yaml", "-o", foreign)
    assert res.returncode == 2 and "not written by synapse" in res.stderr, res.stderr
    assert (foreign / "index.html").read_text() == "<html>keep me</html>"


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_rendered_modes_ignore_the_umask(umask: int, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = (f"import os, sys; os.umask({umask}); from synapse_os.cli import main; "
              "main(sys.argv[1:])")
    res = subprocess.run([sys.executable, "-c", script, "render",
                          str(PROFILES / "cpu-avx2.yaml"), "-o", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    for dirpath, dirnames, _files in os.walk(out):
        for d in [dirpath, *(os.path.join(dirpath, n) for n in dirnames)]:
            if not os.path.islink(d):
                assert os.stat(d).st_mode & 0o777 == 0o755, d
    assert os.stat(out / "rootfs/etc/hostname").st_mode & 0o777 == 0o644
    assert os.stat(out / "install/install.sh").st_mode & 0o777 == 0o755


# --- validate accepts only what renders --------------------------------------------------

@pytest.mark.parametrize("body,expect", [
    ("runtime:\n  memory_high: auto\n  models:\n    main: {path: /m.gguf}\n",
     "set hardware.ram"),
    ("hardware: {ram: 2G}\nruntime:\n  memory_high: auto\n  memory_reserve: 4G\n"
     "  models:\n    main: {path: /m.gguf}\n", "lower the reserve"),
    ("runtime: {engine: synapse-runtime}\n", "needs a 'main' model"),
    ("runtime: {engine: llama-server}\n", "needs a 'main' model"),
])
def test_validate_refuses_what_render_cannot_render(body: str, expect: str,
                                                     tmp_path: Path) -> None:
    refused(tmp_path, HEAD + body, expect)


def test_shipped_profiles_validate_and_render(tmp_path: Path) -> None:
    for profile in sorted(PROFILES.glob("*.yaml")):
        assert cli("validate", profile).returncode == 0
        res = cli("render", profile, "-o", tmp_path / profile.stem)
        assert res.returncode == 0, res.stderr


def test_user_error_is_the_base_of_unsafe_value() -> None:
    assert issubclass(UnsafeValue, UserError)


# --- real consumers read back exactly the value given ------------------------------------

EDGE_RUNTIME = (
    "synapse: 1\nname: edge\nbase: debian\nhardware: {ram: 16G}\n"
    "runtime:\n  engine: llama-server\n  user: _svc-1\n  host: '::1'\n"
    "  models:\n    main: {path: '/var/lib/synapse/models/a+b@c:d_e-1.gguf'}\n"
)


def test_sysusers_and_tmpfiles_read_the_edge_values_back(tmp_path: Path) -> None:
    """systemd-sysusers and systemd-tmpfiles on a --root: the account is exactly the
    profile's user, and the state directory belongs to it."""
    profile = tmp_path / "edge.yaml"
    profile.write_text(EDGE_RUNTIME)
    out = tmp_path / "out"
    assert cli("render", profile, "-o", out).returncode == 0
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).write_text("root:x:0:0:root:/root:/bin/sh\n" if name == "passwd"
                                         else "root:x:0:\n" if name == "group" else "")
    conf = out / "rootfs/etc/sysusers.d/synapse.conf"
    res = subprocess.run(["systemd-sysusers", f"--root={root}", str(conf)], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    users = {line.split(":")[0]: line.split(":") for line in
             (root / "etc/passwd").read_text().splitlines()}
    assert "_svc-1" in users and users["_svc-1"][5] == "/var/lib/synapse/runtime"
    tmpfiles = out / "rootfs/etc/tmpfiles.d/synapse-runtime.conf"
    res = subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create", str(tmpfiles)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    st = os.stat(root / "var/lib/synapse/runtime")
    assert st.st_uid == int(users["_svc-1"][2]) and st.st_mode & 0o777 == 0o750


def test_unit_with_edge_values_passes_systemd_analyze(tmp_path: Path) -> None:
    profile = tmp_path / "edge.yaml"
    profile.write_text(EDGE_RUNTIME)
    out = tmp_path / "out"
    assert cli("render", profile, "-o", out).returncode == 0
    unit = out / "rootfs/etc/systemd/system/synapse-llama-server.service"
    text = unit.read_text()
    assert "User=_svc-1\n" in text
    assert "--model /var/lib/synapse/models/a+b@c:d_e-1.gguf --host ::1 " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/usr/bin/llama-server", "/bin/true"))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True,
                         env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    assert res.returncode == 0, res.stderr
    assert not [line for line in res.stderr.splitlines() if unit.name in line], res.stderr


# --- found by the red-team review ------------------------------------------------------

@pytest.mark.parametrize("body,expect", [
    ("boot: {cmdline: [systemd.debug-shell]}\n", "a profile never runs code"),
    ("boot: {cmdline: [systemd.confirm-spawn]}\n", "a profile never runs code"),
    ("boot: {cmdline: [systemd.wants=debug-shell.service]}\n", "a profile never runs code"),
    ("boot: {cmdline: ['1']}\n", "a profile never runs code"),
    ("boot: {cmdline: [break=premount]}\n", "a profile never runs code"),
    ("boot: {cmdline: [sysctl.kernel.modprobe=/usr/bin/id]}\n", "a profile never runs code"),
    ("boot: {cmdline: [nospectre-v1]}\n", "boot.mitigations_risk"),
    ("boot: {cmdline: [tsx-async-abort=off]}\n", "boot.mitigations_risk"),
    ("boot: {cmdline: ['retbleed=nosmt,off']}\n", "boot.mitigations_risk"),
    ("boot: {cmdline: [its=off]}\n", "boot.mitigations_risk"),
    ("boot: {cmdline: [init_on_free=off]}\n", "security_risk"),
    ("boot: {cmdline: [apparmor=00]}\n", "security_risk"),
    ("boot: {cmdline: [norandmaps]}\n", "security_risk"),
    ("boot: {cmdline: [lsm=capability]}\n", "security_risk"),
    ("boot: {cmdline: [sysctl.kernel.randomize_va_space=0]}\n", "security_risk"),
    ("services: {enable: [debug-shell.service]}\n", "never opens a shell"),
    ("services: {mask: [apparmor.service]}\n", "security_risk"),
    ("services: {mask: [synapse-runtime.service]}\nruntime: {models: {main: {path: /m.gguf}}}\n",
     "the runtime's own unit"),
    ("kernel: {source: custom, extra: {CONFIG_CMDLINE_BOOL: y}}\n", "bypasses boot.cmdline"),
    ("kernel: {source: custom, extra: {CONFIG_CPU_MITIGATIONS: n}}\n", "boot.mitigations_risk"),
    ("kernel: {source: custom, extra: {CONFIG_SECURITY_APPARMOR: n}}\n", "security_risk"),
    ("kernel: {source: custom, extra: {CONFIG_LOCALVERSION: '\"$(shell touch x)\"'}}\n",
     "kernel.extra"),
    ("makepkg: {makeflags: '--eval=SHELL=/usr/bin/touch'}\n", "makepkg.makeflags"),
    ("makepkg: {cflags: '-O2 -wrapper /usr/bin/touch,--,x'}\n", "can make the build run"),
    ("makepkg: {cflags: '-O2 -fplugin=/tmp/x.so'}\n", "can make the build run"),
    ("makepkg: {rustflags: '-C linker=/usr/bin/id'}\n", "can make the build run"),
    ("disk: {esp_size: '" + "9" * 400 + "M'}\n", "disk.esp_size"),
])
def test_review_findings_are_refused(body: str, expect: str, tmp_path: Path) -> None:
    refused(tmp_path, HEAD + body, expect)


def test_unit_words_escape_each_word_and_refuse_a_line_break() -> None:
    from synapse_os.render.escape import UnsafeValue, unit_words

    assert unit_words(("AF_UNIX", "AF_INET")) == "AF_UNIX AF_INET" and unit_words(()) == ""
    for hostile in (("AF_UNIX", "x\nExecStartPre=/bin/sh"), ("a b",), "AF_UNIX"):
        with pytest.raises(UnsafeValue):
            unit_words(hostile)
