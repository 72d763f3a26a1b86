"""The GPU check (``make gpu-check``): the ``gpu`` preset end to end on one GPU, cut to fit
about 8 minutes, then the figures a GPU run is judged by.

What it does, in order:

1. runs the whole pipeline (``fromscratch run --preset gpu``) on this machine's GPU with the
   step counts and data sizes cut (``CHECK_OVERRIDES``), storage and MLflow local (a lent GPU
   reaches nothing outside), Ray local with one GPU worker;
2. prints per stage: training seconds, throughput (tokens/s for pre-training, samples/s for
   the TRL stages, rollout tokens/s for RLVR), MFU of pre-training (``benchmarks/gpu_mfu.py``'s
   FLOP count and the card's bf16 peak) and the peak GPU memory each stage's worker held;
3. generates the same RLVR prompts with plain ``model.generate`` (bf16, KV cache, one batch)
   and with vLLM, from the RLVR checkpoint, and prints both rollout rates and their ratio;
4. prints the evaluation table of the run (``<run>/eval``).

Usage::

    python benchmarks/gpu_check.py [--out DIR] [--skip-pipeline] [--json FILE]
    python benchmarks/gpu_check.py --self-test     # the parts that run on CPU (figures, table)

Needs CUDA, flash-attn and vLLM (the CUDA image); ``--self-test`` needs none of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu_mfu import matmul_param_count, mfu, model_flops_per_token, peak_for  # noqa: E402

RUN_ID = "gpucheck"
STAGES = ["pretrain", "sft", "reward", "ppo", "dpo", "rlvr"]

# The gpu preset's model and settings, with step counts and data cut so the whole pipeline
# (data prep, five trainings, evaluation of six checkpoints) fits about 8 minutes on one H100.
CHECK_OVERRIDES = [
    "tracking.uri=null",
    "ray.address=null",
    "ray.num_workers=1",
    "ray.cpus_per_worker=8",
    "ray.max_failures=0",
    # the device machine reaches no hub: the generated world and task sets, the built-in suites
    "data.sources=[]",
    "data.instructions.sources=[]",
    "data.preferences.sources=[]",
    "data.problems.sources=[]",
    "evaluate.benchmarks.enabled=false",
    "data.generated.num_train_docs=20000",
    "data.generated.num_heldout_docs=400",
    "data.shard_blocks=2048",
    "pretrain.steps=120",
    "pretrain.warmup_steps=10",
    "pretrain.checkpoint_every=120",
    "pretrain.log_every=10",
    "sft.steps=60",
    "sft.checkpoint_every=60",
    "preference.reward.steps=60",
    "preference.reward.checkpoint_every=60",
    "preference.ppo.iterations=6",
    "preference.ppo.checkpoint_every=6",
    "rlvr.steps=8",
    "rlvr.checkpoint_every=8",
    "evaluate.max_instruction_examples=64",
    "evaluate.max_preference_examples=64",
    "evaluate.max_problems=64",
    "evaluate.pass_k=4",
]


def stage_figures(run_dir: Path, shape: dict[str, int], peak_tflops: float | None) -> list[dict[str, Any]]:
    """One row per stage that published a model: seconds, throughput, MFU, peak memory."""
    rows = []
    for stage in STAGES:
        summary_file = run_dir / "checkpoints" / stage / "train_summary.json"
        if not summary_file.is_file():
            continue
        s = json.loads(summary_file.read_text())
        row: dict[str, Any] = {
            "stage": stage,
            "train_s": s.get("train_seconds"),
            "peak_gpu_gib": s.get("peak_gpu_memory_gib"),
        }
        if stage == "pretrain":
            row["throughput"] = s.get("tokens_per_s")
            row["unit"] = "tokens/s"
            if peak_tflops and row["throughput"]:
                n = matmul_param_count(shape["vocab"], shape["hidden"], shape["intermediate"],
                                       shape["layers"], shape["heads"], shape["kv_heads"])
                per_token = model_flops_per_token(n, shape["layers"], shape["hidden"], shape["seq_len"])
                row["mfu"] = mfu(row["throughput"], per_token, peak_tflops)
        elif stage == "rlvr":
            row["throughput"] = s.get("rollout_tokens_per_second")
            row["unit"] = "rollout tokens/s"
        else:
            row["throughput"] = s.get("train_samples_per_second")
            row["unit"] = "samples/s"
        rows.append(row)
    return rows


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def stage_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | train s | throughput | MFU | peak GPU GiB |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        through = f"{fmt(r.get('throughput'))} {r.get('unit', '')}".strip()
        mfu_cell = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['stage']} | {fmt(r.get('train_s'))} | {through} | {mfu_cell} | {fmt(r.get('peak_gpu_gib'), 2)} |")
    return "\n".join(lines)


def eval_table(results: dict[str, Any], keys: tuple[str, ...] = (
    "perplexity", "instruct.compliance", "instruct.accuracy", "pref.oracle_win_rate", "reason.pass@1",
)) -> str:
    """The headline metrics of every evaluated checkpoint, one row each."""
    stages = [k for k, v in results.items() if isinstance(v, dict) and "metrics" in v and k != "reward_model"]
    lines = ["| checkpoint | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for stage in stages:
        metrics = results[stage]["metrics"]
        lines.append(f"| {stage} | " + " | ".join(fmt(metrics.get(k), 3) for k in keys) + " |")
    return "\n".join(lines)


def rollout_ratio(plain_tps: float, vllm_tps: float) -> float:
    return vllm_tps / plain_tps if plain_tps else float("nan")


def rollout_prompts(run_dir: Path, tokenizer, count: int) -> list[str]:
    rows = [json.loads(line) for line in (run_dir / "data" / "rlvr" / "train.jsonl").read_text().splitlines()[:count]]
    return [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]


def compare_rollouts(model_dir: Path, prompts: list[str], max_new_tokens: int, temperature: float) -> dict[str, float]:
    """New tokens per second for the same prompts: plain ``generate`` (bf16, KV cache, one
    left-padded batch), then vLLM (a fresh engine, not counting its start-up)."""
    import gc

    import torch

    from components.common.modeling import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    tok.padding_side = "left"
    model = load_model(model_dir, dtype=torch.bfloat16, attn_implementation="sdpa", device="cuda").eval()
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to("cuda")
    with torch.no_grad():
        model.generate(**enc, max_new_tokens=4, do_sample=True, temperature=temperature, top_k=0)  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                             top_k=0, use_cache=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        torch.cuda.synchronize()
        plain_s = time.perf_counter() - started
    new = out[:, enc["input_ids"].shape[1]:]
    plain_tokens = 0
    for row in new.tolist():
        plain_tokens += row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
    del model, out
    gc.collect()
    torch.cuda.empty_cache()

    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="bfloat16", gpu_memory_utilization=0.5, enforce_eager=False)
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_k=-1)
    llm.generate(prompts[:4], params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    vllm_s = time.perf_counter() - started
    vllm_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    plain_tps, vllm_tps = plain_tokens / plain_s, vllm_tokens / vllm_s
    return {"prompts": len(prompts), "plain_tokens_per_s": plain_tps, "vllm_tokens_per_s": vllm_tps,
            "vllm_over_plain": rollout_ratio(plain_tps, vllm_tps)}


def self_test() -> int:
    """What runs without a GPU: the figures from a fake run folder, the tables, the overrides."""
    import tempfile

    from components.common.config import load_config

    cfg = load_config("gpu", CHECK_OVERRIDES + ["storage.root=/tmp/x"])
    assert cfg.ray.num_workers == 1 and cfg.tracking.uri is None and cfg.pretrain.steps == 120
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        for stage, summary in {
            "pretrain": {"train_seconds": 60.0, "tokens_per_s": 500_000.0, "peak_gpu_memory_gib": 30.0},
            "sft": {"train_seconds": 20.0, "train_samples_per_second": 400.0},
            "rlvr": {"train_seconds": 50.0, "rollout_tokens_per_second": 9000.0},
        }.items():
            (run / "checkpoints" / stage).mkdir(parents=True)
            (run / "checkpoints" / stage / "train_summary.json").write_text(json.dumps(summary))
        shape = dict(vocab=32000, hidden=768, intermediate=2048, layers=12, heads=12, kv_heads=12, seq_len=1024)
        rows = stage_figures(run, shape, 989.0)
    assert [r["stage"] for r in rows] == ["pretrain", "sft", "rlvr"]
    # 500k tokens/s x 770.3 MFLOP/token / 989 TFLOP/s
    assert abs(rows[0]["mfu"] - 500_000 * 770_310_144 / 989e12) < 1e-9
    table = stage_table(rows)
    assert "| pretrain | 60.0 | 500,000.0 tokens/s | 38.9% | 30.00 |" in table, table
    results = {"init": {"metrics": {"perplexity": 2000.0}}, "rlvr": {"metrics": {"perplexity": 9.5, "reason.pass@1": 0.25}},
               "reward_model": {"metrics": {"pairwise_accuracy": 0.9}}}
    etable = eval_table(results)
    assert "| rlvr | 9.500 | - | - | - | 0.250 |" in etable and "reward_model" not in etable, etable
    assert rollout_ratio(1000.0, 3500.0) == 3.5
    print(table)
    print(etable)
    print("self-test ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-check", help="folder for the run's storage and the figures")
    p.add_argument("--skip-pipeline", action="store_true", help="report on an earlier run in --out")
    p.add_argument("--rollout-prompts", type=int, default=256)
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args(argv)
    if args.self_test:
        return self_test()

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (use --self-test on CPU)", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    out = Path(args.out).resolve()
    root = out / "runs"
    overrides = [f"storage.root={root}", *CHECK_OVERRIDES]
    print(f"gpu_check on {device}: the gpu preset, cut ({len(CHECK_OVERRIDES)} overrides)", flush=True)
    pipeline_s = None
    if not args.skip_pipeline:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(HF_HUB_OFFLINE="1", PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}")
        cmd = [sys.executable, "-m", "pipelines.cli", "run", "--preset", "gpu", "--new-run-id", RUN_ID]
        cmd += [x for o in overrides for x in ("--set", o)]
        shutil.rmtree(root / RUN_ID, ignore_errors=True)  # a rerun starts afresh (--new-run-id)
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=out.parent if out.parent.exists() else None)
        pipeline_s = time.perf_counter() - started
        print(f"pipeline: exit {proc.returncode} after {pipeline_s:.0f} s", flush=True)
        if proc.returncode != 0:
            return proc.returncode

    from components.common.config import load_config

    cfg = load_config("gpu", overrides)
    m = cfg.model
    shape = dict(vocab=cfg.data.vocab_size, hidden=m.hidden_size, intermediate=m.intermediate_size,
                 layers=m.num_layers, heads=m.num_heads, kv_heads=m.num_kv_heads, seq_len=m.max_seq_len)
    run_dir = root / RUN_ID
    init_config = run_dir / "checkpoints" / "init" / "config.json"
    if init_config.is_file():  # the vocabulary the tokenizer really reached
        shape["vocab"] = json.loads(init_config.read_text())["vocab_size"]
    rows = stage_figures(run_dir, shape, peak_for(device, None))
    print("\n## per stage\n" + stage_table(rows), flush=True)

    figures: dict[str, Any] = {"device": device, "pipeline_seconds": pipeline_s, "stages": rows}
    model_dir = run_dir / "checkpoints" / "rlvr"
    from components.common.modeling import load_tokenizer

    prompts = rollout_prompts(run_dir, load_tokenizer(model_dir), args.rollout_prompts)
    rollouts = compare_rollouts(model_dir, prompts, cfg.rlvr.max_new_tokens, cfg.rlvr.temperature)
    figures["rollouts"] = rollouts
    print(f"\n## RLVR rollouts, {rollouts['prompts']} prompts x {cfg.rlvr.max_new_tokens} tokens\n"
          f"plain generate {rollouts['plain_tokens_per_s']:,.0f} tokens/s, vLLM {rollouts['vllm_tokens_per_s']:,.0f} "
          f"tokens/s: {rollouts['vllm_over_plain']:.2f}x", flush=True)

    results = json.loads((run_dir / "eval" / "results.json").read_text())
    print("\n## evaluation\n" + eval_table(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
