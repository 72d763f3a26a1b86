#!/usr/bin/env bash
# Build (and optionally push) the project images, tagged <project version>-<git commit>.
#
#   docker/build.sh [cpu|cuda|all] [--push] [--latest]
#   docker/build.sh --print-tag        # just the tag this checkout builds
#
# REGISTRY (default ghcr.io/fromscratch) names the repository; images are
# $REGISTRY/fromscratch-cpu and $REGISTRY/fromscratch-cuda. The tag pins the exact code a
# pipeline run used: CI passes it on with `fromscratch submit --set pipeline.base_image=...`.
# --latest also tags <project version> (what the presets name) and moves it on --push.
# Versions of the base image and torch are build args here, overridable from the environment.
#
# Other engines and offline builds (what `make image-check` uses):
#   CONTAINER_ENGINE=podman   build with podman instead of the docker CLI
#   BASE_IMAGE=<image>        the CPU image's base instead of python:$PYTHON_VERSION-slim
#   WHEELHOUSE=<dir>          install every wheel from <dir>, mounted read-only at build time
#                             (podman/buildah only); no package index is contacted
#   BUILD_NETWORK=none        build without any network (with WHEELHOUSE and a local base)
#   DS_BUILD_FUSED_ADAM=0     CUDA image without DeepSpeed's prebuilt fused Adam (no nvcc)
#   VLLM_REQUIREMENT=, FLASH_ATTN_REQUIREMENT=   CUDA image without vLLM / flash-attn (CUDA-only wheels)
# After a build it prints the build time and the image size.
set -euo pipefail

cd "$(dirname "$0")/.."

target="all"
push=0
latest=0
print_tag=0
for arg in "$@"; do
  case "$arg" in
    cpu|cuda|all) target="$arg" ;;
    --push) push=1 ;;
    --latest) latest=1 ;;
    --print-tag) print_tag=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

REGISTRY="${REGISTRY:-ghcr.io/fromscratch}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
TORCH_VERSION="${TORCH_VERSION:-$(sed -n 's/^torch==//p' constraints.txt)}"
CUDA_IMAGE="${CUDA_IMAGE:-nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04}"
TORCH_CUDA_INDEX="${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}"
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;8.6;8.9;9.0}"
ENGINE="${CONTAINER_ENGINE:-docker}"
BASE_IMAGE="${BASE_IMAGE:-}"
WHEELHOUSE="${WHEELHOUSE:-}"
BUILD_NETWORK="${BUILD_NETWORK:-}"

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)"
[ -n "$version" ] || { echo "build.sh: no version in pyproject.toml" >&2; exit 1; }
commit="$(git rev-parse --short=7 HEAD 2>/dev/null || echo nogit)"
if [ -n "$(git status --porcelain 2>/dev/null || true)" ]; then
  commit="${commit}-dirty"   # never let an uncommitted build pass for a commit's image
fi
tag="${version}-${commit}"
if [ "$print_tag" = 1 ]; then echo "$tag"; exit 0; fi

build() {
  local flavour="$1"; shift
  local image="${REGISTRY}/fromscratch-${flavour}"
  local tags=(-t "${image}:${tag}")
  if [ "$latest" = 1 ]; then tags+=(-t "${image}:${version}"); fi
  local extra=()
  if [ -n "$WHEELHOUSE" ]; then
    case "$ENGINE" in
      podman|buildah) ;;
      *) echo "build.sh: WHEELHOUSE needs CONTAINER_ENGINE=podman (a volume at build time)" >&2; exit 2 ;;
    esac
    [ -d "$WHEELHOUSE" ] || { echo "build.sh: no wheelhouse at $WHEELHOUSE" >&2; exit 2; }
    extra+=(--volume "$(cd "$WHEELHOUSE" && pwd):/wheelhouse:ro" --build-arg "PIP_WHEELHOUSE=/wheelhouse")
  fi
  if [ -n "$BUILD_NETWORK" ]; then extra+=("--network=${BUILD_NETWORK}"); fi
  echo "building ${image}:${tag} with ${ENGINE}" >&2
  local start=$SECONDS
  "$ENGINE" build -f "docker/Dockerfile.${flavour}" "${tags[@]}" \
    --build-arg "TORCH_VERSION=${TORCH_VERSION}" \
    --build-arg "FROMSCRATCH_VERSION=${version}" \
    --build-arg "GIT_COMMIT=${commit}" \
    ${extra[@]+"${extra[@]}"} "$@" .
  local size
  size="$("$ENGINE" image inspect --format '{{.Size}}' "${image}:${tag}" 2>/dev/null || echo 0)"
  echo "built ${image}:${tag} in $((SECONDS - start)) s, $((size / 1000000)) MB" >&2
  if [ "$push" = 1 ]; then
    "$ENGINE" push "${image}:${tag}"
    if [ "$latest" = 1 ]; then "$ENGINE" push "${image}:${version}"; fi
  fi
}

if [ "$target" = cpu ] || [ "$target" = all ]; then
  if [ -n "$BASE_IMAGE" ]; then
    build cpu --build-arg "PYTHON_VERSION=${PYTHON_VERSION}" --build-arg "BASE_IMAGE=${BASE_IMAGE}"
  else
    build cpu --build-arg "PYTHON_VERSION=${PYTHON_VERSION}"
  fi
fi
if [ "$target" = cuda ] || [ "$target" = all ]; then
  build cuda --build-arg "CUDA_IMAGE=${CUDA_IMAGE}" \
    --build-arg "TORCH_INDEX=${TORCH_CUDA_INDEX}" \
    --build-arg "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}" \
    --build-arg "DS_BUILD_FUSED_ADAM=${DS_BUILD_FUSED_ADAM:-1}" \
    --build-arg "VLLM_REQUIREMENT=${VLLM_REQUIREMENT-vllm==0.33.*}" \
    --build-arg "FLASH_ATTN_REQUIREMENT=${FLASH_ATTN_REQUIREMENT-flash-attn==2.8.3}"
fi
