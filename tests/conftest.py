"""Shared fixtures: a throw-away storage root per test, small configs, one local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from components.common.config import Config, load_config  # noqa: E402

# Small enough for seconds-long stages, big enough that training visibly learns.
SMALL = [
    "data.generated.num_train_docs=1500",
    "data.generated.num_heldout_docs=120",
    "model.hidden_size=64",
    "model.intermediate_size=192",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=4",
    "model.max_seq_len=128",
    "evaluate.max_eval_blocks=16",
    "evaluate.max_new_tokens=12",
]


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(*overrides)`` → a tiny-preset Config writing under this test's tmp dir."""

    def factory(*overrides: str) -> Config:
        cfg = load_config("tiny", [f"storage.root={tmp_path / 'runs'}", *SMALL, *overrides])
        return cfg

    return factory


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray per test module that trains; stopped afterwards so no workers linger."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True)  # never a stray `ray start` cluster
    yield
    ray.shutdown()


@pytest.fixture()
def clean_env(monkeypatch):
    """No MLFLOW_TRACKING_URI from the caller's environment during the test, and none left
    behind by it (the original value, if any, comes back afterwards)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
