"""`synapse fleet export`: an Ansible role + example playbook that applies one profile on
every host of an inventory through synapse itself (journal, verify, byte-exact rollback).

What the export holds:
  site.yml, inventory.example.ini, group_vars/synapse.yml (kept when it exists),
  README.md, synapse-fleet.json (marker), rendered/ (the rendered tree, for review),
  roles/synapse/ (defaults, vars, tasks, handlers, meta, library/ with the two modules,
  files/synapse-payload.tar: the resolved profile, requirements, synapse's wheel and its
  installer).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from synapse_os import __version__, proc
from synapse_os.errors import OperationError, UserError
from synapse_os.fleet import role
from synapse_os.outdir import check_output_dir
from synapse_os.profile.model import Profile
from synapse_os.resources import data_dir

MARKER = "synapse-fleet.json"
PAYLOAD = "synapse-payload.tar"
INSTALLER = "install-synapse.sh"
WHEEL_NAME = re.compile(r"synapse_os-[A-Za-z0-9_.+]+-py3-none-any\.whl")
HEX64 = re.compile(r"[0-9a-f]{64}")
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
VERSION = re.compile(r"[A-Za-z0-9.+_-]{1,64}")
REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?"
                         r"( ?\(?[<>=!~]=?[A-Za-z0-9.*+!_-]+(,[<>=!~]=?[A-Za-z0-9.*+!_-]+)*\)?)?")
WHEEL_BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Export:
    output: Path
    wheel: str
    wheel_sha256: str
    profile_hash: str
    files: list[str]

    def as_dict(self) -> dict[str, object]:
        return {"output": str(self.output), "wheel": self.wheel,
                "wheel_sha256": self.wheel_sha256, "profile_hash": self.profile_hash,
                "files": self.files}


def checkout() -> Path:
    """The source tree this synapse runs from (an editable install), for `pip wheel`."""
    here = Path(__file__).resolve().parent.parent.parent
    pyproject = here / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        text = ""
    if 'name = "synapse-os"' not in text:
        raise UserError("this synapse is not installed from a source checkout, so no wheel can "
                        "be built; pass --wheel FILE with a synapse_os wheel")
    return here


def build_wheel(dest: Path) -> Path:
    """`pip wheel --no-deps` of this checkout into `dest` (the wheel path)."""
    source = checkout()
    proc.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
              "--disable-pip-version-check", "-w", str(dest), str(source)],
             timeout=WHEEL_BUILD_TIMEOUT_S)
    wheels = sorted(dest.glob("synapse_os-*.whl"))
    if len(wheels) != 1:
        raise OperationError(f"pip wheel of {source} left {len(wheels)} synapse wheels in {dest}")
    return wheels[0]


def wheel_requirements(wheel: Path) -> tuple[list[str], list[str]]:
    """(base, base + bench extra) requirements from the wheel's METADATA."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            name = next((n for n in zf.namelist()
                         if re.fullmatch(r"synapse_os-[^/]+\.dist-info/METADATA", n)), None)
            if name is None:
                raise UserError(f"--wheel {wheel}: has no synapse_os METADATA; pass a wheel "
                                "built from synapse (pip wheel --no-deps .)")
            metadata = zf.read(name).decode("utf-8")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError):
        raise UserError(f"--wheel {wheel}: is not a readable wheel; pass a wheel built from "
                        "synapse (pip wheel --no-deps .)") from None
    base: list[str] = []
    bench: list[str] = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist: "):
            continue
        spec, _, marker = line[len("Requires-Dist: "):].partition(";")
        spec, marker = spec.strip(), marker.strip()
        if not REQUIREMENT.fullmatch(spec):
            raise UserError(f"--wheel {wheel}: requirement {spec!r} is not a plain name and "
                            "version; pass a wheel built from synapse")
        if not marker:
            base.append(spec)
        elif re.fullmatch(r"extra\s*==\s*['\"]bench['\"]", marker):
            bench.append(spec)
    return base, base + bench


