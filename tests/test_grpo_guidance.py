"""GRPO guidance: a group the policy cannot solve gets the worked solution as one reply."""

from __future__ import annotations

import random

import pytest

from components.data_prep.tokenizer import train_tokenizer
from components.rlvr.grpo import guide_stuck_groups, reference_completion_ids

PROMPT = [{"role": "user", "content": "Rhea has 1 plum. She finds 3 more. How many plums does she have now?"}]
SOLUTION = "1 + 3 = 4. The answer is 4."


def _rows(answer, solution, n):
    return [{"prompt": PROMPT, "answer": answer, "solution": solution}] * n


def _guide(completions, rows, n, guidance, seed=0):
    texts = {i: t for i, t in enumerate(["The answer is 4.", "The answer is 5.", "2 + 3 = 5. The answer is 5.", "ok"])}
    encoded = [[list(texts.values()).index(c)] for c in completions]
    guided = guide_stuck_groups(
        encoded, rows, n, guidance,
        decode=lambda ids: texts[ids[0]],
        reference_ids=lambda row: [99],
        rng=random.Random(seed),
    )
    return guided, encoded


def test_only_groups_without_a_correct_reply_are_guided():
    rows = _rows("4", SOLUTION, 3) + _rows("4", SOLUTION + " ", 3)  # two problems, 3 replies each
    completions = ["The answer is 5.", "The answer is 4.", "ok"] + ["The answer is 5.", "ok", "2 + 3 = 5. The answer is 5."]
    guided, out = _guide(completions, rows, 3, 1.0)
    assert guided == 1
    assert out[:3] == [[1], [0], [3]]  # has a correct reply: untouched
    assert out[3:] == [[1], [3], [99]]  # stuck: its last reply is the worked solution


def test_guidance_zero_and_rows_without_solution_are_left_alone():
    stuck = ["The answer is 5.", "ok"]
    assert _guide(stuck, _rows("4", SOLUTION, 2), 2, 0.0)[0] == 0
    assert _guide(stuck, _rows("4", None, 2), 2, 1.0)[0] == 0  # user problem without a worked answer
    assert _guide(stuck, _rows(None, None, 2), 2, 1.0)[0] == 0  # instruction row


def test_guidance_is_a_seeded_chance_per_stuck_group():
    rows = [r for i in range(200) for r in _rows("4", f"{SOLUTION}{' ' * i}", 2)]
    completions = ["ok", "The answer is 5."] * 200
    counts = [_guide(completions, rows, 2, 0.5, seed=s)[0] for s in (1, 1, 2)]
    assert counts[0] == counts[1] and 70 < counts[0] < 130 and counts[0] != counts[2]


def test_misaligned_groups_are_refused():
    with pytest.raises(ValueError, match="groups of 3"):
        _guide(["ok"] * 4, _rows("4", SOLUTION, 4), 3, 1.0)
    rows = _rows("4", SOLUTION, 1) + _rows("4", "5 - 1 = 4. The answer is 4.", 1)
    with pytest.raises(ValueError, match="not one problem's group"):
        _guide(["ok", "ok"], rows, 2, 1.0)


def test_reference_tokens_are_the_assistant_turn_as_sft_renders_it():
    tok = train_tokenizer([PROMPT[0]["content"], SOLUTION] * 20, vocab_size=400, min_frequency=1)
    ids = reference_completion_ids(tok, PROMPT, SOLUTION, 64)
    assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == SOLUTION
    prompt_ids = tok.apply_chat_template(PROMPT, tokenize=True, add_generation_prompt=True, return_dict=False)
    full = tok.apply_chat_template(
        [*PROMPT, {"role": "assistant", "content": SOLUTION}], tokenize=True, return_dict=False
    )
    assert list(full[: len(prompt_ids) + len(ids)]) == list(prompt_ids) + ids
    assert len(reference_completion_ids(tok, PROMPT, SOLUTION, 3)) == 3  # cut like a sampled reply


def test_guidance_with_vllm_is_a_config_error(make_config):
    with pytest.raises(Exception, match="rlvr.guidance > 0 is not supported with rlvr.use_vllm"):
        make_config("rlvr.guidance=1.0", "rlvr.use_vllm=true")
    assert make_config("rlvr.guidance=0.0", "rlvr.use_vllm=true").rlvr.use_vllm
