"""Pre-training throughput: the real Ray Train + DeepSpeed path against a bare PyTorch loop.

Why this exists: Ray Train and DeepSpeed buy fault tolerance, checkpoint/resume and the same
code on a laptop and a cluster, but on a 2-core machine every gloo all-reduce, every extra
process and every ZeRO bookkeeping step is paid out of the same two cores the model uses.
This script puts a number on that price. It runs

* ``run_pretrain`` exactly as the pipeline does (Ray Train workers, DeepSpeed engine,
  checkpoints, MLflow lineage), and
* a bare single-process loop doing the same arithmetic: the same random-init weights (same
  seed and tokenizer), the same global batch of packed blocks in the same order (the
  project's ``BlockSampler`` collapsed to one rank), the same AdamW groups, learning-rate
  schedule and gradient clipping, the same number of steps, and as many torch threads as
  the Ray workers have together,

and prints the throughput of both, measured identically (per-step wall time, the first two
steps left out as warm-up), their ratio, the end-to-end wall seconds of each (where Ray's
start-up shows) and both final losses (so one can see both actually trained).

Usage::

    python benchmarks/pretrain_throughput.py [--steps N] [--preset tiny] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# ``python benchmarks/x.py`` puts benchmarks/ on sys.path, not the repository root; add it so
# the script also works from a checkout whose package is not installed in editable mode.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from components.common import storage  # noqa: E402
from components.common.config import Config, load_config  # noqa: E402
from components.common.modeling import count_parameters, load_tokenizer, random_init_model  # noqa: E402
from components.data_prep.shards import read_split  # noqa: E402
from components.pretrain.train_loop import BlockSampler, build_optimizer, lr_lambda  # noqa: E402

WARMUP_STEPS = 2  # the same number of untimed steps as train_loop_per_worker skips
DEFAULT_STEPS = 40
GOAL_RATIO = 0.9


@dataclass
class LoopResult:
    """What one side of the comparison measured."""

    tokens_per_s: float
    final_loss: float
    wall_s: float
    extra: dict[str, float]
    load: tuple[float, float] = (float("nan"), float("nan"))


def load_average() -> float:
    """The 1-minute load average: on a shared 2-core box other people's jobs skew timings,
    and an oversubscribed multi-threaded torch loop slows down far more than the load
    suggests, so both sides print the load seen around them to make that visible."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def worker_threads(cfg: Config) -> int:
    """Torch threads one Ray worker uses: the rule ``train_loop_per_worker`` applies."""
    return cfg.ray.torch_threads_per_worker or max(1, int(cfg.ray.cpus_per_worker))


def total_threads(cfg: Config) -> int:
    """All CPU threads the Ray run trains with; the bare loop gets the same number."""
    return cfg.ray.num_workers * worker_threads(cfg)


def last_window_mean(losses: list[float], log_every: int) -> float:
    """Mean loss of the last logging window, which is what the Ray run reports as its loss.

    train_loop_per_worker averages the step losses since the previous log line and reports
    that mean at the last step; comparing the bare loop's last single step instead would
    compare a noisier number against a smoother one.
    """
    if not losses:
        return float("nan")
    window = len(losses) % log_every or log_every
    tail = losses[-window:]
    return sum(tail) / len(tail)


