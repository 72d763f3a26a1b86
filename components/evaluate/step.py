"""evaluate: the same held-out suite on every checkpoint it is given.

Suites today: perplexity on the held-out pre-training text, and greedy samples of fixed
prompts with a word-validity score. Results go to MLflow (on the evaluate run, keyed by
checkpoint, and on each checkpoint's LoggedModel), and to ``<run>/eval`` as JSON (for scripts
and CI gates) and Markdown (for people).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from components.common import storage
from components.common.config import Config
from components.common.modeling import load_model, load_tokenizer
from components.common.stage import stage_context
from components.data_prep.shards import read_shards
from components.data_prep.step import dataset_refs, load_manifest
from components.data_prep.instructions import Example, from_record
from components.evaluate.instruct import score_instructions
from components.evaluate.perplexity import heldout_perplexity
from components.evaluate.report import markdown_report
from components.evaluate.samples import bigram_validity, corpus_bigrams, greedy_samples

log = logging.getLogger(__name__)


def _read_jsonl(uri: str) -> list[dict[str, Any]]:
    with storage.open_uri(uri, "r") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def evaluate_checkpoint(
    cfg: Config,
    checkpoint: str,
    heldout,
    bigrams: set[tuple[str, str]],
    instructions: list[Example],
) -> dict[str, Any]:
    """Run every suite on one checkpoint folder."""
    with storage.local_copy(checkpoint, "checkpoint") as local:
        tokenizer = load_tokenizer(local)
        model = load_model(local)
    metrics = heldout_perplexity(model, heldout, cfg.evaluate.batch_size)
    samples = greedy_samples(model, tokenizer, cfg.evaluate.sample_prompts, cfg.evaluate.max_new_tokens)
    metrics["bigram_validity"] = bigram_validity(samples, bigrams)
    instruct, instruct_samples = score_instructions(
        model, tokenizer, instructions, cfg.evaluate.instruction_max_new_tokens
    )
    metrics.update({f"instruct.{k}": v for k, v in instruct.items()})
    return {"metrics": metrics, "samples": samples, "instruction_samples": instruct_samples}


def run_evaluate(
    cfg: Config,
    run_id: str,
    data: str,
    checkpoints: dict[str, str],
    model_ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Entry point: ``checkpoints`` maps a stage name to its checkpoint URI, in stage order."""
    import torch

    torch.manual_seed(cfg.seed)
    with stage_context(cfg, run_id, "evaluate") as ctx:
        manifest = load_manifest(data)
        held = manifest["pretrain"]["heldout"]
        heldout = read_shards(held["uri"], held["files"])[: cfg.evaluate.max_eval_blocks]
        bigrams = corpus_bigrams([r["text"] for r in _read_jsonl(storage.join(data, "corpus", "train.jsonl"))])
        instructions = [from_record(r) for r in _read_jsonl(manifest["sft"]["heldout"]["uri"])]
        instructions = instructions[: cfg.evaluate.max_instruction_examples]
        ctx.tracker.log_datasets(
            ctx.mlflow_run_id, [r for r in dataset_refs(manifest) if r.context == "evaluation"]
        )
        results: dict[str, Any] = {}
        for name, uri in checkpoints.items():
            log.info("evaluating %s (%s)", name, uri)
            results[name] = evaluate_checkpoint(cfg, uri, heldout, bigrams, instructions)
            results[name]["checkpoint_uri"] = uri
            metrics = results[name]["metrics"]
            log.info(
                "%s: perplexity %.2f, bigram validity %.2f, instruction compliance %.2f, accuracy %.2f",
                name, metrics["perplexity"], metrics["bigram_validity"],
                metrics["instruct.compliance"], metrics["instruct.accuracy"],
            )
            ctx.tracker.log_metrics(ctx.mlflow_run_id, {f"{name}.{k}": v for k, v in metrics.items()})
            model_id = (model_ids or {}).get(name)
            if model_id:
                for key, value in metrics.items():
                    ctx.tracker.client.log_metric(ctx.mlflow_run_id, f"eval.{key}", value, model_id=model_id)
        markdown = markdown_report(results)
        out = storage.join(ctx.run_uri, "eval")
        storage.write_json(storage.join(out, "results.json"), results)
        storage.write_text(storage.join(out, "report.md"), markdown)
        ctx.tracker.log_text(ctx.mlflow_run_id, markdown, "report.md")
        ctx.tracker.log_text(ctx.mlflow_run_id, json.dumps(results, indent=2), "results.json")
        return {"results": results, "markdown": markdown, "eval_uri": out}
