"""Build recipes for the resolved kernel: an Arch PKGBUILD and a Debian bindeb-pkg script.

Both apply the resolved .config, run `make olddefconfig` on the real source and refuse to
build when the source is another kernel version than the one resolved, or when any
resolved setting did not survive (expected.config lists them). A resolution is only
turned into recipes for the profile it was made for (`check_resolution`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import jinja2

from synapse_os.errors import UserError
from synapse_os.kernel.configfile import format_assignment
from synapse_os.kernel.fragment import kernel_fragment
from synapse_os.kernel.resolve import Resolution
from synapse_os.kernel.versions import load_versions, series_of
from synapse_os.profile.model import Profile
from synapse_os.render.escape import FILTERS
from synapse_os.resources import data_dir

DEFAULT_PKGBASE = "linux-synapse"
KERNEL_ORG = "https://cdn.kernel.org/pub/linux/kernel"
PKGBASE = re.compile(r"^linux-[a-z0-9][a-z0-9-]*$")


@dataclass(frozen=True)
class Recipe:
    files: dict[str, str]  # file name -> content
    executable: frozenset[str]


def pkgbase_for(profile: Profile) -> str:
    name = profile.kernel.package or DEFAULT_PKGBASE
    if not PKGBASE.match(name):
        raise UserError(
            f"kernel.package {name!r} cannot name a custom kernel that installs alongside "
            f"the stock one; use a name like {DEFAULT_PKGBASE!r} (linux-<word>)"
        )
    return name


def localversion_for(profile: Profile) -> str:
    """The release suffix the custom kernel carries (linux-synapse -> -synapse): in
    `uname -r`, its package names and its boot entry."""
    return "-" + pkgbase_for(profile).removeprefix("linux-")


def upstream_version(kernel_version: str) -> str:
    """kernel.org tarball version: 6.12.0 and 6.12 -> 6.12, 6.1.192 -> 6.1.192."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?(.*)$", kernel_version)
    if not m:
        raise UserError(f"kernel version {kernel_version!r} is not of the form X.Y.Z")
    major, minor, sub, extra = m.groups()
    base = f"{major}.{minor}" if sub in (None, "0") else f"{major}.{minor}.{sub}"
    return base + extra


def tarball_sources(version: str, sha256: str) -> list[tuple[str, str | None]]:
    """(url, pinned sha256 or None) of what the PKGBUILD downloads from kernel.org: the
    tarball and its signature."""
    upstream = upstream_version(version)
    base = f"{KERNEL_ORG}/v{upstream.split('.')[0]}.x/linux-{upstream}"
    return [(f"{base}.tar.xz", sha256), (f"{base}.tar.sign", None)]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def check_resolution(profile: Profile, resolution: Resolution, profile_hash: str, where: str,
                     *, allow_unapplied: bool = False, allow_unbootable: bool = False) -> None:
    """UserError unless `resolution` was made for this profile's kernel settings as they
    are now, for the kernel version the profile pins (if any), applied every request
    (unless allow_unapplied) and can boot the profile's machine (unless allow_unbootable)."""
    again = "run `synapse kernel config PROFILE --source DIR -o DIR` again"
    if not resolution.profile_hash:
        raise UserError(f"{where} records no profile hash (an older Synapse made it); {again}")
    if resolution.profile_hash != profile_hash:
        raise UserError(
            f"{where} was resolved for another profile, or for profile '{profile.name}' "
            f"before its kernel settings changed (profile hash {resolution.profile_hash[:12]}"
            f", this profile {profile_hash[:12]}); {again}"
        )
    pinned = profile.kernel.version
    if pinned is not None and not _same_release(pinned, resolution.kernel_version):
        raise UserError(
            f"{where} was resolved against Linux {resolution.kernel_version}, but "
            f"kernel.version pins {pinned}; {again} against a {pinned} tree"
        )
    if resolution.differences and not allow_unapplied:
        listed = ", ".join(f"CONFIG_{s.symbol} ({s.status})" for s in resolution.differences)
        raise UserError(
            f"{where} did not apply {len(resolution.differences)} requested setting(s): "
            f"{listed}; change the profile (resolution.txt says why each failed) or pass "
            "--allow-unapplied to build what was resolved"
        )
    if resolution.unbootable and not allow_unbootable:
        raise UserError(
            f"{where} cannot boot the profile's machine: {'; '.join(resolution.unbootable)}; "
            "pass --allow-unbootable to build it anyway"
        )


