"""Signed values: the session cookie (who is labelling) and the per-form vote token.

Both are ``<base64 JSON payload>.<base64 HMAC-SHA256>`` with the server's key, so nothing is
kept in server memory (replicas and restarts agree) and nobody without the key can mint one.

A session cookie carries the time it was issued and a keyed fingerprint of the access token;
the server refuses one that is too old, dated in the future, or issued under another token.

A form token binds one shown pair to one labeler and carries a random nonce. The vote stores
the nonce under a unique constraint, so the same form submitted twice (a replay, a double
click, a resent request) is refused by the database, and a token minted for one labeler or
pair is useless for another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any


class BadSignature(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, purpose: str, payload: dict[str, Any]) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    mac = hmac.new(key, f"{purpose}.{body}".encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(key: bytes, purpose: str, value: str) -> dict[str, Any]:
    try:
        body, mac = value.split(".")
        expected = hmac.new(key, f"{purpose}.{body}".encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(mac)):
            raise BadSignature("bad signature")
        payload = json.loads(_unb64(body))
    except (ValueError, UnicodeError) as err:  # json and base64 errors are ValueErrors too
        raise BadSignature(str(err)) from err
    if not isinstance(payload, dict):
        raise BadSignature("not an object")
    return payload


# -- the session cookie -------------------------------------------------------------------
def session_cookie(key: bytes, labeler: str, token_id: str = "", at: int | None = None) -> str:
    """A session for ``labeler``, issued at ``at`` (now by default) under the token ``token_id``."""
    return sign(key, "session", {"labeler": labeler, "at": int(time.time()) if at is None else at, "tk": token_id})


def labeler_of(
    key: bytes, cookie: str | None, token_id: str = "", max_age_s: int = 12 * 3600, skew_s: int = 60
) -> str | None:
    """Who the cookie signs in, or None when it is missing, forged, issued under another token,
    older than ``max_age_s`` or dated more than ``skew_s`` seconds in the future."""
    if not cookie:
        return None
    try:
        payload = unsign(key, "session", cookie)
    except BadSignature:
        return None
    labeler, at = payload.get("labeler"), payload.get("at")
    if not isinstance(labeler, str) or not labeler or type(at) is not int:
        return None
    if not hmac.compare_digest(str(payload.get("tk", "")).encode("utf-8"), token_id.encode("utf-8")):
        return None
    age = time.time() - at
    if age > max_age_s or age < -skew_s:
        return None
    return labeler


# -- the form token -----------------------------------------------------------------------
@dataclass(frozen=True)
class FormToken:
    pair_id: int
    labeler: str
    nonce: str
    issued_at: int


def form_token(key: bytes, pair_id: int, labeler: str) -> str:
    return sign(key, "vote", {"p": pair_id, "l": labeler, "n": secrets.token_hex(16), "t": int(time.time())})


def read_form_token(key: bytes, value: str, max_age_s: int) -> FormToken:
    """The token's content; ``BadSignature`` when forged, malformed or older than ``max_age_s``."""
    payload = unsign(key, "vote", value)
    try:
        token = FormToken(int(payload["p"]), str(payload["l"]), str(payload["n"]), int(payload["t"]))
    except (KeyError, TypeError, ValueError) as err:
        raise BadSignature(f"incomplete form token: {err}") from err
    if time.time() - token.issued_at > max_age_s:
        raise BadSignature("expired")
    return token
