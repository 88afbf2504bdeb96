#!/usr/bin/env bash
# Proves the observability stack against the real suite, not just that its files parse:
#
#  1. static checks: `promtool check rules`, `promtool test rules` (unit tests of every alert),
#     `promtool check config`, `amtool check-config`, `amtool config routes test` (routing),
#     dashboard JSON sanity;
#  2. starts `ftshop up` on free ports with the default fault profile, a Prometheus scraping
#     every process each second with the project's rules, an Alertmanager built from
#     prometheus/alertmanager.yml (same routes, grouping and inhibition; the Slack receivers
#     replaced by a webhook to a local sink) and the sink itself (python http.server);
#     then, before any purchase, checks that every dashboard panel shows its value (0 included),
#     but for quantiles and ratios, which have none without traffic (promql-check.py --fresh);
#  3. drives ~60 s of purchases, forcing a 2 s latency fault on Fidelity /bonus halfway;
#  4. runs EVERY dashboard panel query and, for EVERY rule, every metric selector in its
#     expression through Prometheus' HTTP API, and fails listing any that returns no series.
#     An alert condition is legitimately empty while things are healthy, so for rules it is the
#     selectors underneath (do the series the rule reads exist?) that must return data; the
#     full conditions are evaluated and reported too;
#  5. checks a purchase's trace: the traceparent and x-request-id sent to ecommerce appear in
#     Fidelity's log, and its spans reach an OTLP endpoint (the sink) linked parent to child;
#  6. waits until the injected fault's alert (FtshopChaosFaultInjected, fidelity /bonus latency)
#     reaches the webhook sink through Alertmanager's chaos receiver, with an absolute runbook
#     link, and FtshopHighLatencyP99 for that route reaches Alertmanager inhibited by it;
#  7. pushes synthetic alerts to check inhibition (Store down silences a Store breaker alert,
#     not an Exchange one).
#
# Rules keep their expressions, but their `for:` hold-downs are shortened to 5 s in the copy
# Prometheus loads here, so the alert can fire within the run (the real hold-downs are covered
# by the promtool unit tests). Everything listens on 127.0.0.1 and is stopped on exit.
#
# Time: about 70 s after the build, bounded at 6 minutes (PROOF_TIMEOUT_SECS) by a watchdog.
# The last line is "observability: N passed, N failed".
# Env: FTSHOP_BIN (binary to use; default: `cargo build --bin ftshop`, debug), KEEP_PROOF_DIR=1
# (keep the temporary directory with logs), PROOF_LOAD_SECS (default 60).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

PROOF_TIMEOUT_SECS=${PROOF_TIMEOUT_SECS:-360}
LOAD_SECS=${PROOF_LOAD_SECS:-60}
started_at=$(date +%s)

checks=0 # passed so far, for the closing "N passed, N failed" line
log() { printf '[proof %3ss] %s\n' "$(($(date +%s) - started_at))" "$*"; }
pass() { checks=$((checks + ${1:-1})); }
fail() { log "FAIL: $*"; echo "observability: $checks passed, 1 failed"; exit 1; }

echo "::group::install Prometheus tools"
scripts/ci/install-prometheus.sh
ALERTMANAGER=$(command -v alertmanager || command -v prometheus-alertmanager)
echo "::endgroup::"

echo "::group::static checks (rules, rule unit tests, configs, dashboards)"
# Rule unit tests on Prometheus 2 and 3, runbook links, Alertmanager configs, routing and
# inhibition (its own script: scripts/ci/rule-tests.sh, ~20 s).
scripts/ci/rule-tests.sh
promtool check config --syntax-only prometheus/prometheus.yml
promtool check config prometheus/prometheus-local.yml
pass 6
python3 - <<'PY'
import glob, json, sys
bad = []
for path in sorted(glob.glob("grafana/dashboards/*.json")):
    board = json.load(open(path))
    ids = [p["id"] for p in board["panels"]]
    if len(ids) != len(set(ids)):
        bad.append(f"{path}: duplicate panel ids")
    if not board.get("uid") or board.get("schemaVersion", 0) < 36:
        bad.append(f"{path}: uid missing or schemaVersion too old")
    for p in board["panels"]:
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") != "ftshop-prometheus":
            bad.append(f"{path}: panel {p['title']!r} does not use the ftshop-prometheus uid")
        if not p.get("targets"):
            bad.append(f"{path}: panel {p['title']!r} has no query")
    print(f"{path}: {len(ids)} panels, uid {board['uid']}, schemaVersion {board['schemaVersion']}")
