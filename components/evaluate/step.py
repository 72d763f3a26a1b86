"""evaluate: the same held-out suite on every checkpoint it is given.

Suites: perplexity on the held-out pre-training text; in-context copying (a repeated random
token sequence, the ability behind checking a reversal or carrying a number into a step); greedy samples of fixed prompts with a
word-validity score; instruction following (compliance, per-family accuracy); preference (the
reward model's pairwise accuracy, win rates against SFT by the reward model and the oracle,
KL to SFT); reasoning (pass@1 and pass@k on held-out problems, per difficulty). Results go to MLflow (on the evaluate run, keyed by
checkpoint, and on each checkpoint's LoggedModel), and to ``<run>/eval`` as JSON (for scripts
and CI gates) and Markdown (for people). The shares carry 95 % bootstrap intervals
(``<metric>.ci_low`` / ``.ci_high``), and each checkpoint after the first gets ``change.<metric>``:
its per-item change from the checkpoint before it, with a paired interval, which is what the
stage bought.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from components.common import storage
from components.common.config import Config, EvaluateConfig
from components.common.modeling import DTYPES, load_model, load_tokenizer
from components.common.progress import emit_event
from components.common.stage import stage_context
from components.data_prep.manifest import TokenSplit, dataset_refs, load_manifest
from components.data_prep.shards import BlockReader
from components.data_prep.instructions import Example, from_record
from components.data_prep.preferences import PreferencePair
from components.data_prep.preferences import from_record as pair_from_record
from components.evaluate.instruct import score_instructions
from components.evaluate.copying import in_context_copying
from components.evaluate.benchmarks import DATA_NOTES_ARTIFACT, data_notes, prepare_for_run, run_benchmarks
from components.evaluate.intervals import change_metrics
from components.evaluate.perplexity import heldout_perplexity
from components.evaluate.preference import preference_metrics, reply_logprobs, reward_model_metrics, sample_replies
from components.evaluate.reasoning import score_problems
from components.preference.reward import load_reward_model
from components.evaluate.curves import stage_curves
from components.evaluate.next_token import heldout_next_token, top_next_tokens
from components.evaluate.promotion import promote
from components.evaluate.report_card import build_report_card, publish_report_card
from components.evaluate.samples import bigram_validity, corpus_bigrams, greedy_samples

log = logging.getLogger(__name__)


@dataclass
class Suites:
    """The held-out material every checkpoint is measured on, loaded once."""

    heldout: Any
    bigrams: set[tuple[str, str]]
    instructions: list[Example]
    problems: list[dict[str, Any]] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    # the pairs the win rates sample on: each held-out pair ``evaluate.preference_samples`` times
    win_pairs: list[PreferencePair] = field(default_factory=list)
    reward_model: Any = None
    sft_model: Any = None
    sft_replies: list[str] | None = None
    # the stage before's next-token log-probabilities on the held-out text (for its KL)
    previous_logprobs: Any = None


def _digest(*parts: Any) -> str:
    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj):
            return dataclasses.asdict(obj)
        return str(obj)

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=plain).encode()).hexdigest()[:16]


def suite_digests(cfg: Config, suites: Suites) -> dict[str, str]:
    """One digest per held-out suite: its items and the settings that score them. Two models
    with equal digests were scored on the same items the same way, so their per-item verdicts
    pair up (what the promotion gate needs)."""
    import numpy as np

    ev = cfg.evaluate
    text = np.ascontiguousarray(suites.heldout)
    out = {
        "heldout_text": hashlib.sha256(str(text.dtype).encode() + text.tobytes()).hexdigest()[:16],
        "copying": _digest(ev.copy_sequences, ev.copy_length, cfg.seed, cfg.data.vocab_size),
        "instructions": _digest(suites.instructions, ev.instruction_max_new_tokens),
    }
    if suites.problems:
        out["reasoning"] = _digest(
            suites.problems, ev.reasoning_max_new_tokens, ev.pass_k, ev.pass_n, ev.sample_temperature, cfg.seed
        )
    if suites.pairs:
        out["preference"] = _digest(suites.pairs, ev.preference_samples, ev.max_new_tokens, ev.sample_temperature, cfg.seed)
    return out


def eval_device(ev: EvaluateConfig) -> torch.device:
    """Where checkpoints are scored: ``evaluate.device``; auto is the task's GPU when it has one."""
    if ev.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(ev.device)


def eval_dtype(ev: EvaluateConfig) -> torch.dtype:
    """The weights' dtype while scoring; auto is bf16 on a GPU that has it, else fp32."""
    if ev.precision == "auto":
        bf16 = eval_device(ev).type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return DTYPES[ev.precision]


def load_eval_model(ev: EvaluateConfig, path):
    """A checkpoint for scoring: on the evaluation device, in its dtype, with its attention kernel."""
    return load_model(path, dtype=eval_dtype(ev), attn_implementation=ev.attn_implementation, device=eval_device(ev)).eval()


