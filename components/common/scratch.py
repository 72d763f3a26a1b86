"""Per-process scratch folders that do not outlive the training function that made them.

Why: every Ray Train worker fetches its starting checkpoint, gives the HF trainer an output
folder and unpacks a restored checkpoint, each into a fresh temporary folder. Ray ends worker
processes without running ``atexit`` hooks, so folders made with a bare ``mkdtemp`` stayed
behind: a few runs on a laptop left gigabytes in ``/tmp``. Here every such folder lives under
one root per process, and ``cleans_scratch`` removes that root when the training function
returns or raises (the copies are not needed after that: results are already in storage).
A process killed outright (a lost node, a fault-injection test) cannot clean up, so the root's
name carries its pid and the next process to make a root removes those of dead processes.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

_root: Path | None = None
_PREFIX = "fromscratch-scratch-"
_ROOT_NAME = re.compile(rf"^{_PREFIX}(\d+)-")

F = TypeVar("F", bound=Callable[..., Any])


def scratch_dir(prefix: str) -> Path:
    """A new empty folder under this process' scratch root."""
    global _root
    if _root is None or not _root.is_dir():
        remove_orphaned_roots()
        _root = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=_root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_orphaned_roots() -> None:
    """Remove the scratch roots of processes that no longer run."""
    for path in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*"):
        match = _ROOT_NAME.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def clear_scratch() -> None:
    """Remove this process' scratch root and everything in it (safe to call twice)."""
    global _root
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)
        _root = None


def cleans_scratch(fn: F) -> F:
    """Decorate a training function: its scratch folders are removed when it ends."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            clear_scratch()

    return wrapper  # type: ignore[return-value]


atexit.register(clear_scratch)  # a plain process exit cleans up too (a no-op without a root)
