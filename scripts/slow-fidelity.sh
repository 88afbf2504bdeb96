#!/usr/bin/env bash
# Fidelity slow for a minute: every POST /bonus 2 s slower (probability 1), then the rule
# removes itself. Purchases must stay fast; bonuses go to the outbox and arrive later.
# Usage: scripts/slow-fidelity.sh [duration] [latency]
source "$(dirname "$0")/lib.sh"
DURATION="${1:-60s}"; LATENCY="${2:-2s}"
say "fidelity POST /bonus +$LATENCY for $DURATION"
fault set --service fidelity --route /bonus --method POST --kind latency --probability 1 --latency "$LATENCY" --window "$DURATION" --ttl "$DURATION"
