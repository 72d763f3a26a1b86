"""MLflow lineage: one parent run per pipeline run, one child run per stage, one LoggedModel
per checkpoint.

Lineage uses MLflow's own records, not a side table: each stage run logs the checkpoint it
started from as a *model input* and its datasets as *dataset inputs*, and the checkpoint it
produces is a LoggedModel whose ``source_run_id`` is that stage run. Walking from any model to
its source run, then to that run's model input, and so on, ends at the random-init model.
The tags ``fromscratch.parent_model_id`` / ``fromscratch.checkpoint_uri`` repeat the
essentials so a person can read the chain in the UI without following links.

Runs are found again by tags (``fromscratch.run_id`` and ``fromscratch.stage``), so a re-run
of an interrupted pipeline reuses its MLflow runs instead of scattering new ones.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from components.common import storage
from components.common.config import Config

log = logging.getLogger(__name__)

TAG_RUN_ID = "fromscratch.run_id"
TAG_STAGE = "fromscratch.stage"
TAG_PARENT_MODEL = "fromscratch.parent_model_id"
TAG_CHECKPOINT = "fromscratch.checkpoint_uri"
TAG_DATASETS = "fromscratch.datasets"
TAG_REWARD_MODEL = "fromscratch.reward_model_id"  # on a PPO policy: the reward model it was trained against
VOTES_DATASET = "preference-votes"  # data_prep's votes snapshot (components/data_prep/votes.py)
VOTES_SESSIONS_FILE = "votes.sessions.json"  # beside the snapshot: the labelling sessions
PARENT_RUN_TAG = "mlflow.parentRunId"


def version_model_id(version: Any) -> str:
    """The LoggedModel behind a model-registry version (``model_id``, else its ``models:/`` source)."""
    return getattr(version, "model_id", None) or str(version.source).removeprefix("models:/")


def resolve_tracking_uri(cfg: Config) -> str:
    """The configured URI, else a SQLite file beside a local storage root."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if storage.is_remote(cfg.storage.root):
        raise ValueError(
            "tracking.uri must be set when storage.root is remote "
            f"({cfg.storage.root}); SQLite needs a local file"
        )
    root = Path(storage.normalize(cfg.storage.root))
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_location(cfg: Config, tracking_uri: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: a tracking *server* (http/https, Databricks)
    decides itself; a database or folder store (SQLite, ``file:``) has no artifact root of its
    own, and MLflow would fall back to ``./mlruns`` of whatever directory the process runs
    in, so the experiment is created with ``<storage.root>/mlartifacts`` instead."""
    uri = tracking_uri or resolve_tracking_uri(cfg)
    scheme = uri.split("://", 1)[0].split(":", 1)[0].lower() if ":" in uri else ""
    if scheme in ("http", "https", "databricks", "databricks-uc", "uc"):
        return None  # the tracking server decides
    return storage.join(storage.normalize(cfg.storage.root), "mlartifacts")


_GLOBAL_URI_LOCK = threading.Lock()


@contextmanager
def _mlflow_global_tracking_uri(uri: str) -> Iterator[None]:
    """For one MLflow call that only reads the *global* tracking URI, point it at ``uri`` and
    put back exactly what was there (the module's URI and ``MLFLOW_TRACKING_URI``) afterwards."""
    from mlflow.tracking._tracking_service import utils

    with _GLOBAL_URI_LOCK:
        old_uri, old_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        try:
            utils.set_tracking_uri(uri)
            yield
        finally:
            utils.set_tracking_uri(old_uri)
            if old_env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = old_env


def _make_client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri`` that never relies on the process-wide tracking URI."""
    from mlflow import MlflowClient

    class Client(MlflowClient):
        def create_model_version(self, *args: Any, **kwargs: Any) -> Any:
            # MLflow's SQL model registry looks a ``models:/<model id>`` source up with a
            # default MlflowClient(), i.e. through the global tracking URI (a TODO in MLflow):
            # give it this client's URI for the duration of the call only.
            with _mlflow_global_tracking_uri(self.tracking_uri):
                return super().create_model_version(*args, **kwargs)

    return Client(tracking_uri=uri)


@dataclass(frozen=True)
class DatasetRef:
    """A dataset as lineage sees it: where it is and what exactly it contains."""

    name: str
    uri: str
    digest: str
    context: str  # "training" / "evaluation"


class Tracker:
    """Thin layer over ``MlflowClient`` with the project's naming and lineage rules."""

    def __init__(self, cfg: Config) -> None:
        # An explicit client only: no mlflow.set_tracking_uri, which would change the tracking
        # URI (and MLFLOW_TRACKING_URI) of the whole process as a side effect.
        self.uri = resolve_tracking_uri(cfg)
        self.client = _make_client(self.uri)
        experiment = self.client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                cfg.tracking.experiment, artifact_location=default_artifact_location(cfg, self.uri)
            )
        else:
            self.experiment_id = experiment.experiment_id
        self.log_artifacts = cfg.tracking.log_model_artifacts

    # -- runs ---------------------------------------------------------------------------
    def _find_run(self, filter_string: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=filter_string, max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def pipeline_run(self, run_id: str, params: dict[str, Any] | None = None) -> str:
        """The parent MLflow run of a pipeline run, created on first use."""
        found = self._find_run(f"tags.`{TAG_RUN_ID}` = '{run_id}' and tags.`{TAG_STAGE}` = 'pipeline'")
        if found:
            return found
        run = self.client.create_run(
            self.experiment_id, run_name=f"pipeline-{run_id}",
            tags={TAG_RUN_ID: run_id, TAG_STAGE: "pipeline"},
        )
        for key, value in (params or {}).items():
            self.client.log_param(run.info.run_id, key, str(value)[:6000])
        return run.info.run_id

    def stage_run(self, parent_run_id: str, run_id: str, stage: str) -> str:
        """The child run of one stage; a re-run of the stage reopens the same run."""
        found = self._find_run(f"tags.`{TAG_RUN_ID}` = '{run_id}' and tags.`{TAG_STAGE}` = '{stage}'")
        if found:
            self.client.update_run(found, status="RUNNING")
            return found
        run = self.client.create_run(
            self.experiment_id, run_name=stage,
            tags={TAG_RUN_ID: run_id, TAG_STAGE: stage, PARENT_RUN_TAG: parent_run_id},
        )
        return run.info.run_id

    def retire_stage_runs(self, run_id: str, stages: list[str]) -> list[str]:
        """Set aside the MLflow runs of ``stages`` in pipeline run ``run_id`` (their stage tag
        becomes ``<stage>.replaced``), so a stage that runs again with other settings opens a
        fresh MLflow run (parameters cannot be overwritten) instead of reopening the old one.
        Their models stay, with lineage to the runs that made them; returns the runs set aside."""
        retired = []
        for stage in stages:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}' and tags.`{TAG_STAGE}` = '{stage}'",
            )
            for run in runs:
                self.client.set_tag(run.info.run_id, TAG_STAGE, f"{stage}.replaced")
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, status="KILLED")
                retired.append(run.info.run_id)
        return retired

    def end_run(self, mlflow_run_id: str, ok: bool) -> None:
        self.client.set_terminated(mlflow_run_id, status="FINISHED" if ok else "FAILED")

    def log_params(self, mlflow_run_id: str, params: dict[str, Any]) -> None:
        existing = self.client.get_run(mlflow_run_id).data.params
        for key, value in params.items():
            if key not in existing:
                self.client.log_param(mlflow_run_id, key, str(value)[:6000])

    def log_metrics(self, mlflow_run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.client.log_metric(mlflow_run_id, key, float(value), step=step or 0)

    def log_text(self, mlflow_run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(mlflow_run_id, text, artifact_file)

    # -- lineage ------------------------------------------------------------------------
    def log_datasets(self, mlflow_run_id: str, datasets: list[DatasetRef]) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for ref in datasets:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways" for paths
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(ref.uri)
            # MLflow caps digests at 36 characters; 32 hex digits of SHA-256 are plenty.
            ds = MetaDataset(source=source, name=ref.name, digest=ref.digest[:32])
            inputs.append(
                DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", ref.context)])
            )
        self.client.log_inputs(mlflow_run_id, datasets=inputs)

    def log_model_inputs(self, mlflow_run_id: str, model_ids: list[str]) -> None:
        """Record models a run used (e.g. the reward model PPO trained against) as its model inputs."""
        from mlflow.entities import LoggedModelInput

        ids = [m for m in model_ids if m]
        if ids:
            self.client.log_inputs(mlflow_run_id, models=[LoggedModelInput(m) for m in ids])

    def log_checkpoint(
        self,
        mlflow_run_id: str,
        stage: str,
        checkpoint_uri: str,
        local_dir: str | Path | None,
        parent_model_id: str | None,
        datasets: list[DatasetRef],
        params: dict[str, Any] | None = None,
        model_type: str = "causal-lm",
    ) -> str:
        """Record a finished checkpoint as a LoggedModel; returns its model id."""
        from mlflow.entities import LoggedModelInput, LoggedModelStatus

        if parent_model_id:
            self.client.log_inputs(mlflow_run_id, models=[LoggedModelInput(parent_model_id)])
        tags = {
            TAG_STAGE: stage,
            TAG_CHECKPOINT: checkpoint_uri,
            TAG_PARENT_MODEL: parent_model_id or "",
            TAG_DATASETS: ",".join(f"{d.name}@{d.digest[:12]}" for d in datasets),
        }
        model = self.client.create_logged_model(
            self.experiment_id, name=f"{stage}", source_run_id=mlflow_run_id, tags=tags,
            params={k: str(v) for k, v in (params or {}).items()}, model_type=model_type,
        )
        if self.log_artifacts and local_dir is not None:
            self.client.log_model_artifacts(model.model_id, str(local_dir))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def lineage(self, model_id: str) -> list[dict[str, Any]]:
        """The chain from ``model_id`` back to random init, newest first.

        Each step follows MLflow's own links: model → its source run → that run's model input
        (the one the model's parent tag names, where the run has several).
        """
        chain: list[dict[str, Any]] = []
        seen: set[str] = set()
        current: str | None = model_id
        while current and current not in seen:
            seen.add(current)
            model = self.client.get_logged_model(current)
            run = self.client.get_run(model.source_run_id) if model.source_run_id else None
            datasets = []
            parent: str | None = None
            if run is not None:
                datasets = [
                    f"{d.dataset.name}@{d.dataset.digest[:12]} ({d.dataset.source})"
                    for d in run.inputs.dataset_inputs
                ]
                model_inputs = [m.model_id for m in (run.inputs.model_inputs or [])]
                # the model's own parent tag decides when a stage run has several model
                # inputs (e.g. the preference run: SFT policy and reward model)
                tagged = model.tags.get(TAG_PARENT_MODEL) or None
                parent = tagged if tagged in model_inputs else (model_inputs[0] if model_inputs else None)
            link = {
                "model_id": model.model_id,
                "stage": model.tags.get(TAG_STAGE, model.name),
                "checkpoint_uri": model.tags.get(TAG_CHECKPOINT, ""),
                "source_run_id": model.source_run_id,
                "datasets": datasets,
                "parent_model_id": parent,
            }
            reward_id = model.tags.get(TAG_REWARD_MODEL)
            if reward_id and run is not None and reward_id in [m.model_id for m in (run.inputs.model_inputs or [])]:
                link["reward_model"] = self.reward_lineage(reward_id)
            chain.append(link)
            current = parent
        return chain

    def reward_lineage(self, model_id: str) -> dict[str, Any]:
        """A reward model, the votes snapshot among its run's dataset inputs (digest, source)
        and the labelling sessions that snapshot lists."""
        import json

        model = self.client.get_logged_model(model_id)
        run = self.client.get_run(model.source_run_id)
        out: dict[str, Any] = {
            "model_id": model_id, "checkpoint_uri": model.tags.get(TAG_CHECKPOINT, ""),
            "source_run_id": model.source_run_id, "params": {k: v for k, v in model.params.items() if k == "init_from"},
            "votes": None,
        }
        for d in run.inputs.dataset_inputs:
            if d.dataset.name != VOTES_DATASET:
                continue
            try:
                uri = json.loads(d.dataset.source).get("uri") or json.loads(d.dataset.source).get("path", "")
            except (ValueError, AttributeError):
                uri = str(d.dataset.source)
            votes: dict[str, Any] = {"digest": d.dataset.digest, "uri": uri, "sessions": []}
            sessions_uri = storage.join(uri.rsplit("/", 1)[0], VOTES_SESSIONS_FILE) if uri else ""
            if sessions_uri and storage.exists(sessions_uri):
                votes["sessions"] = storage.read_json(sessions_uri)
            out["votes"] = votes
        return out

    def find_model(self, run_id: str, stage: str) -> str | None:
        """The newest ready LoggedModel of a stage in a pipeline run."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TAG_RUN_ID}` = '{run_id}'",
        )
        run_ids = {r.info.run_id for r in runs}
        models = self.client.search_logged_models(
            [self.experiment_id], filter_string=f"name = '{stage}'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        )
        for model in models:
            if model.source_run_id in run_ids and str(model.status).endswith("READY"):
                return model.model_id
        return None
