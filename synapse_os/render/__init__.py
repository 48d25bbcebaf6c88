"""Render a profile into a tree of files: pure (no I/O but reading templates), deterministic.

The tree is built in memory by a list of small named steps, then written atomically by
`write_tree` with a manifest.json holding the sha256 of every file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jinja2
import yaml

from synapse_os import __version__
from synapse_os.distro import distro_for
from synapse_os.errors import UserError
from synapse_os.outdir import File, write_dir
from synapse_os.profile.model import ENGINE_UNITS, RUNTIME_SOCKET, Profile
from synapse_os.render.container import nspawn_words
from synapse_os.render.escape import FILTERS
from synapse_os.render.hardening import hardening
from synapse_os.resources import data_dir
from synapse_os.tunables import REGISTRY, SystemState, desired_state
from synapse_os.tunables.cmdline import cmdline_string

MANIFEST = "manifest.json"
SYNAPSE_BIN = "/opt/synapse/bin/synapse"
ROOT_PARTLABEL = "synapse-root"


@dataclass
class Tree:
    files: dict[str, File] = field(default_factory=dict)

    def add(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        if path in self.files:
            raise ValueError(f"two render steps produced {path}")
        data = content.encode() if isinstance(content, str) else content
        self.files[path] = File(data, mode)

    def link(self, path: str, target: str) -> None:
        self.files[path] = File(link=target, mode=0o777)

    def manifest(self, profile: Profile) -> dict[str, object]:
        return {
            "synapse_version": __version__,
            "profile": profile.name,
            "profile_hash": profile.hash(),
            "base": profile.base,
            "files": {
                path: {"sha256": f.digest(), "mode": f"{f.mode:04o}",
                       **({"link": f.link} if f.link is not None else {})}
                for path, f in sorted(self.files.items())
            },
        }


@cache
def _env() -> jinja2.Environment:
    # No bytecode cache: a cache directory another user can write would be unpickled as root.
    loader = jinja2.FileSystemLoader(
        [str(data_dir(d)) for d in ("overlays", "systemd", "install", "iso")]
    )
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


def template(name: str, **context: object) -> str:
    return _env().get_template(name).render(**context)


@dataclass(frozen=True)
class Context:
    profile: Profile
    state: SystemState

    @property
    def kernel_package(self) -> str:
        return self.profile.kernel.package or distro_for(self.profile).default_kernel

    @property
    def custom_kernel(self) -> bool:
        return self.profile.kernel.source == "custom"

    @property
    def microcode_images(self) -> list[str]:
        vendor = self.profile.hardware.cpu_vendor
        vendors = ["amd", "intel"] if vendor == "auto" else [vendor]
        return [f"{v}-ucode.img" for v in vendors]

    @property
    def threads(self) -> int | None:
        return self.profile.inference_threads()

    @property
    def memory_high(self) -> str | None:
        high = self.profile.memory_high_bytes()
        return None if high is None else str(high)

    @property
    def listen(self) -> str | None:
        """host:port for engines configured by address (OLLAMA_HOST); IPv6 in brackets."""
        rt = self.profile.runtime
        if rt is None:
            return None
        return f"[{rt.host}]:{rt.port}" if ":" in rt.host else f"{rt.host}:{rt.port}"

    def vars(self, **extra: object) -> dict[str, object]:
        return {
            "profile": self.profile,
            "state": self.state,
            "runtime": self.profile.runtime,
            "kernel_package": self.kernel_package,
            "custom_kernel": self.custom_kernel,
            "threads": self.threads,
            "listen": self.listen,
            **extra,
        }

    def template(self, name: str, **extra: object) -> str:
        return template(name, **self.vars(**extra))


Step = Callable[[Context, Tree], None]


def step_tunables(ctx: Context, tree: Tree) -> None:
    for tunable in REGISTRY:
        tunable.render(ctx, tree)


def step_makepkg(ctx: Context, tree: Tree) -> None:
    if any(ctx.profile.makepkg.model_dump().values()) and ctx.profile.base == "arch":
        tree.add("rootfs/etc/makepkg.conf.d/synapse.conf",
                 template("makepkg.conf.j2", **ctx.vars(m=ctx.profile.makepkg)))


def step_boot(ctx: Context, tree: Tree) -> None:
    words = list(ctx.state.cmdline)
    cmdline = cmdline_string(words)
    root_mode = "ro" if ctx.profile.system.root == "read-only" else "rw"
    full = cmdline_string([f"root=PARTLABEL={ROOT_PARTLABEL}", root_mode, *words])
    tree.add("rootfs/etc/kernel/cmdline", f"{full}\n")
    if ctx.profile.boot.loader == "grub":
        distro = distro_for(ctx.profile)
        tree.add(f"rootfs/{distro.grub_config}",
                 template("grub.cfg.j2", **ctx.vars(cmdline=cmdline, whole=distro.name == "arch")))
        return
    distro = distro_for(ctx.profile)
    default_entry = distro.default_entry
    if ctx.custom_kernel and distro.name == "debian":  # the tuned kernel, not the stock one
        from synapse_os.kernel.pkgbuild import localversion_for

        default_entry = f"synapse-*{localversion_for(ctx.profile)}.conf"
    tree.add(f"rootfs{distro.esp_mount}/loader/loader.conf",
             template("loader.conf.j2", **ctx.vars(default_entry=default_entry)))
    if ctx.profile.base != "arch":
        return  # Debian's kernel-install writes entries from etc/kernel/cmdline
    entry = {"microcode_images": ctx.microcode_images, "full_cmdline": full}
    tree.add("rootfs/boot/loader/entries/synapse.conf",
             template("loader-entry.conf.j2", **ctx.vars(**entry)))
    if ctx.custom_kernel:  # the stock kernel stays installed as a fallback
        fallback = ctx.vars(**entry) | {"kernel_package": distro_for(ctx.profile).default_kernel}
        tree.add("rootfs/boot/loader/entries/synapse-fallback.conf",
                 template("loader-entry.conf.j2", **fallback))


def step_runtime(ctx: Context, tree: Tree) -> None:
    rt = ctx.profile.runtime
    if rt is None:
        return
    extra = {"synapse_bin": SYNAPSE_BIN, "memory_high": ctx.memory_high,
             "gpu": ctx.profile.hardware.gpu != "none",
             "llama": rt.llama.settings(rt.speculative.enabled),
             "cpu_affinity": (ctx.profile.cpu_partition() or (None, None))[0],
             "container": None,
             "hardening": hardening(rt.sandboxing, gpu=ctx.profile.hardware.gpu != "none",
                                    realtime=rt.cpu_scheduling_policy in ("fifo", "rr"))}
    tree.add("rootfs/etc/sysusers.d/synapse.conf", template("sysusers.conf.j2", **ctx.vars()))
    tree.add("rootfs/etc/tmpfiles.d/synapse-runtime.conf",
             template("tmpfiles-runtime.conf.j2", **ctx.vars()))
    unit = ENGINE_UNITS[rt.engine]
    if rt.engine == "ollama":
        tree.add(f"rootfs/etc/systemd/system/{unit}.d/90-synapse.conf",
                 template("ollama-synapse.conf.j2", **ctx.vars(**extra)))
        return
    if rt.engine == "llama-server" and "main" not in rt.models:
        raise UserError("runtime.models: the llama-server engine needs a 'main' model")
    if rt.isolation == "nspawn":
        extra |= {"container": nspawn_words(rt, ctx.threads, SYNAPSE_BIN),
                  "socket_unit": RUNTIME_SOCKET}
        tree.add(f"rootfs/etc/systemd/system/{RUNTIME_SOCKET}",
                 template(f"{RUNTIME_SOCKET}.j2", **ctx.vars()))
    tree.add(f"rootfs/etc/systemd/system/{unit}",
             template(f"{unit}.j2", **ctx.vars(**extra)))
    if rt.engine == "synapse-runtime":
        from synapse_os.runtime.config import runtime_config_from_profile

        config = runtime_config_from_profile(ctx.profile)
        tree.add("rootfs/etc/synapse/runtime.yaml",
                 "# Rendered by synapse; read by synapse-runtime.service.\n"
                 + yaml.safe_dump(config, sort_keys=True, default_flow_style=False))


def step_stock(ctx: Context, tree: Tree) -> None:
    """The stock boot state and the boot A/B's step unit, where synapse is installed."""
    if ctx.profile.runtime is None:
        return
    from synapse_os.render import stock

    tree.add(stock.GENERATOR, template("synapse-stock-generator.j2", **ctx.vars(
        **stock.generator_context(ctx.state, set(tree.files)))), 0o755)
    unit = f"rootfs/etc/systemd/system/{stock.BENCH_UNIT}"
    tree.add(unit, template(f"{stock.BENCH_UNIT}.j2", **ctx.vars(
        state_file=stock.BOOT_AB_STATE, synapse_bin=SYNAPSE_BIN,
        engines=sorted(ENGINE_UNITS.values()))))
    tree.link(f"rootfs/etc/systemd/system/multi-user.target.wants/{stock.BENCH_UNIT}",
              f"/etc/systemd/system/{stock.BENCH_UNIT}")


