#!/usr/bin/env bash
# Creates .env for `docker compose` from .env.example, with a fresh random value for every
# required secret (admin token, PostgreSQL and Grafana passwords). Never overwrites an
# existing .env. Prints where the secrets went, never the secrets.
#
#   deploy/init-env.sh [ENV_FILE]        (default: .env at the repository root)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
target=${1:-$root/.env}

if [ -e "$target" ]; then
  echo "$target already exists; leaving it as it is" >&2
  exit 0
fi

# Hex from the kernel's CSPRNG: URL-safe, so the password can sit in DATABASE_URL as is.
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

umask 077
sed -e "s/^FTSHOP_ADMIN_TOKEN=\$/FTSHOP_ADMIN_TOKEN=$(random_hex 32)/" \
    -e "s/^POSTGRES_PASSWORD=\$/POSTGRES_PASSWORD=$(random_hex 16)/" \
    -e "s/^GRAFANA_ADMIN_PASSWORD=\$/GRAFANA_ADMIN_PASSWORD=$(random_hex 16)/" \
    "$root/.env.example" >"$target.tmp"
mv "$target.tmp" "$target"
echo "wrote $target (mode 0600) with a new admin token and passwords; Grafana's admin password is GRAFANA_ADMIN_PASSWORD there" >&2
