"""PPO for causal language models, written out in small pieces that can be tested by hand.

TRL stopped shipping its PPO trainer after 1.12, so the RL stages implement the algorithm here.
The loop per iteration is the classic RLHF recipe:

1. **Rollout** – sample a reply for every prompt from the current policy (KV cache, left
   padding), then run one no-grad forward of the policy (log-probs, values) and of the frozen
   reference model (reference log-probs) over prompt + reply.
2. **Rewards** – the reward model / verifier scores each whole reply once. That scalar is
   paid on the reply's last token; every reply token additionally pays a KL penalty
   ``-kl_coef * (logp - ref_logp)`` so the policy cannot drift arbitrarily far from the
   reference model (which is what keeps its language fluent).
3. **Advantages** – generalised advantage estimation (GAE) over the reply tokens only.
4. **Update** – a few epochs of shuffled minibatches on the PPO clipped surrogate plus a
   clipped value loss, through a caller-provided ``optimizer_step`` so a DeepSpeed engine or
   a plain torch optimizer can drive the step.

Alignment convention used throughout: tensors of shape ``[B, T-1]`` are indexed by the
*position that predicts* a token, i.e. entry ``t`` belongs to the action ``input_ids[t+1]``
taken in the state ``input_ids[:t+1]``. ``token_logprobs``, ``response_mask``, the rollout's
``values``, rewards, advantages and returns all share that convention, so they can be combined
element-wise without any off-by-one shuffling at the call sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.common.config import PPOHyperparams
from components.common.modeling import is_zero3_partitioned


# --------------------------------------------------------------------------------------------
# Model: causal LM + value head
# --------------------------------------------------------------------------------------------


def _position_ids(attention_mask: Tensor) -> Tensor:
    """Positions that skip left padding, exactly as ``generate`` computes them.

    The LM's own forward defaults to ``arange(T)``; with left padding that would shift the
    rotary positions of every shorter prompt, so the log-probs recomputed here would no longer
    be the probabilities the tokens were sampled with.
    """
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.clamp(min=0)


class PolicyWithValue(torch.nn.Module):
    """A causal LM with a scalar value head on its last hidden state (shared trunk).

    Sharing the trunk keeps one model in memory and one forward per PPO step, which is what a
    ~1M-parameter model on two CPU cores can afford. The head starts with zero weights so the
    initial value estimate is exactly 0 everywhere and the first value-loss gradients do not
    push random noise into the trunk.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        hidden = lm.config.get_text_config().hidden_size
        self.value_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    @property
    def config(self) -> Any:
        """The LM's config, so code that inspects ``model.config`` keeps working."""
        return self.lm.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits [B, T, V], values [B, T])``; ``values[:, t]`` estimates the return from
        the state ``input_ids[:, :t+1]`` onwards."""
        out = self.lm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=_position_ids(attention_mask),
            output_hidden_states=True,
            use_cache=False,
        )
        hidden = out.hidden_states[-1]
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out.logits, values

    def generate(self, *args: Any, **kwargs: Any) -> Tensor:
        """Sampling is the LM's job; the value head plays no part in choosing tokens."""
        return self.lm.generate(*args, **kwargs)

    def save_policy(self, path: str | Path) -> None:
        """Save only the LM as a Hugging Face folder (safetensors).

        Later stages and evaluation load a plain ``LlamaForCausalLM``; the value head is a
        training-time crutch. Full training checkpoints use ``state_dict()`` instead, which
        does include ``value_head.*`` so a resumed run keeps its critic.
        """
        self.lm.save_pretrained(str(path))


# --------------------------------------------------------------------------------------------
# Log-probs and masked statistics
# --------------------------------------------------------------------------------------------


