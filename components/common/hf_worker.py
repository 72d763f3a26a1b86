"""What every Ray Train worker running a Hugging Face / TRL trainer needs.

TRL trainers do the training; this module only connects them to the rest of the pipeline:
thread count per worker, the starting checkpoint fetched from storage, precision flags decided
from the hardware, the DeepSpeed config, MLflow logging from rank 0, resuming from the
checkpoint Ray Train hands back after a failure, and publishing the final model folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback

from components.common import storage
from components.common.config import Config, ScheduleSettings
from components.common.deepspeed_config import build_deepspeed_config, resolve_precision
from components.common.ds_checkpoint import prepare_resume_config, write_owner
from components.common.metrics_sink import MetricsSink
from components.common.progress import StepTimer
from components.common.scratch import scratch_dir

log = logging.getLogger("fromscratch.worker")


def worker_setup(cfg: Config) -> tuple[int, int]:
    """Threads per worker from the preset; returns (world rank, world size)."""
    import ray.train

    ctx = ray.train.get_context()
    torch.set_num_threads(cfg.ray.torch_threads_per_worker or max(1, int(cfg.ray.cpus_per_worker)))
    return ctx.get_world_rank(), ctx.get_world_size()


def fetch_checkpoint(uri: str) -> Path:
    """A local copy of a finished checkpoint folder (kept for the worker's lifetime)."""
    storage.require_complete(uri, "checkpoint")
    return storage.download_dir(uri, scratch_dir("ckpt"))


def common_training_args(cfg: Config, stage: ScheduleSettings, prefix: str) -> dict[str, Any]:
    """The TrainingArguments every TRL trainer here shares, from a stage's schedule settings
    (steps, lr, warmup, checkpoint and log intervals, and its batch shape). Resuming into another
    number of workers than the checkpoint's switches DeepSpeed to universal checkpoints."""
    ds_config = build_deepspeed_config(cfg.deepspeed, stage.per_device_batch, stage.accumulation, stage.precision)
    prepare_resume_config(ds_config)
    return {
        "output_dir": str(scratch_dir(prefix)),
        "max_steps": stage.steps,
        "per_device_train_batch_size": stage.per_device_batch,
        "gradient_accumulation_steps": stage.accumulation,
        "learning_rate": stage.lr,
        "lr_scheduler_type": "cosine",
        "warmup_steps": stage.warmup_steps,
        "max_grad_norm": cfg.deepspeed.gradient_clipping,
        "logging_steps": stage.log_every,
        "save_strategy": "steps",
        "save_steps": stage.checkpoint_every,
        "save_total_limit": 1,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": cfg.seed,
        "dataloader_num_workers": 0,
        "gradient_checkpointing": stage.gradient_checkpointing,
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if stage.gradient_checkpointing else None,
        "deepspeed": ds_config,
        **trainer_precision_args(cfg, stage.precision),
    }


def load_trainer_model(path: str | Path, args, stage: ScheduleSettings, loader: Callable[..., Any] | None = None):
    """The model a TRL trainer trains, loaded after its arguments: building the arguments with a
    ZeRO-3 DeepSpeed config registers it with transformers (``HfDeepSpeedConfig``), so the model
    is partitioned across the ranks as it loads (``deepspeed.zero.Init``) instead of being built
    whole on every rank first. ``args`` is taken only to make that order explicit."""
    from components.common.modeling import load_model

    if args.deepspeed and args.hf_deepspeed_config.is_zero3():
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        assert is_deepspeed_zero3_enabled(), "the trainer's ZeRO-3 config must be live while the model loads"
    load = loader or load_model
    return load(path, attn_implementation=stage.attn_implementation)


def trainer_precision_args(cfg: Config, stage_precision: str | None = None) -> dict[str, Any]:
    """``use_cpu``/``bf16``/``fp16`` for HF TrainingArguments, decided from the hardware."""
    precision = resolve_precision(cfg.deepspeed, stage_precision)
    return {
        "use_cpu": not torch.cuda.is_available(),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
    }


class MlflowLogCallback(TrainerCallback):
    """Forward the trainer's logs (loss, lr, grad norm, rewards...) to the stage's MLflow run,
    and log a progress line (job, step/max_steps, loss/reward, ETA) for whoever watches."""

    def __init__(self, sink: MetricsSink, prefix: str = "", job: str = "train") -> None:
        self.sink = sink
        self.prefix = prefix
        self.job = job
        self.timer: StepTimer | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # HF hook; global_step is the resume point
        self.timer = StepTimer(state.max_steps, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: D401 - HF hook
        if not logs or not state.is_world_process_zero:
            return
        numeric = {f"{self.prefix}{k}": v for k, v in logs.items() if isinstance(v, (int, float))}
        self.sink.log(numeric, step=state.global_step)
        timer = self.timer or StepTimer(state.max_steps, 0)
        shown = {k: v for k, v in logs.items() if isinstance(v, (int, float)) and k.endswith(("loss", "reward", "kl"))}
        log.info("%s", timer.line(self.job, state.global_step, shown))


class CheckpointOwnerCallback(TrainerCallback):
    """Write ``rank-N.json`` (pid, host, step) into each checkpoint this worker saves, so an
    operator (or a fault-injection test) can tell which process wrote it. Added before Ray's
    report callback, which copies the folder into Ray Train's storage."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_owner(folder, self.rank, state.global_step)


class UntieStepsAfterUniversalLoad(TrainerCallback):
    """The trainer loads its DeepSpeed checkpoint itself, before training begins; after a
    universal load every parameter group's Adam state shares one ``step`` tensor, which each
    group would advance (``ds_checkpoint.untie_step_tensors``)."""

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        from components.common.ds_checkpoint import untie_step_tensors

        if optimizer is not None:
            untie_step_tensors(optimizer)


def add_pipeline_callbacks(trainer, rank: int, config: dict[str, Any]) -> None:
    """MLflow logging, checkpoint ownership, then Ray Train reporting (order matters)."""
    from ray.train.huggingface.transformers import RayTrainReportCallback

    sink = MetricsSink(config.get("tracking_uri"), config.get("mlflow_run_id"), enabled=rank == 0)
    # the checkpoint folder is named after the job (training_stage.checkpoint_uri): "sft", "reward"...
    job = str(config.get("output_uri", "train")).rstrip("/").rsplit("/", 1)[-1]
    trainer.add_callback(MlflowLogCallback(sink, prefix=config.get("metric_prefix", ""), job=job))
    trainer.add_callback(CheckpointOwnerCallback(rank))
    trainer.add_callback(RayTrainReportCallback())


def train_and_publish(
    trainer,
    tokenizer,
    rank: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    extra_fn: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Hook the trainer into the pipeline, train (resuming if Ray restored a checkpoint), and
    publish the final model with its summary (plus ``extra`` and, computed after training,
    ``extra_fn()``)."""
    from ray.train.huggingface.transformers import prepare_trainer

    from components.common.ds_checkpoint import universal_resume_dir, weights_only_loads

    add_pipeline_callbacks(trainer, rank, config)
    trainer = prepare_trainer(trainer)
    resume, start_step = restored_checkpoint()
    ds_config = trainer.args.hf_deepspeed_config.config if trainer.args.deepspeed else {}
    universal = bool(resume and ds_config.get("checkpoint", {}).get("load_universal"))
    if universal:
        universal_resume_dir(resume)  # saved by another number of workers (prepare_resume_config)
        trainer.add_callback(UntieStepsAfterUniversalLoad())
    started = time.perf_counter()
    # resuming reads the checkpoint as data only (weights-only unpickling); nothing else loads then
    with weights_only_loads() if resume else contextlib.nullcontext():
        result = trainer.train(resume_from_checkpoint=resume)
    summary = {
        "train_seconds": time.perf_counter() - started,
        "train_loss": float(result.training_loss),
        "step": trainer.state.global_step,
        "resumed_from": start_step,
        "resumed_universal": universal,
        "train_samples_per_second": float(result.metrics.get("train_samples_per_second", 0.0)),
        **peak_gpu_memory(),
        **(extra or {}),
        **(extra_fn() if extra_fn else {}),
    }
    publish_model(trainer, tokenizer, config["output_uri"], rank, summary)
    return summary


def peak_gpu_memory() -> dict[str, float]:
    """``peak_gpu_memory_gib``: the most GPU memory this worker's tensors held (none on CPU)."""
    if not torch.cuda.is_available():
        return {}
    return {"peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30}


def restored_checkpoint() -> tuple[str | None, int]:
    """The HF checkpoint folder Ray Train restored after a failure (or a re-run), and its step."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, 0
    local = checkpoint.to_directory(str(scratch_dir("restore")))
    path = Path(local) / "checkpoint"
    # the trainer's pickled arguments: never needed to resume, never to be unpickled
    (path / "training_args.bin").unlink(missing_ok=True)
    state = path / "trainer_state.json"
    step = 0
    if state.is_file():
        step = int(json.loads(state.read_text()).get("global_step", 0))
    else:
        match = re.search(r"(\d+)$", str(path))
        step = int(match.group(1)) if match else 0
    log.info("resuming from restored checkpoint at step %d", step)
    return str(path), step


SUMMARY_FILE = "train_summary.json"


def publish_model(trainer, tokenizer, out_uri: str, rank: int, summary: dict[str, Any]) -> None:
    """Write the final Hugging Face folder (safetensors + tokenizer + a training summary)
    from rank 0 to storage. ``trainer.save_model`` gathers ZeRO-3 shards when needed, so
    every rank calls it."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_model(tmp)
        if rank == 0:
            tokenizer.save_pretrained(tmp)
            Path(tmp, "training_args.bin").unlink(missing_ok=True)
            Path(tmp, SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            storage.upload_dir(tmp, out_uri)


def read_summary(out_uri: str) -> dict[str, Any]:
    """What the workers' rank 0 wrote when training ended; a missing file means it did not."""
    uri = storage.join(out_uri, SUMMARY_FILE)
    if not storage.exists(uri):
        raise RuntimeError(f"training ended without publishing its model to {out_uri}")
    return storage.read_json(uri)

