# shellcheck shell=bash
# Helpers shared by the install scripts (sourced, not run).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

log() { printf '\n==> %s\n' "$*" >&2; }

need() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing tool: $tool" >&2; exit 1; }
  done
}

# `kubectl create namespace` that is fine when the namespace exists.
ensure_namespace() {
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# helm upgrade --install is idempotent: a second run converges instead of failing.
helm_release() {
  local name="$1" chart="$2" version="$3" namespace="$4"; shift 4
  helm upgrade --install "$name" "$chart" --version "$version" \
    --namespace "$namespace" --create-namespace --wait --timeout "$WAIT_TIMEOUT" "$@"
}
