"""Each stage's loader on small local copies of the public datasets in exactly their published
layouts (the hub repositories' folders, file names, column names and nested types), read by
the same ``datasets.load_dataset`` call the presets make by name; and the bad-input errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.common.config import load_config
from components.common.config.data import DataSource, DatasetRecipe
from components.common.errors import DataError
from components.data_prep.chat_loaders import read_instruction_sources
from components.data_prep.preference_loaders import DIVERGENT_RULE, read_preference_sources
from components.data_prep.problem_loaders import NOT_NUMERIC_RULE, read_problem_sources
from components.data_prep.sources import iter_unit, plan_units


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _readme(repo: Path, configs: dict[str, dict[str, str]]) -> None:
    """A hub dataset card's ``configs`` section: config -> split -> file pattern."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    (repo / "README.md").write_text("\n".join([*lines, "---", "# test copy"]) + "\n")


# -- published layouts ---------------------------------------------------------------------------
def gsm8k_repo(root: Path, rows: list[dict] | None = None) -> Path:
    """openai/gsm8k: main/{train,test}-00000-of-00001.parquet, columns question, answer."""
    repo = root / "gsm8k"
    rows = rows or [
        {"question": f"Natalia sold clips to {n} friends, 2 each. How many clips did she sell?",
         "answer": f"Natalia sold {n}*2=<<{n}*2={2 * n}>>{2 * n} clips.\n#### {2 * n:,}"}
        for n in range(400, 440)
    ]
    _parquet(repo / "main" / "train-00000-of-00001.parquet", rows)
    _parquet(repo / "main" / "test-00000-of-00001.parquet", rows[:5])
    _readme(repo, {"main": {"train": "main/train-*", "test": "main/test-*"}})
    return repo


def math_repo(root: Path) -> Path:
    """DigitalLearningGmbH/MATH-lighteval: data/{train,test}-*.parquet with problem, level,
    solution (answer in the last \\boxed{}), type."""
    repo = root / "math"
    rows = [
        {"problem": f"What is $\\frac{{{k}}}{{4}} + \\frac{{{k}}}{{4}}$?", "level": f"Level {1 + k % 5}",
         "solution": f"Adding gives $\\frac{{{2 * k}}}{{4}} = \\boxed{{\\frac{{{k}}}{{2}}}}$.", "type": "Prealgebra"}
        for k in range(1, 20)
    ]
    rows.append({"problem": "Simplify $x+x$.", "level": "Level 1", "solution": "It is $\\boxed{2x}$.", "type": "Algebra"})
    _parquet(repo / "data" / "train-00000-of-00001.parquet", rows)
    _readme(repo, {"default": {"train": "data/train-*"}})
    return repo


