"""Evaluation and promotion settings: the held-out suites every checkpoint runs, and the gate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.common.config.base import AttnImplementation, Strict

BenchmarkLayout = Literal["hellaswag", "arc", "piqa", "lambada", "gsm8k"]
# chance accuracy of each layout (centered accuracy = (acc - chance) / (1 - chance)): HellaSwag
# and ARC have 4 choices (a few ARC questions have 3 or 5), PIQA 2; LAMBADA and GSM8K are open.
LAYOUT_CHANCE = {"hellaswag": 0.25, "arc": 0.25, "piqa": 0.5, "lambada": 0.0, "gsm8k": 0.0}


class BenchmarkTask(Strict):
    """One standard benchmark run with lm-eval on every checkpoint, from a local or s3:// copy
    of its data in the published layout (JSONL or Parquet), or from the hub by name."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Task name in the results (bench.<name>.acc).")
    layout: BenchmarkLayout = Field(description="The published layout of the data: which fields the prompt reads.")
    uri: str | None = Field(default=None, description="Local or s3:// copy of one split (JSONL(.gz) or Parquet file).")
    hf_dataset: str | None = Field(default=None, description="Hub id instead of a copy (needs network), e.g. allenai/ai2_arc.")
    hf_config: str | None = Field(default=None, description="The hub dataset's configuration, e.g. ARC-Easy.")
    split: str = Field(default="test", min_length=1, description="The split scored (its name on the hub or for the copy).")
    chat: bool | None = Field(
        default=None,
        description="Run only on chat checkpoints (SFT and after), in the chat template. None: the layout "
        "decides (gsm8k: yes, the multiple-choice tasks and lambada: no, they run on every checkpoint).",
    )

    @model_validator(mode="after")
    def _one_origin(self) -> "BenchmarkTask":
        if (self.uri is None) == (self.hf_dataset is None):
            raise ValueError(f"benchmark '{self.name}' needs exactly one of 'uri' or 'hf_dataset'")
        return self

    @property
    def chance(self) -> float:
        return LAYOUT_CHANCE[self.layout]

    @property
    def chat_only(self) -> bool:
        return self.layout == "gsm8k" if self.chat is None else self.chat


class BenchmarksConfig(Strict):
    """Standard benchmarks (lm-evaluation-harness) beside the built-in suites: accuracy and
    centered accuracy (chance = 0) with 95 % intervals, GSM8K on chat checkpoints, and bits per
    byte of the run's held-out text; names usable by the promotion gate (bench.<task>.<metric>)."""

    enabled: bool = Field(default=False, description="Run lm-eval on every checkpoint (needs the lm-eval package).")
    tasks: list[BenchmarkTask] = Field(default_factory=list, description="The benchmarks, each with its data.")
    limit: int | None = Field(default=None, ge=1, description="Examples per task (None: the whole split).")
    heldout_bits_per_byte: bool = Field(
        default=True, description="Also score bits per byte of the held-out pre-training text (tokenizer-independent)."
    )
    heldout_documents: int = Field(default=200, ge=1, description="Held-out blocks (decoded back to text) in the bits-per-byte task.")
    batch_size: int = Field(default=16, ge=1, description="Sequences scored per forward pass.")
    max_gen_tokens: int = Field(default=256, ge=1, description="Longest generated answer (GSM8K).")
    bootstrap_iters: int = Field(default=1000, ge=0, description="lm-eval's bootstrap resamples for the standard errors of non-mean metrics.")


class GateMetric(Strict):
    """One evaluation metric of the final checkpoint the promotion gate compares with the
    champion's, item by item on the same held-out items: the paired change (candidate -
    champion) must have its 95 % interval above ``margin`` (``max``) or below ``-margin``
    (``min``). A negative margin is a tolerance ("may drop by at most ..."). The metric needs
    per-item values (reason.pass_at_1, reason.pass_at_k, instruct.compliance, instruct.accuracy, and
    heldout_loss: each held-out block's mean loss, with direction ``min``)."""

    name: str = Field(description="Metric key with per-item verdicts in the evaluation results (e.g. reason.pass_at_1).")
    direction: Literal["max", "min"] = Field(default="max", description="max: higher is better; min: lower.")
    margin: float = Field(
        default=0.0, ge=-1.0, le=1.0,
        description="Required improvement of the paired change's 95 % interval (negative: allowed drop).",
    )


