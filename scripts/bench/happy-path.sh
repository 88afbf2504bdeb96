#!/usr/bin/env bash
# Happy-path benchmark (no faults): POST /buy with ft=true and ft=false against the real suite
# (`ftshop up --faults off`, release build) on SQLite and on PostgreSQL + Redis, and against a
# bare axum endpoint (examples/bare_axum.rs), all in the same run. For each target it reports
# throughput and latency (wrk) beside the CPU each purchase costs: utime + stime of the suite's
# six service processes (from /proc/<pid>/stat, before and after the wrk run; wrk and the
# supervisor excluded), divided by the purchases answered 2xx, and the whole machine's busy time
# (/proc/stat, wrk and kernel threads included) per purchase. At the end, the suite at rest:
# CPU share of a core and RSS of all seven processes (six services + supervisor).
# Installs wrk and jq from Debian's packages when missing.
# Writes docs/benchmarks/runs/happy-path.txt (raw wrk output and the table).
#
# Usage: scripts/bench/happy-path.sh [duration] [connections]     e.g.  20s 32
# Environment:
#   BACKENDS      "sqlite postgres" (default); postgres needs the server of
#                 scripts/ci/ensure-services.sh (run it first) or PG_URL
#   PG_URL        admin URL of a PostgreSQL server (default postgres://postgres@127.0.0.1:5432/postgres);
#                 the run creates and drops its own database on it
#   REDIS_URL     Redis for the PostgreSQL run (default redis://127.0.0.1:6379/9)
#   WRK_THREADS   wrk threads (default 2)
#   IDLE_SECONDS  how long the idle suite is measured (default 20)
#   SKIP_BUILD=1  use the binaries already in target/release (FTSHOP_BIN: another ftshop binary)
#   WITH_BARE=0   skip the bare axum line
#   OUT           where the raw output and the table go (default docs/benchmarks/runs/happy-path.txt)
#   PORT_BASE     first port (default 24080; the run uses base..base+60 and base+100..base+160)
# Traffic goes to 127.0.0.1 only, bounded by `duration`.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-20s}"; CONNS="${2:-32}"
BACKENDS="${BACKENDS:-sqlite postgres}"
WRK_THREADS="${WRK_THREADS:-2}"
IDLE_SECONDS="${IDLE_SECONDS:-20}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
BENCH_REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/9}"
PORT_BASE="${PORT_BASE:-24080}"
OUT="${OUT:-docs/benchmarks/runs/happy-path.txt}"
export CARGO_INCREMENTAL=0

if ! command -v wrk >/dev/null || ! command -v jq >/dev/null; then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk jq
fi
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  # Two builds: built together, the example's dev-dependencies would change the features of
  # the binary's dependencies, hence its symbols, and build/symbol-order.ld (named for the
  # README's `cargo build --release`) would match it by wildcard only (build.rs).
  cargo build --release -p ftshop --bin ftshop
  cargo build --release -p ftshop --example bare_axum
