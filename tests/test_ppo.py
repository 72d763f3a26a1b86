"""PPO pieces against hand-computed numbers, plus a tiny end-to-end run that must learn.

The arithmetic is written out in comments so a failing assertion can be checked with pencil
and paper rather than by trusting another implementation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from components.preference.ppo import (
    PolicyWithValue,
    PPOHyperparams,
    compute_gae,
    generate_rollout,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    policy_loss,
    ppo_iteration,
    token_logprobs,
    value_loss,
)

T = torch.tensor


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.float(), torch.as_tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# --------------------------------------------------------------------------------------------
# token_logprobs
# --------------------------------------------------------------------------------------------


def test_token_logprobs_alignment_and_temperature():
    # Vocab 3, sequence [2, 0, 2]. Entry t must be log p(input_ids[t+1] | <= t).
    # position 0 logits [2 ln2, 0, 0] -> softmax [4, 1, 1] / 6; next token is 0 -> log(4/6)
    # position 1 logits [0, 0, 0]     -> uniform;            next token is 2 -> log(1/3)
    # position 2 predicts a token we do not have: its (extreme) logits must be ignored.
    logits = T([[[2 * math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0], [100.0, -100.0, 5.0]]])
    ids = T([[2, 0, 2]])
    out = token_logprobs(logits, ids)
    assert out.shape == (1, 2)
    close(out, [[math.log(4 / 6), math.log(1 / 3)]])
    # Temperature 2 halves the logits: [ln2, 0, 0] -> [2, 1, 1] / 4 -> log(0.5); uniform stays.
    close(token_logprobs(logits, ids, temperature=2.0), [[math.log(0.5), math.log(1 / 3)]])


# --------------------------------------------------------------------------------------------
# masked statistics
# --------------------------------------------------------------------------------------------


def test_masked_mean_and_whiten():
    x = T([1.0, 2.0, 3.0, 100.0])
    mask = T([1, 1, 1, 0])
    # (1 + 2 + 3) / 3 = 2; the masked 100 must not count.
    close(masked_mean(x, mask), 2.0)
    close(masked_mean(T([[1.0, 3.0], [5.0, 7.0]]), T([[1, 1], [0, 1]]), dim=1), [2.0, 7.0])
    close(masked_mean(x, torch.zeros(4)), 0.0)  # nothing valid -> 0, not NaN
    close(masked_mean(T([1.0, float("inf")]), T([1, 0])), 1.0)  # inf at padding is ignored
    # mean 2, population variance ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3, std = sqrt(2/3) = 0.8164966
    # whitened: -1/0.8164966 = -1.2247449, 0, +1.2247449; masked entry -> 0
    close(masked_whiten(x, mask), [-1.2247449, 0.0, 1.2247449, 0.0])
    # shift_mean=False only rescales: add the mean 2 back.
    close(masked_whiten(x, mask, shift_mean=False), [0.7752551, 2.0, 3.2247449, 0.0])


# --------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------


def test_kl_penalized_rewards_terminal_score_and_missing_eos():
    kl_coef, penalty = 0.1, 0.5
    mask = T([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    logprobs = T([[9.0, -1.0, -2.0, -0.5, 9.0], [9.0, 9.0, -0.2, -0.3, -0.4]])
    ref = T([[-9.0, -1.5, -1.0, -0.5, -9.0], [-9.0, -9.0, -0.2, -0.1, -0.9]])
    scores = T([2.0, 1.0])
    ended = T([True, False])
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, ended, kl_coef, penalty)
    # row 0: kl = logp - ref on reply tokens = [0, 0.5, -1.0, 0, 0] (prompt/pad positions -> 0)
    #        rewards = -0.1 * kl = [0, -0.05, 0.1, 0, 0]; ended, so the last reply token
    #        (index 3) gets the full score 2.0 -> [0, -0.05, 0.1, 2.0, 0]
    # row 1: kl = [0, 0, 0, -0.2, 0.5] -> -0.1 * kl = [0, 0, 0, 0.02, -0.05]; no EOS, so the
    #        last reply token (index 4) gets 1.0 - 0.5 = 0.5 -> -0.05 + 0.5 = 0.45
    close(kl, [[0.0, 0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.2, 0.5]])
    close(rewards, [[0.0, -0.05, 0.1, 2.0, 0.0], [0.0, 0.0, 0.0, 0.02, 0.45]])


# --------------------------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------------------------

# gamma = 0.9, lam = 0.8 (gamma * lam = 0.72); 3-token reply
# rewards r = [0.1, -0.2, 1.0], values V = [0.5, 0.4, 0.3], value after the last token = 0
# delta_2 = 1.0 + 0.9 * 0   - 0.3 =  0.7                  A_2 = 0.7
# delta_1 = -0.2 + 0.9 * 0.3 - 0.4 = -0.33                 A_1 = -0.33 + 0.72 * 0.7   = 0.174
# delta_0 = 0.1 + 0.9 * 0.4 - 0.5 = -0.04                  A_0 = -0.04 + 0.72 * 0.174 = 0.08528
# returns = A + V = [0.58528, 0.574, 1.0]
GAE_ADV = [0.08528, 0.174, 0.7]
GAE_RET = [0.58528, 0.574, 1.0]


def test_gae_three_token_reply():
    adv, ret = compute_gae(T([[0.1, -0.2, 1.0]]), T([[0.5, 0.4, 0.3]]), T([[1, 1, 1]]), gamma=0.9, lam=0.8)
    close(adv, [GAE_ADV])
    close(ret, [GAE_RET])


def test_gae_ignores_prompt_and_padding():
    # Row 0: the same reply behind a 2-position prompt prefix and before 2 padding positions,
    # whose (garbage) rewards and values must change nothing.
    # Row 1: a 2-token reply at indices 3..4, rewards [0, 2], values [1, 0.5]:
    #   delta_4 = 2 - 0.5 = 1.5                       A_4 = 1.5
    #   delta_3 = 0 + 0.9 * 0.5 - 1 = -0.55           A_3 = -0.55 + 0.72 * 1.5 = 0.53
    #   returns = [0.53 + 1, 1.5 + 0.5] = [1.53, 2.0]
    rewards = T([[5.0, 5.0, 0.1, -0.2, 1.0, 3.0, 3.0], [4.0, 4.0, 4.0, 0.0, 2.0, 4.0, 4.0]])
    values = T([[7.0, 7.0, 0.5, 0.4, 0.3, 9.0, 9.0], [6.0, 6.0, 6.0, 1.0, 0.5, 6.0, 6.0]])
    mask = T([[0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[0, 0, *GAE_ADV, 0, 0], [0, 0, 0, 0.53, 1.5, 0, 0]])
    close(ret, [[0, 0, *GAE_RET, 0, 0], [0, 0, 0, 1.53, 2.0, 0, 0]])


# --------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------


def test_policy_loss_clipping():
    # clip_range 0.2 -> ratio is clipped to [0.8, 1.2]; per token loss = max(-A r, -A clip(r)).
    #   a: r 1.1 (inside),  A +2: max(-2.2, -2.2) = -2.2   not clipped   dL/dlogp = -A r / 5 = -0.44
    #   b: r 1.5 (above),   A +1: max(-1.5, -1.2) = -1.2   clipped       dL/dlogp = 0
    #   c: r 0.5 (below),   A -1: max( 0.5,  0.8) =  0.8   clipped       dL/dlogp = 0
    #   d: r 0.5 (below),   A +1: max(-0.5, -0.8) = -0.5   not clipped   dL/dlogp = -0.5 / 5 = -0.1
    #   e: r 1.5 (above),   A -1: max( 1.5,  1.2) =  1.5   not clipped   dL/dlogp = +1.5 / 5 = 0.3
    #   f: masked (huge ratio and advantage must not matter)
    # loss = (-2.2 - 1.2 + 0.8 - 0.5 + 1.5) / 5 = -1.6 / 5 = -0.32; clipfrac = 2 / 5 = 0.4
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 50.0]
    old = torch.zeros(1, 6)
    new = torch.log(T([ratios])).requires_grad_(True)
    adv = T([[2.0, 1.0, -1.0, 1.0, -1.0, 100.0]])
    mask = T([[1, 1, 1, 1, 1, 0]])
    loss, stats = policy_loss(new, old, adv, mask, clip_range=0.2)
    close(loss.detach(), -0.32)
    assert stats["clipfrac"] == pytest.approx(0.4)
    # approx_kl = mean of (r - 1) - ln r over valid tokens
    expected_kl = sum((r - 1) - math.log(r) for r in ratios[:5]) / 5  # = 0.1160108
    assert stats["approx_kl"] == pytest.approx(expected_kl, abs=1e-6)
    loss.backward()
    close(new.grad, [[-0.44, 0.0, 0.0, -0.1, 0.3, 0.0]])


def test_policy_loss_is_plain_surrogate_at_ratio_one():
    # new == old -> r = 1, nothing clipped, loss = -mean(A) = -(1 + 3) / 2 = -2, approx_kl = 0
    lp = T([[-1.0, -2.0]])
    loss, stats = policy_loss(lp, lp, T([[1.0, 3.0]]), T([[1, 1]]), clip_range=0.2)
    close(loss, -2.0)
    assert stats["clipfrac"] == 0.0 and stats["approx_kl"] == pytest.approx(0.0)


def test_value_loss_clipping():
    # clip_range_value 0.2: V_clip = V_old + clip(V - V_old, -0.2, 0.2)
    #   a: old 0, new 0.1, R 1: V_clip 0.1; errors 0.81, 0.81        -> 0.81  not clipped
    #   b: old 0, new 0.5, R 1: V_clip 0.2; (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> 0.64 clipped
    #   c: old 0, new 0.5, R 0: V_clip 0.2; 0.25, 0.04              -> 0.25  not clipped
    #   d: old 1, new 0.0, R 0: V_clip 0.8; 0.0, 0.64               -> 0.64  clipped
    #   e: masked
    # loss = 0.5 * (0.81 + 0.64 + 0.25 + 0.64) / 4 = 0.5 * 0.585 = 0.2925; clipfrac 2/4 = 0.5
    new = T([[0.1, 0.5, 0.5, 0.0, 42.0]])
    old = T([[0.0, 0.0, 0.0, 1.0, -42.0]])
    ret = T([[1.0, 1.0, 0.0, 0.0, 7.0]])
    mask = T([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(new, old, ret, mask, clip_range_value=0.2)
    close(loss, 0.2925)
    assert stats["value_clipfrac"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# a toy model and tokenizer
# --------------------------------------------------------------------------------------------

WORDS = ["<pad>", "<eos>", "<unk>", "good"] + [f"w{i}" for i in range(46)]  # 50 tokens


def toy_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: one token per word, pad and eos distinct."""
    model = WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    tok = Tokenizer(model)
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def toy_lm(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    lm = LlamaForCausalLM(config)
    lm.generation_config.pad_token_id = tokenizer.pad_token_id
    lm.generation_config.eos_token_id = tokenizer.eos_token_id
    return lm


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Others share the machine's two cores; a model this small gains nothing from more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_policy_with_value_head_and_saving(tmp_path, one_thread):
    tok = toy_tokenizer()
    model = PolicyWithValue(toy_lm(tok, seed=0))
    ids = tok(["w1 w2 w3"], return_tensors="pt")
    logits, values = model(ids["input_ids"], ids["attention_mask"])
    assert logits.shape == (1, 3, len(tok)) and values.shape == (1, 3)
    assert torch.all(values == 0)  # zero-initialised head
    assert any(k.startswith("value_head.") for k in model.state_dict())
    model.save_policy(tmp_path / "policy")
    assert (tmp_path / "policy" / "model.safetensors").exists()
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "policy")
    torch.testing.assert_close(reloaded(**ids).logits, logits)


