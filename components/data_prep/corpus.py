"""The embedded default pre-training corpus: simple prose about a synthetic world, plus sums.

Why generated text instead of a downloaded corpus: the default run must work offline, in a
few CPU minutes, and show that pre-training *learned something*. A closed world with a small
vocabulary gives a ~2M-parameter model a learnable target: its held-out perplexity falls far
below a random model's, and a prompt such as "Mira lives in" has a right answer.

Design choices that make the text learnable but not trivially memorisable:

* Every fact is stated with several templates and in mixed company (profiles, town pages,
  stories, comparisons), so the model must tie the fact to the *name*, not to one sentence.
* Facts always come from the ``World`` object, so they never contradict each other; pronouns
  follow ``Person.gender``.
* Arithmetic uses small numbers (operands 0-20, written as digits and sometimes as words) and
  is always correct, so the model can pick up a little addition and comparison.

Everything is drawn from a private ``random.Random``; the same arguments give the same text.
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable, Iterator

from components.data_prep.world import Person, World, article, build_world

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
    "eighteen", "nineteen", "twenty",
)

# Countable things for the arithmetic stories: (singular, plural).
ITEMS: tuple[tuple[str, str], ...] = (
    ("apple", "apples"), ("egg", "eggs"), ("book", "books"), ("coin", "coins"),
    ("flower", "flowers"), ("stone", "stones"), ("pen", "pens"), ("shell", "shells"),
    ("cup", "cups"), ("ball", "balls"), ("plum", "plums"), ("card", "cards"),
)

# Relative weights of the document kinds. Profiles carry the most facts per word, so they
# dominate; the rest re-state the same facts in other contexts and add arithmetic.
KIND_WEIGHTS: dict[str, int] = {
    "profile": 30,
    "story": 20,
    "arithmetic": 15,
    "comparison": 12,
    "town": 11,
    "family": 12,
}

# Fact templates. Placeholders: {S}/{s} subject (name or pronoun, capitalised / as-is),
# {P}/{p} possessive ("Mira's"/"Her" / "her"), plus the fact values. Several per fact so
# the model has to generalise across phrasings.
FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "town": (
        "{S} lives in {town}.",
        "{S} has a home in {town}.",
        "{P} home is in {town}.",
        "{S} lives in the town of {town}.",
    ),
    "job": (
        "{S} is {a_job}.",
        "{S} works as {a_job}.",
        "{S} is {a_job} in {town}.",
        "{S} has a job as {a_job}.",
    ),
    "pet": (
        "{S} has {a_pet}.",
        "{S} keeps {a_pet} at home.",
        "{P} pet is {a_pet}.",
        "{S} takes care of {a_pet}.",
    ),
    "color": (
        "{P} favourite colour is {color}.",
        "{S} likes the colour {color} best.",
        "{S} loves the colour {color}.",
        "Of all colours, {s} likes {color} best.",
    ),
    "food": (
        "{P} favourite food is {food}.",
        "{S} likes to eat {food}.",
        "{S} loves to eat {food}.",
        "For dinner, {s} likes {food} best.",
    ),
    "age": (
        "{S} is {age} years old.",
        "{P} age is {age}.",
        "{S} is {age} years old now.",
        "{S} turned {age} this year.",
    ),
    "sibling": (
        "{S} has a {other_word} called {sib}.",
        "{sib} is {p} {other_word}.",
        "{P} {other_word} is {sib}.",
        "{S} and {sib} are {pair_word}.",
    ),
}

# Openers and the facts they already state (those are not repeated in the same profile).
PROFILE_OPENERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("This is {name}.", ()),
    ("{name} is {a_job} who lives in {town}.", ("job", "town")),
    ("Let me tell you about {name}.", ()),
    ("The {job} {name} lives in {town}.", ("job", "town")),
)


def number_word(n: int) -> str:
    """0-20 as an English word (the arithmetic also appears spelled out, e.g. "three")."""
    return NUMBER_WORDS[n]


def capitalize_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _plural(count: int, item: tuple[str, str]) -> str:
    return f"{count} {item[0] if count == 1 else item[1]}"


def _more(count: int, item: tuple[str, str]) -> str:
    """"4 more apples" / "1 more apple"."""
    return f"{count} more {item[0] if count == 1 else item[1]}"


def _pair_word(a: Person, b: Person) -> str:
    """What two siblings are together: "sisters", "brothers" or "brother and sister"."""
    if a.gender == b.gender:
        return "sisters" if a.gender == "female" else "brothers"
    return f"{a.sibling_word} and {b.sibling_word}"


class _Writer:
    """Draws documents about one world from one RNG stream; one method per document kind."""

    def __init__(self, world: World, rng: random.Random) -> None:
        if not world.people:
            raise ValueError("the world has no people to write about")
        self.world = world
        self.rng = rng
        self.with_sibling = [p for p in world.people if p.sibling is not None]
        kinds = [k for k in KIND_WEIGHTS if k != "family" or self.with_sibling]
        if len(world.people) < 2:
            kinds = [k for k in kinds if k != "comparison"]
        self.kinds = kinds
        self.weights = [KIND_WEIGHTS[k] for k in kinds]
        self.makers: dict[str, Callable[[], str]] = {
            "profile": self.profile,
            "story": self.story,
            "arithmetic": self.arithmetic,
            "comparison": self.comparison,
            "town": self.town,
            "family": self.family,
        }

    def document(self) -> str:
        kind = self.rng.choices(self.kinds, weights=self.weights)[0]
        return self.makers[kind]()

    # -- helpers ---------------------------------------------------------------------------

    def _values(self, p: Person) -> dict[str, str]:
        values = {
            "name": p.name,
            "town": p.town,
            "job": p.job,
            "a_job": article(p.job),
            "a_pet": article(p.pet),
            "color": p.color,
            "food": p.food,
            "age": str(p.age),
        }
        if p.sibling is not None:
            sib = self.world.person(p.sibling)
            values.update(
                sib=sib.name, other_word=sib.sibling_word, pair_word=_pair_word(p, sib)
            )
        return values

    def _fact(self, p: Person, fact: str, use_name: bool) -> str:
        """One sentence stating ``fact`` about ``p``, by name or by pronoun."""
        template = self.rng.choice(FACT_TEMPLATES[fact])
        subject = p.name if use_name else p.pronoun
        possessive = f"{p.name}'s" if use_name else p.possessive
        return capitalize_first(
            template.format(
                S=capitalize_first(subject), s=subject, P=capitalize_first(possessive), p=possessive, **self._values(p)
            )
        )

    def _facts_of(self, p: Person) -> list[str]:
        facts = ["town", "job", "pet", "color", "food", "age"]
        if p.sibling is not None:
            facts.append("sibling")
        return facts

    def _person(self) -> Person:
        return self.rng.choice(self.world.people)

    # -- document kinds --------------------------------------------------------------------

    def profile(self) -> str:
        """Several facts about one person: the densest way to state the world."""
        p = self._person()
        opener, stated = self.rng.choice(PROFILE_OPENERS)
        facts = [f for f in self._facts_of(p) if f not in stated]
        self.rng.shuffle(facts)
        chosen = facts[: self.rng.randint(4, 5)]
        sentences = [opener.format(**self._values(p))]
        after_sibling = False
        for fact in chosen:
            # Mostly pronouns, sometimes the name, so facts are bound to both. Right after a
            # sibling sentence a pronoun could mean either sibling, so the name is forced.
            use_name = after_sibling or self.rng.random() < 0.35
            sentences.append(self._fact(p, fact, use_name))
            after_sibling = fact == "sibling"
        return " ".join(sentences)

    def town(self) -> str:
        """A town's region, feature, region partner and some residents."""
        rng = self.rng
        t = rng.choice(self.world.towns)
        partner = next(
            o for o in self.world.towns if o.region == t.region and o.name != t.name
        )
        sentences = [
            rng.choice(
                (
                    f"{t.name} is a town in the {t.region}.",
                    f"{t.name} is a small town in the {t.region}.",
                    f"In the {t.region} there is a town called {t.name}.",
                )
            ),
            rng.choice(
                (
                    f"{t.name} has {article(t.feature)}.",
                    f"There is {article(t.feature)} in {t.name}.",
                    f"{t.name} is known for its {t.feature}.",
                    f"People come to {t.name} to see the {t.feature}.",
                )
            ),
            rng.choice(
                (
                    f"{t.name} and {partner.name} are both in the {t.region}.",
                    f"{partner.name} is also in the {t.region}.",
                    f"The other town in the {t.region} is {partner.name}.",
                )
            ),
        ]
        residents = list(self.world.residents(t.name))
        rng.shuffle(residents)
        if not residents:
            sentences.append(f"Nobody we know lives in {t.name}.")
        else:
            shown = residents[: rng.randint(1, 3)]
            # With one resident the job sentence below already says where they live.
            if len(shown) > 1:
                names = ", ".join(p.name for p in shown[:-1]) + f" and {shown[-1].name}"
                sentences.append(f"{names} live in {t.name}.")
            for p in shown[:2]:
                sentences.append(
                    rng.choice(
                        (
                            f"The {p.job} {p.name} lives in {t.name}.",
                            f"{p.name} is {article(p.job)} in {t.name}.",
                            f"In {t.name}, {p.name} works as {article(p.job)}.",
                        )
                    )
                )
        return " ".join(sentences)

    def _story_opener(self, p: Person) -> str:
        t = self.world.town(p.town)
        return self.rng.choice(
            (
                f"Once upon a time, {p.name} lived in {p.town}.",
                f"One day, {p.name} walks to the {t.feature} in {p.town}.",
                f"{p.name} lives in {p.town}.",
                f"{p.name} is {article(p.job)} in {p.town}.",
            )
        )

    def story(self) -> str:
        """A tiny story with one correct sum, tied to a person's real facts."""
        rng = self.rng
        p = self._person()
        item = rng.choice(ITEMS)
        he, He = p.pronoun, capitalize_first(p.pronoun)
        kind = rng.choice(("buy", "give", "find", "times", "together"))
        if kind == "buy":
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            body = [
                f"{p.name} has {_plural(a, item)}.",
                f"{He} buys {_more(b, item)}.",
                f"Now {he} has {_plural(a + b, item)}.",
            ]
        elif kind == "give":
            a = rng.randint(2, 20)
            b = rng.randint(1, a - 1)
            if p.sibling is not None and rng.random() < 0.5:
                to = f"{p.possessive} {self.world.person(p.sibling).sibling_word} {p.sibling}"
            else:
                names = [o.name for o in self.world.people if o.name != p.name]
                to = rng.choice(names) if names else "a friend"
            body = [
                f"{p.name} has {_plural(a, item)}.",
                f"{He} gives {_plural(b, item)} to {to}.",
                f"Now {p.name} has {_plural(a - b, item)} left.",
            ]
        elif kind == "find":
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            body = [
                f"In the morning, {p.name} finds {_plural(a, item)}.",
                f"In the evening, {he} finds {_more(b, item)}.",
                f"In all, {he} finds {_plural(a + b, item)}.",
            ]
        elif kind == "times":
            a, b = rng.randint(2, 10), rng.randint(2, 10)
            body = [
                f"{p.name} has {a} boxes.",
                f"Each box has {_plural(b, item)} in it.",
                f"So {he} has {a} times {b}, which is {_plural(a * b, item)}.",
            ]
        else:
            others = [o for o in self.world.people if o.name != p.name]
            q = rng.choice(others) if others else p
            a, b = rng.randint(1, 20), rng.randint(1, 20)
            body = [
                f"{p.name} has {_plural(a, item)} and {q.name} has {_plural(b, item)}.",
                f"Together they have {_plural(a + b, item)}.",
            ]
            if a != b:
                more, less = (p, q) if a > b else (q, p)
                body.append(f"{more.name} has {abs(a - b)} more than {less.name}.")
        ending = rng.choice(
            (
                [],
                [f"{He} is very happy."],
                [f"{He} shows them to {p.possessive} {p.pet}."],
            )
        )
        return " ".join([self._story_opener(p), *body, *ending])

    def _number(self, n: int, words: bool) -> str:
        return number_word(n) if words else str(n)

    def _arith_statement(self) -> str:
        rng = self.rng
        op = rng.choice(("plus", "plus", "minus", "minus", "times", "compare", "after"))
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        if op == "plus":
            c, verb = a + b, rng.choice(("plus", "plus", "and"))
        elif op == "minus":
            a, b = max(a, b), min(a, b)
            c, verb = a - b, "minus"
        elif op == "times":
            a, b = rng.randint(0, 10), rng.randint(0, 10)
            c, verb = a * b, "times"
        elif op == "after":
            a = rng.randint(0, 19)
            words = rng.random() < 0.25
            return capitalize_first(
                f"after {self._number(a, words)} comes {self._number(a + 1, words)}."
            )
        else:
            if a == b:
                b = (a + rng.randint(1, 20)) % 21
            words = rng.random() < 0.25
            x, y = self._number(a, words), self._number(b, words)
            rel = "more" if a > b else "less"
            return capitalize_first(f"{x} is {rel} than {y}.")
        # Spelled-out numbers only where every number has a word (0-20).
        words = c <= 20 and rng.random() < 0.25
        x, y, z = self._number(a, words), self._number(b, words), self._number(c, words)
        if verb == "and":
            return capitalize_first(f"{x} and {y} make {z}.")
        link = rng.choice(("is", "is", "equals"))
        return capitalize_first(f"{x} {verb} {y} {link} {z}.")

    def arithmetic(self) -> str:
        """Plain, always-correct sums and comparisons with small numbers."""
        return " ".join(self._arith_statement() for _ in range(self.rng.randint(5, 7)))

    def comparison(self) -> str:
        """Two people side by side: ages (with the difference), towns and jobs."""
        rng = self.rng
        a, b = rng.sample(self.world.people, 2)
        parts: list[str] = [f"{a.name} is {a.age} years old and {b.name} is {b.age} years old."]
        if a.age == b.age:
            parts.append(f"{a.name} and {b.name} are the same age.")
        else:
            old, young = (a, b) if a.age > b.age else (b, a)
            parts.append(
                rng.choice(
                    (
                        f"So {old.name} is older than {young.name}.",
                        f"So {young.name} is younger than {old.name}.",
                        f"{old.name} is {old.age - young.age} years older than {young.name}.",
                    )
                )
            )
        extras: list[str] = []
        if a.town == b.town:
            extras.append(
                rng.choice(
                    (
                        f"{a.name} and {b.name} both live in {a.town}.",
                        f"{a.name} and {b.name} live in the same town, {a.town}.",
                    )
                )
            )
        else:
            extras.append(f"{a.name} lives in {a.town}, but {b.name} lives in {b.town}.")
        if a.job == b.job:
            extras.append(f"{a.name} and {b.name} are both {a.job}s.")
        else:
            extras.append(f"{a.name} is {article(a.job)} and {b.name} is {article(b.job)}.")
        if a.pet == b.pet:
            extras.append(f"{a.name} and {b.name} both have {article(a.pet)}.")
        else:
            extras.append(f"{a.name} has {article(a.pet)} and {b.name} has {article(b.pet)}.")
        rng.shuffle(extras)
        return " ".join(parts + extras[: rng.randint(2, 3)])

    def family(self) -> str:
        """A sibling pair: the relation plus a few facts about each."""
        rng = self.rng
        a = rng.choice(self.with_sibling)
        b = self.world.person(a.sibling)  # type: ignore[arg-type]
        sentences = [self._fact(a, "sibling", use_name=True)]
        sentences.append(
            rng.choice(
                (
                    f"{a.name} is {a.age} years old and {b.name} is {b.age}.",
                    f"{a.name} is {a.age} and {a.possessive} {b.sibling_word} is {b.age}.",
                )
            )
        )
        if a.age != b.age:
            old, young = (a, b) if a.age > b.age else (b, a)
            sentences.append(f"{old.name} is older than {young.name}.")
        if a.town == b.town:
            sentences.append(f"They both live in {a.town}.")
        else:
            sentences.append(f"{a.name} lives in {a.town} and {b.name} lives in {b.town}.")
        extra = rng.choice(("pet", "color", "food", "job"))
        sentences.append(self._fact(b, extra, use_name=True))
        return " ".join(sentences)


