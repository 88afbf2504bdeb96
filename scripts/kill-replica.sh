#!/usr/bin/env bash
# SIGKILL one process (default store-2): no goodbye, no drain. ftshop up (or compose's restart
# policy) starts it again; in-flight work it had acknowledged must not be lost.
# Usage: scripts/kill-replica.sh [member]
source "$(dirname "$0")/lib.sh"
MEMBER="${1:-store-2}"
if [[ "$FTSHOP_TARGET" == compose ]]; then
  say "docker compose kill -s SIGKILL $MEMBER"
  docker compose kill -s SIGKILL "$MEMBER"
  exit 0
fi
PID="$(member_pid "$MEMBER")"
[[ -n "$PID" ]] || die "$MEMBER has no running process in up.json"
say "SIGKILL $MEMBER (pid $PID)"
kill -KILL "$PID"
