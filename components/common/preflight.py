"""Checks that run before anything trains: can this run reach what it will write to?

``fromscratch run`` calls :func:`run_preflight` right after validating the config, so a wrong S3
key, a bucket that does not exist, a tracking server that is down or a Ray address nobody
listens on is one clear message at start — not a stack trace from a KFP task minutes later.
Every check is short (a few seconds at most, no retries) and all of them run, so one attempt
names every problem at once.

- storage: a local root is created and written to; an ``s3://`` root is listed and written to
  (a probe object, deleted again) with the run's own endpoint and credentials. Missing
  credentials, an unknown access key, a wrong secret, a missing bucket, denied access and an
  unreachable endpoint each have their own message.
- tracking: an HTTP tracking URI answers ``GET /health`` and the REST API
  (``experiments/get-by-name``); a SQLite URI's folder is writable.
- ray: a given address accepts a TCP connection.
- inputs: every file, folder or glob a stage reads (corpora, instruction, preference and
  problem files, a checkpoint to start from) is there, so a typo in the last stage's input is
  found before Ray and KFP start, not twenty seconds into the pipeline.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from components.common import storage
from components.common.config import Config

log = logging.getLogger(__name__)

TIMEOUT_S = 3.0


class PreflightError(RuntimeError):
    """One or more things the run needs are unreachable; the message names each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"  - {p}" for p in problems))


@dataclass
class CheckResult:
    name: str
    ok: bool
    message: str
    seconds: float


# ---- storage ---------------------------------------------------------------------------------


def _s3_fs(endpoint: str | None):
    import s3fs

    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    fs = s3fs.S3FileSystem(
        skip_instance_cache=True,
        client_kwargs=client_kwargs,
        config_kwargs={
            "connect_timeout": TIMEOUT_S,
            "read_timeout": 10,
            "retries": {"max_attempts": 1, "mode": "standard"},
        },
    )
    fs.retries = 1  # s3fs's own retry loop on top of botocore's: one attempt is the answer
    return fs