def _same_release(pinned: str, resolved: str) -> bool:
    """A pinned line (6.12) takes any of its releases; a pinned release only itself."""
    if pinned.count(".") == 1:
        return series_of(resolved) == pinned
    return upstream_version(pinned) == upstream_version(resolved)


def source_tarball(profile: Profile, resolution: Resolution | None) -> tuple[str, str]:
    """(kernel version, sha256 of its kernel.org tarball) the recipes build: the resolved
    tree's version, else the release the profile pins (or its line's, or the default
    line's); the sha256 from the version table or the profile, never unchecked."""
    table = load_versions()
    if resolution is not None:
        version, known = resolution.kernel_version, None
        for s in table.series:
            if upstream_version(s.release) == upstream_version(version):
                known = s.tarball_sha256
    else:
        version, known = table.release_for(profile.kernel.version)
    given = profile.kernel.tarball_sha256
    tarball = f"linux-{upstream_version(version)}.tar.xz"
    if known and given and known != given:
        raise UserError(
            f"kernel.tarball_sha256 {given} is not the sha256 of {tarball} ({known}, as "
            "kernel.org publishes it); remove kernel.tarball_sha256 or correct it"
        )
    sha = known or given
    if sha is None:
        pinned = ", ".join(s.release for s in table.series)
        raise UserError(
            f"no sha256 is known for {tarball}; set kernel.tarball_sha256 to the value "
            f"kernel.org's sha256sums.asc lists for it, or build a release Synapse pins "
            f"({pinned})"
        )
    return version, sha


def expected_config_text(resolution: Resolution) -> str:
    lines = [f"# Settings resolved by Synapse for Linux {resolution.kernel_version}"]
    for s in resolution.differences:  # built anyway (--allow-unapplied): checked as resolved
        lines.append(f"# unapplied: CONFIG_{s.symbol} requested {s.requested}, resolved "
                     f"{s.actual if s.actual is not None else '-'} ({s.status})")
    expected = resolution.expected_config()
    lines += [format_assignment(name, value) for name, value in expected.items()]
    return "\n".join(lines) + "\n"


def render_recipes(profile: Profile, resolution: Resolution | None = None) -> Recipe:
    """Recipes from a resolution (the resolved .config is built as is) or, without one,
    from the profile alone (fragment merged onto the build host's config at build time;
    the release from kernel.version or the default line, see source_tarball)."""
    pkgbase = pkgbase_for(profile)
    version, tarball_sha256 = source_tarball(profile, resolution)
    upstream = upstream_version(version)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("build") / "linux-synapse")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    makeflags = profile.makepkg.makeflags
    values = {
        "profile": profile.name,
        "pkgbase": pkgbase,
        "kernel_version": version,
        "upstream_version": upstream,
        "pkgver": upstream.replace("-", "."),
        "major": upstream.split(".")[0],
        "localversion": localversion_for(profile),
        "title": f"Synapse {profile.name} ({pkgbase})",
        "makeflags": None if makeflags in (None, "auto") else makeflags,
        "resolved": resolution is not None,
    }
    if resolution is not None:
        config_name, config = "config", resolution.config
        expected = expected_config_text(resolution)
    else:
        config_name, config = "synapse.config", kernel_fragment(profile)
        expected = config
    install = env.get_template("linux-synapse.install.in").render(**values)
    pkgbuild = env.get_template("PKGBUILD.in").render(
        **values,
        config_name=config_name,
        kernel_org=tarball_sources(version, tarball_sha256),
        config_sha256=_sha256(config),
        expected_sha256=_sha256(expected),
        install_sha256=_sha256(install),
    )
    deb = env.get_template("build-deb.sh.in").render(**values)
    files = {
        "PKGBUILD": pkgbuild,
        f"{pkgbase}.install": install,
        config_name: config,
        "expected.config": expected,
        "build-deb.sh": deb,
    }
    return Recipe(files, frozenset({"build-deb.sh"}))


def pkgbuild_files(profile: Profile) -> dict[str, tuple[str, int]]:
    """For the renderer (pure): name -> (content, mode) of the recipes of a custom kernel
    (the profile's fragment merged at build time; `synapse kernel pkgbuild --resolved`
    makes them from a resolution instead)."""
    if profile.kernel.source != "custom":
        return {}
    recipe = render_recipes(profile)
    return {
        name: (content, 0o755 if name in recipe.executable else 0o644)
        for name, content in recipe.files.items()
    }