def token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """``out[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1])``, shape ``[B, T-1]``.

    The last position's logits predict a token we do not have, and the first token has no
    prediction, hence ``T-1``. ``temperature`` divides the logits first (see
    ``generate_rollout`` for why). Computed in float32 so log-probs of a bf16 model are not
    rounded into a noisy PPO ratio.
    """
    logits = logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:].unsqueeze(-1)
    picked = logits.gather(-1, targets).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over entries where ``mask`` is 1; 0 where nothing is valid (no NaN from 0/0).

    Masked entries are selected away rather than multiplied by 0, so a non-finite value at a
    padding position (``inf * 0 = nan``) cannot poison the mean.
    """
    keep = mask.bool()
    x = torch.where(keep, x, torch.zeros_like(x))
    count = keep.to(x.dtype)
    if dim is None:
        return x.sum() / count.sum().clamp(min=1.0)
    return x.sum(dim) / count.sum(dim).clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise valid entries to zero mean and unit (population) variance; others become 0.

    Advantages are normalised so the policy step size does not depend on the reward scale,
    and only over reply tokens: prompt and padding positions would otherwise drag the mean
    towards 0 and shrink the variance. Population variance (divide by N) rather than the
    unbiased one keeps the result exactly unit-variance and is easy to check by hand.
    With ``shift_mean=False`` the mean is added back (only rescale).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of sampled replies plus everything PPO needs about them.

    ``input_ids``/``attention_mask`` are ``[B, T]``: left-padded prompt then right-padded
    reply. All other per-token tensors are ``[B, T-1]`` in the token_logprobs alignment;
    ``values`` too (``values[:, t]`` is the critic's estimate in the state where
    ``input_ids[:, t+1]`` is chosen), so the critic's value for the token after EOS is never
    used.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    ended: Tensor
    response_texts: list[str]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _reply_mask(response: Tensor, eos_token_id: int) -> tuple[Tensor, Tensor]:
    """``(valid [B, R], ended [B])``: reply tokens up to and including the first EOS.

    Position-based, so it also works when the tokenizer uses EOS as its pad token (generate
    then fills finished rows with EOS).
    """
    is_eos = response == eos_token_id
    ended = is_eos.any(dim=1)
    # Number of EOS strictly before each position; a token is part of the reply while that is 0.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long(), ended


def _lm_logits(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Logits of a plain causal LM (or of a PolicyWithValue's LM) with padding-aware positions."""
    if isinstance(model, PolicyWithValue):
        model = model.lm
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_position_ids(attention_mask),
        use_cache=False,
    )
    return out.logits


