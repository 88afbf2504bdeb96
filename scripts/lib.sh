# Shared helpers for the scenario scripts. Source it; do not run it.
#
# Works against `ftshop up` (default: reads ${FTSHOP_DATA_DIR:-./data}/up.json) or against
# `docker compose up` (set FTSHOP_TARGET=compose; processes on the default ports of DESIGN.md,
# admin token from FTSHOP_ADMIN_TOKEN or .env).
set -euo pipefail

FTSHOP_TARGET="${FTSHOP_TARGET:-up}"
FTSHOP_DATA_DIR="${FTSHOP_DATA_DIR:-./data}"
export FTSHOP_DATA_DIR

die() { echo "error: $*" >&2; exit 1; }
say() { echo "==> $*"; }

# The ftshop binary: $FTSHOP_BIN, then a release build, a debug build, then PATH.
ftshop_bin() {
  if [[ -n "${FTSHOP_BIN:-}" ]]; then echo "$FTSHOP_BIN"; return; fi
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  for candidate in "$root/target/release/ftshop" "$root/target/debug/ftshop"; do
    [[ -x "$candidate" ]] && { echo "$candidate"; return; }
  done
  command -v ftshop >/dev/null 2>&1 && { command -v ftshop; return; }
  die "no ftshop binary: run 'cargo build --release' or set FTSHOP_BIN"
}

# Arguments that point `ftshop fault` at the running suite.
fault_targets() {
  if [[ "$FTSHOP_TARGET" == compose ]]; then
    if [[ -z "${FTSHOP_ADMIN_TOKEN:-}" && -f .env ]]; then
      FTSHOP_ADMIN_TOKEN="$(grep -E '^FTSHOP_ADMIN_TOKEN=' .env | cut -d= -f2- || true)"
      export FTSHOP_ADMIN_TOKEN
    fi
    local port
    for port in 8080 8081 8091 8082 8092 8083; do
      printf -- '--url\nhttp://127.0.0.1:%s\n' "$port"
    done
  else
    [[ -f "$FTSHOP_DATA_DIR/up.json" ]] \
      || die "$FTSHOP_DATA_DIR/up.json not found: start 'ftshop up' first (or set FTSHOP_DATA_DIR / FTSHOP_TARGET=compose)"
    printf -- '--data-dir\n%s\n' "$FTSHOP_DATA_DIR"
  fi
}

# ftshop fault <action> [args...] against the running suite.
fault() {
  local action="$1"; shift
  local targets=()
  mapfile -t targets < <(fault_targets)
  "$(ftshop_bin)" fault "$action" "${targets[@]}" "$@"
}

# pid of a member (`store-2`) from up.json.
member_pid() {
  python3 -c 'import json,sys; m=[m for m in json.load(open(sys.argv[1]))["members"] if m["name"]==sys.argv[2]]; print(m[0]["pid"] if m and m[0]["pid"] else "")' \
    "$FTSHOP_DATA_DIR/up.json" "$1"
}

# Names of the members of a service (`exchange` -> exchange-1 exchange-2).
members_of() {
  python3 -c 'import json,sys; print(" ".join(m["name"] for m in json.load(open(sys.argv[1]))["members"] if m["service"]==sys.argv[2]))' \
    "$FTSHOP_DATA_DIR/up.json" "$1"
}
