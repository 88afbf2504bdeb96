#!/usr/bin/env bash
# Happy-path throughput with wrk (no faults): POST /buy with ft=true and ft=false against the
# real suite, and against a bare axum endpoint (examples/bare_axum.rs) in the same run, so the
# cost of four calls, two databases and the fault-tolerance machinery is visible next to the
# HTTP stack alone. Writes docs/benchmarks/runs/happy-path.txt.
#
# Usage: scripts/bench/happy-path.sh [duration] [connections]     e.g.  20s 32
# Traffic goes to 127.0.0.1 only, bounded by `duration`.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-20s}"; CONNS="${2:-32}"
command -v wrk >/dev/null || { sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo; $sudo apt-get update -qq && $sudo apt-get install -y -qq wrk; }
cargo build --release -p ftshop --example bare_axum
BIN=./target/release/ftshop
OUT=docs/benchmarks/runs/happy-path.txt
PORT_BASE="${PORT_BASE:-24080}"
export FTSHOP_CATALOG="$PWD/scripts/bench/catalog.json"
DIR="$(mktemp -d)"
"$BIN" up --data-dir "$DIR" --port-base "$PORT_BASE" --faults off > "$DIR/up.out" 2>&1 &
UP=$!
./target/release/examples/bare_axum "127.0.0.1:$((PORT_BASE + 50))" > /dev/null &
BARE=$!
trap 'kill -TERM $UP $BARE 2>/dev/null; wait $UP 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT_BASE/health/ready" > /dev/null 2>&1 && break; sleep 0.2
done
{
  echo "# happy path, $(date -u +%FT%TZ), $(nproc) cores, wrk -t2 -c$CONNS -d$DURATION, faults off"
  for target in "ft=true:true:$PORT_BASE" "ft=false:false:$PORT_BASE" "bare-axum:true:$((PORT_BASE + 50))"; do
    IFS=: read -r name ft port <<< "$target"
    echo "## $name"
    FT="$ft" wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s scripts/bench/buy.lua "http://127.0.0.1:$port"
  done
} | tee "$OUT"
