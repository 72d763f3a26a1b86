"""Every query the page and the export make, in one place.

``record_vote`` is the one write that matters: it inserts the vote in a single transaction and
lets the database's unique constraints decide between "stored", "this form was already used"
(replay) and "you already voted on this pair" (duplicate), so two concurrent requests can never
both succeed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from components.label.db import Pair, Vote, make_engine


@dataclass(frozen=True)
class PairView:
    """A pair as the page shows it."""

    id: int
    prompt: list[dict[str, str]]
    reply_a: str
    reply_b: str


@dataclass(frozen=True)
class Progress:
    mine: int  # votes this labeler cast
    total_pairs: int
    labelled_pairs: int  # pairs with at least one vote (anyone's)
    total_votes: int


class VoteRefused(Exception):
    """A vote the database would not take; ``reason`` is one of the class constants."""

    NO_PAIR = "no_pair"
    REPLAY = "replay"
    DUPLICATE = "duplicate"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Repository:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_url(cls, url: str) -> Repository:
        return cls(make_engine(url))

    def session(self) -> Session:
        return self._session()

    # -- pairs --------------------------------------------------------------------------
    def batch_size(self, batch: str) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).select_from(Pair).where(Pair.batch == batch)) or 0

    def add_pairs(self, rows: Iterable[dict[str, Any]]) -> list[int]:
        """Insert pairs (dicts of ``Pair`` columns; ``prompt``/``sampling`` may be objects)."""
        ids = []
        with self.session() as s, s.begin():
            for row in rows:
                row = dict(row)
                for key in ("prompt", "sampling"):
                    if not isinstance(row.get(key), str):
                        row[key] = json.dumps(row.get(key), ensure_ascii=False)
                pair = Pair(**row)
                s.add(pair)
                s.flush()
                ids.append(pair.id)
        return ids

    def pair_exists(self, pair_id: int) -> bool:
        with self.session() as s:
            return s.get(Pair, pair_id) is not None

    def next_pair(self, labeler: str) -> PairView | None:
        """The pair this labeler has not voted on that has the fewest votes (then the oldest):
        work spreads over the pairs, and with several labelers the overlap that agreement needs
        builds up evenly."""
        with self.session() as s:
            mine = select(Vote.pair_id).where(Vote.labeler == labeler)
            counts = (
                select(Vote.pair_id, func.count(Vote.id).label("n")).group_by(Vote.pair_id).subquery()
            )
            stmt = (
                select(Pair)
                .outerjoin(counts, counts.c.pair_id == Pair.id)
                .where(Pair.id.not_in(mine))
                .order_by(func.coalesce(counts.c.n, 0), Pair.id)
                .limit(1)
            )
            pair = s.scalar(stmt)
            if pair is None:
                return None
            return PairView(pair.id, json.loads(pair.prompt), pair.reply_a, pair.reply_b)

    def progress(self, labeler: str) -> Progress:
        with self.session() as s:
            return Progress(
                mine=s.scalar(select(func.count()).select_from(Vote).where(Vote.labeler == labeler)) or 0,
                total_pairs=s.scalar(select(func.count()).select_from(Pair)) or 0,
                labelled_pairs=s.scalar(select(func.count(func.distinct(Vote.pair_id)))) or 0,
                total_votes=s.scalar(select(func.count()).select_from(Vote)) or 0,
            )

    # -- votes --------------------------------------------------------------------------
    def record_vote(self, pair_id: int, labeler: str, choice: str, comment: str, nonce: str) -> int:
        """Store one vote; raises ``VoteRefused`` (and stores nothing) when the pair does not
        exist, the form's nonce was used before, or this labeler already voted on the pair."""
        with self.session() as s:
            try:
                with s.begin():
                    if s.get(Pair, pair_id) is None:
                        raise VoteRefused(VoteRefused.NO_PAIR, f"there is no pair {pair_id}")
                    vote = Vote(pair_id=pair_id, labeler=labeler, choice=choice, comment=comment, nonce=nonce)
                    s.add(vote)
                    s.flush()
                    return vote.id
            except IntegrityError:
                pass
        # The transaction rolled back; find out which rule it broke.
        with self.session() as s:
            if s.scalar(select(Vote.id).where(Vote.nonce == nonce)) is not None:
                raise VoteRefused(VoteRefused.REPLAY, "this form was already submitted; a vote is counted once")
            if s.scalar(select(Vote.id).where(Vote.pair_id == pair_id, Vote.labeler == labeler)) is not None:
                raise VoteRefused(VoteRefused.DUPLICATE, f"you already voted on pair {pair_id}; one vote per pair per person")
            if s.get(Pair, pair_id) is None:
                raise VoteRefused(VoteRefused.NO_PAIR, f"there is no pair {pair_id}")
        raise RuntimeError(f"vote on pair {pair_id} broke a database constraint")  # pragma: no cover

    def votes(self) -> list[tuple[Vote, Pair]]:
        """Every vote with its pair, oldest first."""
        with self.session() as s:
            rows = s.execute(select(Vote, Pair).join(Pair, Vote.pair_id == Pair.id).order_by(Vote.id)).all()
            return [(v, p) for v, p in rows]
