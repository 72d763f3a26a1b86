"""Pipeline run ids: how a new one is made and which ones are allowed.

A run id is a folder name under the storage root and a tag in MLflow, and it comes from users
(``--run-id``, the KFP UI), so it is checked before anything uses it: a ``..`` or a ``/`` would
put the run's writes (and data prep's clean-up) outside ``<storage.root>/<run-id>/``.
"""

from __future__ import annotations

import re
import time
import uuid

MAX_LENGTH = 128
_ALLOWED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def new_run_id() -> str:
    """A fresh id: the start time (sortable) and a random suffix (unique across machines)."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is safe as one path segment, else ``ValueError`` saying what is wrong."""
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("invalid run id: it is empty")
    if len(run_id) > MAX_LENGTH:
        raise ValueError(f"invalid run id {run_id[:20]!r}...: longer than {MAX_LENGTH} characters")
    if ".." in run_id or not _ALLOWED.match(run_id):
        raise ValueError(
            f"invalid run id {run_id!r}: use letters, digits, '-', '_' and '.', starting with a "
            "letter or digit, and no '..'"
        )
    return run_id
