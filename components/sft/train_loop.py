"""The SFT loop inside each Ray Train worker: TRL's SFTTrainer under DeepSpeed.

The conversations are rendered with the tokenizer's chat template, and the loss covers only
the assistant's tokens (the template's generation markers give the mask): the model learns to
answer, not to imitate the user's questions. A share of pre-training documents is replayed
alongside, with loss on every token, so the model keeps its language modelling.
"""

from __future__ import annotations

from typing import Any

from components.common.scratch import cleans_scratch


def build_sft_dataset(
    tokenizer, conversations: list[list[dict[str, str]]], replay_docs: list[list[int]], max_length: int, seed: int
):
    """One pre-tokenized dataset: conversations with loss on assistant tokens only, plus
    pre-training documents (replay) with loss on every token.

    TRL accepts pre-tokenized rows (``input_ids`` + ``assistant_masks``) and turns the masks
    into labels; that is what lets both kinds of rows share a batch.
    """
    import random

    from datasets import Dataset

    rows = []
    for messages in conversations:
        enc = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        rows.append({"input_ids": list(enc["input_ids"])[:max_length], "assistant_masks": list(enc["assistant_masks"])[:max_length]})
    for doc in replay_docs:
        ids = list(doc)[:max_length]
        rows.append({"input_ids": ids, "assistant_masks": [1] * len(ids)})
    random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows)


def replay_sample(split: dict[str, Any], count: int, seed: int, eos: int) -> list[list[int]]:
    """``count`` pre-training documents as token ids (EOS included), read from that many
    seeded random blocks of the training shards and nothing else: from each block, the first
    whole document in it (after its first EOS, up to the next), or the block itself when one
    document fills it."""
    import numpy as np

    from components.data_prep.manifest import TokenSplit
    from components.data_prep.shards import BlockReader

    if count <= 0:
        return []
    reader = BlockReader(TokenSplit.from_manifest({"pretrain": {"train": split}}, "train"))
    ids = np.random.default_rng(seed).integers(0, len(reader), size=count)
    docs = []
    for start in range(0, count, 256):
        for block in reader.read(ids[start : start + 256].tolist()):
            ends = np.flatnonzero(block == eos)
            if len(ends) >= 2:
                docs.append(block[ends[0] + 1 : ends[1] + 1].tolist())
            else:
                docs.append(block.tolist())
    return docs


@cleans_scratch
def sft_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    from trl import SFTConfig, SFTTrainer

    from components.common import hf_worker, storage
    from components.common.config import Config
    from components.common.logs import setup_logging
    from components.common.modeling import load_tokenizer

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    sc = cfg.sft
    rank, _world = hf_worker.worker_setup(cfg)
    source = hf_worker.fetch_checkpoint(config["base_uri"])
    tokenizer = load_tokenizer(source)
    conversations = [r["messages"] for r in storage.read_jsonl(config["train_uri"])]
    replay = replay_sample(config["replay_split"], int(len(conversations) * sc.replay_ratio), cfg.seed,
                           tokenizer.eos_token_id)
    train = build_sft_dataset(tokenizer, conversations, replay, sc.max_length, cfg.seed)

    args = SFTConfig(
        **hf_worker.common_training_args(cfg, sc, "sft"),
        weight_decay=sc.weight_decay,
        max_length=sc.max_length,
        packing=False,
        # assistant-only loss comes from our pre-tokenized ``assistant_masks`` (see above);
        # TRL's own flag is for raw conversational datasets only.
    )
    model = hf_worker.load_trainer_model(source, args, sc)  # after args: ZeRO-3 partitions it as it loads
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    hf_worker.train_and_publish(trainer, tokenizer, rank, config)
