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
