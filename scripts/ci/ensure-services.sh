#!/usr/bin/env bash
# Makes sure the servers the tests talk to answer on a bare Debian machine:
#   PostgreSQL on 127.0.0.1:5432, user `postgres` without a password from loopback
#              (the tests' default FTSHOP_TEST_POSTGRES_URL, postgres://postgres@127.0.0.1:5432/postgres);
#   Redis      on 127.0.0.1:6379, no persistence.
# Installs them from Debian's packages when missing (`apt-get update` once first), creates a
# PostgreSQL cluster when the package left none, opens loopback logins for `postgres`, starts
# both, and proves a real login (not only an open port) before it exits 0. Idempotent: a second
# run changes nothing and only re-checks.
#
# The loopback `trust` line is for a test server on a CI or development machine; it lets any
# local user connect as `postgres`, like the official image's POSTGRES_HOST_AUTH_METHOD=trust.
# Never run this on a machine whose PostgreSQL holds data you care about.
set -euo pipefail

pg_url=${FTSHOP_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
say() { echo "ensure-services: $*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update"
    sudo_if_needed apt-get update -qq
    apt_updated=1
  fi
  say "installing $*"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

wait_for() { # wait_for <description> <command...>: polls for up to 15 s
  local what=$1; shift
  for _ in $(seq 1 75); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "ensure-services: $what did not come up" >&2
  return 1
}

pg_login() { psql "$pg_url" -tAc 'SELECT 1' 2>/dev/null | grep -qx 1; }

# ---------------------------------------------------------------- PostgreSQL
if pg_login; then
  say "PostgreSQL already accepts $pg_url"
else
  # The server binaries, not only the client (a machine may carry psql alone).
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  command -v pg_lsclusters >/dev/null || apt_install postgresql-common
  version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  # A package installed in an image build (or with policy-rc.d) may have created no cluster.
  if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version main"; then
    say "creating PostgreSQL $version cluster 'main' on port 5432"
    sudo_if_needed pg_createcluster --port 5432 "$version" main >/dev/null
  fi
  conf_dir=/etc/postgresql/$version/main
  hba=$conf_dir/pg_hba.conf
  marker="# ftshop test server: loopback logins as postgres"
  if ! sudo_if_needed grep -qF "$marker" "$hba"; then
    say "allowing loopback logins as postgres in $hba"
    tmp=$(mktemp)
    {
      echo "$marker"
      echo "host all postgres 127.0.0.1/32 trust"
      echo "host all postgres ::1/128 trust"
      sudo_if_needed cat "$hba"
    } >"$tmp"
    sudo_if_needed install -m 0640 -o postgres -g postgres "$tmp" "$hba"
    rm -f "$tmp"
  fi
  # listen on loopback only; port 5432 whatever the cluster was created with
  sudo_if_needed sed -i -E \
    -e "s/^#?listen_addresses *=.*/listen_addresses = '127.0.0.1,::1'/" \
    -e "s/^#?port *=.*/port = 5432/" "$conf_dir/postgresql.conf"
  status=$(pg_lsclusters -h | awk -v v="$version" '$1==v && $2=="main" {print $4}')
  if [ "$status" = "online" ]; then
    sudo_if_needed pg_ctlcluster --skip-systemctl-redirect "$version" main restart
  else
    # A stale pid file from a killed server (a container or VM snapshot) blocks the start.
    sudo_if_needed pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
      { sleep 1; sudo_if_needed pg_ctlcluster --skip-systemctl-redirect "$version" main start; }
  fi
  wait_for "a PostgreSQL login at $pg_url" pg_login
  say "PostgreSQL $version accepts $pg_url"
fi

# ---------------------------------------------------------------- Redis
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }
if command -v redis-cli >/dev/null && redis_ping; then
  say "Redis already answers on 127.0.0.1:6379"
else
  command -v redis-server >/dev/null || apt_install redis-server
  command -v redis-cli >/dev/null || apt_install redis-tools
  if reachable 6379; then
    echo "ensure-services: something on 127.0.0.1:6379 does not answer PING like Redis" >&2
    exit 1
  fi
  # Not through systemd (CI machines have none): a daemon of its own, loopback only, no disk.
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/ftshop-test-redis.log
  wait_for "Redis on 127.0.0.1:6379" redis_ping
  say "Redis $(redis-server --version | awk '{print $3}' | sed 's/^v=//') answers on 127.0.0.1:6379"
fi