def _s3_problem(err: BaseException, bucket: str, endpoint: str) -> str:
    """Turn what s3fs/botocore raised into the one sentence a person needs."""
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    where = f"at {endpoint}"
    if "nocredentials" in lowered or "unable to locate credentials" in lowered:
        return (
            f"no S3 credentials for s3://{bucket} {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        )
    if "access key id you provided does not exist" in lowered or "invalidaccesskeyid" in lowered:
        key = os.environ.get("AWS_ACCESS_KEY_ID", "?")
        return f"S3 {where} does not know the access key '{key}' (AWS_ACCESS_KEY_ID): wrong S3 credentials"
    if "signature" in lowered and ("not match" in lowered or "doesnotmatch" in lowered):
        return f"S3 {where} rejected the secret key for access key '{os.environ.get('AWS_ACCESS_KEY_ID', '?')}' " \
            "(AWS_SECRET_ACCESS_KEY does not match): wrong S3 credentials"
    if isinstance(err, FileNotFoundError) or "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        return f"bucket '{bucket}' does not exist {where}: create it or fix storage.root"
    if isinstance(err, PermissionError) or "accessdenied" in lowered or "forbidden" in lowered:
        return f"S3 {where} denied access to bucket '{bucket}' ({err}): check the credentials' permissions"
    if any(s in lowered for s in ("connect", "endpoint", "timed out", "timeout", "name or service")):
        return f"S3 endpoint {endpoint} is not reachable ({err}): start it or fix storage.s3_endpoint_url / AWS_ENDPOINT_URL"
    return f"S3 check of s3://{bucket} {where} failed: {text}"


def check_storage(root: str, endpoint: str | None = None) -> str:
    """Raise ``PreflightError`` unless ``root`` can be listed and written; returns a summary."""
    if not storage.is_remote(root):
        path = Path(storage.normalize(root))
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".preflight-{uuid.uuid4().hex[:8]}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise PreflightError([f"storage.root {path} is not writable: {err}"]) from None
        return f"local {path} writable"
    if not root.startswith("s3://"):
        return f"{root.split('://', 1)[0]}:// not checked"
    endpoint = endpoint or storage.s3_endpoint()
    bucket_and_prefix = root[len("s3://"):].strip("/")
    bucket = bucket_and_prefix.split("/", 1)[0]
    where = endpoint or "AWS S3"
    if not bucket:
        raise PreflightError([f"storage.root {root} names no bucket"])
    try:
        fs = _s3_fs(endpoint)
        fs.ls(bucket, refresh=True)
    except Exception as err:  # noqa: BLE001 - every failure becomes one sentence
        raise PreflightError([_s3_problem(err, bucket, where)]) from None
    probe = f"{bucket_and_prefix}/_preflight/{uuid.uuid4().hex}"
    try:
        fs.pipe(probe, b"ok")
        fs.rm(probe)
    except Exception as err:  # noqa: BLE001
        raise PreflightError([f"cannot write to {root} ({_s3_problem(err, bucket, where)})"]) from None
    return f"s3://{bucket} at {where}: credentials accepted, bucket writable"


# ---- tracking --------------------------------------------------------------------------------


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _get(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            return resp.status, resp.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read(4096).decode(errors="replace")


def check_tracking(uri: str, experiment: str = "fromscratch") -> str:
    """Raise ``PreflightError`` unless the tracking server answers its REST API."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
            raise PreflightError([f"tracking database folder {folder} is not writable"])
        return f"SQLite {uri[len('sqlite:///'):]}"
    if scheme not in ("http", "https"):
        return f"{scheme}: not checked"
    base = uri.rstrip("/")
    try:
        status, _ = _get(f"{base}/health")
        query = urllib.parse.urlencode({"experiment_name": experiment})
        api_status, body = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}")
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise PreflightError(
            [f"tracking server {uri} is not reachable ({reason}): start it or fix tracking.uri / MLFLOW_TRACKING_URI"]
        ) from None
    if api_status in (401, 403):
        raise PreflightError([(
            f"tracking server {uri} refused the request (HTTP {api_status}): set MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
        )])
    known = api_status == 200 or (api_status == 404 and "RESOURCE_DOES_NOT_EXIST" in body)
    if not known:
        raise PreflightError([(
            f"{uri} does not answer like an MLflow tracking server (GET /health: {status}, "
            f"experiments/get-by-name: {api_status}): fix tracking.uri"
        )])
    return f"MLflow at {uri} (REST API answers)"


# ---- inputs ----------------------------------------------------------------------------------

_GLOB_CHARS = set("*?[")


def input_locations(cfg: Config) -> list[tuple[str, str]]:
    """``(setting, uri)`` of every path or URI a stage reads that is not made by the run itself:
    the corpora, the instruction, preference and problem files, and a checkpoint to start from.
    (Evaluation reads the held-out splits data_prep writes from these same sources.)
    Hugging Face dataset names are not checked: they need the network."""
    found: list[tuple[str, str]] = []
    for i, source in enumerate(cfg.data.sources):
        if source.uri:
            found.append((f"data.sources[{i}].uri", source.uri))
    for key, sources in (
        ("data.instructions.sources", cfg.data.instructions.sources),
        ("data.preferences.sources", cfg.data.preferences.sources),
        ("data.problems.sources", cfg.data.problems.sources),
    ):
        found.extend((f"{key}[{i}]", uri) for i, uri in enumerate(sources))
    if _start_checkpoint(cfg):
        found.append(("pretrain.init_from", _start_checkpoint(cfg)))
    return found


def _start_checkpoint(cfg: Config) -> str | None:
    init_from = cfg.pretrain.init_from.strip()
    return None if init_from in ("", "random", "champion") else init_from


def _input_fs(uri: str):
    if uri.startswith("s3://"):
        return _s3_fs(storage.s3_endpoint()), uri[len("s3://"):]
    return storage.filesystem(uri if storage.is_remote(uri) else storage.normalize(uri))


def input_problem(uri: str) -> str | None:
    """Why ``uri`` (a file, a folder with files, or a glob matching files) cannot be read, or None."""
    try:
        fs, path = _input_fs(uri)
        if any(c in _GLOB_CHARS for c in path) and not fs.exists(path):
            return None if any(fs.isfile(p) for p in fs.glob(path)) else "no files match this pattern"
        if not fs.exists(path):
            return "not found"
        if fs.isdir(path) and not any(True for _ in fs.find(path)):
            return "an empty folder"
    except Exception as err:  # noqa: BLE001 - credentials, endpoint, protocol: one sentence
        return f"cannot be accessed ({type(err).__name__}: {err})"
    return None


def check_inputs(cfg: Config) -> str:
    """Raise ``PreflightError`` naming every input path or URI that is not there."""
    locations = input_locations(cfg)
    problems = [f"{key} {uri}: {why}" for key, uri in locations if (why := input_problem(uri))]
    start = _start_checkpoint(cfg)
    if start and not any(p.startswith("pretrain.init_from ") for p in problems):
        uri = start if storage.is_remote(start) else storage.normalize(start)
        if not storage.is_complete(uri):
            problems.append(
                f"pretrain.init_from {start}: no {storage.COMPLETE_MARKER} marker (not a finished checkpoint)"
            )
    if problems:
        raise PreflightError(problems)
    return f"{len(locations)} input path(s) found" if locations else "no input files (generated data)"


# ---- ray -------------------------------------------------------------------------------------


def check_ray(address: str | None) -> str:
    """Raise ``PreflightError`` unless something listens at the Ray address (if one is given)."""
    if not address or address in ("auto", "local"):
        return "local Ray (started for the run)"
    parsed = urllib.parse.urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise PreflightError([f"Ray address '{address}' is not host:port"])
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            pass
    except OSError as err:
        raise PreflightError([(
            f"Ray at {address} is not reachable ({err.strerror or err}): start the cluster or fix "
            "--ray-address / ray.address / RAY_ADDRESS"
        )]) from None
    return f"Ray at {address} accepts connections"


# ---- all of it -------------------------------------------------------------------------------


def run_preflight(cfg: Config, ray_address: str | None = None) -> list[CheckResult]:
    """Every check; raises ``PreflightError`` naming each failure, else returns the results."""
    from components.common.tracking import resolve_tracking_uri

    results: list[CheckResult] = []
    problems: list[str] = []

    def attempt(name: str, fn) -> None:
        started = time.perf_counter()
        try:
            message = fn()
            results.append(CheckResult(name, True, message, time.perf_counter() - started))
        except PreflightError as err:
            problems.extend(f"{name}: {p}" for p in err.problems)
            results.append(CheckResult(name, False, "; ".join(err.problems), time.perf_counter() - started))
        except ValueError as err:  # e.g. remote storage without a tracking URI
            problems.append(f"{name}: {err}")
            results.append(CheckResult(name, False, str(err), time.perf_counter() - started))

    attempt("inputs", lambda: check_inputs(cfg))
    attempt("storage", lambda: check_storage(cfg.storage.root, cfg.storage.s3_endpoint_url))
    attempt("tracking", lambda: check_tracking(resolve_tracking_uri(cfg), cfg.tracking.experiment))
    if not _submits_to_cluster(cfg):
        attempt("ray", lambda: check_ray(ray_address or cfg.ray.address or os.environ.get("RAY_ADDRESS")))
    for r in results:
        log.info("preflight %s: %s (%.1fs)", r.name, r.message, r.seconds)
    if problems:
        raise PreflightError(problems)
    return results


def _submits_to_cluster(cfg: Config) -> bool:
    from components.common.ray_env import submits_to_cluster

    return submits_to_cluster(cfg)


def to_json(results: list[CheckResult]) -> str:
    return json.dumps([r.__dict__ for r in results], indent=2)