def test_rollout_masks_and_padding_invariance(one_thread):
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=1)
    model, ref = PolicyWithValue(lm), toy_lm(tok, seed=1)
    prompts = ["w1", "w2 w3 w4", "w5 w6"]
    torch.manual_seed(0)
    r = generate_rollout(model, ref, tok, prompts, max_new_tokens=60, temperature=1.0, top_k=None)
    batch, width = r.input_ids.shape
    prompt_len = 3
    assert r.response_mask.shape == r.logprobs.shape == r.values.shape == (batch, width - 1)
    # Policy and reference are identical weights -> identical log-probs (zero KL).
    torch.testing.assert_close(r.logprobs, r.ref_logprobs)
    eos = tok.eos_token_id
    for b in range(batch):
        reply_positions = r.response_mask[b].nonzero().squeeze(-1) + 1  # aligned t -> token t+1
        assert reply_positions[0] == prompt_len  # the reply starts right after the prompt
        reply = r.input_ids[b, reply_positions].tolist()
        assert (eos in reply) == bool(r.ended[b])
        if r.ended[b]:
            assert reply.index(eos) == len(reply) - 1  # mask stops at (and includes) first EOS
        assert r.attention_mask[b, prompt_len:].sum() == len(reply)
        # Text is the reply before EOS, special tokens (sampled <pad>/<unk> too) dropped.
        words = [t for t in reply if t not in tok.all_special_ids]
        assert r.response_texts[b] == " ".join(tok.convert_ids_to_tokens(words))
        # The left-padded row scores exactly like the same sequence on its own (no padding).
        start = int((r.attention_mask[b, :prompt_len] == 0).sum())
        alone = r.input_ids[b : b + 1, start : prompt_len + len(reply)]
        logits, _ = model(alone, torch.ones_like(alone))
        solo = token_logprobs(logits, alone)[0, prompt_len - start - 1 :]
        close(r.logprobs[b, reply_positions - 1], solo.tolist(), atol=1e-5)
    assert r.ended.any(), "60 tokens of a near-uniform 50-token model should end some replies"


