#!/usr/bin/env bash
# Kubeflow Pipelines standalone (no full Kubeflow), pinned to $KFP_VERSION. Safe to re-run:
# `kubectl apply` converges. Afterwards the API is http://ml-pipeline.$KFP_NAMESPACE:8888 inside
# the cluster; from a laptop: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 and
# KFP_HOST=http://localhost:8080.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need kubectl

log "Kubeflow Pipelines $KFP_VERSION: cluster-scoped resources"
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
kubectl wait --for condition=established --timeout=60s crd/applications.app.k8s.io

log "Kubeflow Pipelines $KFP_VERSION: platform-agnostic deployment"
kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"

log "waiting for the KFP deployments in $KFP_NAMESPACE"
kubectl -n "$KFP_NAMESPACE" wait --for=condition=available --timeout="$WAIT_TIMEOUT" deployment --all
kubectl -n "$KFP_NAMESPACE" get deployments
