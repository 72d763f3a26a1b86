"""Images, infra scripts and the CI workflow: pinned versions, strict shell, tags that name the code."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from pipelines import cluster_cli
from tests.k8s_helpers import REPO


def test_workflow_copy_is_identical_and_submits():
    source = REPO / "infra" / "github" / "workflows" / "pipeline.yaml"
    assert (REPO / ".github" / "workflows" / "pipeline.yaml").read_text() == source.read_text()
    flow = yaml.safe_load(source.read_text())
    triggers = flow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert triggers["push"]["tags"] == ["v*"] and "workflow_dispatch" in triggers
    steps = [s.get("run", "") for job in flow["jobs"].values() for s in job["steps"]]
    assert any("docker/build.sh all --push" in s for s in steps)
    assert any("fromscratch submit" in s for s in steps)
    assert not any("${{ inputs." in s for s in steps), "inputs must reach scripts through env"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "infra").glob("*.sh")))
def test_infra_scripts_are_strict_and_parse(script):
    path = REPO / "infra" / script
    text = path.read_text()
    assert "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", "-x", script], cwd=path.parent, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


def test_infra_versions_are_pinned():
    versions = (REPO / "infra" / "versions.env").read_text()
    for name in ("KFP_VERSION", "KUBERAY_VERSION", "GPU_OPERATOR_VERSION"):
        match = re.search(rf'{name}:=(v?\d+\.\d+\.\d+)', versions)
        assert match, f"{name} is not pinned to a release"
    for script in (REPO / "infra").glob("install-*.sh"):
        assert "latest" not in script.read_text()


def test_images_take_versions_as_build_args_and_tag_version_and_commit():
    for flavour in ("cpu", "cuda"):
        text = (REPO / "docker" / f"Dockerfile.{flavour}").read_text()
        for arg in ("TORCH_VERSION", "FROMSCRATCH_VERSION", "GIT_COMMIT"):
            assert f"ARG {arg}" in text, (flavour, arg)
        assert "ray[default,train]" in text  # the RayCluster head serves the Jobs API
    proc = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), "--print-tag"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    version = cluster_cli.project_version()
    assert re.fullmatch(rf"{re.escape(version)}-([0-9a-f]{{7}}|nogit)(-dirty)?", proc.stdout.strip()), proc.stdout
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", "fromscratch-runs", ".git"} <= set(ignored)
