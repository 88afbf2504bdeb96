#!/usr/bin/env bash
# Makes sure prometheus, promtool, alertmanager and amtool (and PyYAML, for the observability
# proof) are there, installing Debian's packages when they are missing (`apt-get update` only
# when an install is needed). The Debian packages would also start daemons on the default ports;
# a temporary policy-rc.d stops that: the observability proof starts its own Prometheus and
# Alertmanager on free ports.
set -euo pipefail

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian names the Alertmanager binary `prometheus-alertmanager`; upstream calls it `alertmanager`.
have_alertmanager() { command -v alertmanager >/dev/null 2>&1 || command -v prometheus-alertmanager >/dev/null 2>&1; }

missing=()
for tool in prometheus promtool amtool; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
have_alertmanager || missing+=(alertmanager)
packages=(prometheus prometheus-alertmanager)
# The observability proof rewrites configs with PyYAML.
if ! python3 -c 'import yaml' 2>/dev/null; then
  missing+=(python3-yaml)
  packages+=(python3-yaml)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Prometheus tools (missing: ${missing[*]})"
  sudo_if_needed apt-get update -qq
  # policy-rc.d 101 keeps the packages' init scripts from starting daemons on default ports.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee "$policy" >/dev/null
    sudo_if_needed chmod +x "$policy"
    created_policy=1
  fi
  status=0
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "${packages[@]}" || status=$?
  if [ "$created_policy" -eq 1 ]; then sudo_if_needed rm -f "$policy"; fi
  [ "$status" -eq 0 ] || exit "$status"
fi

for tool in prometheus promtool amtool; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool is still missing" >&2; exit 1; }
done
have_alertmanager || { echo "alertmanager is still missing" >&2; exit 1; }
prometheus --version 2>&1 | head -n1
"$(command -v alertmanager || command -v prometheus-alertmanager)" --version 2>&1 | head -n1

# --- Prometheus 3's promtool, for the rule tests -------------------------------------------
# compose.yaml ships Prometheus 3, whose range selectors are left-open (a sample exactly at the
# window's start is out), which changes `for:` and `*_over_time` results against Debian stable's
# 2.x. The rules are tested on both (scripts/ci/rule-tests.sh). Prometheus 3 is packaged by a
# newer Debian release (promtool is its own package there, depending on libc only): its .deb is fetched with apt-get download from a private apt state
# (this machine's sources and package database are not touched) and unpacked with dpkg-deb -x
# into $PROMETHEUS3_DIR; nothing is installed into /. Idempotent: a present promtool 3 is kept.
# `check-valid-until=no` on that one source: the mirror may be a dated snapshot whose Release
# file of a moving suite has expired (seen in the offline Prometheus image); signatures are
# still checked.
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROMETHEUS3_DIR=${PROMETHEUS3_DIR:-$ROOT/.tools/prometheus3}
PROMETHEUS3_SUITE=${PROMETHEUS3_SUITE:-forky}
promtool3="$PROMETHEUS3_DIR/root/usr/bin/promtool"
if ! "$promtool3" --version 2>/dev/null | grep -q 'version 3\.'; then
  echo "fetching Prometheus 3's promtool from Debian $PROMETHEUS3_SUITE into $PROMETHEUS3_DIR"
  apt_dir=$PROMETHEUS3_DIR/apt
  rm -rf "$PROMETHEUS3_DIR"
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$PROMETHEUS3_DIR/root"
  mirror=$(grep -hs -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | head -n 1 | awk '{print $2}')
  [ -n "$mirror" ] || mirror=$(grep -hs -E '^deb .*/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | head -n 1 | awk '{print $2}')
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg check-valid-until=no] ${mirror:-http://deb.debian.org/debian} $PROMETHEUS3_SUITE main" \
    >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Dir::State::Status=/dev/null
    -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
    -o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false)
  apt-get "${apt_opts[@]}" update -qq
  (cd "$PROMETHEUS3_DIR" && apt-get "${apt_opts[@]}" -o APT::Sandbox::User=root download -qq promtool)
  dpkg-deb -x "$PROMETHEUS3_DIR"/promtool_*.deb "$PROMETHEUS3_DIR/root"
  rm -rf "$apt_dir" "$PROMETHEUS3_DIR"/promtool_*.deb
fi
"$promtool3" --version 2>&1 | head -n1 | grep -q 'version 3\.' ||
  { echo "no Prometheus 3 promtool at $promtool3" >&2; exit 1; }
echo "promtool 3: $promtool3 ($("$promtool3" --version 2>&1 | head -n1))"
