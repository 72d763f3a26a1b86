"""DPO: the cheaper preference variant. TRL's DPOTrainer moves the SFT policy towards the
chosen replies and away from the rejected ones directly, against a frozen copy of itself,
with no reward model and no sampling in the loop."""

from __future__ import annotations

from typing import Any

from components.common.scratch import cleans_scratch


@cleans_scratch
def dpo_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    from trl import DPOConfig, DPOTrainer

    from components.common import hf_worker, storage
    from components.common.config import Config
    from components.common.logs import setup_logging
    from components.common.modeling import load_model, load_tokenizer
    from components.preference.reward import pairs_dataset

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    dc = cfg.preference.dpo
    rank, _ = hf_worker.worker_setup(cfg)
    source = hf_worker.fetch_checkpoint(config["base_uri"])
    tokenizer = load_tokenizer(source)
    model = load_model(source)
    train = pairs_dataset(storage.read_jsonl(config["train_uri"]))
    args = DPOConfig(**hf_worker.common_training_args(cfg, dc, "dpo"), beta=dc.beta, max_length=dc.max_length)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    hf_worker.train_and_publish(trainer, tokenizer, rank, config)