def step_install(ctx: Context, tree: Tree) -> None:
    distro = distro_for(ctx.profile)
    header = f"# Packages for profile {ctx.profile.name} ({distro.name}), rendered by synapse.\n"
    manifest_name = "packages.x86_64" if distro.name == "arch" else "packages.debian"
    tree.add(f"install/{manifest_name}", header + "\n".join(distro.packages(ctx.profile)) + "\n")
    if distro.name == "arch":
        tree.add("install/pacman.conf", template("pacman.conf.j2", **ctx.vars()))
        tree.add("install/pacman-bundle.conf", template("pacman-bundle.conf.j2", **ctx.vars()))
    options = ",".join(ctx.profile.disk.mount_options) or "defaults"
    root_options = ",".join(["ro", *ctx.profile.disk.mount_options]) \
        if ctx.profile.system.root == "read-only" else options
    layout = ctx.vars(mount_options=options, root_mount_options=root_options,
                      root_mib=str(ctx.profile.disk.root_mib() or ""),
                      esp_mount=distro.esp_mount,
                      locale_file=distro.locale_file)
    tree.add("install/fstab", template("fstab.j2", **layout))
    if ctx.profile.network.wired == "dhcp":
        tree.add("install/network/20-wired.network", template("wired.network.j2", **layout))
    tree.add("install/partition.sh", template("partition.sh.j2", **layout), 0o755)
    tree.add("install/install.sh", template("install.sh.j2", **layout), 0o755)


