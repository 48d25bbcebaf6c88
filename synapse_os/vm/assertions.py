"""The VM assertions, generated from the profile: the same declarations `synapse verify`
checks (settings from `state.checks`, placed files from `state.file_checks`), plus what
only a booted image can show: kernel CONFIG_* values and the inference service answering.
"""

from __future__ import annotations

import json
import shlex

from synapse_os.apply.plan import rootfs_files
from synapse_os.profile.model import Profile
from synapse_os.render import render_profile
from synapse_os.state import UNKNOWN_RC, Check, SystemState, checks, desired_state, file_checks

# Reads the running kernel's config (Debian ships /boot/config-*, others /proc/config.gz);
# "n" for "is not set" or absent, exit UNKNOWN_RC where the kernel exposes no config.
_KCONFIG = (
    "f=/boot/config-$(uname -r); "
    "if [ -r \"$f\" ]; then c=$(cat \"$f\"); "
    "elif [ -r /proc/config.gz ]; then c=$(zcat /proc/config.gz); "
    f"else exit {UNKNOWN_RC}; fi; "
    "v=$(printf '%s\\n' \"$c\" | sed -n 's/^{sym}=//p' | tail -n 1); "
    "printf '%s\\n' \"${{v:-n}}\""
)


def kernel_checks(profile: Profile, state: SystemState) -> list[Check]:
    """CONFIG_* values the running kernel must have for the profile to be honoured."""
    out: list[Check] = []
    wanted: dict[str, tuple[str, str]] = {}  # symbol -> (accepted values, source)
    if state.zram is not None:
        wanted["CONFIG_ZRAM"] = ("y|m", "memory.zram")
    if profile.memory.thp is not None:
        wanted["CONFIG_TRANSPARENT_HUGEPAGE"] = ("y", "memory.thp")
    if profile.memory.zswap is not None:
        wanted["CONFIG_ZSWAP"] = ("y", "memory.zswap")
    from synapse_os.kernel.fragment import requested_symbols

    for symbol, value in requested_symbols(profile).items():  # a custom kernel's build options
        wanted[symbol] = (value.strip('"'), "kernel")
    for symbol, (accepted, source) in wanted.items():
        out.append(Check(f"kernel {symbol}", "kernel", source, accepted,
                         _KCONFIG.format(sym=symbol), "one_of"))
    return out


def service_checks(profile: Profile) -> list[Check]:
    """The inference service listens, reports healthy and answers one real completion."""
    rt = profile.runtime
    if rt is None:
        return []
    host = "127.0.0.1" if rt.host in ("0.0.0.0", "::", "") else rt.host
    base = f"http://{host}:{rt.port}"
    health = (
        "import json, urllib.request\n"
        f"r = urllib.request.urlopen({base + '/health'!r}, timeout=30)\n"
        "print(json.load(r).get('status'))\n"
    )
    body = json.dumps({"model": "auto", "prompt": "The capital of France is",
                       "max_tokens": 2, "temperature": 0})
    completion = (
        "import json, urllib.request\n"
        f"req = urllib.request.Request({base + '/v1/completions'!r}, data={body!r}.encode(), "
        "headers={'Content-Type': 'application/json'})\n"
        "r = json.load(urllib.request.urlopen(req, timeout=1800))\n"
        "text = r['choices'][0]['text']\n"
        "n = r.get('usage', {}).get('completion_tokens', 0)\n"
        "print(('answered' if n >= 1 else 'empty') + f' ({n} tokens): {text!r}')\n"
    )
    src = "runtime.port"
    return [
        Check(f"service port {rt.port} listening", "service", src, f":{rt.port}",
              f"ss -Hltn 'sport = :{rt.port}' | awk '{{print $4}}'", "contains"),
        Check("service /health", "service", "runtime", "ok",
              f"python3 -c {shlex.quote(health)}"),
        Check("service completion", "service", "runtime", "answered",
              f"python3 -c {shlex.quote(completion)}", "contains"),
    ]


def profile_file_checks(profile: Profile) -> list[Check]:
    files = {rel: (f.mode, f.digest(), f.link)
             for rel, f in rootfs_files(render_profile(profile)).items()}
    return file_checks(files)


def vm_assertions(profile: Profile) -> list[Check]:
    """Everything asserted in a booted guest of this profile, in a stable order."""
    state = desired_state(profile)
    return [*checks(state), *profile_file_checks(profile), *kernel_checks(profile, state),
            *service_checks(profile)]
