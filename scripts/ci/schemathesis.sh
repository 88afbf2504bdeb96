#!/usr/bin/env bash
# Property-based API tests with Schemathesis against every service's own OpenAPI document:
# no 5xx, responses conform to the schema, status codes and content types are documented.
# Starts its own `ftshop up --faults off` on free ports (faults would make 5xx legitimate).
# Admin endpoints are exercised without a token (they must answer documented 401s): fuzzing
# them with the token could install a crash rule and take a process down mid-run.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="target/schemathesis-venv"
if [[ ! -x "$VENV/bin/schemathesis" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'schemathesis==4.32.5'
fi
BIN="${FTSHOP_BIN:-target/debug/ftshop}"
[[ -x "$BIN" ]] || cargo build -p ftshop
DIR="$(mktemp -d)"
"$BIN" up --data-dir "$DIR" --port-base 0 --faults off --logs files > "$DIR/up.out" 2>&1 &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 150); do [[ -f "$DIR/up.json" ]] && grep -q '"pid": [0-9]' "$DIR/up.json" && break; sleep 0.2; done
mapfile -t URLS < <(python3 -c 'import json,sys; [print(m["name"], m["url"]) for m in json.load(open(sys.argv[1]))["members"]]' "$DIR/up.json")
failed=0
for entry in "${URLS[@]}"; do
  read -r name url <<< "$entry"
  for _ in $(seq 150); do curl -sf "$url/health/live" > /dev/null && break; sleep 0.2; done
  echo "::group::schemathesis $name"
  if ! "$VENV/bin/schemathesis" run "$url/openapi.json" \
      --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance \
      --max-examples 30 --seed 1 --phases examples,coverage,fuzzing --request-timeout 5; then
    failed=1
    echo "schemathesis found problems in $name"
  fi
  echo "::endgroup::"
done
exit "$failed"
