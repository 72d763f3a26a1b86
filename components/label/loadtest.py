"""A load test of the labelling server on loopback: many labelers voting at once, then a check
that every vote was stored exactly once and as sent.

The server runs in its own process (``python -m components.label.loadtest serve ...``) so the
clients do not share its interpreter; each simulated labeler signs in and then, ``votes`` times,
loads the page (``GET /``: the next pair and its form token) and posts a vote, the way a
browser does. Used by ``benchmarks/label_load.py`` (prints the figures) and by the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from components.label.settings import CHOICES

PAIR_ID = re.compile(r'name="pair_id" value="(\d+)"')
FORM_TOKEN = re.compile(r'name="form_token" value="([^"]+)"')
TOKEN = "load-test-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_pairs(db_url: str, n: int) -> None:
    """``n`` synthetic pairs (the model is not what is measured here)."""
    from components.label.repository import Repository

    Repository.from_url(db_url).add_pairs(
        {
            "batch": "load-test", "position": i, "prompt_id": f"load-{i}",
            "prompt": [{"role": "user", "content": f"Question {i}: where does Anna live?"}],
            "reply_a": f"Anna lives in Rome ({i}).", "reply_b": f"I do not know ({i}).",
            "model_a": "synthetic", "model_b": "synthetic", "sampling": {"mode": "synthetic"},
        }
        for i in range(n)
    )


class Server:
    """The labelling server in a child process, on a free loopback port."""

    def __init__(self, db_url: str, token: str = TOKEN) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "FROMSCRATCH_LABEL_TOKEN": token}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "components.label.loadtest", "serve", "--db", db_url, "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"label server not ready on {self.url} after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LoadResult:
    labelers: int
    votes_each: int
    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"page": [], "vote": []})
    sent: dict[tuple[str, int], str] = field(default_factory=dict)  # (labeler, pair) -> choice
    errors: list[str] = field(default_factory=list)

    @staticmethod
    def percentile(values: list[float], q: float) -> float:
        ordered = sorted(values)
        if not ordered:
            return float("nan")
        k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))  # nearest rank
        return ordered[k]

    def summary(self) -> dict[str, Any]:
        every = self.latencies["page"] + self.latencies["vote"]
        out: dict[str, Any] = {
            "labelers": self.labelers, "votes_each": self.votes_each, "votes_sent": len(self.sent),
            "errors": len(self.errors), "seconds": round(self.seconds, 2),
            "votes_per_s": round(len(self.sent) / self.seconds, 1) if self.seconds else None,
        }
        for name, values in (("vote", self.latencies["vote"]), ("page", self.latencies["page"]), ("all", every)):
            for q in (50, 95, 99):
                out[f"{name}_p{q}_ms"] = round(1000 * self.percentile(values, q), 1)
            out[f"{name}_max_ms"] = round(1000 * max(values), 1) if values else None
        return out


async def _labeler(client, name: str, votes: int, result: LoadResult, rng: random.Random) -> None:
    r = await client.post("/login", data={"name": name, "token": TOKEN})
    if r.status_code != 303:
        result.errors.append(f"{name}: login {r.status_code}")
        return
    for _ in range(votes):
        started = time.perf_counter()
        page = await client.get("/")
        result.latencies["page"].append(time.perf_counter() - started)
        pair, token = PAIR_ID.search(page.text), FORM_TOKEN.search(page.text)
        if page.status_code != 200 or not pair or not token:
            result.errors.append(f"{name}: page {page.status_code} without a pair")
            return
        choice = rng.choice(CHOICES)
        data = {"pair_id": pair.group(1), "form_token": token.group(1), "choice": choice, "comment": f"by {name}"}
        started = time.perf_counter()
        r = await client.post("/vote", data=data)
        result.latencies["vote"].append(time.perf_counter() - started)
        if r.status_code != 303:
            result.errors.append(f"{name}: vote {r.status_code}: {r.text[:200]}")
            continue
        result.sent[(name, int(pair.group(1)))] = choice


async def _run(url: str, labelers: int, votes: int, seed: int) -> LoadResult:
    import httpx

    result = LoadResult(labelers, votes, 0.0)
    limits = httpx.Limits(max_connections=2)
    clients = [httpx.AsyncClient(base_url=url, limits=limits, timeout=60.0) for _ in range(labelers)]
    started = time.perf_counter()
    try:
        await asyncio.gather(*(
            _labeler(c, f"labeler-{i:02d}", votes, result, random.Random(seed + i)) for i, c in enumerate(clients)
        ))
    finally:
        result.seconds = time.perf_counter() - started
        for c in clients:
            await c.aclose()
    return result


def run_load(db_url: str, labelers: int = 20, votes: int = 50, seed: int = 0) -> LoadResult:
    """Seed ``votes + 5`` pairs, serve them, run the labelers concurrently; the DB is left
    for ``check_stored``."""
    seed_pairs(db_url, votes + 5)
    with Server(db_url) as server:
        return asyncio.run(_run(server.url, labelers, votes, seed))


def check_stored(db_url: str, result: LoadResult) -> list[str]:
    """Problems found comparing the database with what was sent (empty = every vote stored
    exactly once, as sent)."""
    from components.label.repository import Repository

    stored: dict[tuple[str, int], str] = {}
    problems = []
    for vote, pair in Repository.from_url(db_url).votes():
        key = (vote.labeler, pair.id)
        if key in stored:
            problems.append(f"vote stored twice: {key}")
        stored[key] = vote.choice
    expected = result.labelers * result.votes_each
    if len(result.sent) != expected:
        problems.append(f"{len(result.sent)} votes accepted, {expected} sent")
    for key, choice in result.sent.items():
        if stored.get(key) != choice:
            problems.append(f"vote {key}: sent {choice}, stored {stored.get(key)}")
    for key in set(stored) - set(result.sent):
        problems.append(f"stored but never accepted: {key}")
    return problems


def _serve(argv: list[str]) -> None:
    import uvicorn

    from components.label.app import create_app
    from components.label.settings import LabelSettings

    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    settings = LabelSettings(db_url=args.db, token=os.environ["FROMSCRATCH_LABEL_TOKEN"])
    uvicorn.run(create_app(settings), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2:])
    else:
        sys.exit("usage: python -m components.label.loadtest serve --db URL --port N")
