#!/usr/bin/env bash
# A short chaos run as a CI gate: `ftshop chaos` starts its own suite on free ports (temporary
# data dir, default fault profile, fixed seed), runs 20 s of purchases with 10 VUs while it
# SIGKILLs a random process every 5 s, freezes both exchanges for 3 s and SIGKILLs ecommerce
# mid-load, then checks the invariants (no oversold unit, no lost acknowledged order, no
# double-credited bonus, the backlog drains). Any violation exits non-zero and fails the build;
# the evidence is printed and kept in $CHAOS_OUT (chaos.md, chaos.json), and the suite's data
# dir (databases, logs) is kept too.
#
# Time: about 35 s after the build (20 s of load, ~5 s to start, a few seconds to drain),
# bounded at CHAOS_TIMEOUT_SECS (default 60) for the run itself.
# Env: FTSHOP_BIN (binary to use; default: `cargo build --bin ftshop`, debug), CHAOS_OUT
# (default: a temporary directory), CHAOS_SEED (default 42), CHAOS_DURATION (default 20s),
# CHAOS_VUS (default 10).
set -euo pipefail
cd "$(dirname "$0")/../.."

TIMEOUT_SECS=${CHAOS_TIMEOUT_SECS:-60}
SEED=${CHAOS_SEED:-42}
DURATION=${CHAOS_DURATION:-20s}
VUS=${CHAOS_VUS:-10}
OUT=${CHAOS_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ftshop-chaos-smoke.XXXXXX")}

if [[ -z "${FTSHOP_BIN:-}" ]]; then
    cargo build --bin ftshop
    FTSHOP_BIN=target/debug/ftshop
fi

# The run starts and stops its own suite; nothing from the environment may redirect it.
unset FTSHOP_FAULTS FTSHOP_FAULT_SEED FTSHOP_ADMIN_TOKEN FTSHOP_DATA_DIR DATABASE_URL REDIS_URL

# SIGINT on timeout: ftshop chaos then continues anything it froze, turns the faults off,
# stops its suite and exits non-zero; SIGKILL 20 s later if it has not.
status=0
timeout --signal=INT --kill-after=20 "$TIMEOUT_SECS" \
    "$FTSHOP_BIN" chaos --duration "$DURATION" --vus "$VUS" --fault-seed "$SEED" \
    --drain-timeout 30s --reconcile-timeout 20s --out "$OUT" || status=$?

if [[ $status -eq 124 ]]; then
    echo "chaos smoke: did not finish within ${TIMEOUT_SECS} s" >&2
elif [[ $status -ne 0 ]]; then
    echo "chaos smoke: FAILED (exit $status); report: $OUT/chaos.md" >&2
else
    echo "chaos smoke: passed; report: $OUT/chaos.md"
fi
exit "$status"
