#!/usr/bin/env bash
# Fault 3 of the exercise: Store POST /sell answers 500, probability 0.1, and once drawn every
# request fails for 5 s.
# Usage: scripts/fault-sell-error.sh [probability] [window] [ttl]
source "$(dirname "$0")/lib.sh"
P="${1:-0.1}"; WINDOW="${2:-5s}"; TTL="${3:-10m}"
say "store POST /sell: error p=$P window=$WINDOW"
fault set --service store --route /sell --method POST --kind error --probability "$P" --window "$WINDOW" --ttl "$TTL"
