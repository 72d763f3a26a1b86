"""Standard benchmarks (lm-eval) inside the evaluate stage, offline, on small local copies of
ARC-Easy and PIQA in their published layouts (files this test makes): figures with intervals
on the report card, random init at chance (centered accuracy about 0)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from components.common import storage  # noqa: E402
from components.common.modeling import load_tokenizer, random_init_model  # noqa: E402
from components.data_prep.step import run_data_prep  # noqa: E402
from components.evaluate.benchmarks import (  # noqa: E402
    BenchmarkSuite,
    checkpoint_lm,
    prepare_benchmarks,
    to_metrics,
)
from components.common.config.evaluate import BenchmarksConfig, BenchmarkTask  # noqa: E402
from components.evaluate.step import run_evaluate  # noqa: E402

WORDS = "the a river town baker bread apple water stone green blue red small large warm cold".split()


def _sentence(rng: random.Random, n: int = 6) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def arc_file(path: Path, n: int = 120) -> Path:
    """allenai/ai2_arc (ARC-Easy) test split: id, question, choices {text, label}, answerKey."""
    rng = random.Random(1)
    with path.open("w") as fh:
        for i in range(n):
            labels = ["A", "B", "C", "D"]
            fh.write(json.dumps({
                "id": f"Mercury_{i}", "question": _sentence(rng) + "?",
                "choices": {"text": [_sentence(rng, 3) for _ in labels], "label": labels},
                "answerKey": rng.choice(labels),
            }) + "\n")
    return path


def piqa_file(path: Path, n: int = 120) -> Path:
    """PIQA validation split: goal, sol1, sol2, label (0 or 1)."""
    rng = random.Random(2)
    with path.open("w") as fh:
        for _ in range(n):
            fh.write(json.dumps({"goal": _sentence(rng), "sol1": _sentence(rng, 4), "sol2": _sentence(rng, 4),
                                 "label": rng.randrange(2)}) + "\n")
    return path


def test_centered_accuracy_and_intervals_from_lm_eval_results():
    suite = BenchmarkSuite(Path("."), [BenchmarkTask(name="arc_easy", layout="arc", uri="x.jsonl"),
                                        BenchmarkTask(name="piqa", layout="piqa", uri="y.jsonl")])
    raw = {"fs_arc_easy": {"acc,none": 0.25, "acc_stderr,none": 0.02},
           "fs_piqa": {"acc,none": 0.9, "acc_stderr,none": 0.01},
           "fs_heldout_text": {"bits_per_byte,none": 2.5, "bits_per_byte_stderr,none": "N/A"}}
    m = to_metrics(raw, suite)
    assert m["bench.arc_easy.acc_centered"] == pytest.approx(0.0)
    assert m["bench.arc_easy.acc_centered.ci_low"] == pytest.approx(-1.96 * 0.02 / 0.75)
    assert m["bench.piqa.acc_centered"] == pytest.approx(0.8)
    assert m["bench.piqa.acc.ci_high"] == pytest.approx(0.9 + 1.96 * 0.01)
    assert m["bench.heldout_text.bits_per_byte"] == 2.5 and "bench.heldout_text.bits_per_byte.ci_low" not in m


def test_checkpoint_lm_log_likelihoods_are_the_models(make_config, tmp_path):
    """The LM wrapper's scores, batched and padded, equal the model's own log-probabilities of
    the continuation tokens (computed here one sequence at a time), greedy flag included."""
    import torch
    from lm_eval.api.instance import Instance

    cfg = make_config()
    manifest = run_data_prep(cfg, "lm")
    tokenizer = load_tokenizer(manifest["tokenizer_uri"])
    model = random_init_model(cfg.model, tokenizer, seed=0).eval()
    lm = checkpoint_lm(model, tokenizer, batch_size=3, max_gen_tokens=4)
    pairs = [("a town by the", " river"), ("Mira lives in a small", " town with a baker"), ("", "Once upon a time")]
    got = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)])
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for (ctx, cont), (logprob, greedy) in zip(pairs, got):
        ctx_ids = [prefix, *tokenizer(ctx, add_special_tokens=False)["input_ids"]] if ctx else [prefix]
        cont_ids = tokenizer(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ctx_ids + cont_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        rows = lp[len(ctx_ids) - 1 :]
        target = torch.tensor(cont_ids)
        assert logprob == pytest.approx(float(rows.gather(1, target[:, None]).sum()), abs=1e-4)
        assert greedy == bool((rows.argmax(-1) == target).all())
    text = "a town by the river " * 40  # longer than the context: several rolling windows
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > cfg.model.max_seq_len
    # random init is near uniform over the vocabulary: each token scored exactly once gives
    # about -ln(vocab) per token (twice would give about double)
    per_token = rolling / len(ids)
    assert abs(per_token + math.log(len(tokenizer))) < 1.0, per_token


def test_lm_eval_inside_the_evaluate_stage_on_local_copies(make_config, tmp_path):
    arc = arc_file(tmp_path / "arc_easy_test.jsonl")
    piqa = piqa_file(tmp_path / "piqa_validation.jsonl")
    cfg = make_config(
        "evaluate.max_instruction_examples=8", "evaluate.max_problems=8", "evaluate.pass_k=0",
        "evaluate.benchmarks.enabled=true", "evaluate.benchmarks.heldout_documents=20",
        f"evaluate.benchmarks.tasks=[{{name: arc_easy, layout: arc, uri: '{arc}', split: test}}, "
        f"{{name: piqa, layout: piqa, uri: '{piqa}', split: validation}}]",
        "promotion.enabled=false",
    )
    manifest = run_data_prep(cfg, "bench")
    tokenizer = load_tokenizer(manifest["tokenizer_uri"])
    init = tmp_path / "init"
    random_init_model(cfg.model, tokenizer, seed=cfg.seed).save_pretrained(init)
    tokenizer.save_pretrained(init)
    storage.mark_complete(str(init), {"stage": "init"})
    out = run_evaluate(cfg, "bench", manifest["data_uri"], {"init": str(init)})
    metrics = out["results"]["init"]["metrics"]
    for task in ("arc_easy", "piqa"):
        low, high = metrics[f"bench.{task}.acc_centered.ci_low"], metrics[f"bench.{task}.acc_centered.ci_high"]
        assert low < 0 < high, (task, metrics[f"bench.{task}.acc_centered"])  # random init: at chance
        assert abs(metrics[f"bench.{task}.acc_centered"]) < 0.25
    assert metrics["bench.heldout_text.bits_per_byte"] > 1.0  # random init knows nothing of the text
    # results map checkpoints to their metrics (the KFP wrapper and others read them so); the data
    # notes go on the card only
    assert all(isinstance(v, dict) for v in out["results"].values())
    card = out["markdown"]
    assert "## Data" in card and "SFT data: generated tasks" in card
    assert "## Standard benchmarks (lm-eval)" in card
    assert "arc_easy: centered accuracy (chance = 0)" in card and "piqa: accuracy" in card
    assert "heldout_text: bits per byte" in card
    # the task YAMLs are kept beside the results, to rerun with lm_eval --include_path
    assert storage.exists(storage.join(out["eval_uri"], "benchmarks", "arc_easy.yaml"))
    print(card)


def test_task_yaml_for_an_s3_copy_and_the_hub(tmp_path):
    cfg = BenchmarksConfig(enabled=True, tasks=[
        BenchmarkTask(name="arc_challenge", layout="arc", hf_dataset="allenai/ai2_arc", hf_config="ARC-Challenge"),
        BenchmarkTask(name="gsm8k", layout="gsm8k", uri=str(tmp_path / "gsm8k.parquet")),
    ])
    (tmp_path / "gsm8k.parquet").write_bytes(b"")
    suite = prepare_benchmarks(cfg, None, tmp_path / "tasks")
    arc = (tmp_path / "tasks" / "arc_challenge.yaml").read_text()
    assert "dataset_path: allenai/ai2_arc" in arc and "dataset_name: ARC-Challenge" in arc
    gsm = (tmp_path / "tasks" / "gsm8k.yaml").read_text()
    assert "dataset_path: parquet" in gsm and "process_results: !function bench_utils.gsm8k_results" in gsm
    assert suite.names(chat=False) == ["arc_challenge"] and suite.names(chat=True) == ["arc_challenge", "gsm8k"]


def test_gsm8k_scoring_reads_the_project_answer_format(tmp_path):
    import importlib.util

    prepare_benchmarks(BenchmarksConfig(), None, tmp_path)
    spec = importlib.util.spec_from_file_location("bench_utils", tmp_path / "bench_utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = {"question": "?", "answer": "5 boxes of 200 is 5*200=<<5*200=1000>>1000.\n#### 1000"}
    assert utils.gsm8k_results(doc, ["5 x 200 = 1000.\nThe answer is 1,000."]) == {"acc": 1.0}
    assert utils.gsm8k_results(doc, ["The answer is 999."]) == {"acc": 0.0}
    assert utils.gsm8k_results(doc, ["1000"]) == {"acc": 0.0}  # no final sentence: not the taught format


def test_batched_generation_matches_one_prompt_at_a_time(make_config):
    import torch
    from lm_eval.api.instance import Instance

    cfg = make_config()
    manifest = run_data_prep(cfg, "gen")
    tokenizer = load_tokenizer(manifest["tokenizer_uri"])
    model = random_init_model(cfg.model, tokenizer, seed=3).eval()
    lm = checkpoint_lm(model, tokenizer, batch_size=3, max_gen_tokens=6)
    contexts = ["Mira lives in", "The baker of the small town", "Once"]
    got = lm.generate_until([Instance("generate_until", {}, (c, {"until": ["\n\n"]}), i) for i, c in enumerate(contexts)])
    for context, reply in zip(contexts, got):
        ids = torch.tensor([tokenizer(context, add_special_tokens=False)["input_ids"]])
        alone = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:]
        expected = tokenizer.decode(alone, skip_special_tokens=True).split("\n\n")[0]
        assert reply == expected
