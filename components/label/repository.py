"""Every query the page and the export make, in one place.

``record_vote`` is the one write that matters: it inserts the vote in a single transaction and
lets the database's unique constraints decide between "stored", "this form was already used"
(replay) and "you already voted on this pair" (duplicate), so two concurrent requests can never
both succeed.

``sign_in_attempt`` is the sign-in limit: it reads and updates one client's count of wrong
tokens under a row lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions start
with ``BEGIN IMMEDIATE`` and so run one at a time), so concurrent guesses cannot slip past it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from components.label.db import LoginFailures, Pair, Vote, make_engine


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


@dataclass(frozen=True)
class SignIn:
    """The outcome of one sign-in attempt: ``ok`` (right token, not locked out), ``wrong``
    (counted; ``retry_after`` > 0 when this one locked the client out) or ``locked`` (refused
    without looking at the token; ``retry_after`` seconds left)."""

    OK = "ok"
    WRONG = "wrong"
    LOCKED = "locked"

    outcome: str
    retry_after: int = 0


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

    # -- sign-in limit ------------------------------------------------------------------
    def sign_in_attempt(
        self, client: str, correct: bool, *, max_failures: int, window_s: float, lockout_s: float,
        now: float | None = None,
    ) -> SignIn:
        """Count one sign-in from ``client`` whose token was ``correct`` or not. After
        ``max_failures`` wrong tokens within ``window_s`` seconds the client is locked out for
        ``lockout_s``: every attempt, right token or not, is ``locked`` until then."""
        now = time.time() if now is None else now
        client = client[:100]
        for _ in range(3):  # a concurrent first failure may insert the same client first
            try:
                with self.session() as s, s.begin():
                    row = s.scalar(select(LoginFailures).where(LoginFailures.client == client).with_for_update())
                    if row is not None and row.locked_until > now:
                        return SignIn(SignIn.LOCKED, max(1, math.ceil(row.locked_until - now)))
                    if correct:
                        return SignIn(SignIn.OK)
                    if row is None:
                        # forget clients whose window and lockout are long over
                        s.execute(delete(LoginFailures).where(
                            LoginFailures.locked_until < now, LoginFailures.window_start < now - window_s
                        ))
                        row = LoginFailures(client=client, window_start=now, failures=0, locked_until=0.0)
                        s.add(row)
                    elif now - row.window_start >= window_s:
                        row.window_start, row.failures = now, 0
                    row.failures += 1
                    if row.failures < max_failures:
                        return SignIn(SignIn.WRONG)
                    # locked out; counting starts afresh when the lockout ends
                    row.locked_until = row.window_start = now + lockout_s
                    row.failures = 0
                    return SignIn(SignIn.WRONG, max(1, math.ceil(lockout_s)))
            except IntegrityError:
                continue
        raise RuntimeError(f"could not record a sign-in attempt from {client}")  # pragma: no cover

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
