#!/usr/bin/env bash
# Redis or PostgreSQL unreachable for a while.
#   compose: `docker compose pause redis|postgres` for N seconds (every service that uses it).
#   ftshop up: the suite must reach the server through scripts/tcp-proxy.py, which this
#   script cuts and restores, e.g. for Redis:
#     python3 scripts/tcp-proxy.py 16379 127.0.0.1:6379 --pidfile /tmp/ftshop-redis-proxy.pid &
#     REDIS_URL=redis://127.0.0.1:16379 ftshop up
#     scripts/dependency-unreachable.sh redis 30
# Usage: scripts/dependency-unreachable.sh redis|postgres [seconds] [proxy-pidfile]
source "$(dirname "$0")/lib.sh"
WHAT="${1:?redis or postgres}"; SECONDS_DOWN="${2:-30}"
PIDFILE="${3:-/tmp/ftshop-$WHAT-proxy.pid}"
case "$WHAT" in redis|postgres) ;; *) die "redis or postgres, not $WHAT" ;; esac
if [[ "$FTSHOP_TARGET" == compose ]]; then
  say "pausing $WHAT for ${SECONDS_DOWN}s"
  docker compose pause "$WHAT"
  trap 'docker compose unpause "$WHAT"' EXIT
  sleep "$SECONDS_DOWN"
  exit 0
fi
[[ -f "$PIDFILE" ]] || die "no proxy pidfile $PIDFILE: start scripts/tcp-proxy.py in front of $WHAT (see the header of this script)"
PROXY="$(cat "$PIDFILE")"
say "cutting $WHAT (proxy pid $PROXY) for ${SECONDS_DOWN}s"
kill -USR1 "$PROXY"
trap 'kill -USR2 "$PROXY" 2>/dev/null; echo "==> $WHAT reachable again"' EXIT
sleep "$SECONDS_DOWN"
