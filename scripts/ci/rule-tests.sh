#!/usr/bin/env bash
# Unit tests of the alerting and recording rules (prometheus/tests/*.yml) on BOTH Prometheus
# versions the project meets: Debian stable's 2.x (`promtool` on PATH, what CI and
# prometheus-local.yml run) and 3.x (what compose.yaml ships; range selectors are left-open
# there, which changes `for:` and `*_over_time` results). Installs both first
# (scripts/ci/install-prometheus.sh, idempotent). Takes a few seconds.
#
# Then checks every alert's runbook link (base URL + an anchor docs/runbooks.md has), and the
# Alertmanager configs: valid, the null-receiver variant up to date, routing, and inhibition on
# a real Alertmanager (scripts/ci/alertmanager-test.py). About 10 s in all.
# The last line is "rule-tests: N passed, N failed" (one per Prometheus version, links, Alertmanager).
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
# Runbook links: one configured base URL (prometheus.yml's external label runbook_base, an
# absolute URL) plus an anchor that docs/runbooks.md has, for every alert.
if python3 - <<'PY'; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
import re, sys, yaml
bad = []
for cfg in ("prometheus/prometheus.yml", "prometheus/prometheus-local.yml"):
    base = yaml.safe_load(open(cfg))["global"].get("external_labels", {}).get("runbook_base", "")
    if not re.match(r"https?://", base):
        bad.append(f"{cfg}: external_labels.runbook_base must be an absolute URL, got {base!r}")
doc = open("docs/runbooks.md").read()
anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", doc, re.M)}
for group in yaml.safe_load(open("prometheus/rules/ftshop.yml"))["groups"]:
    for rule in group["rules"]:
        if "alert" not in rule:
            continue
        want = "{{ $externalLabels.runbook_base }}#" + rule["alert"].lower()
        got = rule.get("annotations", {}).get("runbook_url")
        if got != want:
            bad.append(f"{rule['alert']}: runbook_url {got!r}, want {want!r}")
        if rule["alert"].lower() not in anchors:
            bad.append(f"{rule['alert']}: docs/runbooks.md has no section #{rule['alert'].lower()}")
print("\n".join(bad) or "runbook links: every alert's runbook_url is runbook_base + an anchor of docs/runbooks.md")
sys.exit(1 if bad else 0)
PY
# Alertmanager: both configs valid, the null variant generated from the Slack one, routing
# (critical pages, info goes to the chaos receiver), inhibition on a real Alertmanager.
ALERTMANAGER=$(command -v alertmanager || command -v prometheus-alertmanager)
if python3 scripts/alertmanager-null-config.py --check &&
  amtool check-config prometheus/alertmanager.yml prometheus/alertmanager-null.yml >/dev/null &&
  amtool config routes test --config.file=prometheus/alertmanager.yml \
    --verify.receivers=slack-critical severity=critical alertname=FtshopServiceDown service=store >/dev/null &&
  amtool config routes test --config.file=prometheus/alertmanager.yml \
    --verify.receivers=slack-warnings severity=warning alertname=FtshopLowStock service=store >/dev/null &&
  amtool config routes test --config.file=prometheus/alertmanager.yml \
    --verify.receivers=chaos-lab severity=info alertname=FtshopChaosFaultInjected service=store >/dev/null &&
  python3 scripts/ci/alertmanager-test.py "$ALERTMANAGER" prometheus/alertmanager-null.yml; then
  passed=$((passed + 1))
else
  echo "Alertmanager checks FAILED" >&2
  failed=$((failed + 1))
fi
echo "rule-tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
