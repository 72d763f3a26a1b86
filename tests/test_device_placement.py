"""Every model and every input on the device of the engine that trains or scores it.

This machine has no GPU, so a second device is stood in by ``meta`` (shapes without data):
a module on ``meta`` fed a CPU tensor is exactly the mistake a CPU reference model fed CUDA
token ids makes on a GPU. Forward pre-hooks check every module's inputs against the device
the model was put on.
"""

from __future__ import annotations

import torch

from components.common.config import load_config
from components.common.deepspeed_config import build_deepspeed_config
from components.preference.reward import reward_scores
from tests.test_ppo import toy_lm, toy_tokenizer


def watch_devices(model: torch.nn.Module, device: torch.device) -> list[str]:
    """Record every module call whose tensor inputs or own parameters are off ``device``."""
    wrong: list[str] = []

    def check(module, args, kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        tensors += list(module.parameters(recurse=False))
        off = {str(t.device) for t in tensors if t.device != device}
        if off:
            wrong.append(f"{type(module).__name__} got {sorted(off)}")

    for module in model.modules():
        module.register_forward_pre_hook(check, with_kwargs=True)
    return wrong


def save_toy(tmp_path):
    tok = toy_tokenizer()
    path = tmp_path / "sft"
    toy_lm(tok, seed=1).save_pretrained(path)
    tok.save_pretrained(path)
    return tok, path


class ScoringStub(torch.nn.Module):
    """Stands in for a reward model on another device: one parameter there, and a forward that
    answers one score per row (a real Llama cannot run on ``meta``: its pooling reads values)."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1, device=device))

    def forward(self, input_ids, attention_mask):
        from types import SimpleNamespace

        return SimpleNamespace(logits=torch.zeros(input_ids.shape[0], 1, device=input_ids.device) + self.weight)


def test_reward_scores_feed_the_reward_model_on_its_own_device():
    tok = toy_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    meta = torch.device("meta")
    model = ScoringStub(meta)
    wrong = watch_devices(model, meta)
    prompts = [[{"role": "user", "content": "w1 w2"}], [{"role": "user", "content": "w3"}]]
    scores = reward_scores(model, tok, prompts, ["good w4", "w5 w6 w7"])
    assert wrong == []
    assert scores.shape == (2,) and scores.device == meta


def test_ppo_frozen_models_on_the_engine_device_in_its_dtype(tmp_path):
    from components.preference.ppo_loop import load_frozen_models

    tok, path = save_toy(tmp_path)
    cfg = load_config("tiny", ["deepspeed.precision=bf16"])
    ds_config = build_deepspeed_config(cfg.deepspeed, 2, 1)
    meta = torch.device("meta")
    reference, reward = load_frozen_models(path, path, tok.pad_token_id, ds_config, cfg.preference.ppo, meta)
    for model in (reference, reward):
        params = list(model.parameters())
        assert {p.device for p in params} == {meta}
        assert {p.dtype for p in params} == {torch.bfloat16}
        assert not any(p.requires_grad for p in params) and not model.training
