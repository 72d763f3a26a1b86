#!/usr/bin/env bash
# KubeRay operator (RayCluster, RayJob, RayService CRDs + controller), pinned to
# $KUBERAY_VERSION. Idempotent (helm upgrade --install).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need helm kubectl

log "KubeRay operator $KUBERAY_VERSION in $KUBERAY_NAMESPACE"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
helm repo update kuberay >/dev/null
helm_release kuberay-operator kuberay/kuberay-operator "$KUBERAY_VERSION" "$KUBERAY_NAMESPACE"
kubectl wait --for condition=established --timeout=60s crd/rayclusters.ray.io crd/rayjobs.ray.io
kubectl -n "$KUBERAY_NAMESPACE" get deployments