def bare_loop(cfg: Config, manifest: dict, threads: int, save_dir: Path) -> LoopResult:
    """Train in this process with plain PyTorch, doing what the Ray workers do together.

    The global batch of a Ray step is, for every gradient-accumulation micro step, the
    blocks of rank 0, then rank 1, ... (see ``BlockSampler.indices``); a sampler with one rank
    and ``micro_batch * world`` blocks per micro step yields exactly that union in that order,
    so both sides see the same tokens and (with the same init) should reach similar losses.
    The end-to-end time covers what the Ray side also does around its loop: build the model,
    read the shards, train, save the final weights.
    """
    started = time.perf_counter()
    torch.set_num_threads(threads)
    pc = cfg.pretrain
    world = cfg.ray.num_workers
    with tempfile.TemporaryDirectory() as tok_dir:
        storage.download_dir(manifest["tokenizer_uri"], tok_dir)
        tokenizer = load_tokenizer(tok_dir)
    model = random_init_model(cfg.model, tokenizer, cfg.seed)
    model.config.use_cache = False
    blocks = torch.from_numpy(read_split(manifest, "train").astype(np.int64))
    sampler = BlockSampler(len(blocks), cfg.seed, 0, 1, pc.micro_batch_size * world, pc.grad_accum)
    optimizer = build_optimizer(model, pc.lr, pc.weight_decay)  # torch.optim.AdamW, same groups
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(pc.warmup_steps, pc.steps, pc.min_lr_ratio)
    )
    clip = cfg.deepspeed.gradient_clipping
    tokens_per_step = pc.micro_batch_size * pc.grad_accum * world * blocks.shape[1]

    timed_tokens, timed_seconds = 0, 0.0
    losses: list[float] = []
    model.train()
    for step in range(pc.steps):
        step_start = time.perf_counter()
        step_loss = 0.0
        for micro in range(pc.grad_accum):
            batch = blocks[sampler.indices(step, micro)]
            loss = model(input_ids=batch, labels=batch).loss
            (loss / pc.grad_accum).backward()
            step_loss += loss.detach().float().item() / pc.grad_accum
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - step_start
        if step >= WARMUP_STEPS:
            timed_tokens += tokens_per_step
            timed_seconds += elapsed
        losses.append(step_loss)
    model.save_pretrained(save_dir, safe_serialization=True)
    return LoopResult(
        tokens_per_s=timed_tokens / timed_seconds if timed_seconds else 0.0,
        final_loss=last_window_mean(losses, pc.log_every),
        wall_s=time.perf_counter() - started,
        extra={
            "first_loss": losses[0] if losses else float("nan"),
            "num_params": float(count_parameters(model)),
        },
    )


def ray_run(cfg: Config, run_id: str, data_uri: str) -> LoopResult:
    """The pipeline's own pre-training stage, timed from the driver's side."""
    from components.pretrain.step import run_pretrain

    started = time.perf_counter()
    out = run_pretrain(cfg, run_id, data_uri)["pretrain"]
    wall = time.perf_counter() - started
    if "tokens_per_s" not in out:
        raise RuntimeError(f"run id {run_id} was reused instead of trained: {out}")
    return LoopResult(
        tokens_per_s=float(out["tokens_per_s"]),
        final_loss=float(out["final_train_loss"]),
        wall_s=wall,
        extra={"fit_s": float(out["fit_seconds"])},
    )


def start_ray(cfg: Config) -> float:
    """Start one local Ray sized to the run; returns the seconds it took.

    The script starts Ray itself (rather than letting ``ensure_ray`` size it to the whole
    machine) so that Ray declares exactly the CPUs the workers use, and so its start-up time
    can be shown apart from the training stage's own overhead. RAY_ADDRESS is dropped: a
    benchmark that silently joined some other cluster would measure that cluster.
    """
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    num_cpus = max(1, math.ceil(cfg.ray.num_workers * cfg.ray.cpus_per_worker))
    started = time.perf_counter()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}},
    )
    return time.perf_counter() - started