fi
BIN="${FTSHOP_BIN:-./target/release/ftshop}"
BARE_BIN=./target/release/examples/bare_axum
export FTSHOP_CATALOG="$PWD/scripts/bench/catalog.json"
TCK=$(getconf CLK_TCK)
WORK="$(mktemp -d)"
UP=""; BARE=""; PG_DB=""
cleanup() {
  [[ -n "$UP" ]] && { kill -TERM "$UP" 2>/dev/null || true; wait "$UP" 2>/dev/null || true; }
  [[ -n "$BARE" ]] && { kill -TERM "$BARE" 2>/dev/null || true; wait "$BARE" 2>/dev/null || true; }
  if [[ -n "$PG_DB" ]]; then psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# cpu_ticks, ctx_switches, sum_kb: what /proc says of the suite's processes.
# shellcheck source=scripts/bench/proc.sh
source scripts/bench/proc.sh
suite_pids() { jq -r '.members[].pid // empty' "$1/up.json"; }
# name=pid of each service of the suite in data dir $1 (for the per-service breakdown).
suite_members() { jq -r '.members[] | select(.pid != null) | "\(.name)=\(.pid)"' "$1/up.json"; }
# per_service_ms <ok purchases> <name=pid>... with BEFORE_TICKS[pid] set: "name ms, name ms".
per_service_ms() {
  local ok=$1 member name pid out=() after; shift
  for member in "$@"; do
    name=${member%%=*}; pid=${member#*=}
    read -r u s <<< "$(cpu_ticks "$pid")"; after=$((u + s))
    out+=("$(awk -v n="$name" -v d=$((after - BEFORE_TICKS[$pid])) -v t="$TCK" -v ok="$ok" 'BEGIN { printf "%s %.3f", n, d * 1000 / t / ok }')")
  done
  local IFS=,; local joined="${out[*]}"; echo "${joined//,/, }"
}
declare -A BEFORE_TICKS
# utime + stime of every postgres and redis-server process (the PostgreSQL run's servers; a
# backend that exits during the run takes its ticks with it, so this is a lower bound, and
# cpu_ticks counts one that exits while being read as 0).
db_server_ticks() {
  local u s
  # shellcheck disable=SC2046 # one pid per word
  read -r u s <<< "$(cpu_ticks $(pgrep -x postgres; pgrep -x redis-server) 2>/dev/null)"
  echo $((u + s))
}
wait_ready() {
  local url=$1
  for _ in $(seq 300); do curl -sf "$url" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "error: $url never became ready" >&2; return 1
}

ROWS=()
# measure <label> <url> <ft> <pids...>: one wrk run, CPU of <pids> across it.
measure() {
  local label=$1 url=$2 ft=$3; shift 3
  local before after log="$WORK/wrk-${label//[^a-z0-9]/_}.txt" pid u s
  for pid in "$@"; do read -r u s <<< "$(cpu_ticks "$pid")"; BEFORE_TICKS[$pid]=$((u + s)); done
  before=$(cpu_ticks "$@"); local cs_before; cs_before=$(ctx_switches "$@")
  local machine_before; machine_before=$(machine_busy_ticks)
  local on_postgres=0; [[ "$label" == *postgres* ]] && on_postgres=1
  local db_before=0; ((on_postgres)) && db_before=$(db_server_ticks)
  FT="$ft" wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" --latency -s scripts/bench/buy.lua "$url" > "$log"
  after=$(cpu_ticks "$@"); local cs_after; cs_after=$(ctx_switches "$@")
  local machine_after; machine_after=$(machine_busy_ticks)
  local db_after=0; ((on_postgres)) && db_after=$(db_server_ticks)
  { echo "## $label"; cat "$log"; } >> "$WORK/raw.txt"
  local line; line=$(grep '^RESULT ' "$log")
  local req non2xx sockerr dur p50 p99
  req=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<< "$line")
  non2xx=$(sed -E 's/.*non2xx=([0-9]+).*/\1/' <<< "$line")
  sockerr=$(sed -E 's/.*socket_errors=([0-9]+).*/\1/' <<< "$line")
  dur=$(sed -E 's/.*duration_us=([0-9]+).*/\1/' <<< "$line")
  p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<< "$line")
  p99=$(sed -E 's/.*p99_us=([0-9]+).*/\1/' <<< "$line")
  read -r ub sb <<< "$before"; read -r ua sa <<< "$after"
  ROWS+=("$(awk -v l="$label" -v r="$req" -v n="$non2xx" -v e="$sockerr" -v d="$dur" -v p50="$p50" -v p99="$p99" \
    -v cs=$((cs_after - cs_before)) -v du=$((ua - ub)) -v ds=$((sa - sb)) -v t="$TCK" \
    -v m=$((machine_after - machine_before)) 'BEGIN {
      ok = r - n; if (ok < 1) ok = 1
      cpu = (du + ds) * 1000 / t / ok
      ker = (du + ds) > 0 ? 100 * ds / (du + ds) : 0
      printf "| %s | %.0f | %.1f | %.1f | %d | %.3f | %.0f %% | %.3f | %.1f |", l, ok / (d / 1e6), p50 / 1000, p99 / 1000, n + e, cpu, ker, m * 1000 / t / ok, cs / ok
    }')")
  if [[ ${#MEMBERS[@]} -gt 0 ]]; then
    local ok=$((req > non2xx ? req - non2xx : 1)) servers=""
    if ((on_postgres)); then
      servers=$(awk -v d=$((db_after - db_before)) -v t="$TCK" -v ok="$ok" \
        'BEGIN { printf "; database servers (postgres, redis-server: not in the CPU column) %.3f", d * 1000 / t / ok }')
    fi
    BREAKDOWN+=("| $label | $(per_service_ms "$ok" "${MEMBERS[@]}")$servers |")
  fi
}
MEMBERS=()
BREAKDOWN=()

# run_suite <backend> <port base>: starts the suite, warms it up, measures ft=true and ft=false,
# then the idle suite, and stops it.
run_suite() {
  local backend=$1 base=$2 dir="$WORK/$1" extra=()
  mkdir -p "$dir"
  if [[ "$backend" == postgres ]]; then
    PG_DB="ftshop_bench_$$"
    psql "$PG_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
    extra=(--database-url "${PG_URL%/*}/$PG_DB" --redis-url "$BENCH_REDIS_URL")
  fi
  "$BIN" up --data-dir "$dir" --port-base "$base" --faults off "${extra[@]}" > "$dir/up.out" 2>&1 &
  UP=$!
  wait_ready "http://127.0.0.1:$base/health/ready"
  local pids; mapfile -t pids < <(suite_pids "$dir")
  mapfile -t MEMBERS < <(suite_members "$dir")
  [[ ${#pids[@]} -eq 6 ]] || { echo "error: expected 6 service pids, got ${pids[*]}" >&2; exit 1; }
  # Warm-up: caches, connection pools, SQLite page cache; not measured.
  FT=true wrk -t1 -c4 -d3s -s scripts/bench/buy.lua "http://127.0.0.1:$base" > /dev/null
  measure "ft=true, $backend" "http://127.0.0.1:$base" true "${pids[@]}"
  measure "ft=false, $backend" "http://127.0.0.1:$base" false "${pids[@]}"
  # At rest: let the last requests' background work (outbox, WAL) settle first.
  sleep 3
  local before after rss pss
  before=$(cpu_ticks "${pids[@]}" "$UP")
  sleep "$IDLE_SECONDS"
  after=$(cpu_ticks "${pids[@]}" "$UP")
  rss=$(sum_kb Rss "${pids[@]}" "$UP")
  pss=$(sum_kb Pss "${pids[@]}" "$UP")
  read -r ub sb <<< "$before"; read -r ua sa <<< "$after"
  IDLE+=("$(awk -v b="$backend" -v t="$TCK" -v c=$((ua + sa - ub - sb)) -v s="$IDLE_SECONDS" -v rss="$rss" -v pss="$pss" \
    'BEGIN { printf "| %s | %.2f %% of a core | %.0f MB | %.0f MB |", b, 100 * c / t / s, rss / 1024, pss / 1024 }')")
  kill -TERM "$UP"; wait "$UP" 2>/dev/null || true; UP=""; MEMBERS=()
  if [[ -n "$PG_DB" ]]; then
    psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null; PG_DB=""
  fi
}

IDLE=()
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: > "$WORK/raw.txt"
i=0
for backend in $BACKENDS; do
  run_suite "$backend" $((PORT_BASE + 100 * i))
  i=$((i + 1))
done
# The floor: the HTTP stack alone (its own process's CPU per answer).
if [[ "${WITH_BARE:-1}" == 1 ]]; then
  BARE_PORT=$((PORT_BASE + 60))
  "$BARE_BIN" "127.0.0.1:$BARE_PORT" > /dev/null &
  BARE=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$BARE_PORT") 2>/dev/null && break; sleep 0.1; done
  FT=true wrk -t1 -c4 -d2s -s scripts/bench/buy.lua "http://127.0.0.1:$BARE_PORT" > /dev/null
  measure "bare axum" "http://127.0.0.1:$BARE_PORT" true "$BARE"
fi

{
  echo "# happy path, $(date -u +%FT%TZ), $(nproc) cores, load average before: $LOAD_BEFORE"
  echo "# wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency -s scripts/bench/buy.lua, faults off, release build"
  echo
  echo "| target | purchases/s (2xx) | p50 ms | p99 ms | errors | CPU ms / purchase | of it kernel | machine CPU ms / purchase | context switches / purchase |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "CPU per purchase: utime + stime of the six service processes (bare axum: its one process),"
  echo "before and after the wrk run, over the 2xx answers; wrk and the supervisor excluded."
  echo "Machine CPU: the busy time of the whole machine (/proc/stat) over the same run and answers:"
  echo "wrk, kernel threads (the page cache's writeback) and anything else running included."
  echo
  echo "| target | CPU ms / purchase by service |"
  echo "|---|---|"
  printf '%s\n' "${BREAKDOWN[@]}"
  echo
  echo "| suite at rest (${IDLE_SECONDS} s, 7 processes) | CPU | RSS summed | PSS summed |"
  echo "|---|---:|---:|---:|"
  printf '%s\n' "${IDLE[@]}"
  echo
  cat "$WORK/raw.txt"
} | tee "$OUT"
