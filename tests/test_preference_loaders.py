"""User preference data: each accepted format, and errors that point at file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.errors import DataError
from components.data_prep.preference_loaders import load_preference_file, load_preference_sources
from components.data_prep.preferences import PreferencePair


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, *records: object) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


STRINGS = {
    "prompt": "Where does Mira live?", "chosen": " In Ashford.", "rejected": "I do not know.\n"
}
HH_PREFIX = "\n\nHuman: Hi?\n\nAssistant: Hello.\n\nHuman: Where does Mira live?\n\nAssistant:"


def test_string_format(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "s.jsonl", STRINGS, {**STRINGS, "id": "q-7", "family": "fact_town"})
    default, named = load_preference_file(str(f))
    assert default == PreferencePair(
        id=f"{f}:1", family="user", prompt=[_user("Where does Mira live?")],
        chosen="In Ashford.", rejected="I do not know.", reference=None, kind="user",
    )
    assert (named.id, named.family) == ("q-7", "fact_town")


def test_chat_format(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be brief."}
    prompt = [system, _user("Hi?"), _bot("Hello."), _user("Mira?")]
    record = {
        "prompt": prompt,
        "chosen": [_bot("Hmm."), {"role": "assistant", "content": "Ashford.", "name": "x"}],
        "rejected": [_bot("No idea.")],
        "id": 12,
    }
    [pair] = load_preference_file(str(_jsonl(tmp_path / "c.jsonl", record)))
    assert pair.prompt == prompt
    assert (pair.chosen, pair.rejected) == ("Ashford.", "No idea.")
    assert (pair.id, pair.kind) == ("12", "user")


def test_transcript_format(tmp_path: Path) -> None:
    record = {"chosen": HH_PREFIX + " In Ashford.", "rejected": HH_PREFIX + " Ask someone else."}
    f = _write(tmp_path / "hh.jsonl", "\n" + json.dumps(record) + "\n")
    [pair] = load_preference_file(str(f))
    assert pair.prompt == [_user("Hi?"), _bot("Hello."), _user("Where does Mira live?")]
    assert (pair.chosen, pair.rejected) == ("In Ashford.", "Ask someone else.")
    assert (pair.id, pair.family, pair.reference) == (f"{f}:2", "user", None)


def test_transcript_reply_may_mention_a_speaker(tmp_path: Path) -> None:
    """Only a marker after a blank line starts a turn, so quoting one inside a reply is safe."""
    record = {
        "chosen": "Human: Say it.\n\nAssistant: Human: hi",
        "rejected": "Human: Say it.\n\nAssistant: No.",
    }
    [pair] = load_preference_file(str(_jsonl(tmp_path / "q.jsonl", record)))
    assert (pair.prompt, pair.chosen) == ([_user("Say it.")], "Human: hi")


def test_chat_transcript_format(tmp_path: Path) -> None:
    system = {"role": "system", "content": "Be kind."}
    shared = [system, _user("Hi?"), _bot("Hello."), _user("Bye?")]
    record = {"chosen": [*shared, _bot("Goodbye!")], "rejected": [*shared, _bot("Go away.")]}
    [pair] = load_preference_file(str(_jsonl(tmp_path / "t.jsonl", record)))
    assert (pair.prompt, pair.chosen, pair.rejected) == (shared, "Goodbye!", "Go away.")


def test_folder_glob_and_sources(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d" / "b.jsonl", {**STRINGS, "chosen": "B"})
    _jsonl(tmp_path / "d" / "a.jsonl", {**STRINGS, "chosen": "A1"}, {**STRINGS, "chosen": "A2"})
    assert [p.chosen for p in load_preference_file(str(tmp_path / "d"))] == ["A1", "A2", "B"]
    assert [p.chosen for p in load_preference_file(str(tmp_path / "d" / "b*.jsonl"))] == ["B"]
    both = load_preference_sources([str(tmp_path / "d" / "b.jsonl"), str(tmp_path / "d")])
    assert [p.chosen for p in both] == ["B", "A1", "A2", "B"]


# -- errors name the file and the line -------------------------------------------------------

SHARED = [_user("Hi?")]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prompt": "p", ', "not valid JSON"),
        (json.dumps({"prompt": "q", "answer": "a"}), "matches none of the accepted formats"),
        (json.dumps({"chosen": "good", "rejected": "bad"}), "matches none of the accepted formats"),
        (json.dumps({**STRINGS, "chosen": "  "}), "field 'chosen' is empty"),
        (json.dumps({**STRINGS, "rejected": [_bot(" ")]}), "message 1: field 'content' is empty"),
        (
            json.dumps({"chosen": HH_PREFIX + " Fine.", "rejected": HH_PREFIX}),
            "the rejected reply is empty",
        ),
        (json.dumps({**STRINGS, "rejected": " In Ashford."}), "expresses no preference"),
        (
            json.dumps({"chosen": "\n\nHuman: Hi?", "rejected": "\n\nHuman: Hi!"}),
            "no 'Assistant:' turn",
        ),
        (
            json.dumps(
                {"chosen": HH_PREFIX + " A.", "rejected": "\n\nHuman: Other?\n\nAssistant: B."}
            ),
            "do not share the same conversation before the last reply",
        ),
        (
            json.dumps({"chosen": [*SHARED, _bot("A.")], "rejected": [_user("Ho?"), _bot("B.")]}),
            "do not share the same conversation before the last reply",
        ),
        (
            json.dumps({**STRINGS, "prompt": [{"role": "human", "content": "hi"}]}),
            "message 1: unknown role 'human'",
        ),
        (
            json.dumps(
                {
                    "chosen": [*SHARED, {"role": "bot", "content": "A."}],
                    "rejected": [*SHARED, _bot("B.")],
                }
            ),
            "field 'chosen': message 2: unknown role 'bot'",
        ),
    ],
)
def test_record_errors_name_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    f = _write(tmp_path / "data.jsonl", json.dumps(STRINGS) + "\n\n" + bad_line + "\n")
    with pytest.raises(DataError) as info:
        load_preference_file(str(f))
    text = str(info.value)
    assert text.startswith(f"{f}:3: "), text
    assert message in text, text


def test_unknown_format_lists_accepted_formats(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "x.jsonl", {"question": "q", "answer": "a"})
    with pytest.raises(DataError) as info:
        load_preference_file(str(f))
    text = str(info.value)
    assert text.startswith(f"{f}:1: ")
    for part in ('"prompt"', '"chosen"', '"rejected"', "Human:", "Assistant:", "question"):
        assert part in text


def test_empty_file_and_sources(tmp_path: Path) -> None:
    f = _write(tmp_path / "empty.jsonl", "\n  \n")
    with pytest.raises(DataError, match=r"empty\.jsonl: has no records"):
        load_preference_file(str(f))
    with pytest.raises(DataError, match="no records"):
        load_preference_sources([])
