"""What the labelling server needs to know: where votes go, who may vote, and the limits.

The access token and the signing secret come from the environment on a cluster (a Secret);
flags override them locally. Without any token the CLI makes a random one and prints it, so
the page is never open to anyone who can reach the port.

The signing key is never derived from the token: a stolen cookie must not let anyone test
token guesses offline. It is ``FROMSCRATCH_LABEL_SECRET`` when set (the Helm chart generates
one and keeps it across upgrades, so replicas and restarts agree), else random bytes made
when the settings are built: sessions and shown forms then last as long as that process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

TOKEN_ENV = "FROMSCRATCH_LABEL_TOKEN"
SECRET_ENV = "FROMSCRATCH_LABEL_SECRET"
DB_ENV = "FROMSCRATCH_LABEL_DB"
DEFAULT_DB = "sqlite:///fromscratch-labels.db"

CHOICES = ("a", "b", "tie", "both_bad")
CHOICE_LABELS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad"}


class LabelSettings(BaseModel):
    """Settings of one labelling server (and of the export, which only needs ``db_url``)."""

    model_config = ConfigDict(extra="forbid")

    db_url: str = Field(default=DEFAULT_DB, description="SQLAlchemy URL: sqlite:///file.db or postgresql://...")
    token: str = Field(min_length=8, description="The access token a labeler types at sign-in.")
    secret: str = Field(
        default="",
        description="Key of the signed cookie and form tokens (at least 16 characters); empty = "
        "random bytes for this process only (never derived from the token).",
    )
    max_comment_chars: int = Field(default=2000, ge=0)
    max_name_chars: int = Field(default=64, ge=1, le=200)
    max_body_bytes: int = Field(default=32_768, ge=1024, description="Larger requests are refused (413).")
    form_token_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long a shown pair stays votable.")
    cookie_secure: bool = Field(default=False, description="Send the session cookie over HTTPS only.")
    session_ttl_s: int = Field(
        default=12 * 3600, ge=60, description="A session cookie older than this is refused (sign in again)."
    )
    clock_skew_s: int = Field(
        default=60, ge=0, le=3600, description="A cookie dated later than now + this is refused (forged or bad clock)."
    )
    # Wrong access tokens, per client address (the database keeps the count, so every worker
    # and replica sharing it enforces one limit).
    login_max_failures: int = Field(
        default=10, ge=1, description="Wrong tokens from one client within login_window_s before it is locked out."
    )
    login_window_s: int = Field(default=15 * 60, ge=1, description="The window the wrong tokens are counted in.")
    login_lockout_s: int = Field(
        default=15 * 60, ge=1, description="How long a locked-out client is refused (429), right token or not."
    )
    login_failure_delay_s: float = Field(
        default=0.5, ge=0, le=10, description="Every wrong token is answered only after this pause."
    )

    _random_key: bytes = PrivateAttr(default_factory=lambda: secrets.token_bytes(32))

    @field_validator("token")
    @classmethod
    def _no_blank(cls, value: str) -> str:
        if value.strip() != value or not value:
            raise ValueError("the token must not start or end with spaces")
        return value

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError(f"{SECRET_ENV} must have at least 16 characters (or be unset for a random key)")
        return value

    @property
    def signing_key(self) -> bytes:
        """The HMAC key: from ``secret`` when set, else this instance's random bytes."""
        if self.secret:
            return hashlib.sha256(f"fromscratch-label-secret:{self.secret}".encode("utf-8")).digest()
        return self._random_key

    @property
    def token_id(self) -> str:
        """A keyed fingerprint of the token, signed into each session: a new token signs everyone
        out, and the cookie tells nothing about the token to anyone without the key."""
        return hmac.new(self.signing_key, f"token:{self.token}".encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def token_from_env_or_new(given: str | None) -> tuple[str, bool]:
    """(token, generated): the flag, else ``FROMSCRATCH_LABEL_TOKEN``, else a fresh random one."""
    token = given or os.environ.get(TOKEN_ENV)
    if token:
        return token, False
    return secrets.token_urlsafe(18), True
