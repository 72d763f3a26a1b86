"""A small Kubeflow Pipelines API server for tests: the part of the v2beta1 REST API that
``fromscratch submit | upload | schedule`` reach through ``kfp.Client``.

The real KFP backend (API server, MySQL, Argo, the scheduled-workflow controller) cannot run on
this machine, so the CLI's ``kfp.Client`` talks HTTP to this one instead. It is a real HTTP
server on 127.0.0.1 (stdlib ``http.server``, a background thread) that

- answers the endpoints below with JSON shaped like the real API (the field names of the
  ``kfp_server_api`` models), so the client deserializes the answers as it would KFP's;
- keeps pipelines, versions, experiments, runs and recurring runs in memory, with the real
  server's rules that matter to the CLI: names are unique (a second pipeline, version or
  experiment of the same name is a 409), a run or recurring run must point at an existing
  experiment and pipeline version (or carry a spec), filters select by ``display_name``;
- records every request (method, route, path, query, headers, JSON or multipart body, status)
  in ``requests`` for tests to assert on.

Endpoints (all under ``/apis/v2beta1``)::

    GET    /healthz
    GET    /pipelines                     filter, page_size, page_token
    GET    /pipelines/{pipeline_id}
    POST   /pipelines/upload              multipart ``uploadfile``; name/display_name, description
    POST   /pipelines/upload_version      multipart ``uploadfile``; name/display_name, pipelineid
    GET    /pipelines/{pipeline_id}/versions
    GET    /pipelines/{pipeline_id}/versions/{pipeline_version_id}
    GET    /experiments                   filter, namespace
    POST   /experiments
    GET    /experiments/{experiment_id}
    POST   /runs
    GET    /runs/{run_id}                 the state advances through ``run_states``
    GET    /recurringruns                 experiment_id, filter
    POST   /recurringruns
    GET    /recurringruns/{recurring_run_id}
    DELETE /recurringruns/{recurring_run_id}

Anything else is a 404 in the gRPC-gateway error shape (``{"error", "code", "message"}``), and
is recorded like every other request.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"

# google.rpc.Code values the gateway puts in an error body.
_RPC_CODES = {400: 3, 404: 5, 409: 6, 500: 13}
# api.Predicate.Operation: the gateway takes the enum's name or its number.
_OPERATIONS = {1: "EQUALS", 2: "NOT_EQUALS", 3: "GREATER_THAN", 5: "GREATER_THAN_EQUALS",
               6: "LESS_THAN", 7: "LESS_THAN_EQUALS", 8: "IN", 9: "IS_SUBSTRING"}
_FILTER_KEYS = {"display_name", "description", "namespace", "created_at", "pipeline_id", "pipeline_version_id",
                "experiment_id", "run_id", "recurring_run_id", "state", "storage_state"}
FINISHED = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Request:
    """One request as the server saw it."""

    method: str
    route: str  # the endpoint template, e.g. "GET /apis/v2beta1/pipelines/{pipeline_id}"
    path: str
    query: dict[str, str]  # the last value of each query parameter
    headers: dict[str, str]
    json: Any = None  # a JSON body, parsed
    form: dict[str, str] = field(default_factory=dict)  # multipart fields that are not files
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # multipart files: (filename, bytes)
    status: int = 0

    @property
    def filter(self) -> dict[str, Any] | None:
        return json.loads(self.query["filter"]) if self.query.get("filter") else None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return str(uuid.uuid4())


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API answers: the stored object without the server's private keys."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def _predicate_value(pred: dict[str, Any]) -> Any:
    for key in ("string_value", "stringValue", "int_value", "intValue", "long_value", "longValue",
                "timestamp_value", "timestampValue"):
        if key in pred:
            return pred[key]
    for key in ("string_values", "stringValues", "int_values", "intValues", "long_values", "longValues"):
        if key in pred:
            return list(pred[key].get("values", []))
    raise ApiError(400, f"predicate {pred} has no value")


def _matches(obj: dict[str, Any], filter_json: str | None) -> bool:
    """Apply a JSON-serialized ``api.Filter`` (the predicates are ANDed, like KFP's)."""
    if not filter_json:
        return True
    try:
        predicates = json.loads(filter_json).get("predicates", [])
    except (ValueError, AttributeError) as err:
        raise ApiError(400, f"invalid filter {filter_json!r}: {err}") from None
    for pred in predicates:
        op = pred.get("operation")
        op = _OPERATIONS.get(op, op) if isinstance(op, int) else op
        key = "display_name" if pred.get("key") in ("name", "display_name") else pred.get("key")
        if key not in _FILTER_KEYS:
            raise ApiError(400, f"invalid filter key {pred.get('key')!r}")
        have, want = obj.get(key), _predicate_value(pred)
        if op == "EQUALS":
            ok = str(have) == str(want)
        elif op == "NOT_EQUALS":
            ok = str(have) != str(want)
        elif op == "IN":
            ok = str(have) in [str(w) for w in want]
        elif op == "IS_SUBSTRING":
            ok = str(want) in str(have or "")
        else:
            raise ApiError(400, f"filter operation {pred.get('operation')!r} is not supported here")
        if not ok:
            return False
    return True


def _page(items: list[dict[str, Any]], query: dict[str, str], key: str) -> dict[str, Any]:
    """One page of a list answer; fields of an empty list are left out, as the gateway does."""
    start = int(query.get("page_token") or 0)
    size = int(query.get("page_size") or 0) or len(items) or 1
    page = items[start:start + size]
    out: dict[str, Any] = {"total_size": len(items)} if items else {}
    if page:
        out[key] = [_public(i) for i in page]
    if start + size < len(items):
        out["next_page_token"] = str(start + size)
    return out


def _pipeline_spec_of(data: bytes, filename: str) -> None:
    """Reject what is not a compiled pipeline, as the real upload does."""
    if not filename.endswith((".yaml", ".yml")):
        raise ApiError(400, f"unsupported package {filename!r} (this server takes YAML only)")
    try:
        docs = [d for d in yaml.safe_load_all(data) if d]
    except yaml.YAMLError as err:
        raise ApiError(400, f"invalid pipeline YAML: {err}") from None
    if not docs or not isinstance(docs[0], dict) or not {"pipelineInfo", "root"} <= set(docs[0]):
        raise ApiError(400, "the file is not a KFP pipeline spec (no pipelineInfo/root)")


class KfpApiServer:
    """The server and its state. ``start()`` it (or use it as a context manager); ``url`` is the
    ``--host`` to give the CLI."""

    def __init__(self, multi_user: bool = False):
        self.multi_user = multi_user
        # The states each new run's GETs go through; the last one repeats.
        self.run_states: list[str] = ["SUCCEEDED"]
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._routes: list[tuple[str, str, re.Pattern[str], Callable[..., tuple[int, Any]]]] = []
        for method, template, handler in self._endpoints():
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", API + template)
            self._routes.append((method, f"{method} {API}{template}", re.compile(f"^{pattern}$"), handler))
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----

    def start(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                server._handle(self)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kfp-api-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---- what tests read ----

    def routes(self) -> list[str]:
        """The endpoint of each request so far, in order, without the ``/apis/v2beta1`` prefix:
        ``["GET /healthz", "GET /pipelines/{pipeline_id}/versions", ...]``."""
        return [r.route.replace(API, "", 1) for r in self.requests]

    def sent(self, route: str) -> list[Request]:
        """The requests to one endpoint, named as in ``routes()``, e.g. ``sent("POST /runs")``."""
        return [r for r in self.requests if r.route.replace(API, "", 1) == route]

    def named(self, kind: dict[str, dict[str, Any]], name: str) -> list[dict[str, Any]]:
        """The objects of one kind (``server.experiments``, ...) with this display name."""
        return [o for o in kind.values() if o["display_name"] == name]

    # ---- seeding: what other users already created ----

    def add_experiment(self, name: str, namespace: str = "") -> dict[str, Any]:
        with self._lock:
            return self._create_experiment({"display_name": name, "namespace": namespace})

    def add_recurring_run(self, name: str, experiment_id: str) -> dict[str, Any]:
        """A recurring run of some other pipeline (not checked against pipelines and versions)."""
        with self._lock:
            recurring = {"recurring_run_id": _new_id(), "display_name": name, "experiment_id": experiment_id,
                         "trigger": {"cron_schedule": {"cron": "0 0 0 * * *"}}, "max_concurrency": "1",
                         "mode": "ENABLE", "status": "ENABLED", "created_at": _now(), "updated_at": _now()}
            self.recurring_runs[recurring["recurring_run_id"]] = recurring
            return recurring

    # ---- HTTP ----

    def _handle(self, http: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(http.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(http.headers.get("Content-Length") or 0)
        body = http.rfile.read(length) if length else b""
        req = Request(method=http.command, route=f"{http.command} {parts.path}", path=parts.path, query=query,
                      headers={k.lower(): v for k, v in http.headers.items()})
        status, answer = 404, None
        try:
            self._parse_body(req, http.headers.get("Content-Type", ""), body)
            for method, route, pattern, handler in self._routes:
                match = pattern.match(parts.path)
                if match and method == http.command:
                    req.route = route
                    with self._lock:
                        status, answer = handler(req, **match.groupdict())
                    break
            else:
                raise ApiError(404, f"{http.command} {parts.path} is not an endpoint of this server")
        except ApiError as err:
            status = err.status
            answer = {"error": err.message, "code": _RPC_CODES.get(err.status, 2), "message": err.message,
                      "details": []}
        except Exception as err:  # noqa: BLE001 -- a bug here: answer like a server would, keep the request
            status = 500
            answer = {"error": repr(err), "code": 13, "message": repr(err), "details": []}
        req.status = status
        with self._lock:
            self.requests.append(req)
        data = json.dumps(answer if answer is not None else {}).encode()
        http.send_response(status)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.end_headers()
        http.wfile.write(data)

    @staticmethod
    def _parse_body(req: Request, content_type: str, body: bytes) -> None:
        if not body:
            return
        if content_type.startswith("multipart/form-data"):
            message = BytesParser(policy=policy.HTTP).parsebytes(
                b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
            )
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                filename = part.get_filename()
                data = part.get_payload(decode=True) or b""
                if filename is not None:
                    req.files[name] = (filename, data)
                else:
                    req.form[name] = data.decode()
        elif "json" in content_type:
            try:
                req.json = json.loads(body)
            except ValueError as err:
                raise ApiError(400, f"invalid JSON body: {err}") from None
        else:
            raise ApiError(400, f"unsupported Content-Type {content_type!r}")

    # ---- endpoints ----

    def _endpoints(self) -> Iterator[tuple[str, str, Callable[..., tuple[int, Any]]]]:
        yield "GET", "/healthz", self._healthz
        yield "GET", "/pipelines", self._list_pipelines
        yield "POST", "/pipelines/upload", self._upload_pipeline
        yield "POST", "/pipelines/upload_version", self._upload_version
        yield "GET", "/pipelines/{pipeline_id}", self._get_pipeline
        yield "GET", "/pipelines/{pipeline_id}/versions", self._list_versions
        yield "GET", "/pipelines/{pipeline_id}/versions/{pipeline_version_id}", self._get_version
        yield "GET", "/experiments", self._list_experiments
        yield "POST", "/experiments", self._post_experiment
        yield "GET", "/experiments/{experiment_id}", self._get_experiment
        yield "POST", "/runs", self._create_run
        yield "GET", "/runs/{run_id}", self._get_run
        yield "GET", "/recurringruns", self._list_recurring_runs
        yield "POST", "/recurringruns", self._create_recurring_run
        yield "GET", "/recurringruns/{recurring_run_id}", self._get_recurring_run
        yield "DELETE", "/recurringruns/{recurring_run_id}", self._delete_recurring_run

    def _healthz(self, req: Request) -> tuple[int, Any]:
        return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}

    @staticmethod
    def _get(kind: dict[str, dict[str, Any]], what: str, key: str) -> dict[str, Any]:
        if key not in kind:
            raise ApiError(404, f"{what} {key} not found")
        return kind[key]

    # pipelines and versions

    def _list_pipelines(self, req: Request) -> tuple[int, Any]:
        found = [p for p in self.pipelines.values() if _matches(p, req.query.get("filter"))]
        return 200, _page(found, req.query, "pipelines")

    def _get_pipeline(self, req: Request, pipeline_id: str) -> tuple[int, Any]:
        return 200, _public(self._get(self.pipelines, "pipeline", pipeline_id))

    def _uploaded(self, req: Request) -> tuple[str, bytes]:
        if "uploadfile" not in req.files:
            raise ApiError(400, "no file in the multipart field 'uploadfile'")
        filename, data = req.files["uploadfile"]
        _pipeline_spec_of(data, filename)
        return filename, data

    def _upload_pipeline(self, req: Request) -> tuple[int, Any]:
        filename, data = self._uploaded(req)
        name = req.query.get("display_name") or req.query.get("name") or filename.rsplit(".", 1)[0]
        if self.named(self.pipelines, name):
            raise ApiError(409, f"pipeline {name!r} already exists")
        pipeline = {"pipeline_id": _new_id(), "display_name": name, "name": name,
                    "description": req.query.get("description", ""), "created_at": _now(),
                    "namespace": req.query.get("namespace", "")}
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        # Like KFP, the upload is also the pipeline's first version, named after the pipeline.
        self._add_version(pipeline, name, pipeline["description"], data)
        return 200, _public(pipeline)

    def _upload_version(self, req: Request) -> tuple[int, Any]:
        _, data = self._uploaded(req)
        pipeline = self._get(self.pipelines, "pipeline", req.query.get("pipelineid", ""))
        name = req.query.get("display_name") or req.query.get("name")
        if not name:
            raise ApiError(400, "a pipeline version needs a name")
        if [v for v in self.named(self.versions, name) if v["pipeline_id"] == pipeline["pipeline_id"]]:
            raise ApiError(409, f"pipeline {pipeline['display_name']!r} already has a version {name!r}")
        return 200, _public(self._add_version(pipeline, name, req.query.get("description", ""), data))

    def _add_version(self, pipeline: dict[str, Any], name: str, description: str, data: bytes) -> dict[str, Any]:
        version = {"pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": _new_id(), "display_name": name,
                   "name": name, "description": description, "created_at": _now(), "_package": data}
        self.versions[version["pipeline_version_id"]] = version
        return version

    def _list_versions(self, req: Request, pipeline_id: str) -> tuple[int, Any]:
        self._get(self.pipelines, "pipeline", pipeline_id)
        found = [v for v in self.versions.values()
                 if v["pipeline_id"] == pipeline_id and _matches(v, req.query.get("filter"))]
        return 200, _page(found, req.query, "pipeline_versions")

    def _get_version(self, req: Request, pipeline_id: str, pipeline_version_id: str) -> tuple[int, Any]:
        version = self._get(self.versions, "pipeline version", pipeline_version_id)
        if version["pipeline_id"] != pipeline_id:
            raise ApiError(404, f"pipeline version {pipeline_version_id} is not a version of {pipeline_id}")
        return 200, _public(version)

    # experiments

    def _create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("display_name")
        if not name:
            raise ApiError(400, "an experiment needs a display_name")
        if self.named(self.experiments, name):
            raise ApiError(409, f"experiment {name!r} already exists")
        experiment = {"experiment_id": _new_id(), "display_name": name, "description": body.get("description") or "",
                      "created_at": _now(), "namespace": body.get("namespace") or "", "storage_state": "AVAILABLE"}
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _post_experiment(self, req: Request) -> tuple[int, Any]:
        return 200, _public(self._create_experiment(req.json or {}))

    def _list_experiments(self, req: Request) -> tuple[int, Any]:
        found = [e for e in self.experiments.values() if _matches(e, req.query.get("filter"))]
        return 200, _page(found, req.query, "experiments")

    def _get_experiment(self, req: Request, experiment_id: str) -> tuple[int, Any]:
        return 200, _public(self._get(self.experiments, "experiment", experiment_id))

    # runs and recurring runs

    def _check_template(self, body: dict[str, Any]) -> None:
        """A run needs an existing experiment and either a spec or an existing pipeline version."""
        self._get(self.experiments, "experiment", body.get("experiment_id") or "")
        ref = body.get("pipeline_version_reference")
        if ref:
            version = self._get(self.versions, "pipeline version", ref.get("pipeline_version_id") or "")
            if version["pipeline_id"] != ref.get("pipeline_id"):
                raise ApiError(400, f"pipeline version {version['pipeline_version_id']} "
                                    f"is not a version of {ref.get('pipeline_id')}")
        elif not body.get("pipeline_spec"):
            raise ApiError(400, "neither pipeline_spec nor pipeline_version_reference is set")
        if not body.get("display_name"):
            raise ApiError(400, "display_name is empty")

    def _create_run(self, req: Request) -> tuple[int, Any]:
        body = dict(req.json or {})
        self._check_template(body)
        states = list(self.run_states) or ["SUCCEEDED"]
        run = {**body, "run_id": _new_id(), "storage_state": "AVAILABLE", "created_at": _now(),
               "state": "PENDING", "_states": states}
        self.runs[run["run_id"]] = run
        return 200, _public(run)

    def _get_run(self, req: Request, run_id: str) -> tuple[int, Any]:
        run = self._get(self.runs, "run", run_id)
        states = run["_states"]
        run["state"] = states.pop(0) if len(states) > 1 else states[0]
        if run["state"] in FINISHED and "finished_at" not in run:
            run["finished_at"] = _now()
        return 200, _public(run)

    def _create_recurring_run(self, req: Request) -> tuple[int, Any]:
        body = dict(req.json or {})
        self._check_template(body)
        trigger = body.get("trigger") or {}
        cron = (trigger.get("cron_schedule") or {}).get("cron")
        if not cron and not (trigger.get("periodic_schedule") or {}).get("interval_second"):
            raise ApiError(400, "the trigger has neither a cron nor an interval")
        recurring = {**body, "recurring_run_id": _new_id(), "created_at": _now(), "updated_at": _now(),
                     "status": "ENABLED" if body.get("mode", "ENABLE") == "ENABLE" else "DISABLED"}
        if "max_concurrency" in recurring:  # int64: a string in the gateway's JSON
            recurring["max_concurrency"] = str(recurring["max_concurrency"])
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return 200, _public(recurring)

    def _list_recurring_runs(self, req: Request) -> tuple[int, Any]:
        experiment = req.query.get("experiment_id")
        found = [r for r in self.recurring_runs.values()
                 if (not experiment or r.get("experiment_id") == experiment) and _matches(r, req.query.get("filter"))]
        # The one list whose JSON key is camelCase in KFP's API (recurring_run.proto: recurringRuns).
        return 200, _page(found, req.query, "recurringRuns")

    def _get_recurring_run(self, req: Request, recurring_run_id: str) -> tuple[int, Any]:
        return 200, _public(self._get(self.recurring_runs, "recurring run", recurring_run_id))

    def _delete_recurring_run(self, req: Request, recurring_run_id: str) -> tuple[int, Any]:
        self._get(self.recurring_runs, "recurring run", recurring_run_id)
        del self.recurring_runs[recurring_run_id]
        return 200, {}
