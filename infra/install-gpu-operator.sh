#!/usr/bin/env bash
# NVIDIA GPU operator (driver, container toolkit, device plugin, node labels such as
# nvidia.com/gpu.present=true), pinned to $GPU_OPERATOR_VERSION. Idempotent.
# Nodes with a preinstalled driver: GPU_OPERATOR_ARGS="--set driver.enabled=false".
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need helm kubectl

log "NVIDIA GPU operator $GPU_OPERATOR_VERSION in $GPU_OPERATOR_NAMESPACE"
ensure_namespace "$GPU_OPERATOR_NAMESPACE"
# Its DaemonSets need privileged pods where Pod Security Admission is enforced.
kubectl label --overwrite namespace "$GPU_OPERATOR_NAMESPACE" pod-security.kubernetes.io/enforce=privileged >/dev/null
helm repo add nvidia https://helm.ngc.nvidia.com/nvidia --force-update >/dev/null
helm repo update nvidia >/dev/null
# shellcheck disable=SC2086 # GPU_OPERATOR_ARGS is a list of helm flags
helm_release gpu-operator nvidia/gpu-operator "$GPU_OPERATOR_VERSION" "$GPU_OPERATOR_NAMESPACE" ${GPU_OPERATOR_ARGS:-}

log "GPUs the nodes advertise (may take minutes while drivers install)"
kubectl get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.allocatable.nvidia\.com/gpu'
