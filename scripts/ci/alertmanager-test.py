#!/usr/bin/env python3
"""Checks the inhibition rules of an Alertmanager config on a real Alertmanager: starts one on a
free 127.0.0.1 port with CONFIG (the null-receiver variant, so nothing is sent anywhere), pushes
synthetic alerts through its v2 API and checks which end up suppressed (and by what) and which
stay active. Cases: faults injected on purpose (FtshopChaosFaultInjected) silence the symptoms
they explain and nothing else; the ft=true SLO alerts are never silenced by them.

Usage: alertmanager-test.py ALERTMANAGER_BINARY CONFIG
Exit 0 when every case holds; prints one line per case. About 3 s.
"""
import json, os, socket, subprocess, sys, tempfile, time, urllib.request

binary, config = sys.argv[1], sys.argv[2]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def alert(alertname, **labels):
    return {"alertname": alertname, **labels}

CHAOS = "FtshopChaosFaultInjected"
# Sources: what the lab injects now. (labels of FtshopChaosFaultInjected as the rule makes them)
sources = [
    alert(CHAOS, severity="info", chaos="injected", service="fidelity", dependency="fidelity", route="/bonus", kind="latency"),
    alert(CHAOS, severity="info", chaos="injected", service="exchange", dependency="exchange", instance="exchange-2:8092", route="/exchange", kind="crash"),
    alert(CHAOS, severity="info", chaos="injected", service="store", dependency="store", route="/sell", kind="error"),
]
# Two scenarios, each on a fresh Alertmanager (a service that is down inhibits symptoms of its
# own, so the outage cases would mask the others). (alert, expected state, why)
symptoms = [
    (alert("FtshopHighLatencyP99", severity="warning", service="fidelity", route="/bonus"), "suppressed",
     "p99 of the route the latency fault slows"),
    (alert("FtshopHighLatencyP99", severity="warning", service="store", route="/product"), "active",
     "p99 of a route no latency fault touches"),
    (alert("FtshopHighLatencyP99", severity="warning", service="ecommerce", route="/buy"), "suppressed",
     "ecommerce's p99 while a dependency is slowed on purpose"),
    (alert("FtshopBuyLatencyAnomaly", severity="warning", service="ecommerce"), "suppressed",
     "/buy latency anomaly while a dependency is slowed on purpose"),
    (alert("FtshopCircuitBreakerOpen", severity="warning", service="ecommerce", dependency="store", job="ecommerce",
           name="store-1.sell"), "suppressed", "ecommerce's breaker on the store an error fault hits"),
    (alert("FtshopCircuitBreakerOpen", severity="warning", service="ecommerce", dependency="exchange", job="ecommerce",
           name="exchange-1.exchange"), "suppressed", "ecommerce's breaker on the exchange a crash fault hits"),
    (alert("FtshopBonusOutboxDelayed", severity="warning", service="ecommerce", dependency="fidelity", job="ecommerce"),
     "suppressed", "bonuses waiting for the fidelity a latency fault slows"),
    (alert("FtshopDeferredOrdersStuck", severity="warning", service="ecommerce", dependency="store", job="ecommerce"),
     "active", "deferred sales stuck are not what a 5 s error window explains"),
    (alert("FtshopBuyErrorBudgetBurnFast", severity="critical", service="ecommerce"), "active",
     "the ft=true SLO: fault tolerance must absorb injected faults"),
    (alert("FtshopBuyErrorRatioAnomaly", severity="warning", service="ecommerce"), "active",
     "the ft=true error anomaly: never excused by injected faults"),
    (alert("FtshopLowStock", severity="warning", service="store", product="3"), "active",
     "a business alert no fault explains"),
]
outages = [
    (alert("FtshopServiceDown", severity="critical", service="exchange", dependency="exchange", job="exchange",
           instance="exchange-2:8092"), "suppressed", "the instance a crash fault makes exit"),
    (alert("FtshopServiceDown", severity="critical", service="exchange", dependency="exchange", job="exchange",
           instance="exchange-1:8082"), "active", "another instance of the crashed service"),
    (alert("FtshopServiceDown", severity="critical", service="store", dependency="store", job="store",
           instance="store-2:8091"), "active", "a store replica cut off (no crash fault there)"),
]

def run(cases):
    """Pushes the chaos sources and the cases to a fresh Alertmanager; returns the failures."""
    port = free_port()
    work = tempfile.mkdtemp(prefix="ftshop-am-test.")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={work}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
    am = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{am}/-/ready", timeout=1).read()
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    sys.exit("alertmanager did not start: " + open(os.path.join(work, "log")).read()[-2000:])
                time.sleep(0.2)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = [{"labels": {**labels, "test": "inhibition"}, "startsAt": now} for labels in sources + [c[0] for c in cases]]
        req = urllib.request.Request(f"{am}/api/v2/alerts", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        key = lambda labels: json.dumps({k: v for k, v in labels.items() if k != "test"}, sort_keys=True)
        deadline = time.time() + 15
        while True:
            with urllib.request.urlopen(f"{am}/api/v2/alerts?filter=test%3D%22inhibition%22", timeout=5) as r:
                got = {key(a["labels"]): a["status"] for a in json.load(r)}
            results = [(labels, want, why, got.get(key(labels), {})) for labels, want, why in cases]
            ok = all(status.get("state") == want for _, want, _, status in results)
            if ok or time.time() > deadline:
                break
            time.sleep(0.5)
        failed = 0
        for labels, want, why, status in results:
            state = status.get("state", "absent")
            by = " by " + ", ".join(status.get("inhibitedBy", [])) if status.get("inhibitedBy") else ""
            mark = "ok  " if state == want else "FAIL"
            failed += state != want
            extra = {k: v for k, v in labels.items() if k in ("service", "route", "instance", "name")}
            print(f"{mark} {labels['alertname']} {extra}: {state}{by} (want {want}: {why})")
        return failed
    finally:
        proc.terminate()
        proc.wait(timeout=10)


failed = run(symptoms) + run(outages)
total = len(symptoms) + len(outages)
print(f"alertmanager inhibition: {total - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
