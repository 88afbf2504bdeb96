"""The control room in a real browser (Debian's chromium driven by playwright), against a real
`ftshop up` on free ports. The scenario of issue 17:

open the URL with the token; see six processes up; set store-1 /sell to error p=1; buy one with
ft=true and see its story name the failover; kill exchange-2 from the page and see it restart;
start a 20 s load with ft both and see both series move; run the invariants and see them pass;
without the token, 401. Screenshots go to $OUT (1280x800 and 390x844). Then the CPU the open
page costs the suite (supervisor + six processes, from /proc) is measured and must stay under
2 % of a core.

Usage: control_room.py FTSHOP_BINARY OUT_DIR
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
CPU_LIMIT_PCT = 2.0
CPU_WINDOW_S = float(os.environ.get("CONTROL_ROOM_CPU_WINDOW", "25"))
CPU_ROUNDS = 2


def log(*parts):
    print("[browser]", *parts, flush=True)


def start_suite(binary, data_dir):
    out = open(os.path.join(data_dir, "up.out"), "w")
    proc = subprocess.Popen(
        [binary, "up", "--data-dir", data_dir, "--port-base", "0", "--control-port", "0",
         "--faults", "off", "--logs", "files"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=False)
    deadline = time.time() + 90
    up_path = os.path.join(data_dir, "up.json")
    while time.time() < deadline:
        if proc.poll() is not None:
            failed_start(proc, data_dir, f"ftshop up exited early: {proc.returncode}")
        try:
            up = json.load(open(up_path))
            if up.get("control_room") and all(m.get("pid") for m in up["members"]):
                if "ftshop is up" in open(os.path.join(data_dir, "up.out")).read():
                    return proc, up
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    failed_start(proc, data_dir, "the suite did not come up within 90 s")


def failed_start(proc, data_dir, why):
    """Stops the suite and prints what it said (its output, up.json, each process's last log
    lines and the listening sockets), so a CI log shows why it did not come up."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    log(why, "; what the suite left in", data_dir)
    for name in ["up.out", "up.json"]:
        try:
            log(f"--- {name}\n" + open(os.path.join(data_dir, name)).read())
        except OSError as err:
            log(f"--- {name}: {err}")
    logs = os.path.join(data_dir, "logs")
    for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
        with open(os.path.join(logs, name), errors="replace") as f:
            tail = f.readlines()[-15:]
        log(f"--- logs/{name} (last {len(tail)} lines)\n" + "".join(tail))
    subprocess.run(["ss", "-ltnp"], check=False)
    raise StartFailed(why)


class StartFailed(Exception):
    """`ftshop up` did not come up; its output and logs were printed."""


