"""The labelling page: sign in with the access token and a name, then pick the better reply.

Routes
  GET  /login           the sign-in form
  POST /login           token + name → a signed, HttpOnly session cookie (limited: see below)
  POST /logout          forget the cookie
  GET  /                the next pair for this labeler (or "all done"), with progress
  POST /vote            pair_id + form token + choice (+ comment) → stored once, then back to /
  GET  /healthz         liveness/readiness for Kubernetes (no token needed, shows counts only)

Safety
- Jinja2 autoescapes everything it renders (prompts and replies are model output and user
  data); a Content-Security-Policy allows only the page's own script and style files, so even
  a missed escape could not run an inline script.
- Every state change needs the session cookie (SameSite=Strict) *and* a form token minted for
  this labeler and pair: that is the CSRF defence and the replay defence at once.
- Sign-in is limited per client address: every wrong token is answered after
  ``login_failure_delay_s``, and after ``login_max_failures`` wrong tokens within
  ``login_window_s`` the address is refused with 429 and ``Retry-After`` for
  ``login_lockout_s`` seconds, the right token included. The count lives in the database (one
  row per address, updated under a row lock), so the limit is one limit for all workers and
  replicas sharing the database, and concurrent guesses cannot get past it. The address is
  the TCP peer, or ``X-Forwarded-For`` when the peer is a trusted proxy (uvicorn's
  ``FORWARDED_ALLOW_IPS``); everyone behind one address shares its count.
- A session lasts ``session_ttl_s``: the cookie carries its signed issue time and a keyed
  fingerprint of the token, and the server refuses it when it is older, dated in the future,
  tampered with, or issued under another token. The signing key is ``FROMSCRATCH_LABEL_SECRET``
  or random, never derived from the token.
- Bodies over ``max_body_bytes``, comments over ``max_comment_chars`` and comments or names
  carrying markup are refused with a message, before anything is stored.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from components.label import signing
from components.label.repository import Repository, SignIn, VoteRefused
from components.label.settings import CHOICE_LABELS, CHOICES, LabelSettings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "fromscratch_labeler"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@+-]*$")
# Markup or script in a comment: tags, comments, entities, javascript: URLs, event handlers.
MARKUP = re.compile(r"<[a-zA-Z/!?]|javascript\s*:|&#|&[a-zA-Z]+;|\bon[a-z]+\s*=", re.IGNORECASE)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A request refused with an HTTP status and a message for the person."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


class _Guard(BaseHTTPMiddleware):
    """Refuse oversized bodies before they are read; add the security headers."""

    def __init__(self, app: Any, max_body: int) -> None:
        super().__init__(app)
        self.max_body = max_body

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None:
                response = _plain(411, "length_required", "a Content-Length header is required")
            elif not length.isdigit() or int(length) > self.max_body:
                response = _plain(413, "too_large", f"the request is larger than {self.max_body} bytes")
            else:
                response = await call_next(request)
        else:
            response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response


def _plain(status: int, code: str, message: str) -> Response:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def create_app(settings: LabelSettings, repo: Repository | None = None) -> FastAPI:
    repo = repo or Repository.from_url(settings.db_url)
    key = settings.signing_key
    token_id = settings.token_id
    app = FastAPI(title="fromscratch labelling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.repo = repo
    app.state.settings = settings
    app.add_middleware(_Guard, max_body=settings.max_body_bytes)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    assert templates.env.autoescape, "the labelling templates must autoescape"

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context, status_code=status)

    def refused(request: Request, err: Refused) -> Response:
        log.info("label: refused %s %s: %s", request.method, request.url.path, err.message)
        if "application/json" in request.headers.get("accept", ""):
            response = _plain(err.status, err.code, err.message)
        else:
            response = page(request, "error.html", status=err.status, message=err.message, code=err.code)
        response.headers.update(err.headers)
        return response

    def labeler_of(request: Request) -> str | None:
        return signing.labeler_of(
            key, request.cookies.get(COOKIE), token_id, settings.session_ttl_s, settings.clock_skew_s
        )

    async def form(request: Request) -> dict[str, str]:
        data = await request.form()
        return {k: v for k, v in data.items() if isinstance(v, str)}

    @app.exception_handler(Refused)
    async def _on_refused(request: Request, err: Refused) -> Response:
        return refused(request, err)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        progress = repo.progress("")
        return {"ok": True, "pairs": progress.total_pairs, "votes": progress.total_votes}

    @app.get("/login")
    def login_form(request: Request) -> Response:
        return page(request, "login.html", max_name=settings.max_name_chars)

    @app.post("/login")
    async def login(request: Request) -> Response:
        data = await form(request)
        token, name = data.get("token", ""), data.get("name", "").strip()
        if not token:
            raise Refused(401, "an access token is required", "no_token")
        correct = hmac.compare_digest(token.encode("utf-8"), settings.token.encode("utf-8"))
        client = request.client.host if request.client else "unknown"
        attempt = await run_in_threadpool(
            repo.sign_in_attempt, client, correct, max_failures=settings.login_max_failures,
            window_s=settings.login_window_s, lockout_s=settings.login_lockout_s,
        )
        if attempt.outcome == SignIn.LOCKED:
            log.warning("label: sign-in from %s refused: locked out for %d s", client, attempt.retry_after)
            raise Refused(
                429, f"too many wrong access tokens from your address; try again in {attempt.retry_after} s",
                "locked_out", {"Retry-After": str(attempt.retry_after)},
            )
        if attempt.outcome == SignIn.WRONG:
            await asyncio.sleep(settings.login_failure_delay_s)
            if attempt.retry_after:
                log.warning("label: %s locked out after %d wrong tokens", client, settings.login_max_failures)
                raise Refused(
                    401, f"wrong access token; too many wrong tokens: try again in {attempt.retry_after} s",
                    "bad_token", {"Retry-After": str(attempt.retry_after)},
                )
            raise Refused(401, "wrong access token", "bad_token")
        if not name or len(name) > settings.max_name_chars or not NAME.match(name):
            raise Refused(
                422,
                f"the name must be 1-{settings.max_name_chars} letters, digits, spaces or . _ @ + - "
                "(starting with a letter or digit)",
                "bad_name",
            )
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE, signing.session_cookie(key, name, token_id), httponly=True, samesite="strict",
            secure=settings.cookie_secure, max_age=settings.session_ttl_s,
        )
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/")
    def index(request: Request, voted: int | None = None) -> Response:
        labeler = labeler_of(request)
        if labeler is None:
            return RedirectResponse("/login", status_code=303)
        pair = repo.next_pair(labeler)
        progress = repo.progress(labeler)
        return page(
            request, "label.html", labeler=labeler, pair=pair, progress=progress, voted=voted,
            form_token=signing.form_token(key, pair.id, labeler) if pair else "",
            choices=CHOICE_LABELS, max_comment=settings.max_comment_chars,
        )

    @app.post("/vote")
    async def vote(request: Request) -> Response:
        labeler = labeler_of(request)
        if labeler is None:
            raise Refused(401, "sign in with the access token first", "not_signed_in")
        data = await form(request)
        try:
            pair_id = int(data.get("pair_id", ""))
        except ValueError:
            raise Refused(422, "pair_id must be a whole number", "bad_pair_id") from None
        choice = data.get("choice", "")
        if choice not in CHOICES:
            raise Refused(422, f"choice must be one of {', '.join(CHOICES)}", "bad_choice")
        comment = data.get("comment", "").strip()
        if len(comment) > settings.max_comment_chars:
            raise Refused(
                413, f"the comment has {len(comment)} characters; at most {settings.max_comment_chars} are kept",
                "comment_too_long",
            )
        if MARKUP.search(comment) or CONTROL.search(comment):
            raise Refused(
                422, "comments are plain text: markup, scripts and control characters are not accepted",
                "comment_markup",
            )
        if not await run_in_threadpool(repo.pair_exists, pair_id):
            raise Refused(404, f"there is no pair {pair_id}", VoteRefused.NO_PAIR)
        try:
            token = signing.read_form_token(key, data.get("form_token", ""), settings.form_token_ttl_s)
        except signing.BadSignature:
            raise Refused(403, "this form is invalid or has expired; reload the page", "bad_form_token") from None
        if token.labeler != labeler or token.pair_id != pair_id:
            raise Refused(403, "this form was issued for another pair or person; reload the page", "bad_form_token")
        try:
            await run_in_threadpool(repo.record_vote, pair_id, labeler, choice, comment, token.nonce)
        except VoteRefused as err:
            status = {VoteRefused.NO_PAIR: 404, VoteRefused.REPLAY: 409, VoteRefused.DUPLICATE: 409}[err.reason]
            raise Refused(status, str(err), err.reason) from None
        if "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"stored": True, "pair_id": pair_id, "choice": choice})
        return RedirectResponse(f"/?voted={pair_id}", status_code=303)

    return app
