"""Train the project's byte-level BPE tokenizer and wrap it as a transformers tokenizer.

Byte-level BPE never meets an unknown character, so user corpora in any script tokenize
without an ``<unk>``. The chat template is part of the tokenizer (saved in
``tokenizer_config.json``) so every later stage, TRL trainers included, formats conversations
the same way; its ``{% generation %}`` markers let SFT compute loss on assistant tokens only.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [PAD, BOS, EOS, *ROLE_TOKENS]

# A turn is "<|role|>\n content <|end|>\n"; the assistant's turn ends with EOS instead, so a
# model that learned the format stops generating exactly where its reply ends.
CHAT_TEMPLATE = (
    # Newlines are written as expressions: transformers renders with trim_blocks, which would
    # eat a literal newline that follows a tag.
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{{ '\\n' }}{% generation %}{{ message['content'] }}<|eos|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "<|{{ message['role'] }}|>{{ '\\n' }}{{ message['content'] }}<|end|>{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    """Learn BPE merges from ``texts``; special tokens get the first ids."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=1_000_000,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
