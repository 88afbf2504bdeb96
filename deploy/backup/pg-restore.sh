#!/usr/bin/env bash
# Restores a pg-backup.sh dump: drops and recreates ftshop's schemas in one transaction, so a
# failed restore leaves the database as it was. Stop the services first.
#
#   deploy/backup/pg-restore.sh DATABASE_URL DUMP_FILE
set -euo pipefail

if [ "$#" -ne 2 ]; then
  echo "usage: $0 DATABASE_URL DUMP_FILE" >&2
  exit 2
fi
database_url=$1
dump=$2

if ! command -v pg_restore >/dev/null; then
  sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-client
fi

pg_restore --list "$dump" >/dev/null
pg_restore --dbname="$database_url" --clean --if-exists --no-owner --no-privileges \
  --single-transaction --exit-on-error "$dump"
echo "restored $dump" >&2