def format_table(rows: list[tuple[str, str, str]]) -> str:
    """A plain aligned three-column table (metric, Ray+DeepSpeed, bare PyTorch)."""
    header = ("metric", "Ray Train + DeepSpeed", "bare PyTorch")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: tuple[str, str, str]) -> str:
        return f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}"

    return "\n".join([fmt(header), line, *(fmt(r) for r in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Pre-training tokens/s through Ray Train + DeepSpeed vs a bare PyTorch loop."
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"training steps for both sides (default {DEFAULT_STEPS}; "
                             f"the first {WARMUP_STEPS} are not timed)")
    parser.add_argument("--preset", default="tiny", help="preset name or YAML path (default tiny)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. --set pretrain.micro_batch_size=16)")
    parser.add_argument("--fail-below", type=float, default=None, metavar="RATIO",
                        help="exit with status 1 when Ray/bare tokens/s is below RATIO")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} untimed warm-up steps")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="fromscratch-bench-"))
    try:
        # Our settings first so that the user's --set can still change any of them; the
        # tracking URI is pinned so an exported MLFLOW_TRACKING_URI is not written to.
        overrides = [
            f"storage.root={root / 'runs'}",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"pretrain.steps={args.steps}",
            *args.overrides,
        ]
        cfg = load_config(args.preset, overrides)
        if cfg.ray.use_gpu:
            raise SystemExit("this benchmark compares CPU runs; use benchmarks/gpu_mfu.py on a GPU")
        from components.common.logs import setup_logging
        from components.data_prep.step import run_data_prep

        setup_logging("WARNING")
        threads = total_threads(cfg)
        print(f"[bench] data_prep ({args.preset}) ...", flush=True)
        manifest = run_data_prep(cfg, "bench-data")

        print(f"[bench] bare PyTorch loop: {args.steps} steps, {threads} threads ...", flush=True)
        before = load_average()
        bare = bare_loop(cfg, manifest, threads, root / "bare-model")
        bare.load = (before, load_average())

        print(f"[bench] Ray Train + DeepSpeed: {cfg.ray.num_workers} workers x "
              f"{worker_threads(cfg)} thread(s) ...", flush=True)
        ray_init_s = start_ray(cfg)
        try:
            before = load_average()
            ray_side = ray_run(cfg, f"bench-{int(time.time())}", manifest["data_uri"])
            ray_side.load = (before, load_average())
        finally:
            import ray

            ray.shutdown()  # before printing, so worker log lines do not land inside the table
    finally:
        shutil.rmtree(root, ignore_errors=True)

    pc = cfg.pretrain
    seq = manifest["seq_len"]
    global_blocks = pc.micro_batch_size * pc.grad_accum * cfg.ray.num_workers
    num_params = int(bare.extra["num_params"])
    ratio = ray_side.tokens_per_s / bare.tokens_per_s if bare.tokens_per_s else float("nan")
    rows = [
        ("tokens/s (steps 3..N)", f"{ray_side.tokens_per_s:,.0f}", f"{bare.tokens_per_s:,.0f}"),
        ("CPU threads training", f"{cfg.ray.num_workers} x {worker_threads(cfg)}", f"1 x {threads}"),
        ("end-to-end wall s", f"{ray_side.wall_s:.1f}", f"{bare.wall_s:.1f}"),
        ("  of which trainer.fit s", f"{ray_side.extra['fit_s']:.1f}", "-"),
        ("  ray.init s (not in e2e)", f"{ray_init_s:.1f}", "-"),
        (f"final loss (last {len_window(pc.steps, pc.log_every)} steps)",
         f"{ray_side.final_loss:.4f}", f"{bare.final_loss:.4f}"),
        ("load avg 1m before/after", "%.1f / %.1f" % ray_side.load, "%.1f / %.1f" % bare.load),
    ]
    print()
    print(f"preset {cfg.preset}: {num_params / 1e6:.2f}M params, {pc.steps} steps, global batch "
          f"{global_blocks} blocks x {seq} tokens = {global_blocks * seq} tokens/step, "
          f"ZeRO {cfg.deepspeed.zero_stage}, first loss {bare.extra['first_loss']:.3f}")
    print(format_table(rows))
    verdict = "meets" if ratio >= GOAL_RATIO else "BELOW"
    print(f"ratio Ray/bare tokens/s = {ratio:.3f}  ({verdict} the goal of >= {GOAL_RATIO})")
    busiest = max(*ray_side.load, *bare.load)
    if busiest > (os.cpu_count() or 1):
        print(f"note: load average reached {busiest:.1f} on {os.cpu_count()} CPUs; other work "
              "was competing for the cores, so the figures (the bare loop's above all) are noisy")
    if args.json:
        print(json.dumps({
            "preset": cfg.preset, "steps": pc.steps, "ray_tokens_per_s": ray_side.tokens_per_s,
            "bare_tokens_per_s": bare.tokens_per_s, "ratio": ratio,
            "ray_wall_s": ray_side.wall_s, "ray_fit_s": ray_side.extra["fit_s"],
            "ray_init_s": ray_init_s, "bare_wall_s": bare.wall_s,
            "ray_final_loss": ray_side.final_loss, "bare_final_loss": bare.final_loss,
        }))
    if args.fail_below is not None and not ratio >= args.fail_below:
        return 1
    return 0


def len_window(steps: int, log_every: int) -> int:
    """How many trailing steps the reported final loss averages (see ``last_window_mean``)."""
    return min(steps, steps % log_every or log_every)


if __name__ == "__main__":
    sys.exit(main())
