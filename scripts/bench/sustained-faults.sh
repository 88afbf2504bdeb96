#!/usr/bin/env bash
# The sustained-fault benchmark (issue 15): for each load shape, a fresh `ftshop up` under the
# default fault profile (fixed seed; the faults stay on for the whole run and while the 202s are
# followed) and `ftshop load --ft on`, which follows every 202 to its end and reports completion
# times against the promise, refusals, the sync share and sales/s beside the analytic cap.
# Results go to docs/benchmarks/runs/sustained/<name>/ with the machine's load average.
#
# Usage: scripts/bench/sustained-faults.sh DURATION SHAPE...
#   SHAPE is VUS:THINK, e.g.  60s 10:0s 100:1s..4s 1000:1s..4s
# Env: STORES (default 2; other values need `ftshop up --stores`), PORT_BASE (21080), SEED (42),
#      PROMISE (60s), FTSHOP_BIN.
# Traffic goes to 127.0.0.1 only; each run is bounded by DURATION plus the follow timeout.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:?duration, e.g. 60s}"; shift
OUT="${OUT_DIR:-docs/benchmarks/runs/sustained}"
BIN="${FTSHOP_BIN:-./target/release/ftshop}"
[[ -x "$BIN" ]] || cargo build --release -p ftshop
mkdir -p "$OUT"
export FTSHOP_CATALOG="$PWD/scripts/bench/catalog.json"
PORT_BASE="${PORT_BASE:-21080}"
SEED="${SEED:-42}"
STORES="${STORES:-2}"
PROMISE="${PROMISE:-60s}"

UP_PID=""
cleanup() { [[ -n "$UP_PID" ]] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null; true; }
trap cleanup EXIT
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Store replica k (from 1) listens on base + 1 + 10 (k - 1), as `ftshop up --stores` places it.
store_offsets=()
for k in $(seq 0 $((STORES - 1))); do store_offsets+=($((1 + 10 * k))); done

for shape in "$@"; do
  vus="${shape%%:*}"; think="${shape#*:}"
  name="${vus}vus-think-${think//./}-n${STORES}"
  # ecommerce, fidelity, exchange-2 and every Store replica
  for offset in 0 3 12 "${store_offsets[@]}"; do
    if port_busy $((PORT_BASE + offset)); then
      echo "port $((PORT_BASE + offset)) is in use: stop whatever listens there (or set PORT_BASE)" >&2
      exit 1
    fi
  done
  dir="$(mktemp -d)"
  stores_flag=()
  [[ "$STORES" != 2 ]] && stores_flag=(--stores "$STORES")
  "$BIN" up --data-dir "$dir" --port-base "$PORT_BASE" --faults default --fault-seed "$SEED" \
    "${stores_flag[@]}" > "$dir/up.out" 2>&1 &
  UP_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT_BASE/health/ready" > /dev/null 2>&1 && break; sleep 0.2
  done
  mkdir -p "$OUT/$name"
  echo "== $name: $vus VUs, think $think, $DURATION, default faults, seed $SEED, N=$STORES"
  { echo "before: $(cat /proc/loadavg)"; } > "$OUT/$name/loadavg.txt"
  "$BIN" load --url "http://127.0.0.1:$PORT_BASE" --vus "$vus" --duration "$DURATION" \
    --think "$think" --ft on --promise "$PROMISE" --stores "$STORES" --out "$OUT/$name" \
    > "$OUT/$name.stdout" 2>&1 || true
  echo "after: $(cat /proc/loadavg)" >> "$OUT/$name/loadavg.txt"
  # Each Store replica's units sold and `/sell` error windows opened, to compare the observed
  # sales per window with the formula's 1/p - 1 (docs/benchmarks/sustained-faults.md).
  for k in "${!store_offsets[@]}"; do
    port=$((PORT_BASE + store_offsets[k]))
    curl -sf "http://127.0.0.1:$port/metrics" \
      | grep -E '^(store_sales_total|chaos_fault_windows_total|chaos_faults_injected_total)\{' \
      | grep -E 'outcome="sold"|route="/sell"' | sed "s/^/store-$((k + 1)) /"
  done > "$OUT/$name/store-windows.txt" || true
  kill -TERM "$UP_PID"; wait "$UP_PID" 2>/dev/null || true
  UP_PID=""
  rm -rf "$dir"
  grep -E 'success\*\*|latency p(50|95|99) \(all\)|sync share|202 (completion|ended|followed)|sales/s|refused|^\| 5xx|timeouts' "$OUT/$name.stdout" || true
done
