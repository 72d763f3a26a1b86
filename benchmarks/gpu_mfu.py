"""Model FLOPs utilisation (MFU) of Llama pre-training steps on one lent GPU (H100/H200).

Why this exists: the CPU benchmark says whether Ray Train + DeepSpeed cost throughput on a
2-core box, but not whether the model the ``gpu`` preset trains keeps a GPU busy. MFU answers
that with one number: the FLOPs the model needs per token (the usual estimate
``6 * N + 12 * n_layers * hidden * seq_len``, forward + backward, attention included) times
the measured tokens/s, divided by the card's dense bf16 peak. It uses synthetic token ids, so
no tokenizer, data or storage is needed and the short device time goes to the steps alone.

* plain path (default): fp32 master weights, ``torch.autocast`` bf16, the project's AdamW
  (``build_optimizer``) with the preset's gradient clipping;
* ``--deepspeed``: the same model and optimizer through ``deepspeed.initialize`` with the
  project's DeepSpeed config builder in bf16 and the ZeRO stage given by ``--zero-stage``,
  single process (world size 1, NCCL), so the two can be compared on the same card.

Usage::

    python benchmarks/gpu_mfu.py [--preset gpu] [--steps 30] [--deepspeed --zero-stage 1]
    python benchmarks/gpu_mfu.py --self-test     # FLOP/parameter arithmetic, runs on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# ``python benchmarks/x.py`` puts benchmarks/ on sys.path, not the repository root.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

if TYPE_CHECKING:
    from components.common.config import Config

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets, matched in
# order against torch.cuda.get_device_name(); the first substring that matches wins, so the
# more specific names come first. Anything else needs --peak-tflops.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
)

# The fallback model when no ``gpu`` preset exists: a GPT-2-small-sized Llama (~110M unique
# parameters with tied embeddings; "125M" in the usual naming).
FALLBACK_SHAPE = {
    "hidden_size": 768,
    "num_layers": 12,
    "num_heads": 12,
    "num_kv_heads": 12,
    "intermediate_size": 2048,
    "max_seq_len": 1024,
    "vocab_size": 32000,
    "micro_batch_size": 16,
    "tie_embeddings": True,
}


@dataclass(frozen=True)
class Shape:
    """Everything about the model and batch that the FLOP count and the run depend on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_seq_len: int
    vocab_size: int
    micro_batch_size: int
    tie_embeddings: bool
    source: str = "flags"


def llama_param_count(
    vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
    tied: bool = True,
) -> int:
    """Unique parameters of a bias-free Llama (what ``count_parameters`` reports).

    Per layer: q and o projections (hidden x hidden), k and v (hidden x kv_dim), the gated MLP's
    three matrices (hidden x intermediate) and two RMSNorm weights; plus the embedding, the
    final norm and, when not tied, a separate LM head.

    >>> llama_param_count(32000, 768, 2048, 12, 12, 12)
    109529856
    """
    kv_dim = hidden // heads * kv_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate + 2 * hidden
    embeddings = vocab * hidden * (1 if tied else 2)
    return layers * per_layer + embeddings + hidden


def matmul_param_count(
    vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
) -> int:
    """Parameters that take part in a matmul per token: the ``N`` of ``6 * N``.

    The input embedding is a table lookup (no FLOPs), the LM head is a real hidden x vocab
    matmul, and norm weights are elementwise; so N is the layer matrices plus one
    vocab x hidden matrix, whether or not the embeddings are tied.

    >>> matmul_param_count(32000, 768, 2048, 12, 12, 12)
    109510656
    """
    kv_dim = hidden // heads * kv_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate
    return layers * per_layer + vocab * hidden


def model_flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> int:
    """Training FLOPs per token: ``6 * N`` for the weight matmuls (2 forward, 4 backward) plus
    ``12 * n_layers * hidden * seq_len`` for the attention score and value matmuls (QK^T and
    AV, each 2 * seq_len * hidden per token forward, times 3 for forward + backward). Causal
    masking is not discounted, as in the PaLM MFU definition, so figures compare with others.

    >>> model_flops_per_token(100, 2, 8, 16)
    3672
    >>> model_flops_per_token(109510656, 12, 768, 1024)
    770310144
    """
    return 6 * n_params + 12 * n_layers * hidden * seq_len


