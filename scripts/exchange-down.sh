#!/usr/bin/env bash
# Exchange down entirely: both replicas frozen (SIGSTOP; with compose, `docker compose pause`)
# for a while, so connections hang like a dead host, then resumed. Ecommerce must answer with
# its last-known-good rate and say so in `degraded`.
# Usage: scripts/exchange-down.sh [seconds]
source "$(dirname "$0")/lib.sh"
SECONDS_DOWN="${1:-60}"
if [[ "$FTSHOP_TARGET" == compose ]]; then
  say "pausing exchange-1 and exchange-2 for ${SECONDS_DOWN}s"
  docker compose pause exchange-1 exchange-2
  trap 'docker compose unpause exchange-1 exchange-2' EXIT
  sleep "$SECONDS_DOWN"
  exit 0
fi
pids=()
for member in $(members_of exchange); do
  pid="$(member_pid "$member")"
  [[ -n "$pid" ]] && pids+=("$pid")
done
[[ ${#pids[@]} -gt 0 ]] || die "no exchange process running"
say "freezing exchange (pids ${pids[*]}) for ${SECONDS_DOWN}s"
kill -STOP "${pids[@]}"
trap 'kill -CONT "${pids[@]}" 2>/dev/null; echo "==> exchange resumed"' EXIT
sleep "$SECONDS_DOWN"