def evaluate_checkpoint(cfg: Config, checkpoint: str, suites: Suites) -> dict[str, Any]:
    """Run every suite on one checkpoint folder."""
    ev = cfg.evaluate
    with storage.local_copy(checkpoint, "checkpoint") as local:
        tokenizer = load_tokenizer(local)
        model = load_eval_model(ev, local)
    metrics, block_losses = heldout_perplexity(model, suites.heldout, ev.batch_size)
    next_token, suites.previous_logprobs = heldout_next_token(
        model, suites.heldout, ev.kl_tokens, ev.batch_size, suites.previous_logprobs
    )
    metrics.update(next_token)
    metrics.update(in_context_copying(model, suites.heldout, ev.copy_sequences, ev.copy_length, cfg.seed))
    samples = greedy_samples(model, tokenizer, ev.sample_prompts, ev.max_new_tokens)
    metrics["bigram_validity"] = bigram_validity(samples, suites.bigrams)
    instruct, instruct_samples, instruct_verdicts = score_instructions(
        model, tokenizer, suites.instructions, ev.instruction_max_new_tokens
    )
    metrics.update({f"instruct.{k}": v for k, v in instruct.items()})
    # per-item verdicts, in suite order, so the next checkpoint can be compared item by item
    verdicts = {f"instruct.{k}": v for k, v in instruct_verdicts.items()}
    verdicts["heldout_loss"] = block_losses
    out = {
        "metrics": metrics, "samples": samples, "instruction_samples": instruct_samples, "verdicts": verdicts,
        "next_token": top_next_tokens(model, tokenizer, ev.next_token_prompts, ev.next_token_top_k),
    }
    if suites.problems:
        reason, reason_samples, reason_verdicts = score_problems(
            model, tokenizer, suites.problems, ev.pass_k, ev.reasoning_max_new_tokens, ev.sample_temperature, cfg.seed,
            n=ev.pass_n,
        )
        metrics.update({f"reason.{k}": v for k, v in reason.items()})
        verdicts.update({f"reason.{k}": v for k, v in reason_verdicts.items()})
        out["reasoning_samples"] = reason_samples
    if suites.reward_model is not None and suites.sft_replies is not None:
        prompts = [p.prompt for p in suites.win_pairs]
        replies = sample_replies(model, tokenizer, prompts, ev.instruction_max_new_tokens, ev.sample_temperature, cfg.seed)
        gap = reply_logprobs(model, tokenizer, prompts, replies, ev.batch_size) - reply_logprobs(
            suites.sft_model, tokenizer, prompts, replies, ev.batch_size
        )
        prefs = preference_metrics(replies, suites.sft_replies, suites.win_pairs, suites.reward_model, tokenizer, gap)
        metrics.update({f"pref.{k}": v for k, v in prefs.items()})
        out["preference_samples"] = [
            {"prompt": p.prompt[-1]["content"], "reply": r, "sft_reply": b}
            for p, r, b in list(zip(suites.win_pairs, replies, suites.sft_replies))[:6]
        ]
    return out


def headline_figures(results: dict[str, Any], final: str) -> dict[str, float]:
    """The few numbers the console shows when evaluation ends: the final checkpoint's."""
    keys = ("perplexity", "instruct.compliance", "reason.pass_at_1", "reason.pass_at_k", "pref.win_rate_oracle_vs_sft")
    metrics = results[final]["metrics"]
    return {k: float(metrics[k]) for k in keys if k in metrics}


def _preference_suites(cfg: Config, manifest: dict[str, Any], suites: Suites, reward_uri: str, sft_uri: str) -> dict[str, Any]:
    """Load the reward model and the SFT baseline; returns the reward model's own metrics."""
    ev = cfg.evaluate
    pairs = [pair_from_record(r) for r in storage.read_jsonl(manifest["preference"]["heldout"]["uri"])]
    suites.pairs = pairs[: ev.max_preference_examples]
    # every pair once, then every pair again...: sampling draws a fresh reply each time
    suites.win_pairs = suites.pairs * ev.preference_samples
    with storage.local_copy(reward_uri, "reward model") as local:
        tokenizer = load_tokenizer(local)
        suites.reward_model = load_reward_model(
            str(local), tokenizer.pad_token_id, dtype=eval_dtype(ev), attn_implementation=ev.attn_implementation
        ).to(eval_device(ev))
    with storage.local_copy(sft_uri, "SFT checkpoint") as local:
        suites.sft_model = load_eval_model(ev, local)
    prompts = [p.prompt for p in suites.win_pairs]
    suites.sft_replies = sample_replies(
        suites.sft_model, tokenizer, prompts, ev.instruction_max_new_tokens, ev.sample_temperature, cfg.seed
    )
    return reward_model_metrics(suites.reward_model, tokenizer, suites.pairs)


