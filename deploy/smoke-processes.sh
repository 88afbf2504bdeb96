#!/usr/bin/env bash
# Runs compose.yaml's topology as plain processes, without a container engine: store x2,
# exchange x2, fidelity and ecommerce (`ftshop serve`, the commands compose.yaml runs) on the
# real PostgreSQL and Redis, in a fresh database created for the run and dropped after it.
# Then a smoke test: a purchase, its idempotent replay, stock and points, and a purchase with
# one Store replica killed. Exits non-zero on any failure, printing the processes' logs.
#
# Environment (all optional):
#   FTSHOP_BIN           the binary (default: target/debug/ftshop, built when missing)
#   SMOKE_POSTGRES_URL   an admin connection (default: postgres://postgres@127.0.0.1:5432/postgres)
#   SMOKE_REDIS_URL      default: redis://127.0.0.1:6379
#   SMOKE_PORT_BASE      default: 28080 (ecommerce; store +1/+11, exchange +2/+12, fidelity +3)
set -euo pipefail

cd "$(dirname "$0")/.."

pg_admin=${SMOKE_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
redis_url=${SMOKE_REDIS_URL:-redis://127.0.0.1:6379}
base=${SMOKE_PORT_BASE:-28080}
bin=${FTSHOP_BIN:-${CARGO_TARGET_DIR:-target}/debug/ftshop}

log() { printf '[smoke] %s\n' "$*"; }
fail() { printf '[smoke] FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------------
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v redis-cli >/dev/null || missing+=(redis-tools)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ ! -x "$bin" ]; then
  log "building $bin"
  cargo build --bin ftshop
fi

# --- a fresh database, dropped on exit ----------------------------------------------------------
db="ftshop_smoke_$$_$(date +%s)"
# Exchange's keys get a prefix of their own, so runs sharing one Redis stay apart.
redis_prefix="ftshop-smoke-$$-$(date +%s):"
database_url="${pg_admin%/*}/$db"
work=$(mktemp -d)
pids=()
names=()

cleanup() {
  local status=$?
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [ "$status" -ne 0 ]; then
    for name in "${names[@]}"; do
      printf '\n----- %s (last 30 lines) -----\n' "$name" >&2
      tail -n 30 "$work/$name.log" >&2
    done
  fi
  psql "$pg_admin" -q -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
  redis-cli -u "$redis_url" --scan --pattern "$redis_prefix*" | while read -r key; do
    redis-cli -u "$redis_url" del "$key" >/dev/null
  done
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

psql "$pg_admin" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >/dev/null \
  || fail "cannot create database $db through $pg_admin"
log "database $db, ports from $base"

# --- the topology -------------------------------------------------------------------------------
# The same environment compose.yaml gives every ftshop container, with local addresses.
export DATABASE_URL="$database_url"
export REDIS_URL="$redis_url"
export FTSHOP_ADMIN_TOKEN="smoke-admin-token-$$"
export FTSHOP_FAULTS=off
export FTSHOP_HOST=127.0.0.1
export RUST_LOG=${RUST_LOG:-info}

ecommerce=$((base)); store1=$((base + 1)); store2=$((base + 11))
exchange1=$((base + 2)); exchange2=$((base + 12)); fidelity=$((base + 3))

# start NAME ROLE PORT [extra args...]: `ftshop serve ROLE --port PORT --instance NAME ...`
start() {
  local name=$1 role=$2 port=$3
  shift 3
  "$bin" serve "$role" --port "$port" --instance "$name" --data-dir "$work/data" "$@" \
    >"$work/$name.log" 2>&1 </dev/null &
  pids+=("$!")
  names+=("$name")
}

# wait_ready NAME PORT: polls /health/ready for up to 60 s.
wait_ready() {
  local name=$1 port=$2 deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null --max-time 2 "http://127.0.0.1:$port/health/ready"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$name is not ready on :$port within 60 s"
    sleep 0.2
  done
  log "$name ready on :$port"
}

# As in compose.yaml: store-2 starts once store-1 has migrated and seeded the shared schema,
# ecommerce once every downstream is ready.
start store-1 store "$store1"
wait_ready store-1 "$store1"
start store-2 store "$store2"
start exchange-1 exchange "$exchange1" --redis-key-prefix "$redis_prefix"
start exchange-2 exchange "$exchange2" --redis-key-prefix "$redis_prefix"
start fidelity fidelity "$fidelity"
wait_ready store-2 "$store2"
wait_ready exchange-1 "$exchange1"
wait_ready exchange-2 "$exchange2"
wait_ready fidelity "$fidelity"
start ecommerce ecommerce "$ecommerce" \
  --store-url "http://127.0.0.1:$store1,http://127.0.0.1:$store2" \
  --exchange-url "http://127.0.0.1:$exchange1,http://127.0.0.1:$exchange2" \
  --fidelity-url "http://127.0.0.1:$fidelity"
wait_ready ecommerce "$ecommerce"

# --- smoke --------------------------------------------------------------------------------------
api="http://127.0.0.1:$ecommerce"
user="smoke-$$"

stock() { curl -fsS "http://127.0.0.1:$store2/product?product=1" | jq -r '.stock'; }
buy() { # buy KEY -> prints "STATUS BODY"
  curl -sS -o "$work/buy.json" -w '%{http_code}' --max-time 10 -X POST "$api/buy" \
    -H 'content-type: application/json' -H "Idempotency-Key: $1" \
    -d "{\"product\":\"1\",\"user\":\"$user\",\"ft\":true}"
}

before=$(stock)
status=$(buy "smoke-$$-1")
[ "$status" = 200 ] || fail "POST /buy answered $status: $(cat "$work/buy.json")"
order=$(jq -r '.order_id' "$work/buy.json")
points=$(jq -r '.bonus.points' "$work/buy.json")
[ -n "$order" ] && [ "$order" != null ] || fail "no order_id in $(cat "$work/buy.json")"
log "bought: order $order, total $(jq -r '.total' "$work/buy.json") BRL, $points points"

status=$(buy "smoke-$$-1")
[ "$status" = 200 ] || fail "the replay answered $status"
[ "$(jq -r '.order_id' "$work/buy.json")" = "$order" ] || fail "the replay made another order"
after=$(stock)
[ "$after" -eq $((before - 1)) ] || fail "stock went from $before to $after (expected one sale)"
log "replay: same order, stock $before -> $after"

deadline=$((SECONDS + 30))
until [ "$(curl -fsS "http://127.0.0.1:$fidelity/balance/$user" | jq -r '.points')" = "$points" ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "fidelity never credited $points points to $user"
  sleep 0.2
done
log "fidelity: $user has $points points"

schemas=$(psql "$database_url" -Atq -c \
  "SELECT count(*) FROM information_schema.schemata WHERE schema_name IN ('ftshop_store','ftshop_ecommerce','ftshop_fidelity')")
[ "$schemas" -eq 3 ] || fail "expected the services' schemas in $db, found $schemas"
log "PostgreSQL: store, ecommerce and fidelity schemas in $db"

keys=$(redis-cli -u "$redis_url" --scan --pattern "$redis_prefix*" | wc -l)
[ "$keys" -gt 0 ] || fail "Exchange wrote no rate to Redis under $redis_prefix"
log "Redis: Exchange shares its rate ($(redis-cli -u "$redis_url" --scan --pattern "$redis_prefix*" | head -n1))"

# Store's first replica dies; the purchase fails over to the second.
kill -KILL "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
status=$(buy "smoke-$$-2")
[ "$status" = 200 ] || fail "with store-1 down, POST /buy answered $status: $(cat "$work/buy.json")"
log "store-1 killed: bought $(jq -r '.order_id' "$work/buy.json") through store-2"

log "OK"
