#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable where CPU seconds on a shared machine
# vary by 10-20%, so small hot-path changes are measured with this rather than with run.sh.
#
#   benches/load/callgrind.sh RUN_DIR [EGRESSD] [N]
#
# RUN_DIR is a directory a load run left (target/bench-load/run-*): its nginx.conf (the origin)
# and egressd-config/ (the seed-style Istio YAML, STATIC endpoints) are reused. EGRESSD defaults
# to target/release/egressd, N (requests per figure) to 300. egressd runs under
# `valgrind --tool=callgrind` with one worker on 127.0.0.1:18080 (HTTP) and 18443 (TLS
# passthrough), admin 18000; curl warms up with 50 requests, the counters are zeroed, N requests
# follow one after another, the counters are dumped. Prints, per scenario, the instructions of
# the whole egressd process divided by N:
#   tls-new  a new TLS connection through passthrough per request (curl, `Connection: close`)
#   http-ka  HTTP/1.1 keep-alive requests by Host on one connection
# Needs valgrind, nginx and curl (apt-get install valgrind nginx curl). Stops only what it started.
set -euo pipefail
RUN=${1:?usage: callgrind.sh RUN_DIR [EGRESSD] [N]}
RUN=$(cd "$RUN" && pwd)
BIN=${2:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/egressd}
N=${3:-300}
WORK=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

nginx -c "$RUN/nginx.conf" &  # the file says `daemon off`: this is nginx's own pid
pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN" run \
  --config "$RUN/egressd-config" --port-mapping 80=18080,443=18443 --bind-address 127.0.0.1 \
  --admin 127.0.0.1:18000 --health 127.0.0.1:18001 --prometheus 127.0.0.1:18002 \
  --dns 127.0.0.1:18053 --access-log off --concurrency 1 >"$WORK/egressd.log" 2>&1 &
egressd=$!
pids+=("$egressd")
for _ in $(seq 1 300); do
  curl -sf 127.0.0.1:18000/ready >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf 127.0.0.1:18000/ready >/dev/null || { cat "$WORK/egressd.log" >&2; exit 1; }

urls() { # scheme port count
  for _ in $(seq 1 "$3"); do printf 'url = "%s://edition.cnn.com:%s/1k"\noutput = "/dev/null"\n' "$1" "$2"; done
}
tls() { curl -sfk --resolve edition.cnn.com:18443:127.0.0.1 -H "Connection: close" -K "$1"; }
http() { curl -sf --resolve edition.cnn.com:18080:127.0.0.1 -K "$1"; }
measure() { # name client scheme port
  urls "$3" "$4" 50 >"$WORK/warm"
  urls "$3" "$4" "$N" >"$WORK/urls"
  "$2" "$WORK/warm"
  callgrind_control -z "$egressd" >/dev/null 2>&1
  "$2" "$WORK/urls"
  callgrind_control -d "$egressd" >/dev/null 2>&1
  sleep 0.5
  local out ir
  out=$(ls -t "$WORK"/cg.out* | head -1)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
  rm -f "$WORK"/cg.out.*
  echo "$1: $((ir / N)) instructions per request (N=$N)"
}
measure tls-new tls https 18443
measure http-ka http http 18080
