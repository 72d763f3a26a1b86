"""User instruction data: each accepted format, and errors that point at file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common.errors import DataError
from components.data_prep.chat_loaders import load_instruction_file, load_instruction_sources


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, *records: object) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Where does Mira live?"},
        {"role": "assistant", "content": "Mira lives in Ashford.", "name": "bot"},
    ],
    "family": "greeting",
}


def test_chat_format(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "chat.jsonl", CHAT)
    [e] = load_instruction_file(str(f))
    assert e.family == "greeting"
    assert e.answer == "Mira lives in Ashford."
    assert [m["role"] for m in e.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert e.messages[-1] == {"role": "assistant", "content": "Mira lives in Ashford."}
    assert e.id == f"{f}:1"


def test_prompt_completion_format(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "pc.jsonl",
        '\n{"prompt": "2 + 2?", "completion": " 4"}\n\n{"prompt": "Hi", "completion": "Hey"}\n',
    )
    a, b = load_instruction_file(str(f))
    assert a.messages == [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert a.answer == "4" and a.family == "user"
    assert (a.id, b.id) == (f"{f}:2", f"{f}:4")


def test_alpaca_format(tmp_path: Path) -> None:
    f = _jsonl(
        tmp_path / "alpaca.jsonl",
        {"instruction": "Reverse this list.", "input": "cat, dog", "output": "dog, cat"},
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"instruction": "Say bye.", "output": "Bye."},
    )
    with_input, empty_input, no_input = load_instruction_file(str(f))
    assert with_input.messages[0]["content"] == "Reverse this list.\n\ncat, dog"
    assert with_input.answer == "dog, cat"
    assert empty_input.messages[0]["content"] == "Say hi."
    assert no_input.messages == [
        {"role": "user", "content": "Say bye."},
        {"role": "assistant", "content": "Bye."},
    ]


def test_json_array_file(tmp_path: Path) -> None:
    records = [
        {"instruction": "Say hi.", "input": "", "output": "Hi."},
        {"prompt": "Hi", "completion": "Hey"},
    ]
    f = _write(tmp_path / "alpaca.json", json.dumps(records, indent=2))
    a, b = load_instruction_file(str(f))
    assert (a.answer, b.answer) == ("Hi.", "Hey")
    assert (a.id, b.id) == (f"{f}[0]", f"{f}[1]")


def test_json_array_error_names_the_element_line(tmp_path: Path) -> None:
    text = '[\n  {"prompt": "a", "completion": "b"},\n  {"prompt": 3}\n]\n'
    f = _write(tmp_path / "bad.json", text)
    with pytest.raises(DataError, match=r"bad\.json:3: .*'prompt' must be a string"):
        load_instruction_file(str(f))
    g = _write(tmp_path / "open.json", '[\n  {"prompt": "a", "completion": "b"}\n')
    with pytest.raises(DataError, match=r"open\.json:2: .*not closed"):
        load_instruction_file(str(g))
    h = _write(tmp_path / "comma.json", '[{"prompt": "a", "completion": "b"}\n {"prompt": "c"}]')
    with pytest.raises(DataError, match=r"comma\.json:2: .*expected ','"):
        load_instruction_file(str(h))


def test_folder_glob_and_sources(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d" / "b.jsonl", {"prompt": "b", "completion": "B"})
    _jsonl(tmp_path / "d" / "a.jsonl", CHAT, {"prompt": "a", "completion": "A"})
    _write(tmp_path / "d" / "notes.md", "not data\n")
    folder = load_instruction_file(str(tmp_path / "d"))
    assert [e.answer for e in folder] == ["Mira lives in Ashford.", "A", "B"]
    glob = load_instruction_file(str(tmp_path / "d" / "b*.jsonl"))
    assert [e.answer for e in glob] == ["B"]
    both = load_instruction_sources([str(tmp_path / "d" / "b.jsonl"), str(tmp_path / "d")])
    assert [e.answer for e in both] == ["B", "Mira lives in Ashford.", "A", "B"]


# -- errors name the file and the line -------------------------------------------------------

GOOD = {"prompt": "p", "completion": "c"}


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prompt": "p", ', "not valid JSON"),
        ('["prompt"]', "expected a JSON object, got list"),
        ('{"text": "hello", "id": 3}', "matches none of the accepted formats"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant turn"),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "and?"},
                    ]
                }
            ),
            "last turn is the user's",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "human", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                    ]
                }
            ),
            "message 1: unknown role 'human'",
        ),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "  "},
                    ]
                }
            ),
            "message 2: field 'content' is empty",
        ),
        (json.dumps({"messages": [{"role": "assistant", "content": "x"}]}), "no user turn"),
        (json.dumps({"messages": []}), "non-empty list"),
        (json.dumps({"prompt": "p", "completion": ""}), "field 'completion' is empty"),
        (json.dumps({"prompt": "p", "completion": 7}), "'completion' must be a string, got int"),
        (json.dumps({"prompt": "p"}), "missing field 'completion'"),
        (json.dumps({"instruction": "i", "input": 5, "output": "o"}), "'input' must be a string"),
        (json.dumps({"instruction": ["i"], "output": "o"}), "'instruction' must be a string"),
        (
            json.dumps({"messages": [{"role": "user", "content": ["x"]}]}),
            "message 1: field 'content' must be a string",
        ),
        (json.dumps({**GOOD, "family": 3}), "'family' must be a string"),
    ],
)
def test_record_errors_name_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    f = _write(tmp_path / "data.jsonl", json.dumps(GOOD) + "\n\n" + bad_line + "\n")
    with pytest.raises(DataError) as info:
        load_instruction_file(str(f))
    text = str(info.value)
    assert text.startswith(f"{f}:3: "), text
    assert message in text


def test_unknown_format_lists_accepted_formats(tmp_path: Path) -> None:
    f = _jsonl(tmp_path / "x.jsonl", {"question": "q", "answer": "a"})
    with pytest.raises(DataError) as info:
        load_instruction_file(str(f))
    text = str(info.value)
    assert text.startswith(f"{f}:1: ")
    for field in ("messages", "prompt", "completion", "instruction", "output", "question"):
        assert field in text


def test_empty_file_and_sources(tmp_path: Path) -> None:
    f = _write(tmp_path / "empty.jsonl", "\n  \n")
    with pytest.raises(DataError, match=r"empty\.jsonl: has no records"):
        load_instruction_file(str(f))
    g = _write(tmp_path / "empty.json", "[ ]\n")
    with pytest.raises(DataError, match=r"empty\.json: has no records"):
        load_instruction_file(str(g))
    with pytest.raises(DataError, match="no records"):
        load_instruction_sources([])
    with pytest.raises(DataError, match="no such file"):
        load_instruction_file(str(tmp_path / "missing.jsonl"))
