#!/usr/bin/env bash
# A short chaos run as a CI gate: `ftshop chaos` starts its own suite on free ports (temporary
# data dir, default fault profile, fixed seed), runs 20 s of purchases with 10 VUs while it
# SIGKILLs a random process every 5 s, freezes both exchanges for 3 s and SIGKILLs ecommerce
# mid-load, then checks the invariants (no oversold unit, no lost acknowledged order, no
# double-credited bonus, the backlog drains). Any violation exits non-zero and fails the build;
# the evidence is printed and kept in $CHAOS_OUT (chaos.md, chaos.json), and the suite's data
# dir (databases, logs) is kept too.
#
# Then, as root (CI is), a second, storage run: `--scenarios disk-full,db-file-gone` for 12 s
# with 8 VUs: the run mounts a 64 MiB tmpfs as its data dir, fills it but 384 KiB at 4 s and
# 8 s for 2 s each, renames store.db away for 2 s at 4.8 s, and checks the same invariants
# (report in $CHAOS_OUT/storage). Not root: skipped with a message; CHAOS_STORAGE=0 skips it.
#
# Time: about 35 s after the build (20 s of load, ~5 s to start, a few seconds to drain) plus
# about 25 s for the storage run, each bounded at CHAOS_TIMEOUT_SECS (default 60).
# Env: FTSHOP_BIN (binary to use; default: `cargo build --bin ftshop`, debug), CHAOS_OUT
# (default: a temporary directory), CHAOS_SEED (default 42), CHAOS_DURATION (default 20s),
# CHAOS_VUS (default 10), CHAOS_STORAGE (default 1).
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
[[ $status -eq 0 ]] || exit "$status"

if [[ "${CHAOS_STORAGE:-1}" == 0 ]]; then
    echo "chaos smoke (storage): skipped (CHAOS_STORAGE=0)"
elif [[ $(id -u) -ne 0 ]]; then
    echo "chaos smoke (storage): skipped: mounting its tmpfs needs root"
else
    # No --data-dir: the run mounts its own tmpfs (it never fills a filesystem over 1 GiB).
    timeout --signal=INT --kill-after=20 "$TIMEOUT_SECS" \
        "$FTSHOP_BIN" chaos --scenarios disk-full,db-file-gone --duration 12s --vus 8 \
        --disk-full-every 4s --disk-full-for 2s --db-gone-for 2s --fault-seed "$SEED" \
        --drain-timeout 30s --reconcile-timeout 20s --out "$OUT/storage" || status=$?
    if [[ $status -eq 124 ]]; then
        echo "chaos smoke (storage): did not finish within ${TIMEOUT_SECS} s" >&2
    elif [[ $status -ne 0 ]]; then
        echo "chaos smoke (storage): FAILED (exit $status); report: $OUT/storage/chaos.md" >&2
    else
        echo "chaos smoke (storage): passed; report: $OUT/storage/chaos.md"
    fi
fi
exit "$status"
