#!/usr/bin/env bash
# Online backup of the embedded SQLite databases (`<data-dir>/<service>.db`), safe while the
# services run: SQLite's backup API copies a consistent snapshot that includes the WAL.
#
#   deploy/backup/sqlite-backup.sh DATA_DIR BACKUP_ROOT
#
# Writes BACKUP_ROOT/ftshop-sqlite-<UTC timestamp>/ with one file per database, each checked
# with `PRAGMA integrity_check`, and a SHA256SUMS manifest; prints that directory's path last.
set -euo pipefail
# Backups and databases hold customer data: every directory and file this script creates is
# owner-only from its creation (0700/0600), whatever the caller's umask.
umask 077

if [ "$#" -ne 2 ]; then
  echo "usage: $0 DATA_DIR BACKUP_ROOT" >&2
  exit 2
fi
data_dir=$1
backup_root=$2

if ! command -v sqlite3 >/dev/null; then
  sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sqlite3
fi

shopt -s nullglob
databases=("$data_dir"/*.db)
if [ "${#databases[@]}" -eq 0 ]; then
  echo "no *.db files in $data_dir" >&2
  exit 1
fi

target="$backup_root/ftshop-sqlite-$(date -u +%Y%m%dT%H%M%SZ)"
partial="$target.partial"
mkdir -p "$partial"

for db in "${databases[@]}"; do
  name=$(basename "$db")
  # .timeout: wait for a writer's lock instead of failing; .backup: the online backup API.
  sqlite3 "$db" ".timeout 10000" ".backup '$partial/$name'"
  check=$(sqlite3 "$partial/$name" "PRAGMA integrity_check;")
  if [ "$check" != "ok" ]; then
    echo "backup of $name failed its integrity check: $check" >&2
    exit 1
  fi
  echo "backed up $name" >&2
done

(cd "$partial" && sha256sum -- *.db >SHA256SUMS)
# Only a complete backup gets its final name.
mv "$partial" "$target"
echo "$target"
