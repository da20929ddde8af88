#!/usr/bin/env bash
# egressd soak test (issue 7, item 6), one command:
#
#   benches/soak/run.sh [--minutes 10] [--rotation rename|symlink] [--concurrency 2] ...
#
# Builds egressd (`cargo build --release`), copies the binary to target/soak/egressd (a rebuild
# during the run does not touch the one under test), then runs benches/soak/soak.py: openssl makes a
# test CA and the certificates, Python origins listen on 127.0.0.200:8080 (HTTP) and :8443 (TLS),
# egressd on free 127.0.0.1 ports; N minutes of mixed HTTP, TLS passthrough and ISTIO_MUTUAL traffic
# with a config rewrite every 5 s and a certificate rotation every 30 s. Prints a Markdown table and
# VERDICT: PASS or FAIL (exit status 1). Files of each run: target/soak/run-*/ (latest table:
# target/soak/latest.md). Needs python3 and openssl (installed from Debian when missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
for arg in "$@"; do
  case $arg in -h|--help) exec python3 benches/soak/soak.py --help ;; esac
done

missing=()
for pair in python3:python3 openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --release --quiet
mkdir -p target/soak
cp -f target/release/egressd target/soak/egressd.new
mv -f target/soak/egressd.new target/soak/egressd
# The interpreter itself, not a wrapper such as a pyenv shim: this pid becomes the driver, so that
# a SIGTERM to it reaches the script, which then stops egressd and the origins.
PY=$(python3 -c "import sys; print(sys.executable)")
exec "$PY" benches/soak/soak.py --egressd target/soak/egressd --command "benches/soak/run.sh${*:+ $*}" "$@"
