"""What the labelling server needs to know: where votes go, who may vote, and the limits.

The access token and the signing secret come from the environment on a cluster (a Secret);
flags override them locally. Without any token the CLI makes a random one and prints it, so
the page is never open to anyone who can reach the port.
"""

from __future__ import annotations

import hashlib
import os
import secrets

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
        description="Key of the signed cookie and form tokens; empty = derived from the token "
        "(so replicas and restarts agree, and a new token signs everyone out).",
    )
    max_comment_chars: int = Field(default=2000, ge=0)
    max_name_chars: int = Field(default=64, ge=1, le=200)
    max_body_bytes: int = Field(default=32_768, ge=1024, description="Larger requests are refused (413).")
    form_token_ttl_s: int = Field(default=24 * 3600, ge=60, description="How long a shown pair stays votable.")
    cookie_secure: bool = Field(default=False, description="Send the session cookie over HTTPS only.")

    @field_validator("token")
    @classmethod
    def _no_blank(cls, value: str) -> str:
        if value.strip() != value or not value:
            raise ValueError("the token must not start or end with spaces")
        return value

    @property
    def signing_key(self) -> bytes:
        base = self.secret or f"fromscratch-label:{self.token}"
        return hashlib.sha256(base.encode("utf-8")).digest()


def token_from_env_or_new(given: str | None) -> tuple[str, bool]:
    """(token, generated): the flag, else ``FROMSCRATCH_LABEL_TOKEN``, else a fresh random one."""
    token = given or os.environ.get(TOKEN_ENV)
    if token:
        return token, False
    return secrets.token_urlsafe(18), True
