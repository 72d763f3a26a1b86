"""A training function small enough to run through ``ray_cluster.run_request`` in a test.

It lives in its own light module because Ray workers import the function by reference: the
test module itself pulls in Helm and the Kubernetes validators, which workers do not need.
"""

from __future__ import annotations

from typing import Any


def tiny_train_loop(config: dict[str, Any]) -> None:
    """Report one metric per rank-0 step and a checkpoint at the end, like a real stage does."""
    import json
    import os
    import tempfile

    import ray.train

    ctx = ray.train.get_context()
    for step in range(config["steps"]):
        ray.train.report({"step": step, "loss": 1.0 / (step + 1)})
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "state.json"), "w") as fh:
            json.dump({"rank": ctx.get_world_rank(), "steps": config["steps"]}, fh)
        ray.train.report({"step": config["steps"], "final": True}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def failing_train_loop(config: dict[str, Any]) -> None:
    raise ValueError(config.get("message", "boom"))
