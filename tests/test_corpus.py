"""The generated world and corpus: deterministic, consistent with the world, correct sums."""

from __future__ import annotations

import json
import re

import pytest

from components.data_prep.corpus import (
    NUMBER_WORDS,
    generate_corpus,
    generate_documents,
)
from components.data_prep.world import ALL_NAMES, TOWN_NAMES, World, build_world

SEED = 1234
NUM = {w: i for i, w in enumerate(NUMBER_WORDS)}


@pytest.fixture(scope="module")
def corpus() -> tuple[World, list[str], list[str]]:
    return generate_corpus(seed=SEED, num_people=40, num_train_docs=3000, num_heldout_docs=200)


def _num(token: str) -> int:
    token = token.lower()
    return NUM[token] if token in NUM else int(token)


def _is_num(token: str) -> bool:
    return token.isdigit() or token.lower() in NUM


def _sentences(docs: list[str]) -> list[str]:
    return [s.strip() for d in docs for s in re.split(r"(?<=\.)\s+", d) if s.strip()]


# -- world ---------------------------------------------------------------------------------


def test_world_is_deterministic_and_seed_dependent() -> None:
    assert build_world(7, 40) == build_world(7, 40)
    assert build_world(7, 40) != build_world(8, 40)


def test_mira_is_always_person_zero() -> None:
    for seed in range(5):
        assert build_world(seed, 10).people[0].name == "Mira"
    assert build_world(3, 1).people[0].name == "Mira"


def test_world_shape() -> None:
    world = build_world(11, 40)
    names = [p.name for p in world.people]
    assert len(names) == len(set(names)) == 40
    assert len(ALL_NAMES) >= 80 and len(set(ALL_NAMES)) == len(ALL_NAMES)
    assert [t.name for t in world.towns] == list(TOWN_NAMES)
    for p in world.people:
        assert p.town in TOWN_NAMES
        if p.sibling is not None:
            assert world.person(p.sibling).sibling == p.name  # symmetric
    assert any(p.sibling for p in world.people)


def test_world_round_trips_through_json() -> None:
    world = build_world(5, 30)
    again = World.from_dict(json.loads(json.dumps(world.to_dict())))
    assert again == world
    assert again.person("Mira") == world.people[0]


def test_world_rejects_too_many_people_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        build_world(1, len(ALL_NAMES) + 1)
    build_world(1, len(ALL_NAMES))  # the full list is allowed
    with pytest.raises(KeyError, match="Zzyzx"):
        build_world(1, 5).person("Zzyzx")


# -- corpus ----------------------------------------------------------------------------------


def test_generate_corpus_is_deterministic() -> None:
    a = generate_corpus(seed=3, num_people=20, num_train_docs=300, num_heldout_docs=30)
    b = generate_corpus(seed=3, num_people=20, num_train_docs=300, num_heldout_docs=30)
    c = generate_corpus(seed=4, num_people=20, num_train_docs=300, num_heldout_docs=30)
    assert a == b
    assert a[1] != c[1] and a[2] != c[2]
    world = build_world(3, 20)
    assert generate_documents(world, 50, seed=9) == generate_documents(world, 50, seed=9)
    assert generate_documents(world, 50, seed=9) != generate_documents(world, 50, seed=10)


def test_counts_and_heldout_is_new_text(corpus) -> None:
    _, train, heldout = corpus
    assert len(train) == 3000 and len(heldout) == 200
    assert not set(heldout) & set(train)


def test_documents_are_short_paragraphs(corpus) -> None:
    _, train, _ = corpus
    lengths = [len(d.split()) for d in train]
    assert min(lengths) >= 10 and max(lengths) <= 90
    assert 25 <= sum(lengths) / len(lengths) <= 60
    assert all("\n" not in d and d.endswith(".") for d in train)


def test_mix_of_document_kinds(corpus) -> None:
    _, train, _ = corpus
    text = "\n".join(train)
    for marker in (" lives in ", " plus ", " minus ", " times ", " older than ",
                   " favourite colour ", " buys ", " is a town in the "):
        assert marker in text, marker


def test_residence_facts_match_world(corpus) -> None:
    world, train, heldout = corpus
    pattern = re.compile(r"\b([A-Z][a-z]+) (?:lives|lived) in (?:the town of )?([A-Z][a-z]+)")
    checked = 0
    for sentence in _sentences(train + heldout):
        for name, town in pattern.findall(sentence):
            if name in {"She", "He"}:
                continue
            assert world.person(name).town == town, sentence
            checked += 1
    assert checked > 500


def test_other_person_facts_match_world(corpus) -> None:
    world, train, _ = corpus
    job = re.compile(r"\b([A-Z][a-z]+) (?:is an?|works as an?) ([a-z]+)(?: in ([A-Z][a-z]+))?\.")
    age = re.compile(r"\b([A-Z][a-z]+) is (\d+) years old\b")
    pet = re.compile(r"\b([A-Z][a-z]+) has an? ([a-z]+)\.")
    color = re.compile(r"\b([A-Z][a-z]+)'s favourite colour is ([a-z]+)\.")
    counts = dict.fromkeys(("job", "age", "pet", "color"), 0)
    for sentence in _sentences(train):
        for name, value, town in job.findall(sentence):
            if name in ALL_NAMES:
                assert world.person(name).job == value, sentence
                assert not town or world.person(name).town == town, sentence
                counts["job"] += 1
        for name, value in age.findall(sentence):
            if name not in ALL_NAMES:
                continue
            assert world.person(name).age == int(value), sentence
            counts["age"] += 1
        for name, value in pet.findall(sentence):
            if name in ALL_NAMES:
                assert world.person(name).pet == value, sentence
                counts["pet"] += 1
        for name, value in color.findall(sentence):
            assert world.person(name).color == value, sentence
            counts["color"] += 1
    assert all(n > 20 for n in counts.values()), counts


