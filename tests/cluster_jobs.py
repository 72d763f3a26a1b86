"""Small functions the cluster tests run: a training function for ``ray_job_entry.run_request``
and a KFP component body.

They live in their own light module because Ray workers import the training function by
reference (the test module pulls in Helm and the Kubernetes validators, which workers do not
need), and because KFP reads a component's annotations as types, so this module must not use
``from __future__ import annotations``.
"""

from typing import Any


def echo(text: str) -> str:
    """A KFP component body that does nothing, to carry task settings through compilation."""
    return text


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


def placement_pipeline(cfg: Any, stages: tuple):
    """A pipeline of one ``echo`` task per stage name, each placed by ``configure_task``."""
    from kfp import dsl

    from pipelines.cluster import configure_task

    op = dsl.component(base_image=cfg.pipeline.base_image, install_kfp_package=False)(echo)

    @dsl.pipeline(name="placement-check")
    def placement_check(text: str = "hi"):
        for stage in stages:
            task = op(text=text).set_display_name(stage)
            task.set_caching_options(False)
            configure_task(task, cfg, stage)

    return placement_check
