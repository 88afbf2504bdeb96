#!/usr/bin/env python3
"""Prints the sustained-fault benchmark's results as the Markdown table of
docs/benchmarks/sustained-faults.md: one row per run directory given (each holds the
`result.json` of `ftshop load`, `loadavg.txt` and `store-windows.txt` written by
scripts/bench/sustained-faults.sh).

Usage: scripts/bench/sustained-table.py docs/benchmarks/runs/sustained/5min/*/
"""
import json
import os
import re
import sys


def sales_per_window(path):
    """Units sold ÷ `/sell` error windows opened, over all Store replicas."""
    sold = windows = 0.0
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return "-"
    for line in lines:
        value = float(line.rsplit(" ", 1)[1])
        if "store_sales_total" in line:
            sold += value
        elif "chaos_fault_windows_total" in line:
            windows += value
    return f"{sold / windows:.1f} ({int(sold)} / {int(windows)})" if windows else "-"


def row(run_dir):
    result = json.load(open(os.path.join(run_dir, "result.json")))
    settings, run = result["settings"], result["runs"][0]
    c, lat = run["counts"], run["latency_ms"]["all"]
    d, s = run.get("deferred") or {}, run.get("sales") or {}
    dc = d.get("counts", {})
    comp = d.get("completion_ms") or {}
    cap = (s.get("cap") or {})
    load = open(os.path.join(run_dir, "loadavg.txt")).read().split()
    loads = f"{load[1]} → {load[7]}" if len(load) > 7 else "-"
    think = settings["think"] if settings["think"] not in ("0s", "0ns") else "none"
    ms = lambda v: f"{v:,.1f}" if v is not None else "-"
    sec = lambda v: f"{v / 1000:,.1f}" if v is not None else "-"
    return "| " + " | ".join([
        f"{settings['vus']} VUs, think {think}, N = {cap.get('stores', '?')}",
        f"{c['requests']:,}",
        f"{c['completed']:,} / {c['accepted']:,} / {c['refused']:,} / {c['server_error']:,} / {c['timeout'] + c['connection_error']:,}",
        f"{ms(lat['p50'])} / {ms(lat['p95'])} / **{ms(lat['p99'])}** / {ms(lat['max'])} ms",
        f"{run.get('sync_share_pct', 0):.1f} %",
        f"{dc.get('completed', 0):,} / {dc.get('cancelled', 0):,} / {dc.get('unresolved', 0):,}",
        f"{sec(comp.get('p50'))} / **{sec(comp.get('p99'))}** / {sec(comp.get('max'))} s",
        f"{d.get('within_promise_pct', 0):.1f} %",
        f"{s.get('per_s', 0):.2f} / {cap.get('units_per_s', 0):.1f} ({s.get('of_cap_pct') or 0:.0f} %)",
        sales_per_window(os.path.join(run_dir, "store-windows.txt")),
        loads,
    ]) + " |"


print("| shape | purchases | 200 / 202 / 503 refused / 5xx / timeouts+conn | answer p50 / p95 / p99 / max "
      "| sync share | 202s completed / cancelled / unresolved | completion p50 / p99 / max "
      "| 202s ended within the promise | sales/s measured / cap | sales per `/sell` window (sold / windows) "
      "| load avg before → after |")
print("|---|---:|---|---|---:|---|---|---:|---|---|---|")
for d in sys.argv[1:]:
    if os.path.exists(os.path.join(d, "result.json")):
        print(row(d))
