#!/usr/bin/env bash
# Installs what the control room's browser test needs, idempotently: Debian's `chromium` (apt;
# no browser download at test time: `playwright install` does not work here) and a Python venv
# with PyPI `playwright` (the client only), in target/browser-venv. Safe to rerun: each step is
# skipped when its result is already there. Needs root (CI runs as root) or sudo for apt.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="target/browser-venv"
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
fi
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import playwright' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'playwright==1.65.2'
fi
echo "browser: $(command -v chromium) ($(chromium --version 2>/dev/null || echo '?')); playwright in $VENV"
