"""Where a training stage's fixed cost goes: the part of `fromscratch run` that is not training.

Prints, for this machine:

1. Import time of each heavy library in a fresh interpreter (with its dependencies): what every
   Ray Train worker and every KFP task process pays before doing anything.
2. The wall time of one Ray Train fit whose workers do nothing (2 CPU workers, gloo): Ray Train's
   own start-up and teardown (controller, placement group, worker processes, process group),
   with Ray Train's preemption watcher on (default) and off (RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0).
3. The same fit whose workers import torch/transformers/DeepSpeed and build a DeepSpeed engine
   around a tiny Llama (the set-up every training stage does before its first step).

    .venv/bin/python benchmarks/ray_overhead.py [--repeats 3]

The figures are seconds of wall time; on a 2-core machine they move with whatever else runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a training worker or a KFP task process imports before its first line of work (the
# stage modules import these inside their functions, so the libraries are what costs).
LIBRARIES = ["torch", "transformers", "trl", "deepspeed", "ray.train", "mlflow", "kfp"]


def import_seconds(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def noop_loop(config: dict) -> None:
    """Nothing: the fit's time is Ray Train's own."""


def deepspeed_setup_loop(config: dict) -> None:
    """Imports and a DeepSpeed engine around a tiny model: a stage's set-up before step 1."""
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                 "zero_optimization": {"stage": 1}}
    deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config, dist_init_required=False)


def fit_seconds(loop, preemption_watcher: bool) -> float:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "1" if preemption_watcher else "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1" if preemption_watcher else "0"}})
    try:
        trainer = TorchTrainer(
            loop, train_loop_config={},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(storage_path=f"/tmp/ray-overhead-{os.getpid()}", name=f"b{time.time_ns()}"),
        )
        started = time.perf_counter()
        trainer.fit()
        return time.perf_counter() - started
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")

    print("\n1. import time in a fresh interpreter (dependencies included)")
    for module in LIBRARIES:
        print(f"  import {module:<28} {import_seconds(module):5.1f} s")
    print(f"  import {', '.join(LIBRARIES):<28} {import_seconds(', '.join(LIBRARIES)):5.1f} s (all of them)")

    print(f"\n2./3. one Ray Train fit, 2 CPU workers, median of {args.repeats} (Ray started per fit, not counted)")
    rows = [("no-op workers, preemption watcher on", noop_loop, True),
            ("no-op workers, preemption watcher off", noop_loop, False),
            ("DeepSpeed set-up workers, watcher on", deepspeed_setup_loop, True),
            ("DeepSpeed set-up workers, watcher off", deepspeed_setup_loop, False)]
    times: dict[str, list[float]] = {label: [] for label, _, _ in rows}
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits every row alike
        for label, loop, watcher in rows:
            times[label].append(fit_seconds(loop, watcher))
    for label, _, _ in rows:
        runs = times[label]
        print(f"  {label:<40} {statistics.median(runs):5.1f} s   (runs: {', '.join(f'{t:.1f}' for t in runs)})")
    print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
