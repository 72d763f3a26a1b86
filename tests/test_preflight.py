"""Preflight without any service: what is closed or unwritable is one clear sentence, fast.
(Against the real S3 and tracking server: tests/test_stack.py.)"""

from __future__ import annotations

import os
import time

import pytest

from components.common import preflight
from components.common.preflight import PreflightError
from pipelines.local_stack import free_ports


def test_local_storage_is_created_and_written(tmp_path):
    root = tmp_path / "runs"
    assert "writable" in preflight.check_storage(str(root))
    assert root.is_dir() and not any(root.iterdir())  # the probe is gone again


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_local_storage(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PreflightError, match="not writable"):
            preflight.check_storage(str(tmp_path / "runs"))
    finally:
        tmp_path.chmod(0o700)


def test_closed_ports_are_named_quickly(monkeypatch):
    (port,) = free_ports(1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    started = time.perf_counter()
    with pytest.raises(PreflightError) as s3:
        preflight.check_storage("s3://bucket/runs", f"http://127.0.0.1:{port}")
    with pytest.raises(PreflightError) as tracking:
        preflight.check_tracking(f"http://127.0.0.1:{port}")
    with pytest.raises(PreflightError) as ray:
        preflight.check_ray(f"127.0.0.1:{port}")
    assert time.perf_counter() - started < 20  # no long retry loops
    assert f"S3 endpoint http://127.0.0.1:{port} is not reachable" in str(s3.value)
    assert f"tracking server http://127.0.0.1:{port} is not reachable" in str(tracking.value)
    assert f"Ray at 127.0.0.1:{port} is not reachable" in str(ray.value)


def test_no_ray_address_means_local_ray():
    assert "local Ray" in preflight.check_ray(None)


def test_run_preflight_lists_every_problem(make_config, monkeypatch):
    (port,) = free_ports(1)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = make_config(f"tracking.uri=http://127.0.0.1:{port}", f"ray.address=127.0.0.1:{port}")
    with pytest.raises(PreflightError) as err:
        preflight.run_preflight(cfg)
    assert [p.split(":", 1)[0] for p in err.value.problems] == ["tracking", "ray"]


def test_remote_storage_needs_a_tracking_uri(make_config, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    (port,) = free_ports(1)
    cfg = make_config("storage.root=s3://bucket/runs", f"storage.s3_endpoint_url=http://127.0.0.1:{port}")
    with pytest.raises(PreflightError) as err:
        preflight.run_preflight(cfg)
    text = str(err.value)
    assert "storage: S3 endpoint" in text and "tracking: tracking.uri must be set" in text