def mfu(tokens_per_s: float, flops_per_token: int, peak_tflops: float) -> float:
    """Achieved model FLOP/s as a fraction of the peak.

    >>> round(mfu(100_000, 770_301_952, 989.0), 4)
    0.0779
    """
    return tokens_per_s * flops_per_token / (peak_tflops * 1e12)


def peak_for(device_name: str, flag: float | None) -> float | None:
    """The bf16 dense peak to divide by: the flag if given, else the data-sheet figure.

    >>> peak_for("NVIDIA H100 80GB HBM3", None), peak_for("NVIDIA H100 PCIe", None)
    (989.0, 756.0)
    >>> peak_for("NVIDIA H200", None), peak_for("Tesla T4", None), peak_for("Tesla T4", 65.0)
    (989.0, None, 65.0)
    """
    if flag is not None:
        return flag
    for needle, peak in PEAK_BF16_TFLOPS:
        if needle.lower() in device_name.lower():
            return peak
    return None


def resolve_shape(args: argparse.Namespace) -> tuple[Shape, "Config | None"]:
    """The preset's model and micro batch (or the ~125M fallback), then any explicit flags;
    also the loaded preset (None on the fallback) for its DeepSpeed settings.

    A missing default ``gpu`` preset falls back quietly to the fallback shape (the preset may
    not exist yet); a preset the user named explicitly must exist.
    """
    from pydantic import ValidationError

    from components.common.config import ConfigError, ModelConfig, load_config

    base = dict(FALLBACK_SHAPE)
    cfg = None
    source = "fallback ~125M Llama"
    try:
        cfg = load_config(args.preset)
        base.update(
            {k: getattr(cfg.model, k) for k in (
                "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                "max_seq_len", "tie_embeddings",
            )},
            vocab_size=cfg.data.vocab_size,
            micro_batch_size=cfg.pretrain.micro_batch_size,
        )
        source = f"preset {args.preset}"
    except ConfigError as err:
        cfg = None
        if args.preset_given:
            raise SystemExit(f"gpu_mfu.py: {err}") from None
    flags = {
        "hidden_size": args.hidden, "num_layers": args.layers, "num_heads": args.heads,
        "num_kv_heads": args.kv_heads, "intermediate_size": args.intermediate,
        "max_seq_len": args.seq_len, "vocab_size": args.vocab, "micro_batch_size": args.micro_batch,
    }
    changed = {k: v for k, v in flags.items() if v is not None}
    if changed:
        base.update(changed)
        source += " + flags"
    if args.kv_heads is None and args.heads is not None:
        base["num_kv_heads"] = args.heads  # a new head count without a kv count means MHA
    # ModelConfig checks that the heads divide the hidden size, with the project's messages.
    try:
        ModelConfig(**{k: base[k] for k in (
            "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
            "max_seq_len", "tie_embeddings",
        )})
    except ValidationError as err:
        problems = "; ".join(e["msg"] for e in err.errors())
        raise SystemExit(f"gpu_mfu.py: invalid model shape: {problems}") from None
    return Shape(**base, source=source), cfg


def build_model(shape: Shape, attn: str, seed: int):
    """A randomly initialised Llama of ``shape`` on the current CUDA device, in fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_seq_len, tie_word_embeddings=shape.tie_embeddings,
        use_cache=False,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    with torch.device("cuda"):
        return LlamaForCausalLM(config)


def require_cuda() -> str:
    """Stop with a clear message where there is no GPU; return the device's name."""
    if not torch.cuda.is_available():
        raise SystemExit(
            "gpu_mfu.py needs a CUDA GPU, and torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). "
            "Run it on a GPU machine with a CUDA build of torch; "
            "`python benchmarks/gpu_mfu.py --self-test` checks the FLOP arithmetic on CPU."
        )
    torch.cuda.set_device(0)
    return torch.cuda.get_device_name(0)


