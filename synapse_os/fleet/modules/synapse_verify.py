#!/usr/bin/python
"""Ansible module: run `synapse verify --json` on the managed host (written by
`synapse fleet export`)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: synapse_verify
short_description: Compare a root with a Synapse profile with C(synapse verify)
description:
  - Runs C(synapse verify --json) and writes its report to I(output) for C(fetch).
  - Never fails on drift itself (so the report can be fetched first); C(failed_checks)
    lists the checks that failed. A check that is C(unknown) is not a failure.
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
  output:
    description: Where to write the JSON report on the host.
    type: path
    required: true
author: Synapse
"""

RETURN = r"""
counts:
  description: Checks by status (pass, fail, unknown).
  type: dict
  returned: always
failed_checks:
  description: The failing checks (id, expected, actual).
  type: list
  elements: dict
  returned: always
msg:
  description: One sentence summing up the report.
  type: str
  returned: always
"""

import json  # noqa: E402
import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

MAX_OUTPUT = 64 * 1024 * 1024


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "synapse": {"type": "path", "required": True},
            "profile": {"type": "path", "required": True},
            "root": {"type": "path", "default": "/"},
            "output": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    rc, out, err = module.run_command([p["synapse"], "verify", p["profile"], "--root", p["root"],
                                       "--json"])
    if rc not in (0, 1) or len(out) > MAX_OUTPUT:
        module.fail_json(msg=f"synapse verify failed: {_last_line(err or out)}", rc=rc)
    try:
        report = json.loads(out)
        counts = report["counts"]
        checks = report["checks"]
        assert isinstance(counts, dict) and isinstance(checks, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        module.fail_json(msg=f"synapse verify did not print its JSON report: {_last_line(out)}")
    failed = [{"id": c.get("id"), "expected": c.get("expected"), "actual": c.get("actual")}
              for c in checks if isinstance(c, dict) and c.get("status") == "fail"]
    if not module.check_mode:
        tmp = f"{p['output']}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(out)
        os.replace(tmp, p["output"])
    where = p["root"]
    if failed:
        first = failed[0]
        msg = (f"synapse verify: {len(failed)} check(s) failed on {where}, first "
               f"{first['id']} (expected {first['expected']}, found {first['actual']})")
    else:
        msg = (f"synapse verify: {counts.get('pass', 0)} pass, 0 fail, "
               f"{counts.get('unknown', 0)} unknown on {where}")
    module.exit_json(changed=False, counts=counts, failed_checks=failed, msg=msg)


if __name__ == "__main__":
    main()