def run_evaluate(
    cfg: Config,
    run_id: str,
    data: str,
    checkpoints: dict[str, str],
    model_ids: dict[str, str] | None = None,
    reward_model: str | None = None,
) -> dict[str, Any]:
    """Entry point: ``checkpoints`` maps a stage name to its checkpoint URI, in stage order;
    ``reward_model`` (a URI) adds the preference suite, judged against the ``sft`` checkpoint."""
    import torch

    torch.manual_seed(cfg.seed)
    with stage_context(cfg, run_id, "evaluate") as ctx:
        manifest = load_manifest(data)
        suites = Suites(
            # only the blocks the perplexity uses are read (range reads of the held-out shards)
            heldout=BlockReader(TokenSplit.from_manifest(manifest, "heldout")).head(cfg.evaluate.max_eval_blocks),
            # the copy check compares samples with the corpus' bounded tokenizer sample
            bigrams=corpus_bigrams([r["text"] for r in storage.read_jsonl(manifest["corpus"]["sample_uri"])]),
            instructions=[from_record(r) for r in storage.read_jsonl(manifest["sft"]["heldout"]["uri"])][
                : cfg.evaluate.max_instruction_examples
            ],
            problems=storage.read_jsonl(manifest["rlvr"]["heldout"]["uri"])[: cfg.evaluate.max_problems]
            if "rlvr" in manifest else [],
        )
        ctx.tracker.log_datasets(
            ctx.mlflow_run_id, [r for r in dataset_refs(manifest) if r.context == "evaluation"]
        )
        results: dict[str, Any] = {}
        if reward_model and "sft" in checkpoints:
            log.info("loading the reward model and the SFT baseline for the preference suite")
            rm_metrics = _preference_suites(cfg, manifest, suites, reward_model, checkpoints["sft"])
            results["reward_model"] = {"metrics": rm_metrics, "checkpoint_uri": reward_model}
            if "votes" in manifest["preference"]:  # people's votes it was trained on (data_prep's snapshot)
                results["reward_model"]["votes"] = manifest["preference"]["votes"]
            log.info("reward model: pairwise accuracy %.3f on held-out pairs", rm_metrics["pairwise_accuracy"])
            ctx.tracker.log_metrics(ctx.mlflow_run_id, {f"reward_model.{k}": v for k, v in rm_metrics.items()})
        digests = suite_digests(cfg, suites)
        previous: dict[str, list[float]] | None = None
        bench = prepare_for_run(cfg.evaluate.benchmarks, data, storage.join(ctx.run_uri, "eval"))
        emit_event("progress", "evaluate", done=0, total=len(checkpoints), unit="checkpoints")
        for done, (name, uri) in enumerate(checkpoints.items(), start=1):
            log.info("evaluating %s (%s)", name, uri)
            results[name] = evaluate_checkpoint(cfg, uri, suites)
            results[name]["checkpoint_uri"] = uri
            results[name]["suite_digests"] = digests
            metrics = results[name]["metrics"]
            if bench is not None:  # standard benchmarks (lm-eval), bench.<task>.<metric>
                metrics.update(run_benchmarks(cfg.evaluate.benchmarks, bench[0], uri, name))
            verdicts = results[name]["verdicts"]
            if previous is not None:  # what this stage bought over the one before, item by item
                for key, after in verdicts.items():
                    metrics.update(change_metrics(key, previous.get(key, []), after))
            previous = verdicts
            log.info(
                "%s: %s", name,
                ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k.count(".") <= 1 and "heldout" not in k),
            )
            ctx.tracker.log_metrics(ctx.mlflow_run_id, {f"{name}.{k}": v for k, v in metrics.items()})
            emit_event("progress", "evaluate", done=done, total=len(checkpoints), unit="checkpoints", metrics={
                k: metrics[k] for k in ("perplexity", "reason.pass_at_1") if k in metrics
            }, label=name)
            model_id = (model_ids or {}).get(name)
            if model_id:
                for key, value in metrics.items():
                    ctx.tracker.client.log_metric(ctx.mlflow_run_id, f"eval.{key}", value, model_id=model_id)
        out = storage.join(ctx.run_uri, "eval")
        storage.write_json(storage.join(out, "results.json"), results)
        ctx.tracker.log_text(ctx.mlflow_run_id, json.dumps(results, indent=2), "results.json")
        final = list(checkpoints)[-1]  # the last stage's checkpoint is the candidate
        promotion = promote(
            cfg.promotion, ctx.tracker.client, ctx.mlflow_run_id, run_id, final,
            (model_ids or {}).get(final), results[final]["metrics"],
            verdicts=results[final]["verdicts"], suite_digests=digests,
        )
        emit_event("headline", "evaluate", figures=headline_figures(results, final), promoted=promotion.get("promoted"))
        curves = stage_curves(ctx.tracker.client, ctx.tracker.experiment_id, run_id)
        # the data notes (sources, fallbacks, skipped records) go on the card only: ``results``
        # maps checkpoints to their metrics, and its readers rely on that
        notes = data_notes(manifest)
        ctx.tracker.log_text(ctx.mlflow_run_id, json.dumps(notes, indent=2), DATA_NOTES_ARTIFACT)  # for `fromscratch report`
        card = build_report_card({**results, "data_notes": notes}, curves, promotion, run_id)
        paths = publish_report_card(card, out, ctx.tracker.client, ctx.mlflow_run_id)
        return {
            "results": results, "markdown": card.markdown, "html": card.html, "eval_uri": out,
            "report": paths, "promotion": promotion,
        }