def write_payload(dest: Path, members: dict[str, bytes]) -> None:
    """One tar of what every host needs (one transfer, one module call), byte-identical for
    identical members so an unchanged export is not copied again."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Dumper(yaml.SafeDumper):
    """yaml.safe_dump, with list items indented under their key (yamllint's default)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(data: object) -> str:
    return "---\n" + yaml.dump(data, Dumper=_Dumper, sort_keys=False,
                                default_flow_style=False, allow_unicode=False)


def _module_source(name: str) -> str:
    return resources.files("synapse_os.fleet.modules").joinpath(f"{name}.py").read_text()


def _readme(profile: Profile, wheel: str) -> str:
    return f"""# Synapse fleet export

Profile `{profile.name}` (hash `{profile.hash()}`), synapse {__version__} (`{wheel}`).

```
ansible-playbook -i hosts.ini site.yml --check --diff   # the plan per host, nothing changes
ansible-playbook -i hosts.ini site.yml                  # install synapse, apply, verify (rolling)
ansible-playbook -i hosts.ini site.yml --tags synapse_verify   # audit: verify only
synapse fleet report results/ -o report/                # per-host verify (+ bench) table
```

Each host gets synapse in its own venv (`synapse_venv`) from the wheel in
`roles/synapse/files/synapse-payload.tar` (with the profile, the requirements and the
installer; one transfer, checked against the exported sha256); its dependencies come from
PyPI (`requirements.txt`); for hosts without PyPI, point `synapse_pip_extra_args` at a
local wheelhouse (`--no-index --find-links DIR`; the offline bundle of issue 11 carries
one), or at `--no-index` alone when `synapse_venv` already holds them.
`--check` installs that venv too (the plan is computed by synapse on the host) but never
touches `synapse_root`.

Variables (group_vars/host_vars; defaults in `roles/synapse/defaults/main.yml`):
`synapse_root` (default `/`), `synapse_allow_reboot` (the reboot handler runs only when
apply reports reboot reasons, this is true and `synapse_root` is `/`),
`synapse_hardware` (this host's `hardware:` keys laid over the profile's, e.g.
`{{physical_cores: 16, ram: 64G}}`, or `detected` to read them on the host; a host whose
hardware contradicts its profile is refused before anything changes),
`synapse_rollback_on_failure` (a host whose apply or verify fails is rolled back with
`synapse rollback`), `synapse_bench` (+ `synapse_bench_args`: `synapse bench run` on each
host, records fetched to `results/HOST/bench.jsonl`), `synapse_results_dir`.

`site.yml` rolls out one host per batch and stops at the first failed host
(`serial: 1`, `max_fail_percentage: 0`); `-e synapse_serial=N` widens the batches.
`rendered/` is the rendered tree of the profile, for review; each host renders the same
bytes from the same profile (checked by profile hash before anything changes), but for
its own `synapse_hardware`.
"""


def export(profile: Profile, profile_text: str, output: Path, wheel: Path | None = None) -> Export:
    """Write the export into `output` (created, or updated when it holds our marker)."""
    from synapse_os.render import render_to

    check_output_dir(output, MARKER)
    if not PROFILE_NAME.fullmatch(profile.name) or not HEX64.fullmatch(profile.hash()):
        raise UserError(f"profile name {profile.name!r} cannot be exported")
    if not VERSION.fullmatch(__version__):
        raise OperationError(f"synapse version {__version__!r} is not a plain version")
    output.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".synapse-fleet.", dir=output))
    try:
        if wheel is None:
            built = build_wheel(work / "wheel")
        else:
            if not wheel.is_file():
                raise UserError(f"--wheel {wheel}: no such file; pass a synapse_os wheel")
            built = wheel
        if not WHEEL_NAME.fullmatch(built.name):
            raise UserError(f"--wheel {built}: is not named like a synapse_os wheel "
                            "(synapse_os-VERSION-py3-none-any.whl)")
        base_reqs, bench_reqs = wheel_requirements(built)
        wheel_sha = _sha256(built)

        new_role = work / "role"
        files_dir = new_role / "files"
        for sub in ("defaults", "vars", "tasks", "handlers", "meta", "library", "files"):
            (new_role / sub).mkdir(parents=True)
        (work / "profile.yaml").write_text(profile_text)
        from synapse_os.profile import load_profile

        if load_profile(work / "profile.yaml").hash() != profile.hash():
            raise OperationError(f"the resolved profile {profile.name} does not load back to "
                                 "the same profile hash; this is a synapse bug")
        write_payload(files_dir / PAYLOAD, {
            "profile.yaml": (work / "profile.yaml").read_bytes(),
            "requirements.txt": ("\n".join(base_reqs) + "\n").encode(),
            "requirements-bench.txt": ("\n".join(bench_reqs) + "\n").encode(),
            INSTALLER: (data_dir("fleet") / INSTALLER).read_bytes(),
            built.name: built.read_bytes(),
        })
        rendered = work / "rendered"
        render_to(profile, rendered)
        (new_role / "defaults/main.yml").write_text(_dump(role.DEFAULTS))
        (new_role / "vars/main.yml").write_text(_dump({
            "synapse_profile_name": profile.name,
            "synapse_profile_hash": profile.hash(),
            "synapse_version": __version__,
            "synapse_wheel": built.name,
            "synapse_wheel_sha256": wheel_sha,
        }))
        (new_role / "tasks/main.yml").write_text(role.TASKS_MAIN)
        (new_role / "tasks/install.yml").write_text(role.TASKS_INSTALL)
        (new_role / "tasks/host_profile.yml").write_text(role.TASKS_HOST_PROFILE)
        (new_role / "tasks/rollback.yml").write_text(role.TASKS_ROLLBACK)
        (new_role / "tasks/bench.yml").write_text(role.TASKS_BENCH)
        (new_role / "handlers/main.yml").write_text(role.HANDLERS)
        (new_role / "meta/main.yml").write_text(_dump(role.META))
        for name in ("synapse_apply", "synapse_verify"):
            (new_role / "library" / f"{name}.py").write_text(_module_source(name))
        # The rendered tree keeps the modes render_to gave it (scripts stay executable), and
        # its symlinks (masks -> /dev/null) are never chmod-ed: chmod follows links.
        for dirpath, _dirs, names in os.walk(new_role):
            os.chmod(dirpath, 0o755)
            for name in names:
                os.chmod(Path(dirpath) / name, 0o644)

        _replace_dir(new_role, output / "roles" / role.ROLE)
        _replace_dir(rendered, output / "rendered")
        top = {"site.yml": role.SITE, "inventory.example.ini": role.INVENTORY,
               "README.md": _readme(profile, built.name)}
        for name, text in top.items():
            _write_file(output / name, text)
        group_vars = output / "group_vars" / "synapse.yml"
        if not group_vars.exists():
            group_vars.parent.mkdir(exist_ok=True)
            _write_file(group_vars, role.GROUP_VARS)
        _write_file(output / MARKER, json.dumps({
            "synapse_version": __version__, "profile": profile.name,
            "profile_hash": profile.hash(), "wheel": built.name, "wheel_sha256": wheel_sha,
        }, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise UserError(f"{output}: could not be written ({exc})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    listed = sorted(str(p.relative_to(output)) for p in output.rglob("*")
                    if p.is_file() and not str(p.relative_to(output)).startswith(
                        ("results/", "rendered/")))
    return Export(output, built.name, wheel_sha, profile.hash(), listed)


def _replace_dir(new: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise UserError(f"{dest}: exists and is not a directory; remove it or choose another -o")
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.rename(dest, old / "tree")
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)


def _write_file(dest: Path, text: str) -> None:
    if dest.is_symlink():
        raise UserError(f"{dest}: is a symlink; remove it or choose another -o")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)


def resolved_profile_text(profile: Profile) -> str:
    """The profile with every `extends:` merged in: one self-contained file for the hosts,
    loading to the same profile hash."""
    return "---\n# resolved by `synapse fleet export` (extends merged)\n" + yaml.dump(
        profile.model_dump(mode="json"), Dumper=_Dumper, sort_keys=True, allow_unicode=False)
