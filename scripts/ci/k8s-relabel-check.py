#!/usr/bin/env python3
"""Applies the Kubernetes scrape relabeling (deploy/k8s/prometheus/scrape-configs.yaml) to the
pods deploy/k8s/base would run, as Prometheus' pod discovery would describe them, and checks
that the targets carry the same `job` and `replica` labels as compose's static configuration
(prometheus/prometheus.yml), which the alert rules and dashboards key on: one target per pod,
on the health listener's /metrics.

Prometheus' `keep` and `replace` actions are reimplemented here (source labels joined with ";",
the regex anchored at both ends, `$1`-style references); the expressions use only syntax that
Go's RE2 and Python's `re` read alike. Needs PyYAML. Usage: k8s-relabel-check.py (from the
repository root). About 0.1 s.
"""
import glob, re, sys, yaml

def relabel(labels, configs):
    labels = dict(labels)
    for c in configs:
        action = c.get("action", "replace")
        value = c.get("separator", ";").join(labels.get(s, "") for s in c.get("source_labels", []))
        m = re.fullmatch(c.get("regex", "(.*)"), value)
        if action == "keep":
            if not m:
                return None
        elif action == "drop":
            if m:
                return None
        elif action == "replace":
            if m:
                repl = re.sub(r"\$\{?(\d+)\}?", lambda g: m.group(int(g.group(1))) or "", c.get("replacement", "$1"))
                labels[c["target_label"]] = repl
        else:
            sys.exit(f"relabel action {action} is not emulated here")
    return labels

def label_key(name):
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)

jobs = yaml.safe_load(open("deploy/k8s/prometheus/scrape-configs.yaml"))
relabelings = [j["relabel_configs"] for j in jobs]

# The pods of the base: one discovered target per container port, as role=pod gives them.
targets = []
for path in sorted(glob.glob("deploy/k8s/base/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "Deployment":
            continue
        template = doc["spec"]["template"]
        meta = {"__meta_kubernetes_namespace": "ftshop", "__meta_kubernetes_pod_phase": "Running",
                "__meta_kubernetes_pod_name": doc["metadata"]["name"] + "-5d8f7c9b4-abcde"}
        for k, v in template["metadata"].get("labels", {}).items():
            meta["__meta_kubernetes_pod_label_" + label_key(k)] = v
        for k, v in template["metadata"].get("annotations", {}).items():
            meta["__meta_kubernetes_pod_annotation_" + label_key(k)] = v
        for container in template["spec"]["containers"]:
            for port in container.get("ports", []):
                targets.append({**meta, "__address__": f"10.1.2.3:{port['containerPort']}",
                                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                                "__metrics_path__": "/metrics"})

got = {}
for configs in relabelings:
    for t in targets:
        out = relabel(t, configs)
        if out is not None:
            key = (out.get("job"), out.get("replica"))
            got.setdefault(key, []).append(out)

want = set()
compose_paths = {}
for job in yaml.safe_load(open("prometheus/prometheus.yml"))["scrape_configs"]:
    if job["job_name"] == "prometheus":
        continue
    compose_paths[job["job_name"]] = job.get("metrics_path", "/metrics")
    for sc in job["static_configs"]:
        want.add((job["job_name"], sc["labels"]["replica"]))

bad = []
for key in sorted(want):
    outs = got.get(key, [])
    if len(outs) != 1:
        bad.append(f"job={key[0]} replica={key[1]}: {len(outs)} Kubernetes targets (want 1)")
        continue
    out = outs[0]
    path = compose_paths.get(key[0], "/metrics")
    if not out["__address__"].endswith(":8099") or out.get("__metrics_path__") != path:
        bad.append(f"job={key[0]} replica={key[1]}: scrapes {out['__address__']}{out.get('__metrics_path__')}, want :8099{path}")
extra = sorted(set(got) - want)
if extra:
    bad.append(f"Kubernetes targets compose does not have: {extra}")
for key in sorted(want & set(got)):
    print(f"k8s target job={key[0]:9} replica={key[1]:10} -> {got[key][0]['__address__']}{got[key][0]['__metrics_path__']}")
if bad:
    print("FAILED:\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"k8s relabeling: {len(want)} pods get compose's job and replica labels")
