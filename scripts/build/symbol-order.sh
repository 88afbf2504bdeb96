#!/usr/bin/env bash
# Regenerates build/symbol-order.ld, the code layout build.rs links release binaries with: runs
# `ftshop up` (the supervisor and its six members) under callgrind, through start-up, 120
# purchases (ft=true and ft=false) and a replay, every member's health and metrics endpoints,
# 40 s at rest and a clean stop; then scripts/build/symbol-order.py writes the functions that ran,
# grouped by the roles that ran them. Why and what it measured: docs/development.md ("Code
# layout") and docs/benchmarks/happy-path.md ("The seventh round").
#
# Usage: scripts/build/symbol-order.sh                    # builds the release binary first
#        SKIP_BUILD=1 FTSHOP_BIN=path scripts/build/symbol-order.sh
# Then rebuild (`cargo build --release`) to link with the new layout. Run it after changes that
# add or rename much of what the suite runs; a stale script costs memory, never correctness.
# Needs valgrind (installed from Debian's packages when missing). Traffic: 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
PORT_BASE="${PORT_BASE:-24500}"
if ! command -v valgrind >/dev/null; then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq valgrind
fi
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p ftshop --bin ftshop
fi
BIN="$(realpath "${FTSHOP_BIN:-./target/release/ftshop}")"
WORK="$(mktemp -d)"; UP=""
cleanup() {
  [[ -n "$UP" ]] && kill "$UP" 2>/dev/null && wait "$UP" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/data"
FTSHOP_CATALOG="$PWD/scripts/bench/catalog.json" valgrind --tool=callgrind --trace-children=yes \
  --demangle=no --dump-instr=no --compress-strings=no --compress-pos=no \
  --callgrind-out-file="$WORK/cg.%p" \
  "$BIN" up --data-dir "$WORK/data" --port-base "$PORT_BASE" --faults off > "$WORK/up.log" 2>&1 &
UP=$!
URL="http://127.0.0.1:$PORT_BASE"
for _ in $(seq 1 300); do curl -fs "$URL/health/ready" >/dev/null && break; sleep 1; done
curl -fs "$URL/health/ready" >/dev/null || { echo "the suite did not get ready:"; tail "$WORK/up.log"; exit 1; }
for ft in true false; do
  for i in $(seq 1 60); do
    curl -fs -o /dev/null -X POST -H 'content-type: application/json' -H "Idempotency-Key: order-$ft-$i" \
      -d "{\"product\":\"$((i % 11 + 1))\",\"user\":\"user-$((i % 7))\",\"ft\":$ft}" "$URL/buy"
  done
done
curl -fs -o /dev/null -X POST -H 'content-type: application/json' -H "Idempotency-Key: order-true-1" \
  -d '{"product":"2","user":"user-1","ft":true}' "$URL/buy"
for port in $(python3 -c 'import json,sys; print(*[m["port"] for m in json.load(open(sys.argv[1]))["members"]])' "$WORK/data/up.json"); do
  for path in /health/live /health/ready /metrics; do curl -s -o /dev/null "http://127.0.0.1:$port$path"; done
done
sleep 40
kill "$UP"; wait "$UP" || true; UP=""
python3 scripts/build/symbol-order.py "$BIN" build/symbol-order.ld "$WORK"/cg.*
