#!/usr/bin/env bash
# Unit tests of the alerting and recording rules (prometheus/tests/*.yml) on BOTH Prometheus
# versions the project meets: Debian stable's 2.x (`promtool` on PATH, what CI and
# prometheus-local.yml run) and 3.x (what compose.yaml ships; range selectors are left-open
# there, which changes `for:` and `*_over_time` results). Installs both first
# (scripts/ci/install-prometheus.sh, idempotent). Takes a few seconds.
#
# The last line is "rule-tests: N passed, N failed" (one per Prometheus version).
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/ci/install-prometheus.sh >/dev/null
PROMTOOL3=${PROMETHEUS3_DIR:-$PWD/.tools/prometheus3}/root/usr/bin/promtool
passed=0 failed=0
for promtool in "$(command -v promtool)" "$PROMTOOL3"; do
  version=$("$promtool" --version 2>&1 | head -n 1 | awk '{print $3}')
  echo "== promtool $version ($promtool)"
  if "$promtool" check rules prometheus/rules/*.yml && "$promtool" test rules prometheus/tests/*.yml; then
    passed=$((passed + 1))
  else
    echo "rule tests FAILED on Prometheus $version" >&2
    failed=$((failed + 1))
  fi
done
echo "rule-tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