def init_single_process_nccl() -> None:
    """World size 1 over NCCL, which deepspeed.initialize expects to find already set up."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl", rank=0, world_size=1)


def run_steps(args: argparse.Namespace, shape: Shape) -> dict[str, float]:
    """Train ``args.steps`` steps on synthetic ids; time the ones after the warm-up.

    Timing is taken between two CUDA synchronisations around the timed window (not per step)
    so that reading the loss does not stall the GPU queue while it is measured.
    """
    from components.common.config import DeepSpeedConfig
    from components.common.deepspeed_config import build_deepspeed_config
    from components.pretrain.train_loop import build_optimizer

    model = build_model(shape, args.attn, args.seed)
    model.train()
    optimizer = build_optimizer(model, args.lr, 0.1)
    clip = args.clip
    engine = None
    if args.deepspeed:
        import deepspeed

        init_single_process_nccl()
        ds = DeepSpeedConfig(zero_stage=args.zero_stage, precision="bf16", gradient_clipping=clip)
        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer,
            config=build_deepspeed_config(ds, shape.micro_batch_size, 1),
        )
    elif args.compile:
        model = torch.compile(model)

    gen = torch.Generator(device="cuda").manual_seed(args.seed)

    def step() -> torch.Tensor:
        batch = torch.randint(
            0, shape.vocab_size, (shape.micro_batch_size, shape.max_seq_len),
            device="cuda", generator=gen,
        )
        if engine is not None:
            loss = engine(input_ids=batch, labels=batch).loss
            engine.backward(loss)
            engine.step()
            return loss.detach()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(args.warmup_steps):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    timed = args.steps - args.warmup_steps
    losses = []
    started = time.perf_counter()
    for _ in range(timed):
        losses.append(step())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = timed * shape.micro_batch_size * shape.max_seq_len
    result = {
        "tokens_per_s": tokens / seconds,
        "step_ms": 1000 * seconds / timed,
        "final_loss": float(losses[-1].float().item()),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    if engine is not None and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


def self_test() -> int:
    """CPU-only checks: the doctests, and the analytic count against a real (small) model."""
    import doctest

    from transformers import LlamaConfig, LlamaForCausalLM

    from components.common.modeling import count_parameters

    failures, _ = doctest.testmod(sys.modules[__name__], verbose=False)
    for tied in (True, False):
        config = LlamaConfig(
            vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=tied,
        )
        with torch.device("meta"):
            real = count_parameters(LlamaForCausalLM(config))
        mine = llama_param_count(300, 64, 96, 3, 8, 2, tied=tied)
        if real != mine:
            print(f"parameter count mismatch (tied={tied}): model {real}, formula {mine}")
            failures += 1
    print("self-test", "passed" if not failures else f"FAILED ({failures})")
    return 1 if failures else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Tokens/s, TFLOP/s and MFU of bf16 Llama training steps on one CUDA GPU.",
    )
    p.add_argument("--preset", default=None,
                   help="preset whose model/micro batch to use (default: gpu if it exists, "
                        "else a ~125M Llama: hidden 768, 12 layers, 12 heads, intermediate "
                        "2048, seq 1024, vocab 32000, micro batch 16)")
    p.add_argument("--hidden", type=int, help="override hidden size")
    p.add_argument("--layers", type=int, help="override number of layers")
    p.add_argument("--heads", type=int, help="override attention heads")
    p.add_argument("--kv-heads", type=int, help="override key/value heads (GQA)")
    p.add_argument("--intermediate", type=int, help="override MLP intermediate size")
    p.add_argument("--seq-len", type=int, help="override sequence length")
    p.add_argument("--vocab", type=int, help="override vocabulary size")
    p.add_argument("--micro-batch", type=int, help="override sequences per step")
    p.add_argument("--steps", type=int, default=30, help="total steps (default 30)")
    p.add_argument("--warmup-steps", type=int, default=5,
                   help="untimed steps first: CUDA context, allocator, kernels (default 5)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak TFLOP/s of the card (default from the device name: "
                        "H100 SXM 989, H200 989, H100 PCIe 756, H100 NVL 835, A100 312)")
    p.add_argument("--deepspeed", action="store_true", help="run through deepspeed.initialize")
    p.add_argument("--zero-stage", type=int, choices=(0, 1, 2, 3), default=None,
                   help="ZeRO stage with --deepspeed (default: the preset's, else 1)")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                   help="attention implementation (default sdpa)")
    p.add_argument("--compile", action="store_true", help="torch.compile the plain-path model")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (default 3e-4)")
    p.add_argument("--clip", type=float, default=None,
                   help="gradient clipping norm, 0 for none (default: the preset's, else 1.0)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.add_argument("--self-test", action="store_true",
                   help="check the FLOP/parameter arithmetic on CPU and exit")
    args = p.parse_args(argv)
    args.preset_given = args.preset is not None
    args.preset = args.preset or "gpu"
    if args.steps <= args.warmup_steps:
        p.error("--steps must be larger than --warmup-steps")
    if args.compile and args.deepspeed:
        p.error("--compile applies to the plain path only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    shape, cfg = resolve_shape(args)
    if args.zero_stage is None:
        args.zero_stage = cfg.deepspeed.zero_stage if cfg is not None else 1
    if args.clip is None:
        args.clip = cfg.deepspeed.gradient_clipping if cfg is not None else 1.0
    device = require_cuda()
    if not torch.cuda.is_bf16_supported():
        raise SystemExit(f"gpu_mfu.py: {device} has no bf16 support")
    peak = peak_for(device, args.peak_tflops)
    n_matmul = matmul_param_count(
        shape.vocab_size, shape.hidden_size, shape.intermediate_size, shape.num_layers,
        shape.num_heads, shape.num_kv_heads,
    )
    n_total = llama_param_count(
        shape.vocab_size, shape.hidden_size, shape.intermediate_size, shape.num_layers,
        shape.num_heads, shape.num_kv_heads, shape.tie_embeddings,
    )
    fpt = model_flops_per_token(n_matmul, shape.num_layers, shape.hidden_size, shape.max_seq_len)
    path = f"deepspeed ZeRO {args.zero_stage} bf16" if args.deepspeed else (
        "torch autocast bf16" + (" + compile" if args.compile else ""))
    print(f"device {device}; model from {shape.source}: {n_total / 1e6:.1f}M params "
          f"({n_matmul / 1e6:.1f}M in matmuls), {shape.num_layers} layers x {shape.hidden_size}, "
          f"seq {shape.max_seq_len}, vocab {shape.vocab_size}, micro batch "
          f"{shape.micro_batch_size}; {path}; attn {args.attn}", flush=True)

    res = run_steps(args, shape)
    achieved = res["tokens_per_s"] * fpt / 1e12
    ratio = mfu(res["tokens_per_s"], fpt, peak) if peak else None
    rows = [
        ("tokens/s", f"{res['tokens_per_s']:,.0f}"),
        ("step time ms", f"{res['step_ms']:.1f}"),
        ("model GFLOP/token", f"{fpt / 1e9:.3f}"),
        ("achieved TFLOP/s", f"{achieved:.1f}"),
        ("peak bf16 TFLOP/s", f"{peak:.0f}" if peak else "unknown (pass --peak-tflops)"),
        ("MFU", f"{100 * ratio:.1f} %" if ratio is not None else "n/a"),
        ("peak memory GiB", f"{res['peak_mem_gib']:.1f}"),
        ("final loss", f"{res['final_loss']:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"timed steps {args.warmup_steps + 1}..{args.steps}")
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.json:
        print(json.dumps({
            "device": device, "path": path, "shape": asdict(shape), "params": n_total,
            "matmul_params": n_matmul, "flops_per_token": fpt, "achieved_tflops": achieved,
            "peak_tflops": peak, "mfu": ratio, **res,
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
