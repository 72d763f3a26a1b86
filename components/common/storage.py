"""Storage through fsspec URIs only.

A run's files live under ``<storage.root>/<run_id>/``; the root is a local path or an
``s3://`` URI (s3fs), so the same stage code writes to local disk on a laptop and to a bucket
on a cluster. Finished artifacts (checkpoints, datasets) carry a ``_COMPLETE`` marker written
last: readers refuse a folder without it, so an interrupted stage never leaves something that
looks finished, and a re-run knows what it can skip.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import fsspec
from fsspec.core import url_to_fs

COMPLETE_MARKER = "_COMPLETE"


class StorageError(RuntimeError):
    """A storage location is missing, unreadable or not finished."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def normalize(uri: str) -> str:
    """Absolute local paths, untouched remote URIs: the form every stage passes around."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_remote(uri):
        return uri.rstrip("/")
    return str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def use_endpoint(endpoint_url: str | None) -> None:
    """Make ``storage.s3_endpoint_url`` the S3 endpoint of this process and of everything it
    starts (KFP task subprocesses, a local Ray's workers inherit the environment)."""
    if endpoint_url:
        os.environ["AWS_ENDPOINT_URL"] = endpoint_url


def s3_endpoint() -> str | None:
    """The S3 endpoint of this process (MinIO/SeaweedFS-style servers); None means AWS."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")


def storage_options(uri: str) -> dict[str, Any]:
    """s3fs options from the environment (endpoint for MinIO/SeaweedFS-style servers)."""
    if uri.startswith("s3://"):
        endpoint = s3_endpoint()
        if endpoint:
            return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = url_to_fs(uri, **storage_options(uri))
    return fs, path


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def open_uri(uri: str, mode: str = "rb", **kwargs: Any):
    """Open a file by URI; parents are created for writes on local disk."""
    if "w" in mode and not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return fsspec.open(uri, mode, **storage_options(uri), **kwargs)


def write_text(uri: str, text: str) -> None:
    with open_uri(uri, "w") as fh:
        fh.write(text)


def read_text(uri: str) -> str:
    with open_uri(uri, "r") as fh:
        return fh.read()


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True))


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def read_jsonl(uri: str) -> list[Any]:
    """Every record of a JSONL file the project itself wrote (user files go through loaders)."""
    with open_uri(uri, "r") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _segments(uri: str) -> list[str]:
    path = uri.split("://", 1)[1] if is_remote(uri) else uri
    return [part for part in path.split("/") if part]


def is_inside(uri: str, base: str) -> bool:
    """Whether ``uri`` lies strictly below ``base`` (a ``..`` segment never counts as inside;
    local paths are compared after resolving symlinks)."""
    if ".." in _segments(uri) or ".." in _segments(base):
        return False
    if is_remote(uri) != is_remote(base):
        return False
    if is_remote(uri):
        scheme, base_scheme = uri.split("://", 1)[0], base.split("://", 1)[0]
        inner, outer = _segments(uri), _segments(base)
        return scheme == base_scheme and len(inner) > len(outer) and inner[: len(outer)] == outer
    inner_path, outer_path = Path(normalize(uri)), Path(normalize(base))
    return inner_path != outer_path and outer_path in inner_path.parents


def check_deletable(uri: str, inside: str | None = None) -> None:
    """Refuse (``StorageError``) to delete under a URI with a ``..`` segment, or, with
    ``inside``, under anything not strictly below that folder: a clean-up never reaches outside
    the run that asked for it. Every deleting helper calls this first."""
    if ".." in _segments(uri):
        raise StorageError(f"refusing to delete {uri}: it contains a '..' segment")
    if inside is not None and not is_inside(uri, inside):
        raise StorageError(f"refusing to delete {uri}: it is not inside {inside}")


def remove(uri: str, inside: str | None = None) -> None:
    """Delete a file or folder tree, after ``check_deletable``."""
    check_deletable(uri, inside)
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def upload_dir(local_dir: str | Path, uri: str) -> None:
    """Copy a local folder's files to a URI (a local copy when the URI is local)."""
    local_dir = Path(local_dir)
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)
        shutil.copytree(local_dir, uri, dirs_exist_ok=True)
        return
    fs, path = filesystem(uri)
    for file in sorted(local_dir.rglob("*")):
        if file.is_file():
            fs.put_file(str(file), f"{path}/{file.relative_to(local_dir).as_posix()}")


def download_dir(uri: str, local_dir: str | Path) -> Path:
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise StorageError(f"not found: {uri}")
    for file in fs.find(path):
        rel = file[len(path) :].lstrip("/")
        target = local_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(file, str(target))
    return local_dir


def mark_complete(uri: str, info: dict[str, Any] | None = None) -> None:
    """Write the marker last: from now on the folder counts as a finished artifact."""
    write_json(join(uri, COMPLETE_MARKER), info or {})


def is_complete(uri: str) -> bool:
    return exists(join(uri, COMPLETE_MARKER))


def require_complete(uri: str, what: str) -> None:
    if not is_complete(uri):
        raise StorageError(
            f"{what} at {uri} is missing or unfinished (no {COMPLETE_MARKER} marker); "
            "re-run the stage that produces it"
        )


@contextmanager
def local_copy(uri: str, what: str = "artifact") -> Iterator[Path]:
    """A local folder with a finished artifact's files (the folder itself when local)."""
    require_complete(uri, what)
    if not is_remote(uri):
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="fromscratch-") as tmp:
        yield download_dir(uri, tmp)


@contextmanager
def staged_output(uri: str) -> Iterator[Path]:
    """Write into a local temp folder, then publish to ``uri`` and mark it complete.

    Whatever was at ``uri`` without a marker (a crashed earlier attempt) is removed first; if
    the body raises, nothing is published, so a failed stage leaves no finished-looking output.
    """
    remove(uri)
    with tempfile.TemporaryDirectory(prefix="fromscratch-out-") as tmp:
        yield Path(tmp)
        upload_dir(tmp, uri)
    mark_complete(uri)
