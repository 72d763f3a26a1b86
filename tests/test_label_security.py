"""The labelling page against a hostile but honest user (issue #24, item 7): token guessing is
slowed and then refused per client address, sessions expire, cookies cannot be back- or
forward-dated or edited, and the signing key cannot be worked out from the access token."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from components.label import signing
from components.label.app import COOKIE, create_app
from components.label import repository
from components.label.repository import Repository
from components.label.settings import LabelSettings
from tests.test_label_app import TOKEN, make_pairs

LIMITS = {"login_max_failures": 5, "login_window_s": 600, "login_lockout_s": 900, "login_failure_delay_s": 0}


def label_settings(**fields) -> LabelSettings:
    """Settings with the fields this version of ``LabelSettings`` has: the tests then fail on
    what the page does, not on a missing field, when run against code without the limits."""
    return LabelSettings(**{k: v for k, v in fields.items() if k in LabelSettings.model_fields})


def make_server(tmp_path, client=("198.51.100.7", 4000), **overrides):
    settings = label_settings(db_url=f"sqlite:///{tmp_path / 'labels.db'}", token=TOKEN, **{**LIMITS, **overrides})
    repo = Repository.from_url(settings.db_url)
    ids = make_pairs(repo, 2)
    app = create_app(settings, repo)
    return TestClient(app, follow_redirects=False, client=client), app, repo, settings, ids


def login(client: TestClient, token: str, name: str = "ada"):
    return client.post("/login", data={"name": name, "token": token})


# -- guessing the token -------------------------------------------------------------------
def test_wrong_tokens_lock_the_address_out_and_then_the_right_token_is_refused_too(tmp_path):
    client, app, *_ = make_server(tmp_path)
    for i in range(4):
        r = login(client, f"guess-{i}")
        assert r.status_code == 401 and "wrong access token" in r.text and "retry-after" not in r.headers
    r = login(client, "guess-4")  # the fifth wrong token locks the address out
    assert r.status_code == 401 and r.headers["retry-after"] == "900"
    for token in ("guess-5", TOKEN):  # from now on nothing is even checked
        r = login(client, token)
        assert r.status_code == 429, (token, r.status_code, r.text)
        assert 890 <= int(r.headers["retry-after"]) <= 900 and "too many wrong access tokens" in r.text
        assert COOKIE not in r.cookies and COOKIE not in client.cookies
    r = client.post("/login", data={"name": "ada", "token": TOKEN}, headers={"accept": "application/json"})
    assert r.status_code == 429 and r.json()["error"] == "locked_out" and "retry-after" in r.headers
    assert client.get("/").headers["location"] == "/login"
    # another address is not locked out by this one
    other = TestClient(app, follow_redirects=False, client=("203.0.113.9", 4000))
    assert login(other, TOKEN).status_code == 303


def test_two_hundred_concurrent_guesses_get_only_the_limit_checked(tmp_path):
    client, *_ = make_server(tmp_path)
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def guess(worker: int) -> None:
        barrier.wait()
        for i in range(20):
            status = login(client, f"guess-{worker}-{i}").status_code
            with lock:
                statuses.append(status)

    with client:  # one event loop for every thread's requests
        threads = [threading.Thread(target=guess, args=(w,)) for w in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counts = Counter(statuses)
        assert counts == {401: LIMITS["login_max_failures"], 429: 200 - LIMITS["login_max_failures"]}, counts
        r = login(client, TOKEN)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0


def test_every_wrong_token_is_answered_after_a_pause(tmp_path, monkeypatch):
    import components.label.app as app_module

    pauses: list[float] = []

    async def record(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(app_module.asyncio, "sleep", record)
    client, *_ = make_server(tmp_path, login_failure_delay_s=0.75)
    assert login(client, "wrong-1").status_code == 401
    assert login(client, TOKEN).status_code == 303
    assert pauses == [0.75]


def test_the_count_resets_after_the_window_and_the_lockout_ends(tmp_path):
    repo = Repository.from_url(f"sqlite:///{tmp_path / 'labels.db'}")
    limits = {"max_failures": 3, "window_s": 60, "lockout_s": 300}
    t0 = 1_000_000.0
    attempt = lambda correct, at, client="10.0.0.1": repo.sign_in_attempt(client, correct, now=at, **limits)  # noqa: E731
    # two wrong, then the window passes: two more are not enough to lock out
    assert attempt(False, t0).outcome == repository.SignIn.WRONG
    assert attempt(False, t0 + 1) == repository.SignIn(repository.SignIn.WRONG)
    assert attempt(False, t0 + 61) == repository.SignIn(repository.SignIn.WRONG)
    assert attempt(False, t0 + 62) == repository.SignIn(repository.SignIn.WRONG)
    assert attempt(False, t0 + 63) == repository.SignIn(repository.SignIn.WRONG, 300)  # third within the window
    assert attempt(True, t0 + 64) == repository.SignIn(repository.SignIn.LOCKED, 299)
    assert attempt(True, t0 + 362) == repository.SignIn(repository.SignIn.LOCKED, 1)
    assert attempt(True, t0 + 1, client="10.0.0.2") == repository.SignIn(repository.SignIn.OK)
    # after the lockout: the right token works, and wrong ones count from zero again
    assert attempt(True, t0 + 363) == repository.SignIn(repository.SignIn.OK)
    assert attempt(False, t0 + 364) == repository.SignIn(repository.SignIn.WRONG)
    assert attempt(False, t0 + 365) == repository.SignIn(repository.SignIn.WRONG)


def test_concurrent_guesses_at_the_repository_never_pass_the_limit(tmp_path):
    repo = Repository.from_url(f"sqlite:///{tmp_path / 'labels.db'}")
    outcomes: list = []
    barrier = threading.Barrier(16)

    def guess() -> None:
        barrier.wait()
        for _ in range(5):
            outcomes.append(repo.sign_in_attempt("10.9.9.9", False, max_failures=7, window_s=600, lockout_s=600))

    threads = [threading.Thread(target=guess) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checked = [o for o in outcomes if o.outcome == repository.SignIn.WRONG]
    assert len(checked) == 7 and sum(1 for o in checked if o.retry_after) == 1
    assert sum(o.outcome == repository.SignIn.LOCKED for o in outcomes) == 80 - 7


# -- sessions -----------------------------------------------------------------------------
def _session(client: TestClient) -> str:
    assert login(client, TOKEN).status_code == 303
    cookie = client.cookies[COOKIE]
    client.cookies.clear()
    return cookie


def _signed_in_as(client: TestClient, cookie: str) -> bool:
    r = client.get("/", cookies={COOKIE: cookie})
    return r.status_code == 200 and "labelled by you" in r.text


def _vote_refused(client: TestClient, settings: LabelSettings, cookie: str, pair_id: int) -> bool:
    form = signing.form_token(settings.signing_key, pair_id, "ada")
    r = client.post("/vote", data={"pair_id": pair_id, "form_token": form, "choice": "a"}, cookies={COOKIE: cookie})
    return r.status_code == 401


def _redated(settings: LabelSettings, cookie: str, at: int) -> str:
    payload = signing.unsign(settings.signing_key, "session", cookie)
    return signing.sign(settings.signing_key, "session", {**payload, "at": at})


def test_a_session_expires(tmp_path):
    client, _, repo, settings, ids = make_server(tmp_path, session_ttl_s=3600)
    cookie = _session(client)
    assert _signed_in_as(client, cookie)
    now = int(time.time())
    for at in (now - 3600 - 30, 0):  # an hour and a bit ago; 1970
        old = _redated(settings, cookie, at)
        assert not _signed_in_as(client, old), at
        assert _vote_refused(client, settings, old, ids[0]), at
    assert _signed_in_as(client, _redated(settings, cookie, now - 3500))  # still inside the hour
    assert repo.votes() == []
    # the browser is told to drop it at the same age
    assert "Max-Age=3600" in login(client, TOKEN).headers["set-cookie"]


def test_future_dated_tampered_and_foreign_cookies_are_refused(tmp_path):
    client, _, repo, settings, ids = make_server(tmp_path)
    cookie = _session(client)
    future = _redated(settings, cookie, int(time.time()) + 3600)
    assert not _signed_in_as(client, future) and _vote_refused(client, settings, future, ids[0])
    assert _signed_in_as(client, _redated(settings, cookie, int(time.time()) + 5))  # small clock skew is fine
    # edited without the key: another name, another date, a broken signature
    body, mac = cookie.split(".")
    payload = signing.unsign(settings.signing_key, "session", cookie)
    for edit in ({"labeler": "mallory"}, {"at": int(time.time()) + 10}):
        forged_body = signing._b64(json.dumps({**payload, **edit}, separators=(",", ":"), sort_keys=True).encode())
        assert not _signed_in_as(client, f"{forged_body}.{mac}"), edit
    assert not _signed_in_as(client, f"{body}.{mac[:-2]}AA")
    assert not _signed_in_as(client, f"{body}.{mac}.x")
    # signed with the right key, but missing its date or made under another token
    key = settings.signing_key
    assert not _signed_in_as(client, signing.sign(key, "session", {"labeler": "ada", "tk": payload["tk"]}))
    assert not _signed_in_as(client, signing.sign(key, "session", {**payload, "at": str(payload["at"])}))
    assert not _signed_in_as(client, signing.sign(key, "session", {**payload, "tk": "0" * 16}))
    assert repo.votes() == []


def test_a_new_token_signs_everyone_out(tmp_path):
    secret = "a-shared-secret-of-replicas"
    client, _, repo, settings, ids = make_server(tmp_path, secret=secret)
    cookie = _session(client)
    same = label_settings(db_url=settings.db_url, token=TOKEN, secret=secret, **LIMITS)
    renewed = label_settings(db_url=settings.db_url, token="a-new-access-token", secret=secret, **LIMITS)
    assert _signed_in_as(TestClient(create_app(same, repo), follow_redirects=False), cookie)  # a replica
    assert not _signed_in_as(TestClient(create_app(renewed, repo), follow_redirects=False), cookie)


# -- the signing key ----------------------------------------------------------------------
def test_the_signing_key_is_not_derived_from_the_token(tmp_path):
    a, b = LabelSettings(token=TOKEN), LabelSettings(token=TOKEN)
    derivable = {hashlib.sha256(f"{prefix}{TOKEN}".encode()).digest()
                 for prefix in ("", "fromscratch-label:", "fromscratch-label-secret:")}
    assert a.signing_key not in derivable and a.signing_key != TOKEN.encode()
    assert a.signing_key != b.signing_key and len(a.signing_key) == 32  # random per instance
    assert a.signing_key == a.signing_key  # and stable within it
    # a cookie made with a key computed from the token (the old scheme) signs nobody in
    client, _, _, settings, _ = make_server(tmp_path)
    cookie = _session(client)
    payload = signing.unsign(settings.signing_key, "session", cookie)
    for key in derivable:
        assert not _signed_in_as(client, signing.sign(key, "session", payload))
    # the cookie holds nothing computed from the token without the key
    assert TOKEN not in str(payload) and payload["tk"] != hashlib.sha256(TOKEN.encode()).hexdigest()[:16]
    # a configured secret is what replicas share: same secret, same key; a short one is refused
    s1 = LabelSettings(token=TOKEN, secret="x" * 32)
    assert s1.signing_key == LabelSettings(token="other-token", secret="x" * 32).signing_key
    assert s1.signing_key not in derivable
    with pytest.raises(ValidationError, match="at least 16 characters"):
        LabelSettings(token=TOKEN, secret="short")


def test_serve_passes_the_limits_and_the_secret_to_the_page(tmp_path, monkeypatch, capsys):
    import uvicorn

    from pipelines.cli import build_parser

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.setenv("FROMSCRATCH_LABEL_TOKEN", TOKEN)
    monkeypatch.delenv("FROMSCRATCH_LABEL_SECRET", raising=False)
    argv = ["label", "serve", "--db", f"sqlite:///{tmp_path / 'l.db'}", "--cookie-secure", "--session-ttl-s", "600",
            "--login-max-failures", "4", "--login-window-s", "30", "--login-lockout-s", "120"]
    args = build_parser().parse_args(argv)
    assert args.fn(args) == 0
    settings = served["app"].state.settings
    assert (settings.cookie_secure, settings.session_ttl_s, settings.login_max_failures,
            settings.login_window_s, settings.login_lockout_s, settings.secret) == (True, 600, 4, 30, 120, "")
    assert "signing key: random for this process" in capsys.readouterr().out
    monkeypatch.setenv("FROMSCRATCH_LABEL_SECRET", "k" * 20)
    assert args.fn(args) == 0
    assert served["app"].state.settings.secret == "k" * 20
