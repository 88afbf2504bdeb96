#!/usr/bin/env bash
# The published ft on/off benchmark: for each number of virtual users, a fresh `ftshop up` under
# the default fault profile (fixed seed) and `ftshop load` with think time 1-4 s, once with
# ft=true and once with ft=false (each on its own fresh suite, so one run's backlog never
# touches the other). After the ft=true run the faults are cleared and the time until every
# deferred order and bonus has drained is measured. Results go to docs/benchmarks/runs/.
#
# Usage: scripts/bench/ft-under-faults.sh [duration] [vus...]     e.g.  60s 10 100 1000
# Traffic goes to 127.0.0.1 only; each run is bounded by `duration`.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION="${1:-60s}"; shift || true
VUS=("${@:-10 100}")
read -r -a VUS <<< "${VUS[*]}"
OUT="docs/benchmarks/runs"
BIN="${FTSHOP_BIN:-./target/release/ftshop}"
[[ -x "$BIN" ]] || cargo build --release -p ftshop
mkdir -p "$OUT"
# A catalog with a million units of everything: out-of-stock answers would blur the rates.
export FTSHOP_CATALOG="$PWD/scripts/bench/catalog.json"
PORT_BASE="${PORT_BASE:-21080}"
SEED="${SEED:-42}"

UP_PID=""
cleanup() { [[ -n "$UP_PID" ]] && kill -TERM "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null; true; }
trap cleanup EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

run() { # vus ft
  local vus="$1" ft="$2" dir; dir="$(mktemp -d)"
  # A suite left on these ports would take the traffic and make the figures meaningless.
  for offset in 0 1 2 3 11 12; do
    if port_busy $((PORT_BASE + offset)); then
      echo "port $((PORT_BASE + offset)) is in use: stop whatever listens there (or set PORT_BASE)" >&2
      exit 1
    fi
  done
  "$BIN" up --data-dir "$dir" --port-base "$PORT_BASE" --faults default --fault-seed "$SEED" \
    > "$dir/up.out" 2>&1 &
  local up=$!
  UP_PID=$up
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT_BASE/health/ready" > /dev/null 2>&1 && break; sleep 0.2
  done
  local name="${vus}vus-ft-${ft}"
  "$BIN" load --url "http://127.0.0.1:$PORT_BASE" --vus "$vus" --duration "$DURATION" \
    --think 1s..4s --ft "$ft" --out "$OUT/$name" > "$OUT/$name.stdout" 2>&1 || true
  if [[ "$ft" == on ]]; then
    local cleared; cleared=$(date +%s.%N)
    # A crashed Exchange restarts with the start profile: clear until every process has answered.
    for _ in $(seq 60); do
      "$BIN" fault clear --data-dir "$dir" > /dev/null 2>&1 && break
      sleep 0.5
    done
    local drained=""
    for _ in $(seq 1200); do
      local backlog pending
      backlog=$(curl -sf "http://127.0.0.1:$PORT_BASE/backlog" || echo '{}')
      pending=$(curl -sf "http://127.0.0.1:$((PORT_BASE + 3))/bonus/pending" || echo '{}')
      if python3 -c 'import json,sys; b=json.loads(sys.argv[1]); p=json.loads(sys.argv[2]); sys.exit(0 if b.get("pending_orders")==0 and b.get("outbox_bonuses")==0 and p.get("depth")==0 else 1)' "$backlog" "$pending"; then
        drained=$(python3 -c "import time; print(f'{time.time()-$cleared:.1f}')"); break
      fi
      sleep 0.5
    done
    echo "{\"drain_seconds\": ${drained:-null}}" > "$OUT/$name/drain.json"
    echo "$name: drained in ${drained:-NOT within 600} s after faults stopped"
  fi
  kill -TERM "$up"; wait "$up" 2>/dev/null || true
  UP_PID=""
  cp "$dir/up.out" "$OUT/$name/up.out" 2>/dev/null || true
  rm -rf "$dir"
}

for vus in "${VUS[@]}"; do
  for ft in on off; do
    echo "== $vus VUs, ft=$ft, $DURATION, default faults, seed $SEED"
    run "$vus" "$ft"
    tail -n +1 "$OUT/${vus}vus-ft-${ft}.stdout" | grep -E '^\| \*\*success|requests/s|latency p(50|95|99) \(all\)' || true
  done
done
