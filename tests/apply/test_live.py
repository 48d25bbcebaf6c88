"""apply on a live Debian root: this machine's own / seen through an overlay in a private
mount namespace (writes land in a tmpfs, /proc and /sys are the real ones).

The profile changes one harmless kernel setting (kernel.printk_ratelimit_burst), so the
test proves the live path end to end, real `sysctl --system` included: plan, apply,
activation, verify, rollback restoring the kernel value the machine had before.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, need_tool

KEY = "kernel.printk_ratelimit_burst"
PROC = Path("/proc/sys/kernel/printk_ratelimit_burst")

SCRIPT = """set -e
mkdir -p "$OVL"
mount -t tmpfs tmpfs "$OVL"
mkdir -p "$OVL/upper" "$OVL/work" "$OVL/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$OVL/upper,workdir=$OVL/work" "$OVL/merged"
for d in proc sys dev; do mount --rbind "/$d" "$OVL/merged/$d"; done
cp "$PROFILE" "$OVL/merged/tmp/live.yaml"  # lands in the overlay's tmpfs upper layer
exec chroot "$OVL/merged" /bin/sh -c '
  cd "$REPO"
  echo "== apply"; "$PY" -m synapse_os.cli apply /tmp/live.yaml --yes
  echo "== value $(cat /proc/sys/kernel/printk_ratelimit_burst)"
  echo "== again"; "$PY" -m synapse_os.cli apply /tmp/live.yaml --yes
  echo "== verify"; "$PY" -m synapse_os.cli verify /tmp/live.yaml --settings-only
  echo "== rollback"; "$PY" -m synapse_os.cli rollback --yes
  echo "== value $(cat /proc/sys/kernel/printk_ratelimit_burst)"
  echo "== files $(ls /etc/sysctl.d)"
'
"""


def test_live_apply_verify_rollback(tmp_path: Path) -> None:
    for tool in ("unshare", "chroot", "sysctl"):
        need_tool(tool, "apt-get install util-linux coreutils procps")
    before = int(PROC.read_text())
    wanted = before + 1
    hostname = Path("/etc/hostname").read_text().strip()
    profile = tmp_path / "live.yaml"
    profile.write_text(f"synapse: 1\nname: live-overlay\nbase: debian\nhostname: {hostname}\n"
                       f"sysctl:\n  {KEY}: {wanted}\n")
    env = {"OVL": str(tmp_path / "ovl"), "PROFILE": str(profile), "REPO": str(REPO),
           "PY": sys.executable, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    finally:
        if int(PROC.read_text()) != before:  # never leave the machine changed
            PROC.write_text(str(before))
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    apply_out = out.split("== apply")[1].split("== value")[0]
    assert f"{KEY}: {before} -> {wanted}" in apply_out
    assert "ran sysctl --system: ok" in apply_out
    assert "reboot needed" in apply_out  # etc/kernel/cmdline is new
    assert f"== value {wanted}\n" in out  # the live kernel took the setting
    assert "nothing to do" in out.split("== again")[1]
    verify_out = out.split("== verify")[1].split("== rollback")[0]
    assert f"PASS    sysctl {KEY}" in verify_out
    assert f"== value {before}\n" in out.split("== rollback")[1]  # live value restored
    assert "90-synapse.conf" not in out.split("== files")[1]
