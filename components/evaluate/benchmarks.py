"""Standard benchmarks with lm-evaluation-harness, on every checkpoint, fully offline.

The multiple-choice tasks in the spirit of nanochat's CORE (HellaSwag, ARC-Easy/Challenge,
PIQA), LAMBADA, GSM8K for the chat checkpoints, and bits per byte of this run's held-out text.
Each task is an lm-eval task YAML this module writes into a folder of its own (kept beside the
results, so a user can rerun it with ``lm_eval --include_path``): ``dataset_path: json`` or
``parquet`` with ``data_files`` pointing at a local copy of the data in its published layout
(an ``s3://`` copy is fetched first), or the hub id where there is network. The prompts are
the harness's own for these layouts, written as Jinja so no task needs Python from elsewhere;
GSM8K is scored with the project's answer format (``The answer is N.``), which the chat stages
are taught, through a small ``!function`` beside the YAMLs.

The model is the project's checkpoint and tokenizer wrapped in ``CheckpointLM``, an lm-eval
``LM`` passed to ``simple_evaluate``. Results become ``bench.<task>.<metric>`` metrics with
95 % intervals (``acc`` ± 1.96 standard errors), and centered accuracy
``(acc - chance) / (1 - chance)`` so random init reads 0 whatever the number of choices; the
promotion gate can name any of them.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.common import storage
from components.common.config.evaluate import BenchmarksConfig, BenchmarkTask

log = logging.getLogger(__name__)

PREFIX = "bench."
HELDOUT_TASK = "heldout_text"
# checkpoints that have been through the chat template (SFT and after)
CHAT_STAGES = ("sft", "preference", "ppo", "dpo", "rlvr")
Z95 = 1.96

# The prompt of each layout (the harness's own prompts for these data sets, as Jinja).
LAYOUT_TASKS: dict[str, dict[str, Any]] = {
    "hellaswag": {
        "output_type": "multiple_choice",
        "doc_to_text": "{{activity_label}}: {{ctx_a}} {{ctx_b|capitalize}}",
        "doc_to_choice": "{{endings}}",
        "doc_to_target": "{{label|int}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    },
    "arc": {
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices.text}}",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    },
    "piqa": {
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    },
    "lambada": {
        "output_type": "loglikelihood",
        "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
        "doc_to_target": "{{' '+text.split(' ')[-1]}}",
        "metric_list": [{"metric": "acc"}, {"metric": "perplexity"}],
    },
    "gsm8k": {
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer.split('####')[-1].strip()}}",
        "process_results": "!function bench_utils.gsm8k_results",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    },
}

UTILS = '''"""Scoring helpers of the fromscratch benchmark tasks (written by components/evaluate/benchmarks.py)."""
from components.common.answer_format import final_answer, normalize_number


def gsm8k_results(doc, results):
    """1 when the reply's final "The answer is N." is GSM8K's answer after '####'."""
    target = normalize_number(doc["answer"].split("####")[-1])
    said = final_answer(results[0])
    return {"acc": float(target is not None and said is not None and normalize_number(said) == target)}
'''


@dataclass
class BenchmarkSuite:
    """The task folder written once per evaluate run, and which tasks run on which checkpoints."""

    folder: Path
    tasks: list[BenchmarkTask] = field(default_factory=list)
    heldout: bool = False

    def names(self, chat: bool) -> list[str]:
        names = [t.name for t in self.tasks if chat or not t.chat_only]
        return names + ([HELDOUT_TASK] if self.heldout else [])


def _data_files(uri: str, folder: Path, name: str) -> tuple[str, str]:
    """(builder, local file) of a benchmark copy: ``s3://`` copies are fetched into ``folder``."""
    lower = uri.lower()
    builder = "parquet" if ".parquet" in lower else "json"
    if "://" in uri and not uri.startswith("file://"):
        local = folder / "data" / f"{name}{''.join(Path(lower).suffixes)}"
        local.parent.mkdir(parents=True, exist_ok=True)
        with storage.open_uri(uri, "rb") as src, open(local, "wb") as dst:
            dst.write(src.read())
        return builder, str(local)
    path = uri.removeprefix("file://")
    if not Path(path).is_file():
        raise FileNotFoundError(f"benchmark '{name}': no such file {uri}")
    return builder, str(Path(path).resolve())