def _iter_documents(world: World, seed: int) -> Iterator[str]:
    writer = _Writer(world, random.Random(seed))
    while True:
        yield writer.document()


def generate_documents(world: World, num_docs: int, seed: int) -> list[str]:
    """``num_docs`` short documents about ``world``, fully determined by ``seed``."""
    if num_docs < 0:
        raise ValueError(f"num_docs must be >= 0, got {num_docs}")
    docs = _iter_documents(world, seed)
    return [next(docs) for _ in range(num_docs)]


def stream_seed(seed: int, stream: str) -> int:
    """An independent, platform-stable integer seed per named stream.

    Hashing instead of ``seed + 1`` keeps streams of neighbouring seeds apart (seed 5's
    held-out stream is not seed 6's training stream).
    """
    digest = hashlib.sha256(f"fromscratch:{stream}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def generate_corpus(
    seed: int, num_people: int, num_train_docs: int, num_heldout_docs: int
) -> tuple[World, list[str], list[str]]:
    """Build the world and its (train, held-out) documents.

    The held-out documents come from their own RNG stream, so they are fresh draws from the
    same distribution: same facts, new combinations and phrasings. Any held-out document that
    happens to equal a training document word for word is replaced, so held-out perplexity
    measures generalisation rather than recall of a seen sentence.
    """
    world = build_world(seed, num_people)
    train = generate_documents(world, num_train_docs, stream_seed(seed, "train"))
    seen = set(train)
    heldout: list[str] = []
    stream = _iter_documents(world, stream_seed(seed, "heldout"))
    # Tiny worlds can have few distinct documents; cap the retries rather than loop forever.
    budget = 50 * max(num_heldout_docs, 1)
    duplicates: list[str] = []
    while len(heldout) < num_heldout_docs and budget > 0:
        doc = next(stream)
        budget -= 1
        if doc in seen:
            duplicates.append(doc)
        else:
            heldout.append(doc)
    heldout.extend(duplicates[: num_heldout_docs - len(heldout)])
    return world, train, heldout