if bad:
    print("\n".join(bad)); sys.exit(1)
PY
pass
echo "::endgroup::"

echo "::group::binary"
if [ -n "${FTSHOP_BIN:-}" ]; then
  BIN=$FTSHOP_BIN
else
  cargo build --quiet --bin ftshop
  BIN=$ROOT/target/debug/ftshop
fi
[ -x "$BIN" ] || fail "no ftshop binary at $BIN"
log "using $BIN"
echo "::endgroup::"

# The watchdog starts after the build: what it bounds is the run itself.
started_at=$(date +%s)
WORK=$(mktemp -d -t ftshop-proof.XXXXXX)
pids=()
UP_PID=""
WATCHDOG_PID=""

cleanup() {
  local status=$?
  set +e
  if [ -n "$WATCHDOG_PID" ]; then
    pkill -TERM -P "$WATCHDOG_PID" 2>/dev/null # its sleep
    kill "$WATCHDOG_PID" 2>/dev/null
  fi
  if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
    # `ftshop up` stops its children on SIGTERM (SIGKILL after a grace period).
    kill -TERM "$UP_PID" 2>/dev/null
    for _ in $(seq 1 150); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$UP_PID" 2>/dev/null
  fi
  # Children that outlived their supervisor (it was killed hard): stop them by their pid.
  if [ -f "$WORK/data/up.json" ]; then
    for pid in $(python3 -c 'import json,sys; print(" ".join(str(m["pid"]) for m in json.load(open(sys.argv[1]))["members"] if m.get("pid")))' "$WORK/data/up.json" 2>/dev/null); do
      kill -KILL "$pid" 2>/dev/null
    done
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  if [ "$status" -ne 0 ]; then
    echo "--- last lines of the logs in $WORK ---"
    for f in "$WORK"/*.log "$WORK"/data/logs/*.log; do
      [ -f "$f" ] && { echo "== $f"; tail -n 15 "$f"; }
    done
  fi
  if [ "${KEEP_PROOF_DIR:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# (Its stderr is muted: bash would report its sleep "Terminated" when cleanup stops it.)
( sleep "$PROOF_TIMEOUT_SECS"; echo "[proof] watchdog: over ${PROOF_TIMEOUT_SECS}s, stopping"; kill -TERM $$ ) 2>/dev/null &
WATCHDOG_PID=$!

# Six ports for the suite (base, +1, +2, +3, +11, +12) and three for the tools, all free now.
read -r BASE PROM_PORT AM_PORT SINK_PORT < <(python3 - <<'PY'
import random, socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port)); return True
        except OSError:
            return False
rng = random.Random()
for _ in range(200):
    base = rng.randrange(20000, 40000, 20)
    suite = [base, base + 1, base + 2, base + 3, base + 11, base + 12]
    tools = [base + 15, base + 16, base + 17]
    if all(free(p) for p in suite + tools):
        print(base, *tools); break
else:
    raise SystemExit("no free port range found")
PY
)
[ -n "${SINK_PORT:-}" ] || fail "could not find free ports"
log "suite on 127.0.0.1:$BASE.., Prometheus :$PROM_PORT, Alertmanager :$AM_PORT, sink :$SINK_PORT, work dir $WORK"

wait_http() { # url, seconds
  local deadline=$(($(date +%s) + $2))
  until curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$1 did not answer within $2 s"
    sleep 0.3
  done
}

echo "::group::start the suite, the sink, Alertmanager and Prometheus"
# Sink for Alertmanager's webhook (POST /alerts) and for OTLP traces (POST /v1/traces): one
# JSON file per request, in $WORK/sink and $WORK/otlp.
mkdir -p "$WORK/sink" "$WORK/otlp"
python3 - "$SINK_PORT" "$WORK" >"$WORK/sink.log" 2>&1 <<'PY' &
import http.server, itertools, os, sys
port, work = int(sys.argv[1]), sys.argv[2]
counter = itertools.count(1)
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        folder = "otlp" if self.path.startswith("/v1/traces") else "sink"
        with open(os.path.join(work, folder, f"{next(counter):05d}.json"), "wb") as f:
            f.write(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Sink).serve_forever()
PY
pids+=($!)
wait_http "http://127.0.0.1:$SINK_PORT/" 20

# http/json, so the sink's files are readable by the check below (the default is http/protobuf).
# RUST_LOG: the default filter plus Fidelity's per-bonus line, at debug since issue 16 (the
# trace check below reads it; docs/observability.md#logs).
OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=http/json \
OTEL_BSP_SCHEDULE_DELAY=500 RUST_LOG=info,sqlx=warn,tower_http=warn,ftshop_fidelity=debug \
  "$BIN" up --data-dir "$WORK/data" --port-base "$BASE" --faults default --fault-seed 7 \
  >"$WORK/up.log" 2>&1 &
UP_PID=$!
for port in "$BASE" $((BASE + 1)) $((BASE + 11)) $((BASE + 2)) $((BASE + 12)) $((BASE + 3)); do
  wait_http "http://127.0.0.1:$port/health/live" 90
done
log "suite is live"


# Alertmanager: the project's routing tree and inhibition rules, the Slack receivers pointed at
# the sink (receivers without an integration stay so).
python3 - prometheus/alertmanager.yml "$WORK/alertmanager.yml" "http://127.0.0.1:$SINK_PORT/alerts" <<'PY'
import sys, yaml
src, dst, url = sys.argv[1:]
cfg = yaml.safe_load(open(src))
cfg.get("global", {}).pop("slack_api_url_file", None)
for r in cfg["receivers"]:
    if r.pop("slack_configs", None) is not None:
        r["webhook_configs"] = [{"url": url, "send_resolved": True}]
def fast(route):
    route["group_wait"] = "1s"; route["group_interval"] = "2s"
    for child in route.get("routes", []):
        fast(child)
fast(cfg["route"])
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
PY
amtool check-config "$WORK/alertmanager.yml" >/dev/null
"$ALERTMANAGER" --config.file="$WORK/alertmanager.yml" --storage.path="$WORK/alertmanager" \
  --web.listen-address="127.0.0.1:$AM_PORT" --cluster.listen-address= \
  >"$WORK/alertmanager.log" 2>&1 &
pids+=($!)

# Prometheus: every process each second, the project's rules with short hold-downs.
mkdir -p "$WORK/rules"
python3 - "$WORK" "$BASE" "$PROM_PORT" "$AM_PORT" <<'PY'
import glob, os, sys, yaml
work, base, prom, am = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
for path in glob.glob("prometheus/rules/*.yml"):
    rules = yaml.safe_load(open(path))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "5s"
    yaml.safe_dump(rules, open(os.path.join(work, "rules", os.path.basename(path)), "w"), sort_keys=False)
def job(name, members):
    return {"job_name": name, "static_configs": [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"replica": replica}} for replica, port in members]}
local = yaml.safe_load(open("prometheus/prometheus-local.yml"))
cfg = {
    "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s",
               "external_labels": local["global"]["external_labels"]},
    "rule_files": [os.path.join(work, "rules", "*.yml")],
    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am}"]}]}]},
    "scrape_configs": [
        job("ecommerce", [("ecommerce", base)]),
        dict(job("ecommerce-exemplars", [("ecommerce", base)]), metrics_path="/metrics/exemplars"),
        job("store", [("store-1", base + 1), ("store-2", base + 11)]),
        job("exchange", [("exchange-1", base + 2), ("exchange-2", base + 12)]),
        job("fidelity", [("fidelity", base + 3)]),
    ],
}
yaml.safe_dump(cfg, open(os.path.join(work, "prometheus.yml"), "w"), sort_keys=False)
PY
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" --enable-feature=exemplar-storage \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$AM_PORT/-/ready" 30
wait_http "http://127.0.0.1:$PROM_PORT/-/ready" 30
log "Prometheus, Alertmanager and the sink are ready"
echo "::endgroup::"

echo "::group::a fresh stack: panels show 0 where 0 is the truth"
# Before any purchase: every panel shows its value (counters registered at 0, `or vector(0)`),
# except quantiles and ratios, which have none without traffic. Once every process has been
# scraped (counted by replica: Ecommerce has two targets, /metrics and /metrics/exemplars), three
# more scrapes (1 s apart: rate() needs two samples).
deadline=$(($(date +%s) + 30))
until [ "$(curl -s "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode 'query=count(count by (replica) (up == 1))' |
  python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)')" = 6 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "Prometheus did not scrape the six processes within 30 s"
  sleep 0.5
done
sleep 3
python3 scripts/ci/promql-check.py "http://127.0.0.1:$PROM_PORT" "$WORK/fresh-passed" --fresh ||
  fail "panels show No data on a fresh stack where the value is 0 (listed above)"
pass
echo "::endgroup::"

echo "::group::trace context crosses the hops"
# A purchase sent with our own traceparent and x-request-id: Fidelity's "bonus" log line must
# carry both (ecommerce forwards the request id and a child traceparent).
# (Under the default faults a bonus may go to the outbox, which has no request context, so a
# few purchases are tried.)
traced=""
for attempt in 1 2 3 4 5 6; do
  trace_id=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
  curl -s -m 3 -o /dev/null -XPOST "http://127.0.0.1:$BASE/buy" -H 'content-type: application/json' \
    -H "traceparent: 00-$trace_id-00f067aa0ba902b7-01" -H "x-request-id: proof-trace-$attempt" \
    -d '{"product":"2","user":"tracer","ft":true}' || true
  for _ in $(seq 1 10); do
    if grep -q "\"trace_id\":\"$trace_id\"" "$WORK/data/logs/fidelity.log" 2>/dev/null; then
      traced=$trace_id; break 2
    fi
    sleep 0.2
  done
done
[ -n "$traced" ] || fail "no Fidelity log line carries the trace id sent to ecommerce"
grep -h "\"trace_id\":\"$traced\"" "$WORK/data/logs/fidelity.log" >"$WORK/traced.log"
grep -q '"request_id":"proof-trace-' "$WORK/traced.log" ||
  fail "Fidelity's log line has the trace id but not the request id sent to ecommerce"
pass 2
log "trace $traced: $(grep -l "\"trace_id\":\"$traced\"" "$WORK"/data/logs/*.log | xargs -n1 basename | tr '\n' ' ')"
head -n 1 "$WORK/traced.log"
# The same purchase as OTLP spans: ecommerce's server span, its client span for /bonus, and
# Fidelity's server span whose parent is that client span.
deadline=$(($(date +%s) + 10))
until python3 - "$WORK/otlp" "$traced" <<'PY'
import glob, json, sys
folder, trace = sys.argv[1], sys.argv[2]
spans = []
for path in glob.glob(folder + "/*.json"):
    for rs in json.load(open(path)).get("resourceSpans", []):
        service = next((a["value"]["stringValue"] for a in rs["resource"]["attributes"]
                        if a["key"] == "service.name"), "?")
        for ss in rs["scopeSpans"]:
            spans += [dict(s, service=service) for s in ss["spans"] if s["traceId"] == trace]
def find(service, kind, name):
    return [s for s in spans if s["service"] == service and s["kind"] == kind and s["name"] == name]
buy, call, bonus = find("ecommerce", 2, "POST /buy"), find("ecommerce", 3, "POST /bonus"), find("fidelity", 2, "POST /bonus")
linked = [b for b in bonus if any(b.get("parentSpanId") == c["spanId"] for c in call)]
if not (buy and call and linked):
    sys.exit(1)
for s in sorted(spans, key=lambda s: s["startTimeUnixNano"]):
    print(f"  otlp span {s['service']:10} {'server' if s['kind'] == 2 else 'client'} {s['name']:14} "
          f"span {s['spanId']} parent {s.get('parentSpanId', '-')}")
PY
do
  [ "$(date +%s)" -lt "$deadline" ] || fail "the purchase's spans did not reach the OTLP endpoint (see $WORK/otlp)"
  sleep 1
done
log "OTLP export: the purchase's spans reached the collector, linked across ecommerce and fidelity"
pass
echo "::endgroup::"

echo "::group::load (${LOAD_SECS}s, default faults; Fidelity /bonus forced to +2 s halfway)"
if "$BIN" load --help >/dev/null 2>&1; then
  "$BIN" load --url "http://127.0.0.1:$BASE" --vus 8 --duration "${LOAD_SECS}s" \
    --think 100ms..500ms --ft on --out "$WORK/load" >"$WORK/load.log" 2>&1 &
else
  ( end=$(($(date +%s) + LOAD_SECS)); i=0
    while [ "$(date +%s)" -lt "$end" ]; do
      i=$((i + 1))
      curl -s -m 3 -o /dev/null -XPOST "http://127.0.0.1:$BASE/buy" -H 'content-type: application/json' \
        -d "{\"product\":\"$((i % 11 + 1))\",\"user\":\"u$((i % 7))\",\"ft\":true}" || true
      sleep 0.1
    done ) >"$WORK/load.log" 2>&1 &
fi
LOAD_PID=$!
pids+=("$LOAD_PID")
# Some ft=false traffic too, so the ft=off series exist, until the naive path has failed at
# least once (it has no fault tolerance, so under the default faults it soon does): the 5xx
# series the error-ratio panels and burn-rate rules read must exist for the check below.
naive_5xx=0
for i in $(seq 1 60); do
  code=$(curl -s -m 3 -o /dev/null -w '%{http_code}' -XPOST "http://127.0.0.1:$BASE/buy" \
    -H 'content-type: application/json' \
    -d "{\"product\":\"$((i % 11 + 1))\",\"user\":\"naive\",\"ft\":false}" || true)
  case "$code" in 5??) naive_5xx=$((naive_5xx + 1)) ;; esac
  [ "$i" -ge 5 ] && [ "$naive_5xx" -ge 1 ] && break
done
log "ft=false purchases sent: $i, of which 5xx: $naive_5xx"
sleep $((LOAD_SECS / 2))
"$BIN" fault set --data-dir "$WORK/data" --service fidelity --route /bonus --kind latency \
  --probability 1 --latency 2s --ttl 10m
log "injected: fidelity /bonus +2 s on every request"
wait "$LOAD_PID" || log "load generator exited non-zero (expected under faults; see $WORK/load.log)"
tail -n 12 "$WORK/load.log" || true
echo "::endgroup::"

echo "::group::every panel query and every rule selector returns series"
python3 scripts/ci/promql-check.py "http://127.0.0.1:$PROM_PORT" "$WORK/queries-passed" ||
  fail "queries without data (listed above)"
pass "$(cat "$WORK/queries-passed")"
echo "::endgroup::"

echo "::group::the injected fault reaches Alertmanager, fault-aware"
# The latency fault was injected on purpose: FtshopChaosFaultInjected for fidelity /bonus reaches
# the sink through the chaos receiver, and FtshopHighLatencyP99 for that route fires in
# Prometheus and reaches Alertmanager, where the chaos alert inhibits it (suppressed, not sent).
deadline=$(($(date +%s) + 150))
until python3 - "$WORK/sink" "http://127.0.0.1:$AM_PORT" <<'PY'
import glob, json, sys, urllib.request
sink, am = sys.argv[1], sys.argv[2]
chaos = None
for path in sorted(glob.glob(sink + "/*.json")):
    n = json.load(open(path))
    for a in n.get("alerts", []):
        l = a["labels"]
        if (a["status"] == "firing" and l.get("alertname") == "FtshopChaosFaultInjected"
                and l.get("service") == "fidelity" and l.get("route") == "/bonus" and l.get("kind") == "latency"):
            chaos = (path, n["receiver"], a)
with urllib.request.urlopen(am + "/api/v2/alerts?filter=alertname%3D%22FtshopHighLatencyP99%22", timeout=5) as r:
    p99 = [a for a in json.load(r) if a["labels"].get("service") == "fidelity" and a["labels"].get("route") == "/bonus"]
if not chaos or not p99:
    sys.exit(1)
path, receiver, a = chaos
status = p99[0]["status"]
print(f"{path}: receiver={receiver} FtshopChaosFaultInjected {json.dumps(a['labels'], sort_keys=True)}")
print(f"  runbook: {a['annotations'].get('runbook_url')}")
print(f"FtshopHighLatencyP99 fidelity /bonus in Alertmanager: {status['state']}, inhibited by {status.get('inhibitedBy')}")
if receiver != "chaos-lab":
    sys.exit("the chaos alert went to " + receiver + ", not chaos-lab")
if not a["annotations"].get("runbook_url", "").startswith("http"):
    sys.exit("runbook_url is not absolute: " + a["annotations"].get("runbook_url", ""))
if status["state"] != "suppressed" or not status.get("inhibitedBy"):
    sys.exit("FtshopHighLatencyP99 for the injected latency is not inhibited")
PY
do
  [ "$(date +%s)" -lt "$deadline" ] || {
    curl -s "http://127.0.0.1:$PROM_PORT/api/v1/alerts" | head -c 3000; echo
    fail "the injected fault's alerts did not reach the sink and Alertmanager as expected"
  }
  sleep 2
done
log "alerts received by the sink:"
python3 - "$WORK/sink" <<'PY'
import glob, json, sys
seen = set()
for path in sorted(glob.glob(sys.argv[1] + "/*.json")):
    for a in json.load(open(path)).get("alerts", []):
        key = (a["labels"].get("alertname"), a["labels"].get("service"), a["status"])
        if key not in seen:
            seen.add(key); print("  %-30s service=%-10s %s" % key)
PY
pass
echo "::endgroup::"

echo "::group::inhibition: a dependency that is down silences what follows from it"
# Two synthetic alerts (label proof=inhibition) pushed to the live Alertmanager: Store down, and
# an ecommerce breaker on a Store replica. The breaker alert must be inhibited by the outage.
python3 - "http://127.0.0.1:$AM_PORT" <<'PY' || fail "inhibition did not work as configured"
import json, sys, time, urllib.request
am = sys.argv[1]
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
alerts = [
    {"labels": {"alertname": "FtshopServiceDown", "severity": "critical", "service": "store",
                "dependency": "store", "job": "store", "instance": "proof", "proof": "inhibition"},
     "startsAt": now},
    {"labels": {"alertname": "FtshopCircuitBreakerOpen", "severity": "warning", "service": "ecommerce",
                "dependency": "store", "job": "ecommerce", "name": "store-9.sell", "proof": "inhibition"},
     "startsAt": now},
    {"labels": {"alertname": "FtshopCircuitBreakerOpen", "severity": "warning", "service": "ecommerce",
                "dependency": "exchange", "job": "ecommerce", "name": "exchange-9.exchange", "proof": "inhibition"},
     "startsAt": now},
]
req = urllib.request.Request(f"{am}/api/v2/alerts", data=json.dumps(alerts).encode(),
                             headers={"content-type": "application/json"}, method="POST")
urllib.request.urlopen(req, timeout=5).read()
deadline = time.time() + 20
while time.time() < deadline:
    with urllib.request.urlopen(f"{am}/api/v2/alerts?filter=proof%3D%22inhibition%22", timeout=5) as r:
        pushed = json.load(r)
    got = {a["labels"].get("name", a["labels"]["alertname"]): a["status"] for a in pushed}
    down = [a["fingerprint"] for a in pushed if a["labels"]["alertname"] == "FtshopServiceDown"]
    store = got.get("store-9.sell", {})
    exchange = got.get("exchange-9.exchange", {})
    # The Exchange breaker may be suppressed by the suite's own FtshopChaosFaultInjected (the
    # default profile's crash fault on Exchange), never by the Store outage.
    if (down and down[0] in store.get("inhibitedBy", [])
            and exchange and down[0] not in exchange.get("inhibitedBy", [])):
        print("breaker on store-9 (dependency=store): suppressed, inhibited by the Store outage", down)
        print("breaker on exchange-9 (dependency=exchange): not inhibited by the Store outage "
              f"({exchange['state']}, inhibited by {exchange.get('inhibitedBy') or 'nothing'})")
        sys.exit(0)
    time.sleep(1)
print("got:", json.dumps(got, indent=1))
sys.exit(1)
PY
pass
echo "::endgroup::"
log "observability proof passed"
echo "observability: $checks passed, 0 failed"