@torch.no_grad()
def generate_rollout(
    model: PolicyWithValue,
    ref_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
) -> Rollout:
    """Sample one reply per prompt and score it with the policy, critic and reference.

    ``prompts`` are already-rendered text (chat template plus generation prompt applied by
    the caller) and are tokenized without adding special tokens, as in evaluation.

    Why the log-probs use the same temperature as sampling: the replies are drawn from
    ``softmax(logits / T)``. PPO's importance ratio must compare the probabilities of the
    distribution the tokens actually came from, and the KL penalty should compare policy and
    reference under the same transform, otherwise a temperature != 1 alone would register as
    KL and as an off-policy ratio. (``top_k`` truncation is not reproduced in the log-probs:
    sampled tokens are always inside the top-k, and renormalising over it would make the
    ratio undefined for tokens that later leave the top-k; with ``top_k=None``, the default,
    the two distributions are identical.)

    Sampling uses the global torch RNG (``generate`` takes no generator): seed it for
    reproducible rollouts.
    """
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("PPO rollouts need a tokenizer with both eos and pad tokens")
    was_training = model.training
    model.eval()
    ref_model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = padding_side
    device = next(model.parameters()).device
    prompt_ids = enc["input_ids"].to(device)
    prompt_mask = enc["attention_mask"].to(device)

    sequences = model.generate(
        # ZeRO-3: every forward gathers parameters from all ranks, so a rank whose replies all
        # ended must keep stepping (without sampling) until every rank is done, or the ranks'
        # gathers pair up wrongly / hang
        synced_gpus=is_zero3_partitioned(model),
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        use_cache=True,
        temperature=temperature,
        # None means "no truncation"; generate would otherwise fall back to its default of 50.
        top_k=top_k if top_k is not None else 0,
        top_p=1.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    prompt_len = prompt_ids.shape[1]
    response = sequences[:, prompt_len:]
    reply_valid, ended = _reply_mask(response, tokenizer.eos_token_id)
    # Tokens after the first EOS are filler; replace them with pad so the stored sequence is clean.
    response = torch.where(reply_valid.bool(), response, torch.full_like(response, tokenizer.pad_token_id))
    input_ids = torch.cat([prompt_ids, response], dim=1)
    attention_mask = torch.cat([prompt_mask, reply_valid.to(prompt_mask.dtype)], dim=1)
    # Reply token at position prompt_len + j is predicted at aligned index prompt_len + j - 1.
    response_mask = torch.cat(
        [torch.zeros(len(prompts), prompt_len - 1, dtype=torch.long, device=device), reply_valid], dim=1
    )

    logits, values = model(input_ids, attention_mask)
    logprobs = token_logprobs(logits, input_ids, temperature)
    ref_device = next(ref_model.parameters()).device
    ref_logits = _lm_logits(ref_model, input_ids.to(ref_device), attention_mask.to(ref_device))
    ref_logprobs = token_logprobs(ref_logits, input_ids.to(ref_device), temperature).to(device)
    mask_f = response_mask.float()

    texts: list[str] = []
    for row, valid, done in zip(response.tolist(), reply_valid.tolist(), ended.tolist()):
        body = row[: sum(valid) - (1 if done else 0)]  # drop the EOS itself
        texts.append(tokenizer.decode(body, skip_special_tokens=True))
    model.train(was_training)
    return Rollout(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        logprobs=logprobs * mask_f,
        ref_logprobs=ref_logprobs * mask_f,
        values=values[:, :-1].float() * mask_f,
        ended=ended,
        response_texts=texts,
    )


# --------------------------------------------------------------------------------------------
# Rewards and advantages
# --------------------------------------------------------------------------------------------


def _last_index(mask: Tensor) -> Tensor:
    """Index of the last 1 per row (0 for an all-zero row; callers check ``any``)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def kl_penalized_rewards(
    scores: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    response_mask: Tensor,
    ended: Tensor,
    kl_coef: float,
    missing_eos_penalty: float,
) -> tuple[Tensor, Tensor]:
    """Per-token rewards ``[B, T-1]`` and the per-token KL estimate ``[B, T-1]``.

    Every reply token gets ``-kl_coef * (logp - ref_logp)``: the sampled-token estimate of
    KL(policy || reference), paid where it is incurred so GAE can assign it to the right token.
    The reward model judges only whole replies, so its score is added once, on the last reply
    token (the EOS, when there is one).

    Replies that never emitted EOS within the budget get ``score - missing_eos_penalty``:
    a truncated reply is not a finished chat turn (evaluation counts it as non-compliant), and
    without the penalty the policy could learn to ramble until the budget runs out whenever
    the reward model happens to like long text.
    """
    mask = response_mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    adjusted = scores.to(rewards.dtype) - missing_eos_penalty * (~ended.bool()).to(rewards.dtype)
    has_reply = response_mask.bool().any(dim=1)
    last = _last_index(response_mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.clone()
    rewards[rows, last] += torch.where(has_reply, adjusted, torch.zeros_like(adjusted))
    return rewards, kl


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    response_mask: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over reply tokens; ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``,
    run backwards. The episode ends at the last reply token, so the value "after" it is 0
    (there is no next state the reward model pays for) and nothing from padding after it
    leaks back in. Prompt and padding positions get advantage and return 0, so they are
    inert even if a caller forgets to mask them. ``returns = advantages + values`` is the
    critic's regression target (the lambda-return).
    """
    mask = response_mask.to(values.dtype)
    rewards = rewards * mask
    values = values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    returns = (advantages + values) * mask
    return advantages, returns


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def policy_loss(
    new_logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_range: float,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate, averaged over valid tokens.

    ``loss = mean(max(-A * r, -A * clip(r, 1-eps, 1+eps)))`` with ``r = exp(new - old)``.
    Taking the max of the two losses is the pessimistic bound: once the ratio has moved past
    the clip range in the direction the advantage favours, the gradient vanishes, which is
    what keeps several epochs on the same rollout from overshooting.

    Stats: ``clipfrac`` (share of tokens where the clipped term was the active one) and
    ``approx_kl`` (the low-variance, non-negative ``(r - 1) - log r`` estimator of
    KL(old || new)) – both say whether the learning rate / epochs are too aggressive.
    """
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "policy_loss": float(loss),
            "clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
            "approx_kl": float(masked_mean((ratio - 1.0) - log_ratio, mask)),
            "ratio_mean": float(masked_mean(ratio, mask)),
        }
    return loss, stats


def value_loss(
    new_values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_value: float,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clip - R)^2))``.

    ``V_clip = V_old + clip(V - V_old, -c, c)``. Like the policy clip, it stops the critic
    from jumping far from the values the advantages were computed with during the several
    epochs spent on one rollout; the max keeps it pessimistic. The 0.5 makes the gradient
    ``V - R``.
    """
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    unclipped_err = (new_values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        stats = {
            "value_loss": float(loss),
            "value_clipfrac": float(masked_mean((clipped_err > unclipped_err).float(), mask)),
            "value_mean": float(masked_mean(new_values, mask)),
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# Update and iteration
# --------------------------------------------------------------------------------------------


def ppo_update(
    model: PolicyWithValue,
    optimizer_step: Callable[[Tensor], None],
    rollout: Rollout,
    advantages: Tensor,
    returns: Tensor,
    hp: PPOHyperparams,
    generator: torch.Generator | None,
) -> dict[str, float]:
    """``hp.ppo_epochs`` passes of shuffled minibatches over one rollout; averaged stats.

    Each minibatch recomputes log-probs and values with grad and hands
    ``policy_loss + vf_coef * value_loss`` to ``optimizer_step`` – the caller decides how to
    step (``engine.backward(loss); engine.step()`` for DeepSpeed, or
    ``zero_grad(); backward(); step()`` for a torch optimizer).

    Advantages are whitened once over the whole rollout (not per minibatch) so all
    minibatches share one scale. The model is kept in eval mode: dropout would make the
    recomputed log-probs differ from the rollout's even before any step, i.e. a ratio != 1
    that is pure noise. Gradients flow regardless of the mode.
    """
    mask = rollout.response_mask.float()
    if hp.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    advantages = advantages.detach()
    returns = returns.detach()
    was_training = model.training
    # gradient checkpointing only recomputes in train mode; with dropout 0 (Llama's default)
    # train mode computes exactly what eval mode does
    lm = model.lm if isinstance(model, PolicyWithValue) else model
    model.train(bool(getattr(lm, "is_activation_checkpointing", False)))
    batch = len(rollout)
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(hp.ppo_epochs):
        order = torch.randperm(batch, generator=generator).to(rollout.input_ids.device)
        for start in range(0, batch, hp.minibatch_size):
            idx = order[start : start + hp.minibatch_size]
            logits, values = model(rollout.input_ids[idx], rollout.attention_mask[idx])
            new_logprobs = token_logprobs(logits, rollout.input_ids[idx], hp.temperature)
            new_values = values[:, :-1].float()
            mb_mask = mask[idx]
            pg_loss, pg_stats = policy_loss(
                new_logprobs, rollout.logprobs[idx], advantages[idx], mb_mask, hp.clip_range
            )
            vf_loss, vf_stats = value_loss(
                new_values, rollout.values[idx], returns[idx], mb_mask, hp.clip_range_value
            )
            loss = pg_loss + hp.vf_coef * vf_loss
            optimizer_step(loss)
            for key, value in {**pg_stats, **vf_stats, "loss": float(loss.detach())}.items():
                totals[key] = totals.get(key, 0.0) + value
            steps += 1
    model.train(was_training)
    return {key: value / max(steps, 1) for key, value in totals.items()}


def ppo_iteration(
    model: PolicyWithValue,
    ref_model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    score_fn: Callable[[list[str], list[str]], Tensor],
    optimizer_step: Callable[[Tensor], None],
    hp: PPOHyperparams,
    generator: torch.Generator | None,
) -> dict[str, float]:
    """One rollout → score → rewards/GAE → update cycle; returns what a run should log.

    ``score_fn(prompts, replies)`` returns one float per reply (reward model or verifier).
    Stats: ``score_mean`` (raw scores, before the EOS penalty – the number to watch),
    ``kl`` (mean over replies of the summed per-token KL estimate), ``reply_length_mean``
    (tokens, EOS included), ``ended_fraction``, ``reward_mean`` (summed per-reply reward incl.
    KL and penalty), plus the averaged loss stats of ``ppo_update``.
    """
    rollout = generate_rollout(
        model, ref_model, tokenizer, prompts, hp.max_new_tokens, hp.temperature, hp.top_k
    )
    scores = torch.as_tensor(score_fn(prompts, rollout.response_texts), dtype=torch.float32)
    scores = scores.to(rollout.logprobs.device)
    if scores.shape != (len(prompts),):
        raise ValueError(f"score_fn must return {len(prompts)} scores, got shape {tuple(scores.shape)}")
    rewards, kl = kl_penalized_rewards(
        scores,
        rollout.logprobs,
        rollout.ref_logprobs,
        rollout.response_mask,
        rollout.ended,
        hp.kl_coef,
        hp.missing_eos_penalty,
    )
    advantages, returns = compute_gae(rewards, rollout.values, rollout.response_mask, hp.gamma, hp.lam)
    update_stats = ppo_update(model, optimizer_step, rollout, advantages, returns, hp, generator)
    return {
        "score_mean": float(scores.mean()),
        "kl": float(kl.sum(dim=1).mean()),
        "reply_length_mean": float(rollout.response_mask.sum(dim=1).float().mean()),
        "ended_fraction": float(rollout.ended.float().mean()),
        "reward_mean": float(rewards.sum(dim=1).mean()),
        **update_stats,
    }
