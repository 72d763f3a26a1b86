"""What a submitted stage runs on the cluster: ``python -m components.common.ray_job_entry run
<request-uri>``.

It reads the request file, calls the stage's ``ray_launch.fit`` as a Ray driver on the
cluster's own Ray (``IN_JOB_ENV`` stops it from submitting again) and writes the result file
the task pod reads back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any

from components.common import ray_launch, storage
from components.common.config import Config
from components.common.logs import setup_logging
from components.common.ray_env import IN_JOB_ENV
from components.common.ray_job_files import resolve_function

log = logging.getLogger(__name__)


def run_request(uri: str) -> int:
    """What the cluster runs: the stage's ``ray_launch.fit`` as a driver on the cluster's Ray."""
    setup_logging()
    os.environ[IN_JOB_ENV] = "1"
    req = json.loads(storage.read_text(uri))
    here = os.environ.get("FROMSCRATCH_IMAGE")
    if here and req.get("image") and here != req["image"]:
        # jobs mode runs the RayCluster's image, not the task's: say so when they differ.
        log.warning("this Ray cluster runs image %s, the pipeline was compiled for %s", here, req["image"])
    cfg = Config.from_json(req["config"])
    cfg.ray.address = None  # the job supervisor's RAY_ADDRESS is this cluster
    payload: dict[str, Any] = {"error": None, "metrics": {}, "checkpoint_path": None}
    try:
        result = ray_launch.fit(
            resolve_function(req["train_fn"]), req["loop_config"], cfg, req["name"], req["storage_uri"]
        )
        payload["metrics"] = dict(result.metrics or {})
        payload["checkpoint_path"] = result.checkpoint.path if result.checkpoint else None
        if result.error:
            payload["error"] = f"{type(result.error).__name__}: {result.error}"
    except Exception as err:  # noqa: BLE001 - reported to the task pod, then the job fails
        payload["error"] = f"{type(err).__name__}: {err}"
        payload["traceback"] = traceback.format_exc()
        traceback.print_exc()
    storage.write_text(req["result_uri"], json.dumps(payload, indent=2, default=str))
    return 1 if payload["error"] else 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "run":
        print("usage: python -m components.common.ray_job_entry run <request-uri>", file=sys.stderr)
        return 2
    return run_request(args[1])


if __name__ == "__main__":
    sys.exit(main())
