#!/usr/bin/env bash
# Backup of ftshop's PostgreSQL schemas (`ftshop_store`, `ftshop_ecommerce`, ...) with
# pg_dump's custom format: compressed, consistent (one snapshot), restorable selectively.
#
#   deploy/backup/pg-backup.sh DATABASE_URL OUTPUT_FILE
#
# Safe while the services run. Use a pg_dump at least as new as the server.
set -euo pipefail
# Backups and databases hold customer data: every directory and file this script creates is
# owner-only from its creation (0700/0600), whatever the caller's umask.
umask 077

if [ "$#" -ne 2 ]; then
  echo "usage: $0 DATABASE_URL OUTPUT_FILE" >&2
  exit 2
fi
database_url=$1
output=$2

if ! command -v pg_dump >/dev/null; then
  sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-client
fi

mkdir -p "$(dirname "$output")"
pg_dump --dbname="$database_url" --format=custom --schema='ftshop_*' --no-owner --no-privileges \
  --file="$output.partial"
# A dump pg_restore cannot list is no backup.
pg_restore --list "$output.partial" >/dev/null
mv "$output.partial" "$output"
echo "$output"
