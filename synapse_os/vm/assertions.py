"""The VM assertions, generated from the profile: the same declarations `synapse verify`
checks (settings and kernel CONFIG_* from `tunables.live_checks`, placed files from
`tunables.files.file_checks`), plus what only a booted image can show: the service answering.
"""

from __future__ import annotations

import json
import shlex

from synapse_os.apply.plan import rendered_file_checks
from synapse_os.profile.model import Profile
from synapse_os.render import render_profile
from synapse_os.tunables import Check, live_checks
from synapse_os.tunables.install import install_checks


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
    listening = f"ss -Hltn 'sport = :{rt.port}' | awk '{{print $4}}'"
    address = []
    if host == rt.host:  # a specific address (a wildcard listens on every one)
        shown = f"[{host}]" if ":" in host else host
        address = [Check("service listening address", "service", "runtime.host",
                         f"{shown}:{rt.port}", listening, "token")]
    return [
        Check(f"service port {rt.port} listening", "service", "runtime.port", f":{rt.port}",
              listening, "contains"),
        *address,
        Check("service /health", "service", "runtime", "ok",
              f"python3 -c {shlex.quote(health)}"),
        Check("service completion", "service", "runtime", "answered",
              f"python3 -c {shlex.quote(completion)}", "contains"),
    ]


def profile_file_checks(profile: Profile) -> list[Check]:
    return rendered_file_checks(render_profile(profile))


def vm_assertions(profile: Profile) -> list[Check]:
    """Everything asserted in a booted guest of this profile, in a stable order."""
    return [*live_checks(profile), *install_checks(profile), *profile_file_checks(profile),
            *service_checks(profile)]


def settled_checks(profile: Profile) -> list[Check]:
    """The profile's checks that hold with its engine stopped (an A/B arm): not the
    service's own checks, nor that its unit is active."""
    from synapse_os.profile.model import ENGINE_UNITS

    engine = {f"unit {unit} active" for unit in ENGINE_UNITS.values()}
    return [c for c in vm_assertions(profile) if c.kind != "service" and c.id not in engine]
