"""Training metrics from inside Ray workers into the stage's MLflow run.

The driver opens the stage's MLflow run and passes its id; only world rank 0 logs, through
``MlflowClient`` (no global "active run" state shared between workers).
"""

from __future__ import annotations

import time


class MetricsSink:
    """Rank 0's MLflow logging into the stage run the driver opened (run id passed in)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, enabled: bool):
        self.client = None
        self.run_id = run_id
        if enabled and tracking_uri and run_id:
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
        )
