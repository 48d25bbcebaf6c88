#!/bin/sh
# Installs Synapse into its venv on a fleet host (run by the role, from the unpacked payload).
# usage: install-synapse.sh DIR PYTHON VENV SYSTEM_SITE(true|false) REQUIREMENTS WHEEL SHA256 [PIP ARGS...]
# Every value arrives as an argument, never as script text. Prints "changed: ..." when it
# changed the venv; a stamp (wheel and requirements hashes) makes a second run a no-op.
set -eu
dir=$1 python=$2 venv=$3 system_site=$4 requirements=$5 wheel=$6 sha=$7
shift 7
cd "$dir"
got=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  echo "the Synapse wheel $dir/$wheel has sha256 $got, not the exported $sha" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  if [ "$system_site" = true ]; then
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
  echo "changed: created the venv $venv"
fi
stamp="$sha $(sha256sum "$requirements" | cut -d' ' -f1)"
if [ "$(cat "$venv/synapse-installed" 2>/dev/null || true)" = "$stamp" ]; then
  exit 0
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --requirement "$requirements" "$@"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall "$wheel"
printf '%s\n' "$stamp" > "$venv/synapse-installed"
echo "changed: installed $wheel and $requirements into $venv"
