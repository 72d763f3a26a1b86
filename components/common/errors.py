"""Errors shared by the stages.

``DataError`` subclasses ``ValueError`` so callers that already treat bad input as a value
problem keep working, while the pipeline can still tell "your data is wrong" (fix the file)
apart from a crash in our own code (file a bug).
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data; the message names the file and line. Built by ``at``, it also keeps them
    apart (``source``, ``line``, ``detail``), so a reader that counts lines from somewhere other
    than the file's start can re-issue it with the file's own line number."""

    source: str | None = None
    line: int | None = None
    detail: str | None = None


def at(uri: str, line: int | None, msg: str) -> DataError:
    """Build a ``DataError`` whose message starts with ``uri:line:`` like a compiler error.

    The ``file:line: message`` shape is what editors and terminals turn into a clickable
    location, so a user can jump straight to the broken record in a large corpus.
    """
    where = f"{uri}:{line}" if line is not None else uri
    err = DataError(f"{where}: {msg}")
    err.source, err.line, err.detail = uri, line, msg
    return err
