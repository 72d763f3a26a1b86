"""The CPU image for real: built with podman (offline, on a local base image), then the
data_prep and pretrain components run inside it as KFP runs them, with no network, against a
host folder mounted in (docker/image_check.py, `make image-check`).

Skipped only where no container engine is installed and none can be (not root, or no
apt-get). The base image and the wheelhouse are cached by digests of their recipes
(~/.cache/fromscratch/image-check and podman's storage), so only the first run on a machine
pays for debootstrap and the wheel downloads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "docker" / "image_check.py"


def _engine_available() -> bool:
    if shutil.which("podman"):
        return True
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


pytestmark = pytest.mark.skipif(
    not _engine_available(),
    reason="no container engine (podman) here and it cannot be installed (needs root and apt-get)",
)


def test_image_builds_and_runs_pipeline_steps_inside(tmp_path):
    storage = tmp_path / "storage"
    proc = subprocess.run([sys.executable, str(CHECK), "--storage", str(storage), "--steps", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    print(out[-6000:])
    if proc.returncode == 77:
        pytest.skip("no container engine and none can be installed: " + out[-300:])
    assert proc.returncode == 0, out[-4000:]
    for phase in ("engine", "base", "wheels", "build", "inspect", "import", "compile", "data_prep", "pretrain"):
        assert f"image-check: {phase}: " in out, f"phase {phase} did not report"

    # What the steps left in the mounted folder, written by the container's non-root user.
    runs = storage / "runs"
    markers = sorted(p.relative_to(runs) for p in runs.rglob("_COMPLETE"))
    assert markers, f"no _COMPLETE markers under {runs}"
    prep = json.loads((storage / "kfp" / "data_prep" / "executor_output.json").read_text())
    data_uri = prep["artifacts"]["data"]["artifacts"][0]["metadata"]["uri"]
    assert data_uri.startswith("/storage/runs/"), data_uri
    data_dir = storage / data_uri.removeprefix("/storage/")
    assert (data_dir / "_COMPLETE").exists() or any(data_dir.rglob("_COMPLETE")), data_uri

    pre = json.loads((storage / "kfp" / "pretrain" / "executor_output.json").read_text())
    model_uri = pre["artifacts"]["pretrain_model"]["artifacts"][0]["metadata"]["uri"]
    model_dir = storage / model_uri.removeprefix("/storage/")
    assert (model_dir / "_COMPLETE").exists(), f"pretrain checkpoint {model_uri} has no _COMPLETE"
    assert (model_dir / "model.safetensors").exists()
    assert (model_dir / "_COMPLETE").stat().st_uid != 0, "the step ran as root inside the container"


@pytest.mark.slow
def test_image_check_names_a_module_left_out_of_the_image(tmp_path):
    """Break the image the way a careless .dockerignore would: the check must fail and name the
    module. Runs on a copy of this checkout, under its own image name."""
    copy = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, copy / rel)
    with (copy / ".dockerignore").open("a") as fh:
        fh.write("components/common/progress.py\n")
    env = {**os.environ, "REGISTRY": "localhost/broken"}
    proc = subprocess.run([sys.executable, str(copy / "docker" / "image_check.py"), "--storage", str(tmp_path / "s")],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=3600)
    out = proc.stdout + proc.stderr
    print(out[-4000:])
    subprocess.run(["podman", "rmi", "--ignore", "localhost/broken/fromscratch-cpu:0.1.0-nogit"], capture_output=True)
    assert proc.returncode == 1, out[-3000:]
    assert "phase import failed" in out
    assert "do not import inside the image" in out
    assert "components.common.progress: ModuleNotFoundError: No module named 'components.common.progress'" in out
    assert "image-check: data_prep:" not in out  # it stopped before running any step
