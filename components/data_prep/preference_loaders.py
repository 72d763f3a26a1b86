"""Loading users' preference data (files, folders, globs, any fsspec URI) as ``PreferencePair``s.

Public preference sets come in a few shapes; each record is recognised on its own, so one
folder (or even one file) may mix them:

1. strings: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``
2. chat: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`` where
   chosen/rejected hold the assistant reply turn(s) and the reply is the last assistant turn
3. dialogue transcripts without a prompt, the "Human: … Assistant: …" layout of the Anthropic
   HH data: ``{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}``
4. chat transcripts without a prompt: ``{"chosen": [messages], "rejected": [messages]}``

In 3 and 4 the prompt is implicit: both sides repeat the whole conversation and differ only in
the last assistant reply. We split it off and *check* that the rest is identical, because a
pair whose two sides answer different conversations would teach the reward model to compare
contexts rather than replies, and nothing downstream could notice.

File discovery and line reading are shared with ``loaders`` (same URIs, same UTF-8 and storage
errors). Every problem in the data is a ``DataError`` that starts with ``file:line:``, so a
user can fix record 70,312 without bisecting the file.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from components.common.errors import DataError, at
from components.data_prep.loaders import (
    display_name,
    field_of,
    iter_lines,
    resolve_record_files,
    iter_json_lines,
    load_each_source,
)
from components.data_prep.chat_loaders import chat_turns
from components.data_prep.preferences import PreferencePair
from components.data_prep.records import Skip, SkipReport, collect

DEFAULT_FAMILY = "user"
KIND = "user"  # PreferencePair.kind for data we did not generate: why rejected loses is unknown
ACCEPTED_FORMATS = (
    '{"prompt": "...", "chosen": "...", "rejected": "..."}',
    '{"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}',
    '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", '
    '"rejected": "\\n\\nHuman: ...\\n\\nAssistant: ..."}',
    '{"chosen": [messages ending in the reply], "rejected": [messages ending in the reply]}',
)
MESSAGES_NOTE = (
    'where messages are {"role": "system"|"user"|"assistant", "content": "..."} objects; '
    'optional fields "id" and "family" are kept'
)

# A turn marker of a "Human: … Assistant: …" transcript: at the very start of the (left-
# stripped) text or after a blank line. Requiring the blank line is what keeps a reply that
# merely mentions "Assistant:" mid-sentence from being cut in two.
_TRANSCRIPT_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_TRANSCRIPT_ROLES = {"Human": "user", "Assistant": "assistant"}

Error = Callable[[str], DataError]


class DivergentPair(DataError):
    """Two transcripts that differ before the last reply: they answer different conversations."""


Messages = list[dict[str, str]]


def _no_format(record: dict[str, Any], why: str, error: Error) -> DataError:
    """The "matches none of the formats" error: names what is there and lists what would do."""
    keys = ", ".join(sorted(map(str, record))) or "none"
    return error(
        f"record matches none of the accepted formats ({why}; fields present: {keys}); "
        "expected one of: " + "; ".join(ACCEPTED_FORMATS) + f" ({MESSAGES_NOTE})"
    )


def _nonblank(value: str, field: str, error: Error) -> str:
    """``value`` unchanged, or the error a blank string field deserves."""
    if not value.strip():
        raise error(f"field '{field}' is empty")
    return value


def _messages(value: Any, field: str, error: Error) -> Messages:
    """Validated chat turns of ``field`` (the instruction loader's rules)."""
    return chat_turns(value, field, error)


def _transcript(text: str, field: str, error: Error) -> Messages:
    """A "Human: … Assistant: …" transcript as chat turns; Human is user, Assistant assistant.

    Turn contents are stripped: the space after "Assistant:" and the blank lines between turns
    are layout, not text, and keeping them would make every reply start with a space.
    """
    text = _nonblank(text, field, error).replace("\r\n", "\n").lstrip()
    parts = _TRANSCRIPT_TURN.split(text)
    # re.split with one group: [before the first marker, role, content, role, content, ...]
    if parts[0].strip():
        raise error(
            f"field '{field}': the transcript must start with a 'Human:' turn, "
            f"but starts with {parts[0].strip()[:40]!r}"
        )
    turns: Messages = []
    for k in range(1, len(parts), 2):
        speaker, content = parts[k], parts[k + 1].strip()
        turns.append({"role": _TRANSCRIPT_ROLES[speaker], "content": content})
    if not any(t["role"] == "assistant" for t in turns):
        raise error(f"field '{field}': the transcript has no 'Assistant:' turn, so no reply")
    for k, turn in enumerate(turns[:-1], start=1):
        if not turn["content"]:
            raise error(f"field '{field}': turn {k} ({turn['role']}) is empty")
    return turns


def _reply(value: Any, field: str, error: Error) -> str:
    """The reply of ``chosen``/``rejected`` next to an explicit prompt (formats 1 and 2).

    Replies are stripped (as completions are in ``chat_loaders``): a leading space or a
    trailing newline present on one side only would be a difference the reward model could
    learn instead of the content.
    """
    if isinstance(value, str):
        reply = _nonblank(value, field, error).strip()
    elif isinstance(value, list):
        turns = _messages(value, field, error)
        if turns[-1]["role"] != "assistant":
            raise error(
                f"field '{field}': the last turn is the {turns[-1]['role']}'s; "
                "it must be the assistant's reply"
            )
        reply = turns[-1]["content"].strip()
    else:
        raise error(
            f"field '{field}' must be a string or a list of messages, got {type(value).__name__}"
        )
    return reply


def _prompt(value: Any, error: Error) -> Messages:
    """An explicit prompt: a string is one user turn, a list is validated chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": _nonblank(value, "prompt", error).strip()}]
    if isinstance(value, list):
        return _messages(value, "prompt", error)
    raise error(
        f"field 'prompt' must be a string or a list of messages, got {type(value).__name__}"
    )


def _split_shared(chosen: Messages, rejected: Messages, error: Error) -> tuple[Messages, str, str]:
    """(shared prompt, chosen reply, rejected reply) of two whole conversations (formats 3, 4)."""
    for field, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise error(
                f"field '{field}': the conversation ends with a {turns[-1]['role']} turn; "
                "it must end with the assistant's reply"
            )
    prompt_c, prompt_r = chosen[:-1], rejected[:-1]
    if prompt_c != prompt_r:
        differ = next(
            (k for k, (a, b) in enumerate(zip(prompt_c, prompt_r), start=1) if a != b),
            min(len(prompt_c), len(prompt_r)) + 1,
        )
        raise DivergentPair(str(error(
            "chosen and rejected do not share the same conversation before the last reply "
            f"(they first differ at turn {differ}; chosen has {len(prompt_c)} turns before "
            f"its reply, rejected {len(prompt_r)})"
        )))
    if not prompt_c:
        raise error("the conversation has nothing before the reply, so there is no prompt")
    return prompt_c, chosen[-1]["content"].strip(), rejected[-1]["content"].strip()


def optional_str(record: dict[str, Any], field: str, error: Error) -> str | None:
    """``record[field]`` as a string, or None where absent or null.

    Null is treated as absent because exports from dataframes write missing values as null;
    an integer id is accepted too, since many sets number their records.
    """
    value = record.get(field)
    if value is None:
        return None
    if field == "id" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return field_of(record, field, error)


def _to_pair(record: Any, default_id: str, error: Error) -> PreferencePair:
    """The record as a pair, by whichever accepted format its fields and types name."""
    if not isinstance(record, dict):
        raise error(f"expected a JSON object, got {type(record).__name__}")
    missing = [f for f in ("chosen", "rejected") if f not in record]
    if missing:
        raise _no_format(record, f"missing field '{missing[0]}'", error)
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:  # formats 1 and 2 (a string prompt with message replies is fine too)
        prompt = _prompt(record["prompt"], error)
        chosen_reply = _reply(chosen, "chosen", error)
        rejected_reply = _reply(rejected, "rejected", error)
    else:  # formats 3 and 4: the prompt is the conversation both sides share
        if isinstance(chosen, str) and isinstance(rejected, str):
            if not any(_TRANSCRIPT_TURN.search(s.lstrip()) for s in (chosen, rejected)):
                raise _no_format(
                    record,
                    "no 'prompt', and 'chosen' is not a 'Human: … Assistant: …' transcript",
                    error,
                )
            chosen_turns = _transcript(chosen, "chosen", error)
            rejected_turns = _transcript(rejected, "rejected", error)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            chosen_turns = _messages(chosen, "chosen", error)
            rejected_turns = _messages(rejected, "rejected", error)
        else:
            raise _no_format(
                record,
                f"no 'prompt', and 'chosen' is a {type(chosen).__name__} while 'rejected' is a "
                f"{type(rejected).__name__}",
                error,
            )
        prompt, chosen_reply, rejected_reply = _split_shared(chosen_turns, rejected_turns, error)
    for field, reply in (("chosen", chosen_reply), ("rejected", rejected_reply)):
        if not reply:
            raise error(f"the {field} reply is empty")
    if chosen_reply == rejected_reply:
        raise error("chosen and rejected are the same reply, so the pair expresses no preference")
    if not any(t["role"] == "user" for t in prompt):
        raise error("the prompt has no user turn")
    return PreferencePair(
        id=optional_str(record, "id", error) or default_id,
        family=optional_str(record, "family", error) or DEFAULT_FAMILY,
        prompt=prompt,
        chosen=chosen_reply,
        rejected=rejected_reply,
        reference=None,
        kind=KIND,
    )


def load_preference_file(uri: str) -> list[PreferencePair]:
    """Every pair of a file, a folder (its ``*.jsonl``/``*.json``/``*.txt``) or a glob.

    Files are read in sorted order, so ids and order are reproducible. A pair without an
    ``id`` gets ``file:line``, which also says where to look. A file without records is an
    error: an empty split would otherwise surface much later as a trainer with nothing to do.
    """
    fs, files = resolve_record_files(uri)
    pairs: list[PreferencePair] = []
    for path in files:
        name = display_name(fs, path)
        before = len(pairs)
        for lineno, record in iter_json_lines(iter_lines(fs, path, name), name):

            def error(msg: str, n: int = lineno) -> DataError:
                return at(name, n, msg)

            pairs.append(_to_pair(record, f"{name}:{lineno}", error))
        if len(pairs) == before:
            raise at(name, None, "has no records (expected JSON Lines of preference records)")
    return pairs


def load_preference_sources(uris: list[str]) -> list[PreferencePair]:
    """All pairs of ``uris`` in the order given; each URI as in ``load_preference_file``."""
    return load_each_source(uris, load_preference_file, "preference data")


DIVERGENT_RULE = "transcripts differ before the last reply"


def read_preference_sources(
    sources: list[Any], on_malformed: str = "error", max_skip_share: float = 0.0, divergent_pairs: str = "skip",
    hint: str | None = None,
) -> tuple[list[PreferencePair], SkipReport]:
    """All pairs of ``sources`` (URIs or ``DatasetRecipe``s: UltraFeedback binarized's
    prompt/chosen/rejected message lists, Anthropic HH's Human/Assistant transcripts as
    downloaded (``.jsonl.gz``), or mirrors of them) under the malformed-record policy.

    ``divergent_pairs="skip"`` leaves out, by that rule, a transcript pair whose two sides
    differ before the last reply (counted apart from malformed records); ``error`` stops there.
    """

    def convert(record: Any, source: Any) -> PreferencePair:
        try:
            pair = _to_pair(record.value, record.default_id, record.error)
        except DivergentPair as err:
            if divergent_pairs != "skip":
                raise
            raise Skip(DIVERGENT_RULE, str(err).removeprefix(f"{record.where}: ")) from None
        family = getattr(source, "family", None)
        return dataclasses.replace(pair, family=family) if family else pair

    return collect(sources, convert, "preference data", on_malformed, max_skip_share, hint)