def status_of(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total


def suite_pids(supervisor):
    pids = [supervisor]
    try:
        children = open(f"/proc/{supervisor}/task/{supervisor}/children").read().split()
    except OSError:
        children = []
    # Each tokio worker thread may be the parent: collect every thread's children.
    for task in os.listdir(f"/proc/{supervisor}/task"):
        try:
            children += open(f"/proc/{supervisor}/task/{task}/children").read().split()
        except OSError:
            pass
    return pids + sorted(set(int(c) for c in children))


def cpu_pct(pids, seconds):
    hz = os.sysconf("SC_CLK_TCK")
    before = cpu_ticks(pids)
    time.sleep(seconds)
    return (cpu_ticks(pids) - before) / hz / seconds * 100


def main():
    binary, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    # One more start, in a fresh data dir, if the first does not come up: a CI run once saw
    # the suite not come up within 90 s, which 100 starts in a row here did not reproduce
    # (each up within 0.5 s). The first attempt's output, up.json, logs and listening sockets
    # are printed above the retry so the cause is in the log; a second failure fails the test.
    for attempt in (1, 2):
        data_dir = tempfile.mkdtemp(prefix="ftshop-browser-")
        try:
            suite, up = start_suite(binary, data_dir)
            break
        except StartFailed as err:
            if attempt == 2:
                raise SystemExit(f"{err} (second attempt)")
            log(f"WARNING: {err}; starting once more in a fresh data dir")
    try:
        run(up, out_dir, suite.pid)
    finally:
        suite.send_signal(signal.SIGTERM)
        try:
            suite.wait(timeout=30)
        except subprocess.TimeoutExpired:
            suite.kill()


def run(up, out_dir, supervisor_pid):
    login = up["control_room"]
    base = login.split("/?token=")[0]
    log("control room at", base)

    # Without the token: 401 for the page, a stream and an action.
    assert status_of(base + "/") == 401, "page without token"
    assert status_of(base + "/api/events") == 401, "stream without token"
    assert status_of(base + "/?token=not-the-token") == 401, "page with a wrong token"
    log("without the token: 401")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda e: log("page error:", e))
        page.on("console", lambda m: m.type == "error" and log("console:", m.text))
        page.goto(login)
        assert "token=" not in page.url, "the token stays out of the address bar"

        # Six processes up.
        rows = page.locator("#proc-table tbody tr")
        expect(rows).to_have_count(6)
        for i in range(6):
            expect(rows.nth(i)).to_contain_text("up")
        log("six processes up")

        # The CPU the open page costs the suite, on the quiet suite (before any purchase, so no
        # backlog drains meanwhile): windows with the page open and streaming alternate with
        # windows without any page, twice (25 s each: shorter windows are too noisy, ecommerce's
        # idle workers alone vary by +-0.5 % of a core), and the averages are compared.
        pids = suite_pids(supervisor_pid)
        page.close()
        samples = {"open": [], "closed": []}
        for _ in range(CPU_ROUNDS):
            time.sleep(1)
            samples["closed"].append(cpu_pct(pids, CPU_WINDOW_S))
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(login)
            expect(page.locator("#proc-table tbody tr")).to_have_count(6)
            time.sleep(1)
            samples["open"].append(cpu_pct(pids, CPU_WINDOW_S))
            page.close()
        idle = sum(samples["closed"]) / len(samples["closed"])
        open_pct = sum(samples["open"]) / len(samples["open"])
        extra = open_pct - idle
        log(f"suite CPU: {idle:.2f} % of a core without the page, {open_pct:.2f} % with it "
            f"open and streaming: +{extra:.2f} % ({len(pids)} processes, "
            f"{CPU_ROUNDS} x {CPU_WINDOW_S:.0f} s each; samples {samples})")
        with open(os.path.join(out_dir, "cpu.json"), "w") as f:
            json.dump({"idle_pct": idle, "page_open_pct": open_pct, "extra_pct": extra,
                       "window_s": CPU_WINDOW_S, "windows": CPU_ROUNDS, "processes": len(pids),
                       "samples": samples}, f)
        assert extra < CPU_LIMIT_PCT, f"the open page costs {extra:.2f} % of a core"
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(20_000)
        page.on("pageerror", lambda e: log("page error:", e))
        page.goto(login)
        expect(page.locator("#proc-table tbody tr")).to_have_count(6)

        # store-1 /sell error p=1.
        form = page.locator("#rule-form")
        form.get_by_label("Service").select_option("store")
        form.get_by_label("Replica").select_option("store-1")
        form.get_by_label("Route").fill("/sell")
        form.get_by_label("Method").select_option("POST")
        form.get_by_label("Kind").select_option("error")
        form.get_by_label("Probability (0–1)").fill("1")
        form.get_by_role("button", name="Apply rule").click()
        expect(page.locator("#notice")).to_contain_text("rule error /sell on store-1: done")
        expect(page.locator("#fault-tables")).to_contain_text("error POST /sell, p=1, only store-1")
        log("store-1 POST /sell error p=1 set")

        # Buy one with ft=true until a purchase meets store-1 first: its story names the
        # failover (round robin picks store-1 or store-2 first).
        buy = page.locator("#buy-form")
        buy.get_by_label("User").fill("browser-buyer")
        buy.get_by_label("Fault tolerance (ft)").check()
        story = page.locator("#buy-result")
        named = False
        for attempt in range(8):
            buy.get_by_role("button", name="Buy").click()
            expect(story).to_contain_text("Story of this purchase")
            text = story.inner_text()
            assert "Answered 200" in text or "Answered 202" in text, text
            if "failover" in text:
                named = True
                break
            page.wait_for_timeout(150 * (attempt % 3))
        assert named, f"no story named the failover: {story.inner_text()}"
        assert re.search(r"store-1 server error → store-2", story.inner_text()), story.inner_text()
        story.screenshot(path=os.path.join(out_dir, "story.png"))
        log("the story names the failover")

        # Kill exchange-2 from the page; it shows crashed, then up again with one restart.
        page.get_by_role("button", name="Kill exchange-2 (SIGKILL)").click()
        row = page.locator("#proc-table tbody tr", has_text="exchange-2")
        expect(row).to_contain_text(re.compile("crashed|restarting"), timeout=2_000)
        expect(row.locator("td").nth(2)).to_have_text("1", timeout=20_000)
        expect(row).to_contain_text("up", timeout=30_000)
        log("exchange-2 killed and restarted")

        # A 20 s load with ft both: both series move.
        load = page.locator("#load-form")
        load.get_by_label("Users").fill("8")
        load.get_by_label("Think time (ms)").fill("100")
        load.get_by_label("Fault tolerance").select_option("both")
        load.get_by_label("Duration (s)").fill("20")
        load.get_by_role("button", name="Start load").click()
        expect(page.locator("#load-status")).to_contain_text("Load running")
        table = page.locator("#load-table tbody")

        def totals():
            out = {}
            for r in table.locator("tr").all():
                cells = r.locator("th, td").all_inner_texts()
                out[cells[0]] = sum(int(c) for c in cells[1:6])
            return out

        page.wait_for_timeout(5_000)
        first = totals()
        page.wait_for_timeout(4_000)
        second = totals()
        log("load totals", first, "then", second)
        assert set(second) == {"on", "off"}, second
        for ft in ("on", "off"):
            assert second[ft] > first.get(ft, 0) > 0, f"ft {ft} series did not move"
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(1_500)
        page.screenshot(path=os.path.join(out_dir, "control-room-full.png"), full_page=True)
        page.locator("#traffic").scroll_into_view_if_needed()
        page.screenshot(path=os.path.join(out_dir, "control-room-1280x800.png"), full_page=False)
        expect(page.locator("#load-status")).to_contain_text("Load finished", timeout=60_000)
        log("load finished")

        # Faults off, then the invariants pass.
        page.get_by_role("button", name=re.compile("^Faults off")).click()
        expect(page.locator("#fault-tables")).not_to_contain_text("error POST /sell")
        page.get_by_role("button", name="Run the invariants").click()
        expect(page.locator("#check-result")).to_contain_text("All invariants hold", timeout=90_000)
        page.locator("#invariants").screenshot(path=os.path.join(out_dir, "invariants.png"))
        log("invariants hold")

        # Phone width.
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(login)
        expect(phone.locator("#proc-table tbody tr")).to_have_count(6)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width} px wide at 390 px"
        phone.screenshot(path=os.path.join(out_dir, "control-room-390x844.png"))
        phone.close()

        # A fresh browser (no cookie) gets 401 too.
        stranger = browser.new_context().new_page()
        response = stranger.goto(base + "/")
        assert response.status == 401, response.status
        stranger.close()
        log("a browser without the token: 401")

        browser.close()
    log("PASS")


if __name__ == "__main__":
    main()
