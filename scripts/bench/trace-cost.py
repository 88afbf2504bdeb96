#!/usr/bin/env python3
"""CPU per purchase of the whole suite, with and without trace export (issue 19).

Starts `<bin> up --faults off` on free ports with its own data dir, sends N sequential
ft=true purchases over one keep-alive connection (127.0.0.1 only, bounded by N), and divides
the CPU time (user + system, from /proc/<pid>/stat) the six service processes spent during
the run by the purchases answered 200. With `--otlp`, every process exports to an OTLP/HTTP
sink in this script (answers 200, counts bytes); with `--otlp-down`, to a port nothing
listens on (the collector is down).

Usage: scripts/bench/trace-cost.py <ftshop binary> [--otlp | --otlp-down] [-n 1500]
"""
import argparse, http.client, http.server, json, os, socket, subprocess, sys, tempfile, threading, time

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

class Sink(http.server.BaseHTTPRequestHandler):
    received = 0
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Sink.received += len(body)
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin"); ap.add_argument("-n", type=int, default=1500)
    ap.add_argument("--otlp", action="store_true"); ap.add_argument("--otlp-down", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("OTEL_"):
            del env[k]
    env.pop("DATABASE_URL", None); env.pop("REDIS_URL", None)
    if args.otlp:
        port = free_port()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"
    elif args.otlp_down:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    data = tempfile.mkdtemp()
    base = free_port()
    up = subprocess.Popen([args.bin, "up", "--data-dir", data, "--port-base", "0", "--faults", "off"],
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        members = None
        while time.time() < deadline:
            try:
                state = json.load(open(os.path.join(data, "up.json")))
                members = state["members"]
                if all(m.get("pid") for m in members):
                    urls = {m["name"]: m["url"] for m in members}
                    c = http.client.HTTPConnection(urls["ecommerce"].split("//")[1], timeout=5)
                    c.request("GET", "/health/ready"); r = c.getresponse(); r.read()
                    if r.status == 200:
                        break
            except Exception:
                pass
            time.sleep(0.3)
        else:
            sys.exit("suite not ready")
        pids = [m["pid"] for m in members]
        host = urls["ecommerce"].split("//")[1]
        conn = http.client.HTTPConnection(host, timeout=10)
        body = lambda i: json.dumps({"product": str(i % 11 + 1), "user": f"u{i % 50}", "ft": True})
        for i in range(50):  # warm-up: caches, connection pools
            conn.request("POST", "/buy", body(i), {"content-type": "application/json"}); conn.getresponse().read()
        before = sum(cpu_seconds(p) for p in pids)
        t0 = time.time(); ok = 0
        for i in range(args.n):
            conn.request("POST", "/buy", body(i), {"content-type": "application/json"})
            r = conn.getresponse(); r.read()
            ok += r.status == 200
        wall = time.time() - t0
        time.sleep(0.2)
        after = sum(cpu_seconds(p) for p in pids)
        mode = "otlp sink" if args.otlp else "otlp down" if args.otlp_down else "no endpoint"
        print(f"{mode:12} {ok}/{args.n} ok, {wall:.1f} s, CPU {after - before:.2f} s, "
              f"{(after - before) / max(ok, 1) * 1000:.3f} ms CPU per purchase, "
              f"{wall / args.n * 1000:.2f} ms wall per purchase"
              + (f", {Sink.received} bytes exported" if args.otlp else ""))
    finally:
        up.terminate(); up.wait(timeout=30)

if __name__ == "__main__":
    main()
