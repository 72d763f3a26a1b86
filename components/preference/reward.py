"""The reward model: a scalar head on the SFT checkpoint that learns the labeler's taste.

TRL's RewardTrainer trains it on chosen/rejected pairs with the pairwise (Bradley-Terry)
loss, in Ray Train workers under DeepSpeed. The result is a sequence-classification model
(one logit = the reward) that PPO queries and evaluation scores.

Batches are grouped by length: the pairs' lengths vary threefold (a fact question against a
list to reverse, a padded reply against a cut-off one), and with random batches over half of
every forward pass was padding. Grouped batches train the same model about twice as many
pairs per second, which buys the steps the reward model needs within the stage's budget.
"""

from __future__ import annotations

from typing import Any

import torch

from components.common.modeling import model_device
from components.common.scratch import cleans_scratch


def load_reward_model(path: str, pad_token_id: int, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """The SFT checkpoint with a fresh 1-logit head (or a trained reward model)."""
    from transformers import AutoModelForSequenceClassification

    from components.common.modeling import resolve_attention

    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype, attn_implementation=resolve_attention(attn_implementation)
    )
    model.config.pad_token_id = pad_token_id
    return model


def pairs_dataset(records: list[dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list(
        [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in records]
    )


@torch.no_grad()
def reward_scores(model, tokenizer, prompts: list[list[dict[str, str]]], replies: list[str], batch_size: int = 32) -> torch.Tensor:
    """The reward model's score of each (prompt, reply), rendered exactly as in training."""
    model.eval()
    tokenizer.padding_side = "right"
    texts = [
        tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
        for p, r in zip(prompts, replies)
    ]
    device = model_device(model)
    scores = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        scores.append(model(**enc.to(device)).logits[:, 0].float())
    return torch.cat(scores) if scores else torch.zeros(0, device=device)


def pair_lengths(dataset) -> list[int]:
    """The padded length each tokenized pair needs: its longer side."""
    return [max(len(c), len(r)) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]


def length_grouped_trainer(base: type) -> type:
    """``base`` (TRL's RewardTrainer) drawing batches of pairs of similar length.

    transformers' own ``group_by_length`` looks for an ``input_ids`` column, which tokenized
    preference pairs do not have; this hands its sampler the pairs' lengths instead. The
    sampler's generator is seeded, so every worker draws the same order and the data loader
    gives each its own share of the batches.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class LengthGroupedRewardTrainer(base):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                lengths=pair_lengths(dataset),
                generator=torch.Generator().manual_seed(self.args.seed),
            )

    return LengthGroupedRewardTrainer


@cleans_scratch
def reward_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    from trl import RewardConfig, RewardTrainer

    from components.common import hf_worker, storage
    from components.common.config import Config
    from components.common.logs import setup_logging
    from components.common.modeling import load_tokenizer

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    rc = cfg.preference.reward
    rank, _ = hf_worker.worker_setup(cfg)
    source = hf_worker.fetch_checkpoint(config["base_uri"])
    tokenizer = load_tokenizer(source)
    train = pairs_dataset(storage.read_jsonl(config["train_uri"]))
    args = RewardConfig(**hf_worker.common_training_args(cfg, rc, "reward"), max_length=rc.max_length)
    # after args: ZeRO-3 partitions the model as it loads
    model = hf_worker.load_trainer_model(
        source, args, rc, lambda path, **kw: load_reward_model(str(path), tokenizer.pad_token_id, **kw)
    )
    trainer = length_grouped_trainer(RewardTrainer)(
        model=model, args=args, train_dataset=train, processing_class=tokenizer
    )
    hf_worker.train_and_publish(trainer, tokenizer, rank, config)
