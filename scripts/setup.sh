#!/usr/bin/env bash
# One-command set-up for a fresh Debian 12 machine (as root, or with sudo available):
# the Debian packages the tools and tests need, then synapse itself with every extra.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
mapfile -t pkgs < <(grep -Ev '^\s*(#|$)' scripts/apt-packages.txt)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# A kernel without vfat (some CI and container kernels) cannot mount an ESP; give mount(8)
# a FUSE helper so install.sh runs unchanged on the images it builds.
if ! grep -qw vfat /proc/filesystems && ! $SUDO modprobe -q vfat 2>/dev/null \
   && [ ! -e /usr/sbin/mount.vfat ]; then
  echo "setup: this kernel has no vfat; installing the FUSE mount.vfat helper"
  $SUDO install -m 0755 scripts/mount.vfat-fuse /usr/sbin/mount.vfat
fi

echo "setup: installing synapse with its bench, model, fleet and dev extras"
python3 -m pip install -q --disable-pip-version-check -e ".[bench,model,fleet,dev]"
# llama-cpp-python builds from source (~8 min on 2 cores the first time, cached after). On a
# host whose native build would not run in an AVX2 image or TCG guest (AVX-512, AMX), the
# host installs the wheel its images carry, built once (synapse_os/image/runtime.py says how)
echo "setup: installing the runtime extra (llama-cpp-python)"
llama_wheel="$(python3 -m synapse_os.image.runtime)"
if [ -n "$llama_wheel" ]; then  # this build, even over one of the same version
  python3 -m pip install -q --disable-pip-version-check "$llama_wheel"
  python3 -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$llama_wheel"
fi
python3 -m pip install -q --disable-pip-version-check -e ".[runtime,bench,model,fleet,dev]"
# archinstall's own example configuration, which the rendered archinstall config is checked
# against (archinstall itself cannot import on Debian 12: its disk layer needs a newer libparted)
python3 -m pip download -q --disable-pip-version-check --no-deps "archinstall==2.8.3" \
  -d "${XDG_CACHE_HOME:-$HOME/.cache}/synapse/archinstall"
echo "setup: done"
