#!/usr/bin/env bash
# Fault 2 of the exercise: Exchange GET /exchange crashes the process, probability 0.1. The
# supervisor (ftshop up, or compose's restart policy) starts it again with its start profile.
# Usage: scripts/fault-exchange-crash.sh [probability] [instance]
source "$(dirname "$0")/lib.sh"
P="${1:-0.1}"; INSTANCE="${2:-}"
args=(--service exchange --route /exchange --method GET --kind crash --probability "$P")
[[ -n "$INSTANCE" ]] && args+=(--instance "$INSTANCE")
say "exchange GET /exchange: crash p=$P ${INSTANCE:+(only $INSTANCE)}"
fault set "${args[@]}"
