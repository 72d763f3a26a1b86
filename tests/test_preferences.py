"""The oracle's written-down taste, the generated pairs that follow it, and the stage's
resilience: a PPO run killed mid-way resumes from its checkpoint with the same step count."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest

from components.common import storage
from components.common.tracking import Tracker
from components.data_prep.instructions import generate_instructions
from components.data_prep.preferences import (
    PreferencePair,
    from_record,
    generate_preferences,
    oracle_prefers,
    oracle_score,
    to_record,
)
from components.data_prep.step import run_data_prep
from components.data_prep.world import build_world
from components.evaluate.preference import accuracy_by_group
from components.preference.step import run_preference
from components.pretrain.step import run_pretrain
from components.sft.step import run_sft
from tests.faults import kill_worker_after_first_checkpoint

REF = "Mira lives in Ashford."


def test_oracle_order_correct_concise_polite():
    correct = oracle_score(REF, REF, "fact_town")
    rambling = oracle_score(REF + " I hope that this helps.", REF, "fact_town")
    wrong = oracle_score("Mira lives in Oakdale.", REF, "fact_town")
    cut = oracle_score("Mira lives", REF, "fact_town")
    evasive = oracle_score("I do not know.", REF, "fact_town")
    rude = oracle_score("Ask someone else.", REF, "fact_town")
    assert correct > rambling > wrong > cut > evasive > rude
    assert oracle_prefers(REF, "Mira lives", REF, "fact_town") == 1.0
    assert oracle_prefers(REF, REF, REF, "fact_town") == 0.5


def test_generated_pairs_follow_the_oracle_and_round_trip():
    world = build_world(7, 20)
    train, held = generate_instructions(world, 7, 300, 40)
    pairs, held_pairs = generate_preferences(world, train, held, 7, 200, 30)
    assert {p.kind for p in pairs} == {"wrong", "evasive", "truncated", "rambling", "rude", "off_topic"}
    for pair in pairs + held_pairs:
        assert oracle_score(pair.chosen, pair.reference, pair.family) > oracle_score(pair.rejected, pair.reference, pair.family)
        assert from_record(to_record(pair)) == pair
    held_prompts = {p.prompt[-1]["content"] for p in held_pairs}
    assert not held_prompts & {p.prompt[-1]["content"] for p in pairs}
    # an off-topic reply is a fine answer to a prompt of another family
    families = {e.answer: e.family for e in train}
    off = [p for p in pairs if p.kind == "off_topic"]
    assert off and all(families[p.rejected] != p.family for p in off)


def _sft_checkpoint(cfg, run_id):
    manifest = run_data_prep(cfg, run_id)
    pre = run_pretrain(cfg, run_id, manifest["data_uri"])["pretrain"]
    return manifest, run_sft(cfg, run_id, manifest["data_uri"], pre)


TINY_STAGES = [
    "pretrain.steps=30", "pretrain.checkpoint_every=30",
    "data.instructions.num_train=400", "data.instructions.num_heldout=35",
    "data.preferences.num_train=300", "data.preferences.num_heldout=20",
    "sft.steps=30", "sft.checkpoint_every=30", "sft.micro_batch_size=8",
    "preference.reward.steps=20", "preference.reward.checkpoint_every=20", "preference.reward.micro_batch_size=8",
]


def test_killed_ppo_worker_resumes_with_the_same_step_count(make_config, local_ray):
    cfg = make_config(
        *TINY_STAGES, "preference.ppo.iterations=12", "preference.ppo.checkpoint_every=4",
        "preference.ppo.prompts_per_worker=8", "preference.ppo.max_new_tokens=12",
    )
    manifest, sft = _sft_checkpoint(cfg, "ppo")
    killed: list[int] = []
    watcher = kill_worker_after_first_checkpoint(os.path.join(cfg.storage.root, "ppo", "ray", "ppo"), killed)
    out = run_preference(cfg, "ppo", manifest["data_uri"], sft)
    watcher.join(timeout=5)
    assert killed, "no PPO worker was killed"
    policy = out["policy"]
    assert policy["resumed_from"] >= 4 and policy["iterations"] == 12
    assert storage.is_complete(policy["uri"]) and storage.is_complete(out["reward"]["uri"])
    # the last Ray checkpoint is iteration 12: the resumed run did not redo or skip iterations
    snapshot = storage.read_json(os.path.join(cfg.storage.root, "ppo", "ray", "ppo", "checkpoint_manager_snapshot.json"))
    assert max(r["metrics"]["iteration"] for r in snapshot["checkpoint_results"]) == 12
    tracker = Tracker(cfg)
    chain = tracker.lineage(policy["model_id"])
    assert [link["stage"] for link in chain] == ["ppo", "sft", "pretrain", "init"]
    assert tracker.lineage(out["reward"]["model_id"])[1]["stage"] == "sft"


@pytest.mark.slow
def test_dpo_variant_trains(make_config, local_ray):
    cfg = make_config(
        *TINY_STAGES, "preference.algorithm=dpo", "preference.dpo.steps=20", "preference.dpo.checkpoint_every=20",
        "preference.dpo.sft_weight=1.0",  # DPO + likelihood on the chosen replies (RPO) through TRL
    )
    manifest, sft = _sft_checkpoint(cfg, "dpo")
    out = run_preference(cfg, "dpo", manifest["data_uri"], sft)
    assert out["algorithm"] == "dpo" and storage.is_complete(out["policy"]["uri"])
    assert Tracker(cfg).lineage(out["policy"]["model_id"])[0]["stage"] == "dpo"


def test_reward_model_batches_hold_pairs_of_similar_length():
    from datasets import Dataset
    from trl import RewardTrainer

    from components.preference.reward import length_grouped_trainer

    rng = random.Random(0)
    rows, longest = [], []
    for _ in range(800):  # the longer side decides the padding, whichever side it is
        n, short = rng.randint(5, 70), rng.randint(1, 5)
        pair = [[1] * n, [1] * short] if rng.random() < 0.5 else [[1] * short, [1] * n]
        rows.append({"chosen_ids": pair[0], "rejected_ids": pair[1]})
        longest.append(n)
    trainer = SimpleNamespace(
        train_dataset=Dataset.from_list(rows),
        args=SimpleNamespace(train_batch_size=4, gradient_accumulation_steps=1, seed=3),
    )
    sampler = length_grouped_trainer(RewardTrainer)._get_train_sampler
    order = list(sampler(trainer))
    assert sorted(order) == list(range(len(rows)))
    batches = [[longest[i] for i in order[k : k + 4]] for k in range(0, len(order), 4)]
    useful = sum(sum(b) for b in batches) / sum(max(b) * len(b) for b in batches)
    assert useful > 0.9  # shuffled batches of 4 are about two-thirds useful tokens here
    assert list(sampler(trainer)) == order  # seeded: every worker draws the same batches


def test_dpo_loss_is_plain_or_with_a_likelihood_term(make_config):
    from components.preference.dpo import dpo_loss_args

    assert dpo_loss_args(make_config().preference.dpo.model_copy(update={"sft_weight": 0.0})) == {"loss_type": ["sigmoid"]}
    rpo = dpo_loss_args(make_config("preference.dpo.sft_weight=0.5").preference.dpo)
    assert rpo == {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]}


def test_reward_model_accuracy_is_broken_down_by_what_each_pair_tests():
    def pair(kind: str, family: str) -> PreferencePair:
        return PreferencePair("p", family, [{"role": "user", "content": "q"}], "a", "b", "a", kind)

    pairs = [pair("wrong", "arithmetic"), pair("wrong", "arithmetic"), pair("wrong", "fact_pet"), pair("rude", "fact_pet"),
             pair("rude", "arithmetic")]
    metrics = accuracy_by_group(pairs, [True, False, False, True, True])
    low, high = metrics.pop("pairwise_accuracy.ci_low"), metrics.pop("pairwise_accuracy.ci_high")
    assert 0.0 <= low < 0.6 < high <= 1.0  # five pairs: a wide interval around 0.6
    assert metrics == {
        "pairwise_accuracy": 0.6,
        "accuracy.rude": 1.0, "pairs.rude": 2.0,  # style kinds pool the tasks
        "accuracy.wrong.arithmetic": 0.5, "pairs.wrong.arithmetic": 2.0,
        "accuracy.wrong.fact_pet": 0.0, "pairs.wrong.fact_pet": 1.0,
    }
    with pytest.raises(ValueError, match="4 verdicts for 5 pairs"):
        accuracy_by_group(pairs, [True] * 4)
