#!/bin/sh
# `redis-server ARGS`: protected mode off and every interface, before ARGS (which may override).
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server --bind '* -::*' --protected-mode no "$@"
fi
exec "$@"
