#!/usr/bin/python
"""Ansible module: run `synapse apply` on the managed host (written by `synapse fleet export`)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: synapse_apply
short_description: Make a root match a Synapse profile with C(synapse apply)
description:
  - Runs C(synapse apply --dry-run --json) first (the plan, shown as the diff with C(--diff);
    the profile hash is checked before anything changes), then C(synapse apply --yes --json)
    unless in check mode.
  - Reports C(changed) only when the plan was not empty, so a second run changes nothing.
options:
  synapse:
    description: Path of the synapse executable on the host.
    type: path
    required: true
  profile:
    description: Path of the profile on the host.
    type: path
    required: true
  root:
    description: The target root (C(/) for the running system).
    type: path
    default: /
  exported_profile:
    description:
      - The exported profile that O(profile) extends with this host's hardware; its hash is
        checked against O(profile_hash) when O(profile) loads to another hash.
    type: path
    required: false
  profile_hash:
    description: The hash C(synapse fleet export) recorded; the host must load the same profile.
    type: str
    required: false
author: Synapse
"""

RETURN = r"""
transaction:
  description: The transaction id of this apply (none when nothing changed or in check mode).
  type: str
  returned: always
reboot_reasons:
  description: Why the target needs a reboot for the change to take effect.
  type: list
  elements: str
  returned: always
plan:
  description: The plan as C(synapse apply --dry-run --json) prints it.
  type: dict
  returned: always
"""

import json  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

MAX_OUTPUT = 64 * 1024 * 1024


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _json(module: AnsibleModule, what: str, out: str) -> dict:
    if len(out) > MAX_OUTPUT:
        module.fail_json(msg=f"{what} printed more than {MAX_OUTPUT} bytes; refusing to parse it")
    try:
        data = json.loads(out)
    except ValueError:
        module.fail_json(msg=f"{what} did not print JSON: {_last_line(out)}")
    if not isinstance(data, dict):
        module.fail_json(msg=f"{what} printed JSON that is not an object")
    return data


def _plan_text(plan: dict) -> str:
    out: list[str] = []
    diffs = plan.get("diffs") or {}
    for path in sorted(diffs):
        out.append(str(diffs[path]))
    for unit in plan.get("units") or []:
        out.append(f"unit {unit.get('op')} {unit.get('unit')} (now {unit.get('current') or '-'})\n")
    for sysctl in plan.get("sysctls") or []:
        out.append(f"sysctl {sysctl.get('key')}: {sysctl.get('current')} -> "
                   f"{sysctl.get('wanted')}\n")
    for reason in plan.get("reboot_reasons") or []:
        out.append(f"reboot needed: {reason}\n")
    return "".join(out)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "synapse": {"type": "path", "required": True},
            "profile": {"type": "path", "required": True},
            "root": {"type": "path", "default": "/"},
            "exported_profile": {"type": "path", "required": False},
            "profile_hash": {"type": "str", "required": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    base = [p["synapse"], "apply", p["profile"], "--root", p["root"]]
    rc, out, err = module.run_command(base + ["--dry-run", "--json"])
    if rc != 0:
        module.fail_json(msg=f"synapse apply --dry-run failed: {_last_line(err or out)}", rc=rc)
    plan = _json(module, "synapse apply --dry-run", out)
    if p["profile_hash"]:
        loaded = plan.get("profile_hash")
        if loaded != p["profile_hash"] and p["exported_profile"]:
            # the host profile lays this host's hardware over the export: check the export
            rc, out, err = module.run_command([p["synapse"], "validate", p["exported_profile"],
                                               "--json"])
            if rc != 0:
                module.fail_json(msg=f"synapse validate failed: {_last_line(err or out)}", rc=rc)
            loaded = _json(module, "synapse validate", out).get("hash")
        if loaded != p["profile_hash"]:
            module.fail_json(msg=f"the host loads profile hash {loaded}, not the exported "
                             f"{p['profile_hash']}; re-run `synapse fleet export` with this "
                             "synapse version (nothing was changed)")
    result = {
        "changed": bool(plan.get("changed")),
        "transaction": None,
        "reboot_reasons": list(plan.get("reboot_reasons") or []),
        "plan": {k: v for k, v in plan.items() if k != "diffs"},
    }
    if module._diff and result["changed"]:
        result["diff"] = {"prepared": _plan_text(plan)}
    if module.check_mode or not result["changed"]:
        module.exit_json(**result)
    rc, out, err = module.run_command(base + ["--yes", "--json"])
    if rc not in (0, 1) or not out.strip():
        module.fail_json(msg=f"synapse apply failed: {_last_line(err or out)}", rc=rc, **result)
    applied = _json(module, "synapse apply", out)
    result["transaction"] = applied.get("transaction")
    result["changed"] = bool(applied.get("changed"))
    result["reboot_reasons"] = list(applied.get("reboot_reasons") or [])
    result["warnings_from_apply"] = list(applied.get("warnings") or [])
    if rc != 0 or applied.get("errors"):
        errors = "; ".join(str(e) for e in applied.get("errors") or []) or _last_line(err)
        module.fail_json(msg=f"synapse apply wrote transaction {result['transaction']} but "
                         f"activation failed: {errors}", rc=rc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