class PromotionConfig(Strict):
    """Registering the final checkpoint and moving the ``champion`` alias only to a better model."""

    enabled: bool = Field(default=True, description="Register the final checkpoint and run the gate.")
    model_name: str = Field(default="fromscratch", description="Registered model name in MLflow.")
    alias: str = Field(default="champion", description="The alias the gate moves to a better model.")
    gate: list[GateMetric] = Field(
        default_factory=lambda: [
            GateMetric(name="reason.pass_at_1", direction="max", margin=0.01),
            GateMetric(name="instruct.compliance", direction="max", margin=-0.02),
        ],
        description="Metrics the challenger must pass against the champion.",
    )


class EvaluateConfig(Strict):
    """The held-out suites every checkpoint (random init included) is scored on."""

    max_eval_blocks: int = Field(default=64, ge=1, description="Held-out blocks for perplexity.")
    max_instruction_examples: int = Field(default=210, ge=1, description="Held-out prompts per checkpoint.")
    instruction_max_new_tokens: int = Field(default=40, ge=1, description="Longest reply to a held-out prompt.")
    max_preference_examples: int = Field(default=400, ge=1, description="Held-out pairs / prompts.")
    preference_samples: int = Field(
        default=1, ge=1,
        description="Sampled replies per held-out prompt, for each policy and for SFT, in the win rates "
        "and reward/oracle scores. One sample per prompt is noisy: the same PPO checkpoint measured "
        "0.64-0.68 oracle win rate under three sampling seeds.",
    )
    sample_temperature: float = Field(
        default=1.0, gt=0, description="Sampling temperature of the win-rate replies (policies are sampled)."
    )
    batch_size: int = Field(default=16, ge=1, description="Sequences scored or generated per batch.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where checkpoints are scored; auto: the GPU when the task has one, else CPU."
    )
    precision: Literal["fp32", "bf16", "auto"] = Field(
        default="fp32", description="Weights' dtype while scoring; auto: bf16 on a GPU that has it, else fp32."
    )
    attn_implementation: AttnImplementation = Field(
        default="sdpa", description="Attention kernel while scoring (flash_attention_2 needs CUDA and flash-attn)."
    )
    max_new_tokens: int = Field(default=24, ge=1, description="Longest sampled reply in the win rates.")
    max_problems: int = Field(default=300, ge=1, description="Held-out RLVR problems per checkpoint.")
    pass_k: int = Field(default=4, ge=0, le=1024, description="k of pass@k (0: greedy only, no samples).")
    pass_n: int = Field(
        default=8, ge=1, le=4096,
        description="Sampled replies per problem from which pass@k is estimated without bias "
        "(1 - C(n-c,k)/C(n,k)); at least pass_k. More samples than k narrow the estimate.",
    )
    next_token_prompts: list[str] = Field(
        default_factory=lambda: ["Mira lives in", "Three plus four is", "The baker"],
        max_length=8,
        description="Fixed prompts whose top next-token probabilities and entropy the report card "
        "draws for every checkpoint (the next-token picture).",
    )
    next_token_top_k: int = Field(default=8, ge=1, le=50, description="Bars per prompt in the next-token picture.")
    kl_tokens: int = Field(
        default=2048, ge=0, le=1_000_000,
        description="Held-out text positions on which each checkpoint's next-token distribution is "
        "compared with the stage before it (KL, in nats; 0: off). The previous stage's "
        "log-probabilities are kept in memory: kl_tokens x vocab floats.",
    )
    reasoning_max_new_tokens: int = Field(default=48, ge=1, description="Longest reply to a held-out problem.")
    copy_sequences: int = Field(default=32, ge=1, description="Repeated random sequences in the copying suite.")
    copy_length: int = Field(default=24, ge=2, description="Tokens per sequence in the copying suite (read twice).")
    benchmarks: BenchmarksConfig = Field(default_factory=BenchmarksConfig)
    sample_prompts: list[str] = Field(
        default_factory=lambda: [
            "Mira lives in",
            "The baker",
            "Three plus four is",
            "Once upon a time",
        ],
        description="Prompts whose greedy continuations the report card shows per checkpoint.",
    )

    @model_validator(mode="after")
    def _enough_samples(self) -> "EvaluateConfig":
        if self.pass_k > self.pass_n:
            raise ValueError(
                f"evaluate.pass_n ({self.pass_n}) must be at least evaluate.pass_k ({self.pass_k}): "
                "pass@k is estimated from n >= k samples per problem"
            )
        return self
