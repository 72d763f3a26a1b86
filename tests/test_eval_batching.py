"""Evaluation scores in batches on the evaluation device, and a batch gives each reply the
log-probability it has alone."""

from __future__ import annotations

import torch

from components.common.config import load_config
from components.evaluate.preference import reply_logprobs
from components.evaluate.step import eval_device, eval_dtype
from tests.test_ppo import toy_lm, toy_tokenizer


def test_batched_reply_logprobs_equal_one_at_a_time():
    tok = toy_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    model = toy_lm(tok, seed=5).eval()
    prompts = [[{"role": "user", "content": c}] for c in ("w1 w2 w3 w4", "w5", "w6 w7", "good w8 w9")]
    replies = ["w10 w11", "w12 w13 w14 w15 w16", "", "good"]
    batched = reply_logprobs(model, tok, prompts, replies, batch_size=3)
    alone = torch.cat([reply_logprobs(model, tok, [p], [r], batch_size=1) for p, r in zip(prompts, replies)])
    # by hand for one row: the sum of log p over the reply tokens and EOS
    ids = tok("w5 w12 w13 w14 w15 w16 <eos>", add_special_tokens=False)["input_ids"]
    logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    by_hand = sum(float(logp[t, ids[t + 1]]) for t in range(0, len(ids) - 1))
    assert batched.shape == (4,)
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0)
    assert abs(float(batched[1]) - by_hand) < 1e-4


def test_eval_device_and_dtype_follow_the_preset():
    cfg = load_config("tiny")
    assert eval_device(cfg.evaluate) == torch.device("cpu")  # no GPU here: auto is the CPU
    assert eval_dtype(cfg.evaluate) == torch.float32  # tiny keeps fp32
    gpu = load_config("gpu")
    assert gpu.evaluate.precision in ("bf16", "auto")
    cfg.evaluate.precision = "bf16"
    assert eval_dtype(cfg.evaluate) == torch.bfloat16
