"""Users' RLVR problems: both layouts load, and every malformed record names its file and line."""

from __future__ import annotations

import json

import pytest

from components.common.errors import DataError
from components.data_prep.problem_loaders import load_problem_file, load_problem_sources

GSM = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_prompt_answer_layout(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6 times 7?"}]
    path = _jsonl(
        tmp_path / "mine.jsonl",
        [
            {"prompt": "  What is 2 plus 2?  ", "answer": 4},
            {"prompt": chat, "answer": "42", "id": "seven", "difficulty": 3, "family": "times"},
            {"prompt": "Half of 5?", "answer": 2.50, "solution": "5 / 2 = 2.5"},
            {"prompt": "A big sum?", "answer": "1,000", "id": 17, "difficulty": None},
        ],
    )
    a, b, c, d = load_problem_file(path)
    assert (a.id, a.family, a.difficulty) == (f"{path}:1", "user", 1)
    assert a.prompt == [{"role": "user", "content": "What is 2 plus 2?"}]
    assert (a.answer, a.solution) == ("4", None)
    assert (b.id, b.family, b.difficulty, b.answer) == ("seven", "times", 3, "42")
    assert b.prompt == chat
    assert (c.answer, c.solution) == ("2.5", "5 / 2 = 2.5. The answer is 2.5.")
    assert (d.id, d.answer, d.difficulty) == ("17", "1000", 1)


def test_question_answer_layout_with_worked_solution(tmp_path):
    path = _jsonl(tmp_path / "gsm.jsonl", [GSM, {"question": "How many legs has a cat?", "answer": "4"}])
    worked, bare = load_problem_file(path)
    assert worked.prompt == [{"role": "user", "content": GSM["question"]}]
    assert worked.answer == "72"
    assert worked.solution == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\nThe answer is 72."
    )
    assert (bare.answer, bare.solution) == ("4", None)


def test_folder_and_several_sources(tmp_path):
    folder = tmp_path / "problems"
    folder.mkdir()
    _jsonl(folder / "a.jsonl", [{"prompt": "1+1?", "answer": 2}])
    _jsonl(folder / "b.jsonl", [GSM])
    extra = _jsonl(tmp_path / "c.jsonl", [{"prompt": "3+3?", "answer": "6", "id": "c1"}])
    problems = load_problem_sources([str(folder), extra])
    assert [p.answer for p in problems] == ["2", "72", "6"]
    assert len({p.id for p in problems}) == 3


def test_duplicate_id_across_files_names_both(tmp_path):
    first = _jsonl(tmp_path / "first.jsonl", [{"prompt": "x?", "answer": 1, "id": "p1"}])
    second = _jsonl(tmp_path / "second.jsonl", [{"prompt": "y?", "answer": 2}, {"prompt": "z?", "answer": 3, "id": "p1"}])
    with pytest.raises(DataError, match=r"second\.jsonl:2: duplicate id 'p1' \(first used at .*first\.jsonl:1\)"):
        load_problem_sources([first, second])


GOOD = {"prompt": "What is 1 plus 1?", "answer": 2}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "What is it?", "answer": "about seven"}, r"field 'answer': no parsable numeric answer"),
        ({"question": "What is it?", "answer": "Some steps.\n#### lots"}, r"field 'answer': no parsable numeric answer"),
        ({"prompt": "What is it?", "answer": True}, r"field 'answer' must be a number"),
        ({"prompt": "   ", "answer": 1}, r"field 'prompt' is empty"),
        ({"question": "", "answer": 1}, r"field 'question' is empty"),
        ({"prompt": [], "answer": 1}, r"field 'prompt' must be a non-empty list"),
        ({"prompt": [{"role": "user", "content": ""}], "answer": 1}, r"field 'prompt': message 1: field 'content' is empty"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "answer": 1}, r"must be the user's question"),
        ({"prompt": "What is it?"}, r"missing field 'answer'"),
        ({"answer": 3}, r"missing field 'prompt' \(or 'question'\)"),
        ({"prompt": "What is it?", "answer": 1, "difficulty": 0}, r"field 'difficulty' must be an integer >= 1"),
        ('{"prompt": "What is it?", "answer": ', r"not valid JSON"),
        ({"prompt": "What is it?", "answer": 1, "id": "dup"}, r"duplicate id 'dup' \(first used at .*broken\.jsonl:1\)"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, record, message):
    path = _jsonl(tmp_path / "broken.jsonl", [{**GOOD, "id": "dup"}, GOOD, record, GOOD])
    with pytest.raises(DataError, match=rf"broken\.jsonl:3: .*{message}"):
        load_problem_file(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: has no records"):
        load_problem_file(str(path))
