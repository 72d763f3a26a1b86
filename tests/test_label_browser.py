"""End to end in a real browser: headless Chromium (Debian's package) signs in, labels pairs
with the keyboard shortcuts and a click, and the export holds exactly those choices.

A screenshot of the page lands in /tmp/label-shots/ (for people to look at)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.label.export import write_export
from components.label.loadtest import TOKEN, Server
from components.label.repository import Repository

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path("/tmp/label-shots")

PAIRS = [
    ("Where does Anna live? <script>alert('prompt')</script>", "Anna lives in Rome.", "I do not know. <img src=x onerror=alert(1)>"),
    ("How many cars does Bob have?", "Bob has two cars.", "That is a silly question."),
    ("What is 3 plus 4?", "The answer is 7.", "The answer is 8."),
    ("Name a colour of Bob's car.", "Red.", "Red. I hope that this helps. Thank you for the question."),
    ("Who is older, Anna or Bob?", "Anna is older.", "Ask someone else."),
    ("Where does Carl work?", "Carl works at the bakery.", "Carl works at the"),
]
# (how the person answers, the choice it means): shortcuts 1/2/t/x/b, one click with a comment
ACTIONS = [("key:1", "a"), ("key:2", "b"), ("key:t", "tie"), ("click:a+comment", "a"), ("key:x", "both_bad"), ("key:b", "b")]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is absent (Debian package 'chromium')")
def test_labelling_in_chromium_and_the_export_holds_those_choices(tmp_path):
    from playwright.sync_api import sync_playwright

    db = f"sqlite:///{tmp_path / 'labels.db'}"
    repo = Repository.from_url(db)
    ids = repo.add_pairs(
        {"batch": "browser", "position": i, "prompt_id": f"b{i}", "prompt": [{"role": "user", "content": q}],
         "reply_a": a, "reply_b": b, "model_a": "tiny", "model_b": "tiny", "sampling": {"temperature": 0.8}}
        for i, (q, a, b) in enumerate(PAIRS)
    )
    replies = {pid: (a, b) for pid, (_, a, b) in zip(ids, PAIRS)}
    SHOTS.mkdir(parents=True, exist_ok=True)
    dialogs: list[str] = []
    done: list[tuple[int, str]] = []
    with Server(db) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 860})
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{server.url}/")
        assert page.url.endswith("/login")
        # a wrong token is refused with a message
        page.fill("input[name=name]", "ada")
        page.fill("input[name=token]", "not-the-token")
        page.click("button[type=submit]")
        assert page.inner_text("#error-message") == "wrong access token"
        page.goto(f"{server.url}/login")
        page.fill("input[name=name]", "ada")
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#vote-form")
        page.screenshot(path=str(SHOTS / "label-page.png"), full_page=True)
        for n, (action, choice) in enumerate(ACTIONS):
            pair_id = int(page.get_attribute("#vote-form", "data-pair-id"))
            assert page.inner_text("#mine") == str(n)
            if pair_id == ids[0]:  # the script-carrying pair is shown as text
                assert "<script>alert('prompt')</script>" in page.inner_text("#prompt")
                assert "<img src=x onerror=alert(1)>" in page.inner_text("#reply-b")
            with page.expect_navigation():
                if action.startswith("key:"):
                    page.keyboard.press(action[4:])
                else:
                    page.keyboard.press("c")  # focus the comment; letters typed there are text
                    page.keyboard.type("A is right and brief")
                    page.keyboard.press("Escape")
                    page.click("#choose-a")
            assert page.inner_text("#saved") == f"Saved your vote on pair {pair_id}."
            done.append((pair_id, choice))
        assert page.inner_text("#done h1") == "All done"
        assert page.inner_text("#mine") == str(len(ACTIONS))
        page.screenshot(path=str(SHOTS / "label-done.png"), full_page=True)
        browser.close()

    assert dialogs == []  # nothing the page showed ran as a script
    assert sorted(p for p, _ in done) == ids
    votes = repo.votes()
    assert [(p.id, v.labeler, v.choice) for v, p in votes] == [(p, "ada", c) for p, c in done]
    assert [v.comment for v, _ in votes if v.comment] == ["A is right and brief"]
    result = write_export(repo, str(tmp_path / "prefs.jsonl"))
    expected = [
        (pid, *(replies[pid] if c == "a" else replies[pid][::-1])) for pid, c in sorted(done) if c in ("a", "b")
    ]
    assert [(r["pair_id"], r["chosen"], r["rejected"]) for r in result.records] == expected
    assert len(expected) == 4 and (SHOTS / "label-page.png").stat().st_size > 10_000