def ultrafeedback_repo(root: Path) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized: data/train_prefs-*.parquet, chosen/rejected as
    message lists that repeat the user turn, prompt a string, scores beside them."""
    repo = root / "ultrafeedback_binarized"
    rows = []
    for i in range(30):
        prompt = f"Write one sentence about the number {i}."
        rows.append({
            "prompt": prompt, "prompt_id": f"{i:064x}",
            "chosen": [{"content": prompt, "role": "user"}, {"content": f"{i} is a fine number.", "role": "assistant"}],
            "rejected": [{"content": prompt, "role": "user"}, {"content": "No.", "role": "assistant"}],
            "messages": [{"content": prompt, "role": "user"}, {"content": f"{i} is a fine number.", "role": "assistant"}],
            "score_chosen": 8.0, "score_rejected": 2.5,
        })
    for split in ("train_prefs", "test_prefs"):
        _parquet(repo / "data" / f"{split}-00000-of-00001.parquet", rows)
    _readme(repo, {"default": {"train_prefs": "data/train_prefs-*", "test_prefs": "data/test_prefs-*"}})
    return repo


def hh_rows(n: int = 40) -> list[dict]:
    return [
        {"chosen": f"\n\nHuman: How do I boil {i} eggs?\n\nAssistant: Put them in boiling water for 9 minutes.",
         "rejected": f"\n\nHuman: How do I boil {i} eggs?\n\nAssistant: Why would you want eggs?"}
        for i in range(n)
    ]


def hh_repo(root: Path, rows: list[dict]) -> Path:
    """Anthropic/hh-rlhf: <subset>/train.jsonl.gz, Human/Assistant transcripts as downloaded."""
    repo = root / "hh-rlhf"
    for subset in ("helpful-base",):
        path = repo / subset / "train.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    return repo


def ultrachat_repo(root: Path) -> Path:
    """HuggingFaceH4/ultrachat_200k: data/train_sft-*.parquet with prompt, prompt_id, messages."""
    repo = root / "ultrachat_200k"
    rows = [
        {"prompt": f"Tell me about river {i}.", "prompt_id": f"{i:064x}",
         "messages": [{"content": f"Tell me about river {i}.", "role": "user"},
                      {"content": f"River {i} is long.", "role": "assistant"},
                      {"content": "And its source?", "role": "user"},
                      {"content": "A spring in the hills.", "role": "assistant"}]}
        for i in range(12)
    ]
    _parquet(repo / "data" / "train_sft-00000-of-00001.parquet", rows)
    _readme(repo, {"default": {"train_sft": "data/train_sft-*"}})
    return repo


# -- the loaders on them -------------------------------------------------------------------------
def test_gsm8k_by_name_with_config_and_split(tmp_path):
    repo = gsm8k_repo(tmp_path)
    problems, report = read_problem_sources([DatasetRecipe(hf_dataset=str(repo), hf_config="main", split="train", family="gsm8k")])
    assert len(problems) == 40 and report.skipped == 0
    first = problems[0]
    assert first.answer == "800" and first.family == "gsm8k"  # "#### 800" (and "1,000" -> "1000" later)
    assert first.solution.endswith("The answer is 800.") and "<<" not in first.solution
    assert first.id == f"{repo}:train:0"
    assert problems[-1].answer == "878"
    test, _ = read_problem_sources([DatasetRecipe(hf_dataset=str(repo), hf_config="main", split="test")])
    assert len(test) == 5


def test_math_boxed_answers_and_levels(tmp_path):
    repo = math_repo(tmp_path)
    recipe = DatasetRecipe(hf_dataset=str(repo), split="train", fields={"question": "problem"},
                           answer_format="boxed", family="math")
    problems, report = read_problem_sources([recipe])
    assert len(problems) == 19
    assert problems[0].answer == "1/2" and problems[1].answer == "1" and problems[0].family == "math"
    assert problems[0].difficulty == 2 and problems[0].prompt[0]["content"].startswith("What is")
    assert problems[0].solution.endswith("The answer is 1/2.")
    # "2x" cannot be checked by the number verifier: left out by rule, counted, named
    assert report.by_rule == {NOT_NUMERIC_RULE: 1} and report.malformed == 0
    assert "row 19" in report.first[0] and "'2x'" in report.first[0]


def test_ultrafeedback_binarized_message_lists(tmp_path):
    repo = ultrafeedback_repo(tmp_path)
    pairs, _ = read_preference_sources([DatasetRecipe(hf_dataset=str(repo), split="train_prefs")])
    assert len(pairs) == 30
    assert pairs[3].prompt == [{"role": "user", "content": "Write one sentence about the number 3."}]
    assert (pairs[3].chosen, pairs[3].rejected) == ("3 is a fine number.", "No.")


def test_hh_transcripts_gzipped_by_name_and_by_mirror_uri(tmp_path):
    rows = hh_rows()
    repo = hh_repo(tmp_path, rows)
    by_name, _ = read_preference_sources([DatasetRecipe(hf_dataset=str(repo), split="train")])
    by_uri, _ = read_preference_sources([str(repo / "helpful-base" / "train.jsonl.gz")])
    folder, _ = read_preference_sources([str(repo)])  # a folder of .jsonl.gz files
    assert len(by_name) == len(by_uri) == len(folder) == 40
    assert by_uri[0].prompt == [{"role": "user", "content": "How do I boil 0 eggs?"}]
    assert by_uri[0].chosen == "Put them in boiling water for 9 minutes."
    assert by_uri[0].id.endswith("train.jsonl.gz:1")


def test_ultrachat_messages(tmp_path):
    repo = ultrachat_repo(tmp_path)
    examples, _ = read_instruction_sources([DatasetRecipe(hf_dataset=str(repo), split="train_sft", family="ultrachat")])
    assert len(examples) == 12
    assert [m["role"] for m in examples[0].messages] == ["user", "assistant", "user", "assistant"]
    assert examples[0].answer == "A spring in the hills." and examples[0].family == "ultrachat"


def test_fineweb_edu_parquet_corpus_by_name(tmp_path):
    """HuggingFaceFW/fineweb-edu: sample/10BT/*.parquet with text, id, dump, url, score...;
    the corpus reader (data.sources) streams its ``text`` column."""
    repo = tmp_path / "fineweb-edu"
    rows = [{"text": f"Lesson {i}: water boils at 100 degrees.", "id": f"<urn:{i}>", "dump": "CC-MAIN-2024-10",
             "url": f"https://example.org/{i}", "language": "en", "score": 3.1, "int_score": 3} for i in range(20)]
    _parquet(repo / "sample" / "10BT" / "000_00000.parquet", rows)
    _readme(repo, {"sample-10BT": {"train": "sample/10BT/*"}})
    units = plan_units([DataSource(hf_dataset=str(repo), hf_config="sample-10BT", hf_split="train")])
    docs = [doc for unit in units for doc in iter_unit(unit)]
    assert len(docs) == 20 and all(d.startswith("Lesson") for d in docs)


def test_mirror_parquet_file_with_field_mapping(tmp_path):
    """A mirror (what the README's S3 copy step writes) read by URI, columns renamed."""
    path = tmp_path / "mirror" / "problems.parquet"
    _parquet(path, [{"q": "What is 2+2?", "a": "4"}, {"q": "What is 3+3?", "a": "6"}])
    problems, _ = read_problem_sources([DatasetRecipe(uri=str(path), fields={"question": "q", "answer": "a"})])
    assert [p.answer for p in problems] == ["4", "6"]


# -- bad input: exact messages ---------------------------------------------------------------------
def test_missing_column_names_dataset_split_and_row(tmp_path):
    repo = gsm8k_repo(tmp_path, [{"question": "What is 1+1?"}])
    with pytest.raises(DataError) as err:
        read_problem_sources([DatasetRecipe(hf_dataset=str(repo), hf_config="main", split="train")])
    assert str(err.value) == (
        f"hf dataset '{repo}' config 'main' split 'train' row 0: missing field 'answer' (fields present: question)"
    )


def test_mapped_column_missing_is_named(tmp_path):
    repo = math_repo(tmp_path)
    with pytest.raises(DataError) as err:
        read_problem_sources([DatasetRecipe(hf_dataset=str(repo), fields={"question": "query"}, answer_format="boxed")])
    assert str(err.value) == (
        f"hf dataset '{repo}' split 'train' row 0: missing column 'query' (read as 'question'; "
        "columns present: level, problem, solution, type)"
    )


def test_wrong_type_names_dataset_split_and_row(tmp_path):
    repo = tmp_path / "chat"
    _parquet(repo / "data" / "train_sft-00000-of-00001.parquet", [{"messages": "User: hi\nAssistant: hello"}])
    _readme(repo, {"default": {"train_sft": "data/train_sft-*"}})
    with pytest.raises(DataError) as err:
        read_instruction_sources([DatasetRecipe(hf_dataset=str(repo), split="train_sft")])
    assert str(err.value) == (
        f"hf dataset '{repo}' split 'train_sft' row 0: field 'messages' must be a non-empty list of "
        '{"role": ..., "content": ...} objects, got str'
    )


def test_unknown_split_lists_the_real_ones(tmp_path):
    repo = gsm8k_repo(tmp_path)
    with pytest.raises(DataError) as err:
        read_problem_sources([DatasetRecipe(hf_dataset=str(repo), hf_config="main", split="validation")])
    assert str(err.value) == f"hf dataset '{repo}' config 'main' split 'validation': unknown split 'validation' (the dataset has: train, test)"


# -- malformed records: error, or skip up to a share ---------------------------------------------
def _noisy_hh(tmp_path: Path) -> Path:
    rows = hh_rows(100)
    rows[10]["chosen"] = "\n\nHuman: How do I boil 10 eggs?\n\nAssistant:"  # an empty chosen reply
    rows[20] = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: bye!",
                "rejected": "\n\nHuman: hi\n\nAssistant: go away\n\nHuman: bye\n\nAssistant: ..."}  # differ at turn 2
    return hh_repo(tmp_path, rows) / "helpful-base" / "train.jsonl.gz"


def test_malformed_error_mode_stops_at_the_record(tmp_path):
    path = _noisy_hh(tmp_path)
    with pytest.raises(DataError) as err:
        read_preference_sources([str(path)], "error")
    assert str(err.value) == f"{path}:11: the chosen reply is empty"


def test_skip_mode_counts_names_and_applies_the_divergence_rule(tmp_path):
    path = _noisy_hh(tmp_path)
    pairs, report = read_preference_sources([str(path)], "skip", 0.02)
    assert len(pairs) == 98
    assert (report.total, report.malformed, report.by_rule) == (100, 1, {DIVERGENT_RULE: 1})
    assert report.first[0] == f"{path}:11: the chosen reply is empty"
    assert report.first[1].startswith(f"{path}:21: chosen and rejected do not share the same conversation")
    # divergent_pairs=error: such a pair is one more malformed record (2 of 100 > 1 %)
    with pytest.raises(DataError, match=r"2 of 100 records are malformed .*first differ at turn 2"):
        read_preference_sources([str(path)], "skip", 0.01, divergent_pairs="error")


def test_skip_beyond_the_share_is_an_error(tmp_path):
    path = _noisy_hh(tmp_path)
    with pytest.raises(DataError) as err:
        read_preference_sources([str(path)], "skip", 0.005)
    assert str(err.value) == (
        "preference data: 1 of 100 records are malformed (1.0%), more than max_skip_share=0.5% allows; "
        f"the first: {path}:11: the chosen reply is empty"
    )


def test_bad_json_line_in_a_gzip_file_is_skippable(tmp_path):
    path = tmp_path / "p.jsonl.gz"
    lines = [json.dumps({"question": f"What is {i}+1?", "answer": f"#### {i + 1}"}) for i in range(50)]
    lines[7] = '{"question": "broken'
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    problems, report = read_problem_sources([str(path)], "skip", 0.05)
    assert len(problems) == 49 and report.malformed == 1
    assert report.first[0].startswith(f"{path}:8: not valid JSON")


def test_recipes_validate_in_the_presets():
    for preset in ("gpu", "cluster"):
        cfg = load_config(preset)
        for section in (cfg.data.instructions, cfg.data.preferences, cfg.data.problems):
            assert section.sources and all(isinstance(s, DatasetRecipe) for s in section.sources), preset
        assert len({s.family for s in cfg.data.problems.sources}) >= 2  # GSM8K and one more family
        assert cfg.evaluate.benchmarks.enabled and {t.layout for t in cfg.evaluate.benchmarks.tasks} >= {
            "hellaswag", "arc", "piqa", "lambada", "gsm8k"}
    with pytest.raises(Exception, match="exactly one of 'uri' or 'hf_dataset'"):
        DatasetRecipe(split="train")


# -- a user corpus without instruction data ----------------------------------------------------------
def _newcomer_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(
        f"Paragraph {i}: the river carries water from the hills to the sea, and town {i % 9} lies beside it."
        for i in range(300)))
    pairs = _noisy_hh(tmp_path)
    problems = tmp_path / "gsm8k_train.jsonl"
    problems.write_text("".join(
        json.dumps({"question": f"Tom has {i} pens and buys 3 more. How many pens?",
                    "answer": f"Tom has {i}+3=<<{i}+3={i + 3}>>{i + 3} pens.\n#### {i + 3}"}) + "\n" for i in range(60)))
    return corpus, pairs, problems


def test_user_corpus_sft_falls_back_to_chosen_replies_and_says_so(make_config, tmp_path):
    from components.common import storage
    from components.data_prep.step import run_data_prep

    corpus, pairs, problems = _newcomer_files(tmp_path)
    cfg = make_config(
        f"data.sources=[{{uri: '{corpus}'}}]", "data.vocab_size=400",
        f"data.preferences.sources=['{pairs}']", "data.preferences.on_malformed=skip",
        f"data.problems.sources=['{problems}']",
    )
    manifest = run_data_prep(cfg, "newcomer")
    source = manifest["sft"]["source"]
    assert source.startswith(f"fallback chosen_replies: prompts and chosen replies of {pairs}")
    assert "worked problems of" in source
    sft = storage.read_jsonl(manifest["sft"]["train"]["uri"])
    assert not any("Ashford" in json.dumps(r) for r in sft)  # nothing about the generated world
    assert any(r["messages"][-1]["content"] == "Put them in boiling water for 9 minutes." for r in sft)
    skipped = manifest["skipped"]["preference"]
    assert (skipped["records"], skipped["malformed"], skipped["by_rule"]) == (100, 1, {DIVERGENT_RULE: 1})
    assert skipped["first"][0] == f"{pairs}:11: the chosen reply is empty"
    # and the report card's Data section says both
    from components.evaluate.benchmarks import data_notes
    from components.evaluate.report_card import build_report_card

    notes = data_notes(manifest)
    assert notes[0] == f"SFT data: {source}"
    assert notes[-1] == (
        f"preference data: 1 malformed records skipped and 1 by the rule '{DIVERGENT_RULE}', of 100 read; "
        f"the first: {pairs}:11: the chosen reply is empty; {skipped['first'][1]}"
    )
    card = build_report_card({"data_notes": notes, "init": {"metrics": {"perplexity": 9.0}}}).markdown
    assert "## Data" in card and f"SFT data: {source}" in card


def test_user_corpus_without_instruction_data_can_refuse(make_config, tmp_path):
    from components.data_prep.step import run_data_prep

    corpus, pairs, _ = _newcomer_files(tmp_path)
    cfg = make_config(f"data.sources=[{{uri: '{corpus}'}}]", "data.vocab_size=400", "data.instructions.fallback=refuse")
    with pytest.raises(DataError) as err:
        run_data_prep(cfg, "refused")
    assert str(err.value).startswith(
        f"no instruction data for SFT: data.instructions.sources is empty while the pre-training corpus is your "
        f"own ({corpus}), and the generated tasks ask about a world this model never read "
        "(data.instructions.fallback is 'refuse')."[:-1]
    )
    # the default fallback needs preference data: without it, the same refusal says so
    cfg = make_config(f"data.sources=[{{uri: '{corpus}'}}]", "data.vocab_size=400")
    with pytest.raises(DataError, match="the fallback 'chosen_replies' needs data.preferences.sources"):
        run_data_prep(cfg, "refused2")


def test_malformed_record_error_names_the_setting_that_skips_it(make_config, tmp_path):
    from components.data_prep.step import run_data_prep

    corpus, pairs, problems = _newcomer_files(tmp_path)
    cfg = make_config(f"data.preferences.sources=['{pairs}']")
    with pytest.raises(DataError) as err:
        run_data_prep(cfg, "noisy")
    assert str(err.value) == (
        f"{pairs}:11: the chosen reply is empty (to skip such records, up to a share, set "
        "data.preferences.on_malformed=skip and data.preferences.max_skip_share)"
    )
