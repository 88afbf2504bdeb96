#!/usr/bin/env bash
# Fault 4 of the exercise: Fidelity POST /bonus is 2 s slower, probability 0.1, for 30 s once drawn.
# Usage: scripts/fault-bonus-latency.sh [probability] [latency] [window] [ttl]
source "$(dirname "$0")/lib.sh"
P="${1:-0.1}"; LATENCY="${2:-2s}"; WINDOW="${3:-30s}"; TTL="${4:-10m}"
say "fidelity POST /bonus: +$LATENCY p=$P window=$WINDOW"
fault set --service fidelity --route /bonus --method POST --kind latency --probability "$P" --latency "$LATENCY" --window "$WINDOW" --ttl "$TTL"
