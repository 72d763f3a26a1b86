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
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

REGISTRY="${REGISTRY:-ghcr.io/fromscratch}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
TORCH_VERSION="${TORCH_VERSION:-$(sed -n 's/^torch==//p' constraints.txt)}"
CUDA_IMAGE="${CUDA_IMAGE:-nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04}"
TORCH_CUDA_INDEX="${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}"
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;8.6;8.9;9.0}"

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
  echo "building ${image}:${tag}" >&2
  docker build -f "docker/Dockerfile.${flavour}" "${tags[@]}" \
    --build-arg "TORCH_VERSION=${TORCH_VERSION}" \
    --build-arg "FROMSCRATCH_VERSION=${version}" \
    --build-arg "GIT_COMMIT=${commit}" \
    "$@" .
  if [ "$push" = 1 ]; then
    docker push "${image}:${tag}"
    if [ "$latest" = 1 ]; then docker push "${image}:${version}"; fi
  fi
  echo "built ${image}:${tag}" >&2
}

if [ "$target" = cpu ] || [ "$target" = all ]; then
  build cpu --build-arg "PYTHON_VERSION=${PYTHON_VERSION}"
fi
if [ "$target" = cuda ] || [ "$target" = all ]; then
  build cuda --build-arg "CUDA_IMAGE=${CUDA_IMAGE}" \
    --build-arg "TORCH_INDEX=${TORCH_CUDA_INDEX}" \
    --build-arg "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}"
fi
