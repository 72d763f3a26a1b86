"""A small synthetic world whose facts the default pre-training corpus teaches.

The world is deliberately tiny and closed: a few dozen people, ten towns, and a handful of
attributes drawn from short fixed lists. That makes every fact checkable (a later stage can
ask "Where does Mira live?" and grade the answer against this object) and keeps the
vocabulary small enough that a ~2M-parameter model can learn it in minutes on a CPU.

Everything is derived from a seed through a private ``random.Random`` so the same seed gives
the same world on every machine and in every stage; the world is also serialisable
(``to_dict``/``from_dict``) so a stage can store the exact world next to the data it made.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

# "Mira" must stay first: it is always person #0, so the fixed sample prompt "Mira lives in"
# names someone who exists in every generated world. Names are short, distinct, and none is
# also an ordinary word in the corpus (no "Rose", "Wren", "Hope"), so a name token always
# means a person.
FEMALE_NAMES: tuple[str, ...] = (
    "Mira", "Anna", "Lena", "Nora", "Ella", "Ruby", "Lily", "Zoe", "Maya", "Ada",
    "Iris", "Cora", "Lucy", "Emma", "Sara", "Tara", "Nina", "Alma", "Vera", "Edna",
    "Greta", "Hana", "Ines", "Jana", "Kira", "Lara", "Mina", "Nell", "Olga", "Pia",
    "Rita", "Sofia", "Tess", "Yara", "Zara", "Dina", "Elsa", "Gina", "Ida", "Leah",
    "Maren", "Nadia", "Petra", "Rhea", "Selma",
)
MALE_NAMES: tuple[str, ...] = (
    "Tom", "Ben", "Sam", "Leo", "Max", "Finn", "Jack", "Owen", "Adam", "Eli",
    "Hugo", "Ivan", "Joel", "Karl", "Liam", "Milo", "Noah", "Omar", "Paul", "Raul",
    "Seth", "Theo", "Umar", "Victor", "Wade", "Yuri", "Zane", "Dan", "Ezra", "Felix",
    "Gus", "Hal", "Igor", "Jon", "Kai", "Luke", "Marco", "Ned", "Oscar", "Pete",
    "Sid", "Tim", "Abel", "Bruno", "Carl",
)
# Gender is only recorded so pronouns ("she"/"he", "her"/"his") stay consistent.
NAME_GENDER: dict[str, str] = {
    **{name: "female" for name in FEMALE_NAMES},
    **{name: "male" for name in MALE_NAMES},
}
ALL_NAMES: tuple[str, ...] = FEMALE_NAMES + MALE_NAMES

TOWN_NAMES: tuple[str, ...] = (
    "Oakdale", "Riverton", "Pinehill", "Millbrook", "Fairview",
    "Greenwood", "Redcliff", "Ashford", "Brookside", "Sunvale",
)
# Bare nouns; ``article()`` adds "a"/"an" when a sentence needs one.
TOWN_FEATURES: tuple[str, ...] = (
    "river", "bridge", "market", "castle", "lake", "mill",
    "harbour", "tower", "forest", "library", "farm", "garden",
)
# Five regions for ten towns, two towns each, so every town has a region partner to mention.
REGIONS: tuple[str, ...] = ("north", "south", "east", "west", "middle")

JOBS: tuple[str, ...] = (
    "baker", "farmer", "teacher", "doctor", "fisher", "builder", "painter", "nurse",
    "cook", "tailor", "miller", "singer", "driver", "gardener", "potter", "smith",
)
PETS: tuple[str, ...] = (
    "cat", "dog", "rabbit", "fish", "bird", "horse", "goat", "duck", "mouse", "turtle",
)
COLORS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "purple", "orange", "pink", "white", "black", "brown",
)
FOODS: tuple[str, ...] = (
    "bread", "soup", "rice", "cake", "cheese", "eggs", "pie", "beans", "apples", "noodles",
)

MIN_AGE = 18
MAX_AGE = 70
# Share of people who get a sibling; siblings come in pairs, so the relation is symmetric.
SIBLING_SHARE = 0.5


def article(noun: str) -> str:
    """``noun`` with "a" or "an", so templates never say "a apple" or "an baker"."""
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


@dataclass(frozen=True)
class Person:
    """One inhabitant. Every field is a fact the corpus states and a later task can ask about.

    ``gender`` exists only to pick pronouns consistently; ``sibling`` is another person's name
    (symmetric: if A's sibling is B then B's sibling is A) or ``None``.
    """

    name: str
    gender: str
    town: str
    job: str
    pet: str
    color: str
    food: str
    age: int
    sibling: str | None = None

    @property
    def pronoun(self) -> str:
        """Subject pronoun "she"/"he" (lower case; capitalise at the start of a sentence)."""
        return "she" if self.gender == "female" else "he"

    @property
    def object_pronoun(self) -> str:
        """"her"/"him"."""
        return "her" if self.gender == "female" else "him"

    @property
    def possessive(self) -> str:
        """"her"/"his"."""
        return "her" if self.gender == "female" else "his"

    @property
    def sibling_word(self) -> str:
        """What this person is to their sibling: "sister" or "brother"."""
        return "sister" if self.gender == "female" else "brother"


@dataclass(frozen=True)
class Town:
    """A town with one notable feature (bare noun, e.g. "river") and a compass region."""

    name: str
    feature: str
    region: str


@dataclass(frozen=True)
class World:
    """The whole closed world: the single source of truth for every generated text and task."""

    people: tuple[Person, ...]
    towns: tuple[Town, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, so a stage can store the world beside the corpus it made."""
        return {
            "people": [asdict(p) for p in self.people],
            "towns": [asdict(t) for t in self.towns],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "World":
        """Inverse of ``to_dict``; a missing or unknown key raises ``TypeError``/``KeyError``."""
        return cls(
            people=tuple(Person(**p) for p in d["people"]),
            towns=tuple(Town(**t) for t in d["towns"]),
        )

    def person(self, name: str) -> Person:
        """Look a person up by name; ``KeyError`` names the missing person."""
        for p in self.people:
            if p.name == name:
                return p
        raise KeyError(f"no person named {name!r} in this world")

    def town(self, name: str) -> Town:
        """Look a town up by name; ``KeyError`` names the missing town."""
        for t in self.towns:
            if t.name == name:
                return t
        raise KeyError(f"no town named {name!r} in this world")

    def residents(self, town: str) -> tuple[Person, ...]:
        """People living in ``town``, in world order (deterministic)."""
        return tuple(p for p in self.people if p.town == town)


def build_world(seed: int, num_people: int) -> World:
    """Draw a world from ``seed``: same seed and size, same world, on any machine.

    Mira is always person #0 (see ``FEMALE_NAMES``); the other names are a seeded sample of
    the rest of the list. Attributes are drawn independently, so facts cannot be guessed from
    one another and the model has to memorise them.
    """
    if num_people < 1:
        raise ValueError(f"num_people must be at least 1, got {num_people}")
    if num_people > len(ALL_NAMES):
        raise ValueError(
            f"num_people={num_people} exceeds the {len(ALL_NAMES)} names available"
        )
    rng = random.Random(seed)

    regions = [REGIONS[i // 2] for i in range(len(TOWN_NAMES))]
    rng.shuffle(regions)
    features = rng.sample(TOWN_FEATURES, len(TOWN_NAMES))
    towns = tuple(
        Town(name=name, feature=feature, region=region)
        for name, feature, region in zip(TOWN_NAMES, features, regions)
    )

    others = [n for n in ALL_NAMES if n != "Mira"]
    names = ["Mira"] + rng.sample(others, num_people - 1)

    # Pair up a shuffled subset of people as siblings.
    order = list(range(num_people))
    rng.shuffle(order)
    num_pairs = int(num_people * SIBLING_SHARE) // 2
    sibling_of: dict[str, str] = {}
    for k in range(num_pairs):
        a, b = names[order[2 * k]], names[order[2 * k + 1]]
        sibling_of[a], sibling_of[b] = b, a

    people = tuple(
        Person(
            name=name,
            gender=NAME_GENDER[name],
            town=rng.choice(TOWN_NAMES),
            job=rng.choice(JOBS),
            pet=rng.choice(PETS),
            color=rng.choice(COLORS),
            food=rng.choice(FOODS),
            age=rng.randint(MIN_AGE, MAX_AGE),
            sibling=sibling_of.get(name),
        )
        for name in names
    )
    return World(people=people, towns=towns)
