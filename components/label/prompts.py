"""Prompts to label: a user's file/URI, or a pipeline run's labelling pool.

The pool (``label_pool``) is the run's SFT *training* prompts minus every prompt held out by
any evaluation suite (``components/data_prep/votes.py``): votes on it can flow into the next
run's training without leaking into its evaluation. (The next run's data prep checks it again
and drops any vote on a held-out prompt.)

Accepted records, one per line of a ``.jsonl`` file (mixable):

- ``{"prompt": "..."}`` or ``{"prompt": [messages]}`` (a preference record's prompt; any
  ``chosen``/``rejected`` fields are ignored, so a preference file is a prompt file too)
- ``{"messages": [messages]}`` (a chat record; a final assistant turn is dropped, since that
  is the reply the models will write)

and in a ``.txt`` file one prompt per non-blank line. Bad records are errors naming file:line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.common import storage
from components.common.errors import DataError, at
from components.data_prep.chat_loaders import chat_turns
from components.data_prep.loaders import (
    display_name,
    iter_lines,
    resolve_record_files,
    iter_json_lines,
)


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: list[dict[str, str]]  # ends with a user turn


def _messages_of(record: Any, error) -> list[dict[str, str]]:
    if not isinstance(record, dict):
        raise error(f"expected a JSON object, got {type(record).__name__}")
    if "prompt" in record:
        value = record["prompt"]
        if isinstance(value, str):
            if not value.strip():
                raise error("field 'prompt' is empty")
            return [{"role": "user", "content": value.strip()}]
        turns = chat_turns(value, "prompt", error)
    elif "messages" in record:
        turns = chat_turns(record["messages"], "messages", error)
        if turns[-1]["role"] == "assistant":
            turns = turns[:-1]
    else:
        raise error("expected a 'prompt' (string or chat messages) or a 'messages' field")
    if not turns or turns[-1]["role"] != "user":
        raise error("the prompt must end with a user turn")
    return turns


def load_prompts(uri: str) -> list[Prompt]:
    """Every prompt of a file, folder or glob (sorted files), in file order."""
    fs, files = resolve_record_files(uri)
    prompts: list[Prompt] = []
    for path in files:
        name = display_name(fs, path)
        lines = iter_lines(fs, path, name)
        if path.lower().endswith(".txt"):
            for lineno, line in lines:
                if line.strip():
                    prompts.append(Prompt(f"{name}:{lineno}", [{"role": "user", "content": line.strip()}]))
            continue
        for lineno, record in iter_json_lines(lines, name):

            def error(msg: str, n: int = lineno, name: str = name) -> DataError:
                return at(name, n, msg)

            pid = record.get("id") if isinstance(record, dict) else None
            prompts.append(Prompt(str(pid) if pid else f"{name}:{lineno}", _messages_of(record, error)))
    if not prompts:
        raise DataError(f"{uri}: no prompts")
    return prompts


def _run_manifest(storage_root: str, run_id: str) -> dict[str, Any]:
    from components.data_prep.manifest import MANIFEST, data_uri

    data = data_uri(storage.join(storage.normalize(storage_root), run_id))
    manifest = storage.join(data, MANIFEST)
    if not storage.exists(manifest):
        raise DataError(f"run {run_id} has no data_prep output at {data}; pass --prompts instead")
    return storage.read_json(manifest)


def label_pool(storage_root: str, run_id: str) -> tuple[list[Prompt], str]:
    """A run's labelling pool (training prompts disjoint from every held-out suite) and a
    description of where it came from."""
    from components.data_prep.votes import label_prompt_pool

    manifest = _run_manifest(storage_root, run_id)
    pool = [Prompt(str(r["id"]), r["prompt"]) for r in label_prompt_pool(manifest)]
    if not pool:
        raise DataError(f"run {run_id}: no training prompt is free of the held-out suites; pass --prompts")
    return pool, f"the labelling pool of run {run_id} (training prompts, none held out)"


def heldout_prompts_uri(storage_root: str, run_id: str) -> str:
    """Where data_prep wrote a run's held-out preference pairs. Not a default for labelling any
    more (votes on them would leak into training); kept for ``--prompts`` users who want them."""
    return _run_manifest(storage_root, run_id)["preference"]["heldout"]["uri"]