def test_comparisons_match_world(corpus) -> None:
    world, train, _ = corpus
    older = re.compile(r"\b([A-Z][a-z]+) is older than ([A-Z][a-z]+)\b")
    younger = re.compile(r"\b([A-Z][a-z]+) is younger than ([A-Z][a-z]+)\b")
    diff = re.compile(r"\b([A-Z][a-z]+) is (\d+) years older than ([A-Z][a-z]+)\b")
    n = 0
    for doc in train:
        for a, b in older.findall(doc):
            assert world.person(a).age > world.person(b).age, doc
            n += 1
        for a, b in younger.findall(doc):
            assert world.person(a).age < world.person(b).age, doc
            n += 1
        for a, d, b in diff.findall(doc):
            assert world.person(a).age - world.person(b).age == int(d), doc
            n += 1
    assert n > 100


def test_sibling_statements_match_world(corpus) -> None:
    world, train, _ = corpus
    pattern = re.compile(r"\b([A-Z][a-z]+) has an? (sister|brother) called ([A-Z][a-z]+)\.")
    n = 0
    for doc in train:
        for name, word, sib in pattern.findall(doc):
            if name not in ALL_NAMES:
                continue  # "She has a brother called Tom": the profile's subject, checked below
            assert world.person(name).sibling == sib, doc
            assert world.person(sib).sibling_word == word, doc
            n += 1
    assert n > 10


def test_arithmetic_statements_are_correct(corpus) -> None:
    _, train, _ = corpus
    num = r"(\d+|[A-Za-z]+)"
    ops = {
        "plus": lambda a, b: a + b,
        "and": lambda a, b: a + b,
        "minus": lambda a, b: a - b,
        "times": lambda a, b: a * b,
    }
    stmt = re.compile(rf"^{num} (plus|minus|times|and) {num} (?:is|equals|make) {num}\.$")
    cmp_ = re.compile(rf"^{num} is (more|less) than {num}\.$")
    n_stmt = n_cmp = n_words = 0
    for sentence in _sentences(train):
        m = stmt.match(sentence)
        if m and all(_is_num(t) for t in m.group(1, 3, 4)):
            a, op, b, c = m.groups()
            assert ops[op](_num(a), _num(b)) == _num(c), sentence
            n_stmt += 1
            n_words += a.isalpha()
        m = cmp_.match(sentence)
        if m:
            a, rel, b = m.groups()
            assert (_num(a) > _num(b)) if rel == "more" else (_num(a) < _num(b)), sentence
            n_cmp += 1
    assert n_stmt > 500 and n_cmp > 50 and n_words > 50


def test_story_arithmetic_is_correct(corpus) -> None:
    _, train, _ = corpus
    buy = re.compile(r"has (\d+) (\w+)\. \w+ buys (\d+) more \w+\. Now \w+ has (\d+) \2\.")
    give = re.compile(r"has (\d+) (\w+)\. \w+ gives (\d+) \w+ to [\w ]+\. Now \w+ has (\d+) ")
    boxes = re.compile(r"has (\d+) boxes\. Each box has (\d+) \w+ in it\. So \w+ has \1 times \2, "
                       r"which is (\d+) ")
    n = 0
    for doc in train:
        for a, _, b, c in buy.findall(doc):
            assert int(a) + int(b) == int(c), doc
            n += 1
        for a, _, b, c in give.findall(doc):
            assert int(a) - int(b) == int(c), doc
            n += 1
        for a, b, c in boxes.findall(doc):
            assert int(a) * int(b) == int(c), doc
            n += 1
    assert n > 100


def test_pronouns_follow_gender(corpus) -> None:
    world, train, _ = corpus
    # "This is Mira. She ..." : the sentence after a bare opener uses the person's pronoun.
    pattern = re.compile(r"(?:This is|Let me tell you about) ([A-Z][a-z]+)\. (She|He|Her|His) ")
    n = 0
    for doc in train:
        for name, pronoun in pattern.findall(doc):
            female = world.person(name).gender == "female"
            assert pronoun in ({"She", "Her"} if female else {"He", "His"}), doc
            n += 1
    assert n > 50


def test_pronoun_sentences_in_profiles_are_about_the_profiled_person(corpus) -> None:
    world, train, _ = corpus
    opener = re.compile(r"^(?:This is|Let me tell you about) ([A-Z][a-z]+)\.")
    lives = re.compile(r"\b(?:She|He) lives in (?:the town of )?([A-Z][a-z]+)\.")
    age = re.compile(r"\b(?:She|He) is (\d+) years old")
    sibling = re.compile(r"\b(?:She|He) has an? (?:sister|brother) called ([A-Z][a-z]+)\.")
    n = 0
    for doc in train:
        m = opener.match(doc)
        if not m:
            continue
        p = world.person(m.group(1))
        for town in lives.findall(doc):
            assert town == p.town, doc
            n += 1
        for years in age.findall(doc):
            assert int(years) == p.age, doc
            n += 1
        for sib in sibling.findall(doc):
            assert sib == p.sibling, doc
            n += 1
    assert n > 50


def test_vocabulary_is_small(corpus) -> None:
    _, train, heldout = corpus
    words = {w for d in train + heldout for w in d.split()}
    assert len(words) < 1500


def test_sample_prompt_mira_lives_in_is_answered(corpus) -> None:
    world, train, _ = corpus
    town = world.person("Mira").town
    assert sum(f"Mira lives in {town}" in d for d in train) >= 5
