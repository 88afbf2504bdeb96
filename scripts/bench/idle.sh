#!/usr/bin/env bash
# The suite at rest: starts `ftshop up --faults off` on a fresh data dir (SQLite), waits until it
# is ready and then SETTLE seconds more, and measures for SECONDS the CPU of each of the seven
# processes (six services and the supervisor: utime + stime from /proc/<pid>/stat) and their RSS
# and PSS (/proc/<pid>/smaps_rollup; PSS counts the one binary's shared code pages once).
# Issue 16's goal: < 1 % of a core and < 100 MB in total.
#
# Usage: scripts/bench/idle.sh [SECONDS]          (default 30)
# Env: FTSHOP_BIN (default ./target/release/ftshop), SETTLE (10), PORT_BASE (27080).
# Nothing is sent to the suite but its readiness probe; it listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_MEASURED="${1:-30}"
BIN="${FTSHOP_BIN:-./target/release/ftshop}"
SETTLE="${SETTLE:-10}"
BASE="${PORT_BASE:-27080}"
if ! command -v jq >/dev/null; then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq jq
fi
TCK=$(getconf CLK_TCK)
DIR="$(mktemp -d)"
UP=""
cleanup() {
  [[ -n "$UP" ]] && { kill -TERM "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
  rm -rf "$DIR"
}
trap cleanup EXIT

"$BIN" up --data-dir "$DIR" --port-base "$BASE" --faults off > "$DIR/up.out" 2>&1 &
UP=$!
for _ in $(seq 150); do curl -sf "http://127.0.0.1:$BASE/health/ready" > /dev/null && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$BASE/health/ready" > /dev/null || { echo "error: the suite never became ready" >&2; cat "$DIR/up.out" >&2; exit 1; }
sleep "$SETTLE"

mapfile -t MEMBERS < <(jq -r '.members[] | select(.pid != null) | "\(.name)=\(.pid)"' "$DIR/up.json")
MEMBERS+=("supervisor=$UP")
# shellcheck source=scripts/bench/proc.sh
source scripts/bench/proc.sh
ticks() { local u s; read -r u s <<< "$(cpu_ticks "$1")"; echo $((u + s)); }
declare -A BEFORE
for m in "${MEMBERS[@]}"; do BEFORE[$m]=$(ticks "${m#*=}"); done
sleep "$SECONDS_MEASURED"

echo "# suite at rest, $(date -u +%FT%TZ), $(nproc) cores, ${SETTLE} s after ready, measured over ${SECONDS_MEASURED} s"
echo
echo "| process | CPU (% of a core) | RSS MB | PSS MB |"
echo "|---|---:|---:|---:|"
total=0; rss=0; pss=0
for m in "${MEMBERS[@]}"; do
  pid=${m#*=}; d=$(( $(ticks "$pid") - BEFORE[$m] )); r=$(sum_kb Rss "$pid"); p=$(sum_kb Pss "$pid")
  total=$((total + d)); rss=$((rss + r)); pss=$((pss + p))
  awk -v n="${m%%=*}" -v d="$d" -v t="$TCK" -v s="$SECONDS_MEASURED" -v r="$r" -v p="$p" \
    'BEGIN { printf "| %s | %.2f | %.1f | %.1f |\n", n, 100 * d / t / s, r / 1024, p / 1024 }'
done
awk -v d="$total" -v t="$TCK" -v s="$SECONDS_MEASURED" -v r="$rss" -v p="$pss" \
  'BEGIN { printf "| **all seven** | **%.2f** | **%.0f** | **%.0f** |\n", 100 * d / t / s, r / 1024, p / 1024 }'
