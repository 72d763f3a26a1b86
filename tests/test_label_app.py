"""The labelling server: sign-in, the page, votes, and every kind of bad input it must refuse
without storing anything wrongly."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from components.label import signing
from components.label.app import COOKIE, create_app
from components.label.repository import Repository, VoteRefused
from components.label.settings import LabelSettings

TOKEN = "s3cret-label-token"
SCRIPT_PROMPT = 'Where does Anna live? <script>alert("x")</script> & <b>bold</b>'


def make_pairs(repo: Repository, n: int, batch: str = "t") -> list[int]:
    rows = []
    for i in range(n):
        rows.append({
            "batch": batch, "position": i, "prompt_id": f"p{i}",
            "prompt": [{"role": "user", "content": SCRIPT_PROMPT if i == 0 else f"Question {i}?"}],
            "reply_a": f"Reply A{i} <img src=x onerror=alert(1)>" if i == 0 else f"Reply A{i}",
            "reply_b": f"Reply B{i}", "model_a": "m", "model_b": "m",
            "sampling": {"temperature": 0.8},
        })
    return repo.add_pairs(rows)


@pytest.fixture
def server(tmp_path):
    settings = LabelSettings(db_url=f"sqlite:///{tmp_path / 'labels.db'}", token=TOKEN)
    repo = Repository.from_url(settings.db_url)
    ids = make_pairs(repo, 4)
    client = TestClient(create_app(settings, repo), follow_redirects=False)
    return client, repo, settings, ids


def sign_in(client: TestClient, name: str = "ada") -> None:
    r = client.post("/login", data={"name": name, "token": TOKEN})
    assert r.status_code == 303, r.text
    assert COOKIE in r.cookies or COOKIE in client.cookies


def shown(client: TestClient) -> tuple[int, str]:
    """(pair id, form token) of the pair the page shows now."""
    page = client.get("/")
    assert page.status_code == 200, page.text
    from components.label.loadtest import FORM_TOKEN, PAIR_ID

    return int(PAIR_ID.search(page.text).group(1)), FORM_TOKEN.search(page.text).group(1)


def stored(repo: Repository) -> list[tuple[int, str, str, str]]:
    return [(p.id, v.labeler, v.choice, v.comment) for v, p in repo.votes()]


def test_page_needs_sign_in_and_the_right_token(server):
    client, repo, _, ids = server
    assert client.get("/").headers["location"] == "/login"
    r = client.post("/login", data={"name": "ada"})
    assert r.status_code == 401 and "an access token is required" in r.text
    r = client.post("/login", data={"name": "ada", "token": "wrong-token"})
    assert r.status_code == 401 and "wrong access token" in r.text
    assert COOKIE not in client.cookies
    # a vote without a session, or with a forged cookie, is refused and stores nothing
    r = client.post("/vote", data={"pair_id": ids[0], "choice": "a", "form_token": "x"})
    assert r.status_code == 401 and "sign in with the access token first" in r.text
    forged = signing.session_cookie(b"not-the-key", "mallory")
    r = client.post("/vote", data={"pair_id": ids[0], "choice": "a", "form_token": "x"}, cookies={COOKIE: forged})
    assert r.status_code == 401
    assert stored(repo) == []


def test_names_with_markup_are_refused(server):
    client, *_ = server
    for name in ("<script>alert(1)</script>", "", "a" * 65, "bob\x00"):
        r = client.post("/login", data={"name": name, "token": TOKEN})
        assert r.status_code == 422, name
        assert "the name must be" in r.text and "<script>alert" not in r.text


def test_page_escapes_what_it_shows_and_sets_a_csp(server):
    client, *_ = server
    sign_in(client)
    page = client.get("/")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text and "<b>bold" not in page.text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert "0</strong> labelled by you" in page.text and 'max="4"' in page.text


def test_votes_are_stored_once_with_who_when_and_what(server):
    client, repo, _, ids = server
    sign_in(client, "ada")
    seen = []
    for choice in ("a", "b", "tie", "both_bad"):
        pair_id, token = shown(client)
        seen.append(pair_id)
        r = client.post("/vote", data={"pair_id": pair_id, "form_token": token, "choice": choice, "comment": "ok"})
        assert r.status_code == 303 and r.headers["location"] == f"/?voted={pair_id}"
    assert sorted(seen) == ids  # every pair shown once
    assert "All done" in client.get("/").text
    votes = repo.votes()
    assert [(p.id, v.choice) for v, p in votes] == list(zip(seen, ("a", "b", "tie", "both_bad")))
    assert all(v.labeler == "ada" and v.created_at is not None and v.comment == "ok" for v, _ in votes)


def test_replayed_duplicate_and_unknown_votes_are_refused(server):
    client, repo, settings, ids = server
    sign_in(client, "ada")
    pair_id, token = shown(client)
    form = {"pair_id": pair_id, "form_token": token, "choice": "a"}
    assert client.post("/vote", data=form).status_code == 303
    # the same form again (a replay): refused, still one vote
    r = client.post("/vote", data={**form, "choice": "b"})
    assert r.status_code == 409 and "this form was already submitted" in r.text
    # a fresh form for the same pair (e.g. a second tab): one vote per pair per person
    fresh = signing.form_token(settings.signing_key, pair_id, "ada")
    r = client.post("/vote", data={**form, "form_token": fresh, "choice": "b"})
    assert r.status_code == 409 and f"you already voted on pair {pair_id}" in r.text
    # a pair that does not exist
    ghost = signing.form_token(settings.signing_key, 9999, "ada")
    r = client.post("/vote", data={"pair_id": 9999, "form_token": ghost, "choice": "a"})
    assert r.status_code == 404 and "there is no pair 9999" in r.text
    # a form minted for someone else, or for another pair, or forged, or none at all
    other = next(i for i in ids if i != pair_id)
    bob = signing.form_token(settings.signing_key, other, "bob")
    r = client.post("/vote", data={"pair_id": other, "form_token": bob, "choice": "a"})
    assert r.status_code == 403 and "another pair or person" in r.text
    r = client.post("/vote", data={"pair_id": other, "form_token": token, "choice": "a"})
    assert r.status_code == 403
    r = client.post("/vote", data={"pair_id": other, "form_token": token + "x", "choice": "a"})
    assert r.status_code == 403 and "invalid or has expired" in r.text
    r = client.post("/vote", data={"pair_id": other, "choice": "a"})
    assert r.status_code == 403
    # malformed fields
    r = client.post("/vote", data={"pair_id": "one", "form_token": token, "choice": "a"})
    assert r.status_code == 422 and "pair_id must be a whole number" in r.text
    good = signing.form_token(settings.signing_key, other, "ada")
    r = client.post("/vote", data={"pair_id": other, "form_token": good, "choice": "c"})
    assert r.status_code == 422 and "choice must be one of" in r.text
    assert stored(repo) == [(pair_id, "ada", "a", "")]
    # JSON clients get the same refusals as JSON
    r = client.post("/vote", data={**form, "choice": "b"}, headers={"accept": "application/json"})
    assert r.status_code == 409 and r.json()["error"] == "replay"


def test_oversized_and_script_carrying_text_is_refused(server):
    client, repo, settings, _ = server
    sign_in(client, "ada")
    pair_id, token = shown(client)
    form = {"pair_id": pair_id, "form_token": token, "choice": "a"}
    r = client.post("/vote", data={**form, "comment": "x" * (settings.max_comment_chars + 1)})
    assert r.status_code == 413 and f"at most {settings.max_comment_chars}" in r.text
    for comment in ("<script>alert(1)</script>", "see <img src=x onerror=alert(1)>", "javascript:alert(1)",
                    "&#60;script&#62;", "nul\x00byte"):
        r = client.post("/vote", data={**form, "comment": comment})
        assert r.status_code == 422 and "comments are plain text" in r.text, comment
        assert "<script>alert" not in r.text
    r = client.post("/vote", data={**form, "comment": "y" * (settings.max_body_bytes + 10)})
    assert r.status_code == 413 and "larger than" in r.text
    assert stored(repo) == []
    # plain text with a comparison sign is fine, and the form still works after the refusals
    r = client.post("/vote", data={**form, "comment": "A < B in detail, 2 > 1"})
    assert r.status_code == 303
    assert stored(repo) == [(pair_id, "ada", "a", "A < B in detail, 2 > 1")]


def test_concurrent_submissions_of_one_form_store_one_vote(server):
    _, repo, _, ids = server
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def submit(i: int) -> None:
        barrier.wait()
        try:
            repo.record_vote(ids[1], "ada", "a" if i % 2 else "b", "", "same-nonce")
            outcomes.append("stored")
        except VoteRefused as err:
            outcomes.append(err.reason)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("stored") == 1 and outcomes.count(VoteRefused.REPLAY) == 7
    assert len(repo.votes()) == 1


def test_healthz_needs_no_token_and_shows_only_counts(server):
    client, *_ = server
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"ok": True, "pairs": 4, "votes": 0}
