#!/usr/bin/env bash
# Restores a backup made by sqlite-backup.sh into a data dir. Stop the services first (`ftshop
# up` or every `ftshop serve` on that data dir): a running service would keep its old file open.
#
#   deploy/backup/sqlite-restore.sh BACKUP_DIR DATA_DIR
#
# Verifies the manifest and each file's integrity before touching DATA_DIR, then replaces each
# `<service>.db` and removes its stale `-wal`/`-shm` files (replaying an old WAL over a restored
# file would corrupt it).
set -euo pipefail
# Backups and databases hold customer data: every directory and file this script creates is
# owner-only from its creation (0700/0600), whatever the caller's umask.
umask 077

if [ "$#" -ne 2 ]; then
  echo "usage: $0 BACKUP_DIR DATA_DIR" >&2
  exit 2
fi
backup=$1
data_dir=$2

if ! command -v sqlite3 >/dev/null; then
  sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sqlite3
fi

[ -f "$backup/SHA256SUMS" ] || { echo "$backup has no SHA256SUMS: not a complete backup" >&2; exit 1; }
(cd "$backup" && sha256sum --quiet --check SHA256SUMS)

shopt -s nullglob
databases=("$backup"/*.db)
[ "${#databases[@]}" -gt 0 ] || { echo "no databases in $backup" >&2; exit 1; }
for db in "${databases[@]}"; do
  check=$(sqlite3 "$db" "PRAGMA integrity_check;")
  [ "$check" = "ok" ] || { echo "$(basename "$db") failed its integrity check: $check" >&2; exit 1; }
done

mkdir -p "$data_dir"
for db in "${databases[@]}"; do
  name=$(basename "$db")
  cp -- "$db" "$data_dir/.$name.restoring"
  rm -f -- "$data_dir/$name-wal" "$data_dir/$name-shm"
  mv -- "$data_dir/.$name.restoring" "$data_dir/$name"
  echo "restored $name" >&2
done