def task_yaml(task: BenchmarkTask, folder: Path) -> dict[str, Any]:
    """The lm-eval task definition of one benchmark."""
    spec: dict[str, Any] = {"task": f"fs_{task.name}", **LAYOUT_TASKS[task.layout]}
    if task.uri:
        builder, local = _data_files(task.uri, folder, task.name)
        spec.update(dataset_path=builder, dataset_kwargs={"data_files": {task.split: local}})
    else:
        spec.update(dataset_path=task.hf_dataset, dataset_name=task.hf_config)
    spec["test_split"] = task.split
    if task.layout == "gsm8k":
        spec["generation_kwargs"] = {"until": ["\n\n", "<|user|>"], "do_sample": False}
    return spec


def prepare_benchmarks(cfg: BenchmarksConfig, heldout_docs: list[str] | None, folder: Path) -> BenchmarkSuite:
    """Write the task YAMLs (and the held-out text task's data) into ``folder``."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench_utils.py").write_text(UTILS, encoding="utf-8")
    for task in cfg.tasks:
        spec = task_yaml(task, folder)
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
        # lm-eval resolves "!function module.name" relative to the YAML's folder
        text = text.replace("'!function bench_utils.gsm8k_results'", "!function bench_utils.gsm8k_results")
        (folder / f"{task.name}.yaml").write_text(text, encoding="utf-8")
    heldout = bool(cfg.heldout_bits_per_byte and heldout_docs)
    if heldout:
        data = folder / "data" / "heldout_text.jsonl"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps({"text": d}) + "\n" for d in heldout_docs or []), encoding="utf-8")
        spec = {
            "task": f"fs_{HELDOUT_TASK}", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
            "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "bits_per_byte"}, {"metric": "byte_perplexity"}],
        }
        (folder / f"{HELDOUT_TASK}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return BenchmarkSuite(folder, list(cfg.tasks), heldout)


# -- the model ----------------------------------------------------------------------------------
def checkpoint_lm(model: Any, tokenizer: Any, batch_size: int, max_gen_tokens: int) -> Any:
    """The project's checkpoint as an lm-eval ``LM`` (built lazily: lm-eval is imported here)."""
    import torch
    import torch.nn.functional as F
    from lm_eval.api.model import LM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    class CheckpointLM(LM):
        """Scores and generates with one loaded checkpoint; every request in batches."""

        def __init__(self) -> None:
            super().__init__()
            self.model, self.tokenizer = model.eval(), tokenizer
            self.device_ = next(model.parameters()).device
            self.max_length = int(getattr(model.config, "max_position_embeddings", 2048))
            self.prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

        tokenizer_name = "fromscratch"

        def chat_template(self, chat_template: Any = None) -> str:
            return self.tokenizer.chat_template or ""

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
            )

        def _encode(self, text: str) -> list[int]:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

        def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            """(context ids, continuation ids), cut where the whole string's tokens allow."""
            spaces = len(context) - len(context.rstrip(" "))
            if spaces:  # a trailing space belongs to the continuation's first token
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = self._encode(context + continuation)
            ctx = self._encode(context)
            if whole[: len(ctx)] == ctx and len(whole) > len(ctx):
                return [self.prefix, *ctx], whole[len(ctx):]
            return [self.prefix, *ctx], self._encode(continuation)

        @torch.no_grad()
        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            """(sum of log p(continuation), greedy?) for (context ids, continuation ids) pairs."""
            out: list[tuple[float, bool]] = []
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                seqs = [(ctx + cont)[-(self.max_length + 1):][:-1] for ctx, cont in chunk]
                width = max(len(s) for s in seqs)
                ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, seq in enumerate(seqs):
                    ids[row, : len(seq)] = torch.tensor(seq)
                    mask[row, : len(seq)] = 1
                logprobs = F.log_softmax(
                    self.model(input_ids=ids.to(self.device_), attention_mask=mask.to(self.device_)).logits.float(), -1
                ).cpu()
                for row, (seq, (_, cont)) in enumerate(zip(seqs, chunk)):
                    n = len(cont)
                    positions = torch.arange(len(seq) - n, len(seq))
                    target = torch.tensor(cont)
                    rows = logprobs[row, positions]
                    out.append((float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())))
            return out

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            return self._score([self._split(*r.args) for r in requests])

        def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
            results = []
            for request in requests:
                windows = [
                    make_disjoint_window(w)
                    for w in get_rolling_token_windows(self._encode(request.args[0]), self.prefix, self.max_length, 1)
                ]
                results.append(sum(lp for lp, _ in self._score(windows)))
            return results

        @torch.no_grad()
        def generate_until(self, requests: list[Any]) -> list[str]:
            """Greedy replies, ``batch_size`` prompts at a time (left-padded), cut at the stops."""
            replies: list[str] = []
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.prefix
            for start in range(0, len(requests), batch_size):
                chunk = [r.args for r in requests[start : start + batch_size]]
                budget = min(max(int(kw.get("max_gen_toks", max_gen_tokens)) for _, kw in chunk), max_gen_tokens)
                prompts = [(self._encode(ctx) or [self.prefix])[-(self.max_length - budget):] for ctx, _ in chunk]
                width = max(len(p) for p in prompts)
                ids = torch.full((len(prompts), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, prompt in enumerate(prompts):
                    ids[row, width - len(prompt):] = torch.tensor(prompt)
                    mask[row, width - len(prompt):] = 1
                out = self.model.generate(
                    ids.to(self.device_), attention_mask=mask.to(self.device_), max_new_tokens=budget,
                    do_sample=False, pad_token_id=pad,
                )[:, width:]
                for (_, kwargs), new in zip(chunk, out):
                    text = self.tokenizer.decode(new, skip_special_tokens=True)
                    until = kwargs.get("until") or []
                    for stop in [until] if isinstance(until, str) else until:
                        if stop and stop in text:
                            text = text[: text.index(stop)]
                    replies.append(text)
            return replies

    return CheckpointLM()


# -- running and reading the results -------------------------------------------------------------
def _interval(value: float, stderr: Any, low: float = 0.0, high: float = 1.0) -> tuple[float, float] | None:
    if not isinstance(stderr, (int, float)) or math.isnan(stderr):
        return None
    return max(low, value - Z95 * stderr), min(high, value + Z95 * stderr)


def _with_interval(metrics: dict[str, float], key: str, value: float, stderr: Any, low: float = 0.0, high: float = 1.0) -> None:
    metrics[key] = value
    ci = _interval(value, stderr, low, high)
    if ci is not None:
        metrics[f"{key}.ci_low"], metrics[f"{key}.ci_high"] = ci


def to_metrics(raw: dict[str, Any], suite: BenchmarkSuite) -> dict[str, float]:
    """lm-eval's ``results`` section as ``bench.<task>.<metric>`` metrics with intervals."""
    chance = {t.name: t.chance for t in suite.tasks}
    metrics: dict[str, float] = {}
    for task_key, values in raw.items():
        name = task_key.removeprefix("fs_")
        for metric in ("acc", "acc_norm", "bits_per_byte", "perplexity", "byte_perplexity"):
            value = values.get(f"{metric},none")
            if not isinstance(value, (int, float)):
                continue
            stderr = values.get(f"{metric}_stderr,none")
            if metric.startswith("acc"):
                _with_interval(metrics, f"{PREFIX}{name}.{metric}", float(value), stderr)
            else:
                metrics[f"{PREFIX}{name}.{metric}"] = float(value)
            if metric == "acc" and name in chance:
                c = chance[name]
                scale = 1.0 - c
                err = stderr / scale if isinstance(stderr, (int, float)) else None
                _with_interval(metrics, f"{PREFIX}{name}.acc_centered", (float(value) - c) / scale, err, -c / scale, 1.0)
    return metrics


def run_benchmarks(cfg: BenchmarksConfig, suite: BenchmarkSuite, checkpoint: str, stage: str) -> dict[str, float]:
    """Every benchmark of ``suite`` that applies to ``stage``, on one checkpoint folder."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from components.common.modeling import load_model, load_tokenizer

    chat = stage in CHAT_STAGES
    with storage.local_copy(checkpoint, "checkpoint") as local:
        tokenizer, model = load_tokenizer(local), load_model(local)
    lm = checkpoint_lm(model, tokenizer, cfg.batch_size, cfg.max_gen_tokens)
    manager = TaskManager(include_path=str(suite.folder), include_defaults=False)
    metrics: dict[str, float] = {}
    plain = [f"fs_{n}" for n in suite.names(chat) if not any(t.name == n and t.layout == "gsm8k" for t in suite.tasks)]
    chat_tasks = [f"fs_{t.name}" for t in suite.tasks if t.layout == "gsm8k" and (chat or not t.chat_only)]
    for names, template in ((plain, False), (chat_tasks, chat)):
        if not names:
            continue
        out = simple_evaluate(
            model=lm, tasks=names, task_manager=manager, limit=cfg.limit, apply_chat_template=template,
            bootstrap_iters=cfg.bootstrap_iters, log_samples=False, random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0,
        )
        metrics.update(to_metrics(out["results"], suite))
    log.info("%s benchmarks: %s", stage, ", ".join(
        f"{k.removeprefix(PREFIX)} {v:.3f}" for k, v in metrics.items() if k.endswith((".acc", ".acc_centered", "bits_per_byte"))
    ))
    return metrics


def heldout_text(data: str, limit: int) -> list[str]:
    """Held-out text for bits per byte: the first ``limit`` held-out blocks decoded back to text.
    Data prep keeps the held-out corpus only as token blocks (it streams, it never lists the
    documents), and only these blocks are read."""
    from components.common.modeling import load_tokenizer
    from components.data_prep.manifest import TokenSplit, load_manifest
    from components.data_prep.shards import BlockReader

    reader = BlockReader(TokenSplit.from_manifest(load_manifest(data), "heldout"))
    try:
        blocks = reader.head(limit)
    finally:
        reader.close()
    with tempfile.TemporaryDirectory(prefix="fs-tok-") as local:
        tokenizer = load_tokenizer(storage.download_dir(storage.join(data, "tokenizer"), local))
        texts = [tokenizer.decode(block.tolist(), skip_special_tokens=True).strip() for block in blocks]
    return [text for text in texts if text]


def prepare_for_run(cfg: BenchmarksConfig, data: str, out_uri: str) -> tuple[BenchmarkSuite, tempfile.TemporaryDirectory] | None:
    """The suite of an evaluate run (None when benchmarks are off); the task folder is also
    copied to ``<out_uri>/benchmarks`` so the tasks can be rerun with ``lm_eval --include_path``."""
    if not cfg.enabled:
        return None
    tmp = tempfile.TemporaryDirectory(prefix="fs-bench-")
    docs = heldout_text(data, cfg.heldout_documents) if cfg.heldout_bits_per_byte else None
    suite = prepare_benchmarks(cfg, docs, Path(tmp.name))
    storage.upload_dir(tmp.name, storage.join(out_uri, "benchmarks"))
    return suite, tmp


# -- the report card ------------------------------------------------------------------------------
def benchmark_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of the benchmark rows at least one checkpoint has, task by task."""
    present = {k for v in results.values() if isinstance(v, dict) for k in v.get("metrics", {})}
    tasks = sorted({k.split(".")[1] for k in present if k.startswith(PREFIX)})
    rows = []
    for task in tasks:
        for metric, label in (
            ("acc", "accuracy"), ("acc_centered", "centered accuracy (chance = 0)"), ("acc_norm", "accuracy, length-normalised"),
            ("bits_per_byte", "bits per byte (lower is better)"),
        ):
            key = f"{PREFIX}{task}.{metric}"
            if key in present:
                rows.append((key, f"{task}: {label}"))
    return rows


DATA_NOTES_ARTIFACT = "data_notes.json"  # the card's Data section, logged on the evaluate run


def data_notes(manifest: dict[str, Any]) -> list[str]:
    """What the report card says about the data: each stage's source (a fallback named as
    such) and the records the loaders left out, with the first few by file:line."""
    notes = []
    for kind, label in (("sft", "SFT data"), ("preference", "preference data"), ("rlvr", "RLVR problems")):
        source = manifest.get(kind, {}).get("source")
        if source:
            notes.append(f"{label}: {source}")
    for kind, skipped in (manifest.get("skipped") or {}).items():
        rules = ", ".join(f"{n} by the rule '{rule}'" for rule, n in sorted(skipped.get("by_rule", {}).items()))
        text = (f"{skipped.get('what', kind)}: {skipped.get('malformed', 0)} malformed records skipped"
                + (f" and {rules}" if rules else "") + f", of {skipped.get('records', 0)} read")
        if skipped.get("first"):
            text += "; the first: " + "; ".join(skipped["first"])
        notes.append(text)
    return notes
