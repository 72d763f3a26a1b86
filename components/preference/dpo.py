"""DPO: the cheaper preference variant. TRL's DPOTrainer moves the SFT policy towards the
chosen replies and away from the rejected ones directly, against a frozen copy of itself,
with no reward model and no sampling in the loop.

Measured on the tiny preset, plain DPO (lr 2e-5, 100 steps) removed the padding and rude
remarks but left upper-casing, list-reversal and sum prompts with broken replies ("The
smallest is a silly question.", compliance 0.86): pushing the rejected replies down also
pushed the chosen ones down where the model was unsure. ``dpo.sft_weight`` adds a likelihood
term on the chosen replies (RPO) against that."""

from __future__ import annotations

from typing import Any

from components.common.scratch import cleans_scratch


def dpo_loss_args(dc: Any) -> dict[str, Any]:
    """DPOConfig's loss settings: the sigmoid (DPO) loss, plus TRL's "sft" loss on the chosen
    replies weighted ``sft_weight`` when that is set (RPO)."""
    if dc.sft_weight > 0:
        return {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, dc.sft_weight]}
    return {"loss_type": ["sigmoid"]}


@cleans_scratch
def dpo_train_loop(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker."""
    from trl import DPOConfig, DPOTrainer

    from components.common import hf_worker, storage
    from components.common.config import Config
    from components.common.logs import setup_logging
    from components.common.modeling import load_tokenizer
    from components.preference.reward import pairs_dataset

    setup_logging()
    cfg = Config.from_json(config["cfg"])
    dc = cfg.preference.dpo
    rank, _ = hf_worker.worker_setup(cfg)
    source = hf_worker.fetch_checkpoint(config["base_uri"])
    tokenizer = load_tokenizer(source)
    train = pairs_dataset(storage.read_jsonl(config["train_uri"]))
    args = DPOConfig(
        **hf_worker.common_training_args(cfg, dc, "dpo"), beta=dc.beta, max_length=dc.max_length, **dpo_loss_args(dc)
    )
    model = hf_worker.load_trainer_model(source, args, dc)  # after args: ZeRO-3 partitions it as it loads
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    hf_worker.train_and_publish(trainer, tokenizer, rank, config)
