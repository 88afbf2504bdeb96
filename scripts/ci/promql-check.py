#!/usr/bin/env python3
"""Runs EVERY Grafana panel query (grafana/dashboards/*.json) and, for EVERY rule Prometheus has
loaded, every metric selector of its expression, through Prometheus' HTTP API; fails listing
any that returns no series.

Usage: promql-check.py PROMETHEUS_URL PASSED_FILE [--fresh]
  PROMETHEUS_URL  e.g. http://127.0.0.1:9090 (a Prometheus that has scraped the suite under load)
  PASSED_FILE     gets the number of queries and selectors that returned series
  --fresh         the suite has served no request yet: only the panels are checked, and a panel
                  may show "No data" only where no number is true without traffic (a quantile,
                  a ratio of rates: 0/0, or a panel whose description starts "No data until",
                  saying why); everything else must show its value, 0 included.
Exit 0 when all return series, 1 otherwise. Used by scripts/ci/observability-proof.sh (against
`ftshop up`) and scripts/compose-proof.sh (against the Prometheus inside compose). Run from the
repository root.
"""
import glob, json, re, sys, urllib.parse, urllib.request

prom, passed_file = sys.argv[1], sys.argv[2]
fresh = "--fresh" in sys.argv[3:]

def undefined_without_traffic(expr):
    """A quantile of no observations, or a ratio of rates (0/0), has no value without traffic:
    "No data" is the truth there. Anything else (a count, a rate, a gauge) is a number."""
    return "histogram_quantile(" in expr or re.search(r"\)\s*/\s*\(?\s*sum", expr) is not None

def query(expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body.get("error", body))
    data = body["data"]
    return 1 if data["resultType"] in ("scalar", "string") else len(data["result"])

# Grafana's variables, as Grafana would expand them for a 10-minute view.
def expand(expr):
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")
                .replace("$__range", "10m"))

GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OPERATORS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2", "sum", "min", "max",
             "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"}

def selectors(expr):
    """The vector selectors (metric name and matchers) of a PromQL expression: a small scanner
    that skips strings, numbers, durations, function calls and grouping label lists."""
    out, i, n = set(), 0, len(expr)
    def skip_string(j):
        quote, j = expr[j], j + 1
        while j < n and expr[j] != quote:
            j += 2 if expr[j] == "\\" else 1
        return j + 1
    def skip_braces(j):  # expr[j] == "{"; returns the index after the matching "}"
        while j < n and expr[j] != "}":
            j = skip_string(j) if expr[j] in "\"'`" else j + 1
        return j + 1
    while i < n:
        c = expr[i]
        if c in "\"'`":
            i = skip_string(i)
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = re.match(r"[0-9.]+(e[+-]?[0-9]+)?[a-z]*", expr[i:], re.I)
            i += m.end()
        elif c == "{":
            j = skip_braces(i); out.add(expr[i:j]); i = j
        elif c.isalpha() or c in "_:":
            m = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr[i:])
            name, i = m.group(0), i + m.end()
            j = i
            while j < n and expr[j].isspace():
                j += 1
            if name in GROUPING:
                if j < n and expr[j] == "(":
                    i = expr.index(")", j) + 1
            elif name.lower() in OPERATORS or (j < n and expr[j] == "("):
                pass  # operator, function or aggregation
            elif j < n and expr[j] == "{":
                k = skip_braces(j); out.add(name + expr[j:k]); i = k
            else:
                out.add(name)
        else:
            i += 1
    return sorted(out)

failures, lines = [], []

for path in sorted(glob.glob("grafana/dashboards/*.json")):
    board = json.load(open(path))
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            expr = expand(t["expr"])
            try:
                n = query(expr)
            except Exception as e:
                n, err = 0, str(e)
            else:
                err = ""
            # A panel may also say so itself: its description starts "No data until ...".
            excused = fresh and not n and not err and (
                undefined_without_traffic(expr) or panel.get("description", "").startswith("No data until"))
            status = "ok" if n else ("n/a" if excused else "NO SERIES")
            lines.append(f"{status:9} {n:4}  {board['uid']:18} {panel['title']}")
            if not n and not excused:
                failures.append(f"panel {board['uid']} / {panel['title']!r}: {expr} {err}")

with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10) as r:
    groups = [] if fresh else json.load(r)["data"]["groups"]
rule_count = 0
for group in groups:
    for rule in group["rules"]:
        rule_count += 1
        name = rule.get("name")
        for sel in selectors(rule["query"]):
            n = query(sel)
            status = "ok" if n else "NO SERIES"
            lines.append(f"{status:9} {n:4}  rule {name}: {sel}")
            if not n:
                failures.append(f"rule {name}: selector {sel} returns no series")
        if rule["type"] == "alerting":
            firing = [a for a in rule.get("alerts", []) if a["state"] == "firing"]
            lines.append(f"{'state':9} {len(firing):4}  alert {name} is {rule['state']} "
                         f"({len(firing)} firing, condition returns {query(rule['query'])} series)")

print("\n".join(lines))
if rule_count == 0 and not fresh:
    failures.append("Prometheus loaded no rules")
if failures:
    print("\nFAILED: queries without data:\n  " + "\n  ".join(failures))
    sys.exit(1)
checked = sum(1 for line in lines if line.startswith("ok "))
open(passed_file, "w").write(str(checked))
excused = sum(1 for line in lines if line.startswith("n/a "))
if fresh:
    print(f"\nfresh stack: {checked} panel queries show a value, {excused} have none without traffic (quantiles, ratios)")
else:
    print(f"\nall {checked} panel queries and rule selectors returned series ({rule_count} rules)")
