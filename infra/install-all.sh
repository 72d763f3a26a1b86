#!/usr/bin/env bash
# Everything a cluster needs before `helm install fromscratch`: KFP, KubeRay and, unless
# WITH_GPU=0, the GPU operator. Each step is idempotent, so re-running converges.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
"$here/install-kfp.sh"
"$here/install-kuberay.sh"
if [ "${WITH_GPU:-1}" != 0 ]; then
  "$here/install-gpu-operator.sh"
fi
log "done: now helm upgrade --install fromscratch helm/fromscratch (see README: Run on a cluster)"
