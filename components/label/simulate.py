"""A simulated labeler: scripted people who vote through the real page, over HTTP, with a
stated taste, so a test of the whole loop knows what "better" means.

Each simulated person signs in like a browser (``POST /login``), then until the page says
"all done": loads the next pair (``GET /``: prompt, both replies and the form token), judges the
two replies by its ``prefer`` rule and posts the vote (``POST /vote``). Loopback only: the
server is started on 127.0.0.1 by ``label_pairs_over_http`` and stopped afterwards.

Tastes (the rule is the ground truth the next run's reward model is measured against):

- ``shorter``: the reply with fewer words is better (equal length: a tie)
- ``longer``:  the reply with more words is better (equal length: a tie)
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from components.label.loadtest import FORM_TOKEN, PAIR_ID, Server

REPLY = re.compile(r'<div class="reply" id="reply-(a|b)"><h3>[AB]</h3><pre>(.*?)</pre></div>', re.DOTALL)
PREFERENCES = ("shorter", "longer")


def judge(prefer: str, reply_a: str, reply_b: str) -> str:
    """The simulated person's choice between two replies: ``a``, ``b`` or ``tie``."""
    if prefer not in PREFERENCES:
        raise ValueError(f"unknown taste {prefer!r}; one of {', '.join(PREFERENCES)}")
    la, lb = len(reply_a.split()), len(reply_b.split())
    if la == lb:
        return "tie"
    shorter_wins = prefer == "shorter"
    return "a" if (la < lb) == shorter_wins else "b"


@dataclass
class LabelingResult:
    votes: dict[tuple[str, int], str] = field(default_factory=dict)  # (labeler, pair id) -> choice
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.votes.values()))


def vote_until_done(url: str, token: str, name: str, prefer: str, result: LabelingResult,
                    max_votes: int | None = None, judge_fn: Callable[[str, str, str], str] = judge) -> None:
    """One simulated person, signed in as ``name``, votes on every pair the page offers."""
    import httpx

    with httpx.Client(base_url=url, timeout=120.0) as client:
        r = client.post("/login", data={"name": name, "token": token})
        if r.status_code != 303:
            result.errors.append(f"{name}: sign-in answered {r.status_code}")
            return
        cast = 0
        while max_votes is None or cast < max_votes:
            page = client.get("/")
            pair, form = PAIR_ID.search(page.text), FORM_TOKEN.search(page.text)
            if page.status_code != 200:
                result.errors.append(f"{name}: page answered {page.status_code}")
                return
            if not pair or not form:
                return  # all done
            replies = {side: html.unescape(text) for side, text in REPLY.findall(page.text)}
            if set(replies) != {"a", "b"}:
                result.errors.append(f"{name}: pair {pair.group(1)} without both replies")
                return
            choice = judge_fn(prefer, replies["a"], replies["b"])
            r = client.post("/vote", data={"pair_id": pair.group(1), "form_token": form.group(1),
                                           "choice": choice, "comment": f"simulated ({prefer})"})
            if r.status_code != 303:
                result.errors.append(f"{name}: vote on pair {pair.group(1)} answered {r.status_code}: {r.text[:200]}")
                return
            result.votes[(name, int(pair.group(1)))] = choice
            cast += 1


def label_pairs_over_http(db_url: str, prefer: str, labelers: int = 1, token: str = "simulated-labelers-token",
                          max_votes: int | None = None) -> LabelingResult:
    """Serve ``db_url``'s pairs on a loopback port and let ``labelers`` simulated people vote
    on all of them, one after the other (the page gives each person every pair once)."""
    result = LabelingResult()
    with Server(db_url, token) as server:
        for i in range(labelers):
            vote_until_done(server.url, token, f"sim-{prefer}-{i}", prefer, result, max_votes)
    return result
