#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer, starting the
# Debian-packaged servers when they are installed but stopped, installing them when missing.
set -euo pipefail

reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then sudo_if_needed apt-get update -qq; apt_updated=1; fi
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if ! reachable 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  sudo_if_needed pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
if ! reachable 6379; then
  command -v redis-server >/dev/null || apt_install redis-server
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

for i in $(seq 1 50); do
  if reachable 5432 && reachable 6379; then
    echo "PostgreSQL and Redis are reachable"
    exit 0
  fi
  sleep 0.2
done
echo "PostgreSQL or Redis is still unreachable on 127.0.0.1" >&2
exit 1
