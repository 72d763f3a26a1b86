"""The two tables: pairs shown to labelers, and the votes they cast.

A pair keeps everything needed to judge and reproduce it: the prompt (chat messages), both
replies, which model (spec and resolved checkpoint) wrote each side, and the sampling
settings. A vote keeps who cast it, when, the choice and an optional comment. The database
enforces the rules the page promises:

- one vote per pair per person: unique ``(pair_id, labeler)``
- one vote per shown form: unique ``nonce`` (the form token's random part), so a replayed POST
  is refused even where the pair/labeler constraint would not tell a replay from a re-vote
- a vote names an existing pair: foreign key (SQLite enforces it with ``PRAGMA foreign_keys``)
- the choice is one of four: a CHECK constraint

A third table counts wrong access tokens per client address (``label_login_failures``), so
the sign-in limit holds across every worker and replica that shares the database.

SQLite is the default (WAL, a busy timeout and ``BEGIN IMMEDIATE`` so concurrent writers queue
instead of failing); PostgreSQL is used by URL on a cluster.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from components.data_prep.votes import PAIRS_TABLE, VOTES_TABLE
from components.label.settings import CHOICES


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Pair(Base):
    __tablename__ = PAIRS_TABLE
    __table_args__ = (UniqueConstraint("batch", "position", name="uq_pair_batch_position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Pairs generated together (same models, prompts and settings) share a batch key, so a
    # restarted server does not sample the same pairs again.
    batch: Mapped[str] = mapped_column(String(64), index=True)
    position: Mapped[int] = mapped_column(Integer)
    prompt_id: Mapped[str] = mapped_column(String(200))
    prompt: Mapped[str] = mapped_column(Text)  # JSON list of chat messages, without the reply
    reply_a: Mapped[str] = mapped_column(Text)
    reply_b: Mapped[str] = mapped_column(Text)
    model_a: Mapped[str] = mapped_column(String(500))
    model_b: Mapped[str] = mapped_column(String(500))
    checkpoint_a: Mapped[str] = mapped_column(String(1000), default="")
    checkpoint_b: Mapped[str] = mapped_column(String(1000), default="")
    sampling: Mapped[str] = mapped_column(Text)  # JSON: temperature, top_p, max_new_tokens, seeds
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    votes: Mapped[list[Vote]] = relationship(back_populates="pair")


class Vote(Base):
    __tablename__ = VOTES_TABLE
    __table_args__ = (
        UniqueConstraint("pair_id", "labeler", name="uq_vote_pair_labeler"),
        UniqueConstraint("nonce", name="uq_vote_nonce"),
        CheckConstraint(f"choice IN ({', '.join(repr(c) for c in CHOICES)})", name="ck_vote_choice"),
        Index("ix_vote_labeler", "labeler"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pair_id: Mapped[int] = mapped_column(ForeignKey("label_pairs.id", ondelete="RESTRICT"))
    labeler: Mapped[str] = mapped_column(String(200))
    choice: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    nonce: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    pair: Mapped[Pair] = relationship(back_populates="votes")


class LoginFailures(Base):
    """Wrong access tokens from one client address: how many since ``window_start`` and, once
    there were too many, until when every sign-in from it is refused (epoch seconds)."""

    __tablename__ = "label_login_failures"

    client: Mapped[str] = mapped_column(String(100), primary_key=True)
    window_start: Mapped[float] = mapped_column(Float)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[float] = mapped_column(Float, default=0.0, index=True)


def _sqlite_pragmas(engine: Engine) -> None:
    """Foreign keys on; WAL so readers never wait for the writer; writers queue on a busy
    timeout; every transaction takes the write lock up front (``BEGIN IMMEDIATE``), because a
    deferred one that reads first and writes later can fail with SQLITE_BUSY instead of waiting."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # pragma: no cover - exercised via engine
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below emits BEGIN
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # pragma: no cover - exercised via engine
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the tables created (idempotent)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20)
        _sqlite_pragmas(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    Base.metadata.create_all(engine)
    return engine
