#!/usr/bin/env bash
# What `make run` and `make test` need from the system, installed from Debian's packages when missing:
#   dev/system-packages.sh run    Java and Maven (the Kafka broker), PostgreSQL, python3-venv
#   dev/system-packages.sh test   the same, plus openssl (throw-away certificates in the security tests)
#                                 and chromium (the dashboard rendered in a real browser)
# Nothing is installed when everything is present. Installing needs root (or sudo without a password).
set -euo pipefail

what="${1:-run}"
need=()
command -v java >/dev/null || need+=(default-jdk-headless)
command -v mvn >/dev/null || need+=(maven)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v python3 >/dev/null || need+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [[ "$what" == test ]]; then
  command -v openssl >/dev/null || need+=(openssl)
  command -v chromium >/dev/null || [[ -n "${CHROMIUM:-}" ]] || need+=(chromium)
fi
# kubectl renders the Kubernetes manifests in tests/unit/test_deploy_manifests.py when the apt sources carry
# it (Debian 12 does not: the test then renders the kustomization in Python; it never skips).
optional=()
if [[ "$what" == test ]] && ! command -v kubectl >/dev/null && apt-cache show kubectl >/dev/null 2>&1; then
  optional+=(kubectl)
fi
((${#need[@]} + ${#optional[@]})) || exit 0
need+=("${optional[@]}")

echo "[setup] installing ${need[*]} from Debian's packages" >&2
if [[ "$(id -u)" == 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "[setup] missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root" >&2
  exit 1
fi
"${sudo[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${need[@]}"