def step_kernel(ctx: Context, tree: Tree) -> None:
    if not ctx.custom_kernel:
        return
    from synapse_os.kernel.fragment import kernel_fragment
    from synapse_os.kernel.pkgbuild import pkgbuild_files

    recipes = pkgbuild_files(ctx.profile)  # with kernel.version pinned: the PKGBUILD too
    recipes.setdefault("synapse.config", (kernel_fragment(ctx.profile), 0o644))
    for name, (content, mode) in sorted(recipes.items()):
        tree.add(f"kernel/{name}", content, mode)


def step_archinstall(ctx: Context, tree: Tree) -> None:
    # archinstall's layouts size partitions up front and cannot give /var "the rest of the
    # disk": a profile with its own /var partition installs with install/install.sh only
    if ctx.profile.base != "arch" or ctx.profile.disk.root_size is not None:
        return
    from synapse_os.render.archinstall import archinstall_files

    for name, content in archinstall_files(ctx).items():
        tree.add(f"archinstall/{name}", content)


STEPS: list[Step] = [
    step_tunables,
    step_makepkg,
    step_boot,
    step_runtime,
    step_stock,
    step_install,
    step_kernel,
    step_archinstall,
]


def render_profile(profile: Profile) -> Tree:
    ctx = Context(profile, desired_state(profile))
    tree = Tree()
    for step in STEPS:
        step(ctx, tree)
    return tree


def write_tree(tree: Tree, output: Path, manifest: dict[str, object],
               fill: Callable[[Path], None] | None = None) -> None:
    """Write the tree and its manifest into `output` atomically (see synapse_os.outdir);
    `fill` adds more files to the new directory before it takes output's place."""
    blob = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    write_dir(output, tree.files | {MANIFEST: File(blob)}, marker=MANIFEST, listed=True,
              fill=fill)


def render_to(profile: Profile, output: Path) -> Tree:
    tree = render_profile(profile)
    write_tree(tree, output, tree.manifest(profile))
    return tree
