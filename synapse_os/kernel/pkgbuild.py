"""Build recipes for the resolved kernel: an Arch PKGBUILD and a Debian bindeb-pkg script.

Both apply the resolved .config, run `make olddefconfig` on the real source and refuse to
build when any resolved setting did not survive (expected.config lists them).
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
from synapse_os.profile.model import Profile
from synapse_os.resources import data_dir

DEFAULT_PKGBASE = "linux-synapse"
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


def upstream_version(kernel_version: str) -> str:
    """kernel.org tarball version: 6.12.0 -> 6.12, 6.1.192 -> 6.1.192."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)(.*)$", kernel_version)
    if not m:
        raise UserError(f"kernel version {kernel_version!r} is not of the form X.Y.Z")
    major, minor, sub, extra = m.groups()
    base = f"{major}.{minor}" if sub == "0" else f"{major}.{minor}.{sub}"
    return base + extra


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def expected_config_text(resolution: Resolution) -> str:
    lines = [f"# Settings resolved by Synapse for Linux {resolution.kernel_version}"]
    expected = resolution.expected_config()
    lines += [format_assignment(name, value) for name, value in expected.items()]
    return "\n".join(lines) + "\n"


def render_recipes(profile: Profile, resolution: Resolution | None = None) -> Recipe:
    """Recipes from a resolution (the resolved .config is built as is) or, without one,
    from the profile alone (fragment merged onto the build host's config at build time;
    needs kernel.version)."""
    pkgbase = pkgbase_for(profile)
    if resolution is not None:
        version = resolution.kernel_version
    elif profile.kernel.version is not None:
        version = profile.kernel.version
    else:
        raise UserError(
            "kernel.version is not set; set it (e.g. 6.12.10) or resolve first with "
            "`synapse kernel config` and pass --resolved"
        )
    upstream = upstream_version(version if version.count(".") >= 2 else version + ".0")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("build") / "linux-synapse")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    makeflags = profile.makepkg.makeflags
    values = {
        "profile": profile.name,
        "pkgbase": pkgbase,
        "kernel_version": version,
        "upstream_version": upstream,
        "pkgver": upstream.replace("-", "."),
        "major": upstream.split(".")[0],
        "localversion": "-" + pkgbase.removeprefix("linux-"),
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
    """For the renderer (pure): name -> (content, mode) of the recipes, or nothing when
    the profile does not pin kernel.version (then `synapse kernel pkgbuild` makes them)."""
    if profile.kernel.source != "custom" or profile.kernel.version is None:
        return {}
    recipe = render_recipes(profile)
    return {
        name: (content, 0o755 if name in recipe.executable else 0o644)
        for name, content in recipe.files.items()
    }
