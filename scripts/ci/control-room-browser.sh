#!/usr/bin/env bash
# The control room in a real browser: installs Debian's chromium and playwright (idempotent,
# scripts/ci/install-browser.sh), then runs tests/browser/control_room.py against a real
# `ftshop up` on free ports: six processes up, a fault set from the page, a purchase whose story
# names the failover, a process killed from the page and restarted, a 20 s load with ft on and
# off side by side, the invariants, 401 without the token, the page's CPU cost (< 2 % of a
# core), screenshots at 1280x800 and 390x844.
#
# Time: about 2.5 minutes after the build (100 s of CPU measurement, 20 s of load, a few seconds
# of drain); the first run also installs chromium (~1 min).
# Env: FTSHOP_BIN (default: `cargo build --bin ftshop`, debug), CONTROL_ROOM_OUT (screenshots;
# default target/control-room-browser).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/ci/install-browser.sh
if [[ -z "${FTSHOP_BIN:-}" ]]; then
  cargo build --bin ftshop
  FTSHOP_BIN=target/debug/ftshop
fi
OUT="${CONTROL_ROOM_OUT:-target/control-room-browser}"
unset FTSHOP_FAULTS FTSHOP_FAULT_SEED FTSHOP_ADMIN_TOKEN FTSHOP_DATA_DIR DATABASE_URL REDIS_URL FTSHOP_CONTROL_PORT
timeout --kill-after=20 300 target/browser-venv/bin/python tests/browser/control_room.py "$FTSHOP_BIN" "$OUT"
echo "control room browser test: passed; screenshots in $OUT"