def test_rollout_temperature_scales_logprobs(one_thread):
    tok = toy_tokenizer()
    model, ref = PolicyWithValue(toy_lm(tok, seed=2)), toy_lm(tok, seed=3)
    torch.manual_seed(0)
    r = generate_rollout(model, ref, tok, ["w1 w2"], max_new_tokens=5, temperature=0.5, top_k=3)
    logits, _ = model(r.input_ids, r.attention_mask)
    expected = token_logprobs(logits, r.input_ids, temperature=0.5) * r.response_mask
    torch.testing.assert_close(r.logprobs, expected)


# --------------------------------------------------------------------------------------------
# integration: PPO makes a rewarded token more likely
# --------------------------------------------------------------------------------------------


def _has_good(prompts: list[str], replies: list[str]) -> torch.Tensor:
    return torch.tensor([1.0 if "good" in reply.split() else 0.0 for reply in replies])


def _mean_score(model, ref, tok, prompts, hp: PPOHyperparams, seed: int) -> float:
    torch.manual_seed(seed)
    rollout = generate_rollout(model, ref, tok, prompts, hp.max_new_tokens, hp.temperature, hp.top_k)
    return float(_has_good(prompts, rollout.response_texts).mean())


def test_ppo_raises_the_score(one_thread):
    started = time.monotonic()
    tok = toy_tokenizer()
    model = PolicyWithValue(toy_lm(tok, seed=0))
    ref = toy_lm(tok, seed=0)
    ref.requires_grad_(False)
    prompts = [" ".join(f"w{(i * 7 + j) % 46}" for j in range(1 + i % 3)) for i in range(16)]
    hp = PPOHyperparams(max_new_tokens=8, minibatch_size=8, ppo_epochs=2, kl_coef=0.02, missing_eos_penalty=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def step(loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    eval_prompts = prompts * 4
    before = _mean_score(model, ref, tok, eval_prompts, hp, seed=123)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    history = [ppo_iteration(model, ref, tok, prompts, _has_good, step, hp, generator) for _ in range(30)]
    after = _mean_score(model, ref, tok, eval_prompts, hp, seed=123)
    print(f"score before {before:.3f} after {after:.3f}; "
          f"train score first5 {sum(h['score_mean'] for h in history[:5]) / 5:.3f} "
          f"last5 {sum(h['score_mean'] for h in history[-5:]) / 5:.3f}; kl last {history[-1]['kl']:.3f}; "
          f"{time.monotonic() - started:.1f}s")
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert {"score_mean", "kl", "reply_length_mean", "ended_fraction", "policy_loss", "value_loss",
            "clipfrac", "approx_kl"} <= set(history[0])
    assert after > before + 0.3
