#!/usr/bin/env python3
"""Build the CPU image for real and run a pipeline step inside it, the way KFP would.

    python docker/image_check.py [--storage DIR] [--steps N] [--cuda]      (or `make image-check`)

Phases, each timed:

  engine     podman/buildah/runc/debootstrap from Debian's packages when missing; the engine's
             settings (runtime runc, ulimits inside the hard limits) go in a CONTAINERS_CONF
             file written here, never in /etc.
  base       the stand-in for python:3.11-slim (no registry is reachable): Debian bookworm
             minbase + python3 in a venv on PATH + the build tools the Dockerfile installs,
             made with debootstrap and `podman import`, tagged by a digest of its recipe and
             reused while the recipe is unchanged.
  wheels     an offline wheelhouse (`pip wheel`, DeepSpeed built against the CPU torch) keyed by
             a digest of constraints.txt, the project's dependencies and the image's extras.
  build      docker/build.sh cpu with podman, the local base, the wheelhouse mounted read-only
             and --network=none: the image build.sh pushes, built without any network.
  inspect    non-root user, no credentials in the image's environment or home.
  import     every module of components/ and pipelines/ in this checkout imports inside the
             image (a module missing from the image is named).
  compile    `fromscratch compile` inside the container.
  data_prep  the data_prep component run exactly as the compiled pipeline's container spec says
  pretrain   (command + args, `python3 -m kfp.dsl.executor_main` with an executor input), then
             pretrain on data_prep's output artifact: Ray Train + DeepSpeed inside the container,
             --network=none, against a host folder mounted at /storage. Each stage's
             _COMPLETE markers must appear in that folder.
  cuda_build (--cuda) docker/Dockerfile.cuda built the same way on the same local base: the
  cuda_run   CPU torch stands in for the CUDA wheel, DeepSpeed's fused Adam is not prebuilt;
             then every module imports in it and the gpu preset compiles.

Exit status: 0 when everything passed, 1 when a phase failed (the message names the phase and
why), 77 when no container engine is available and none can be installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FROMSCRATCH_IMAGE_CACHE", Path.home() / ".cache" / "fromscratch" / "image-check"))
ENGINE_PACKAGES = ["podman", "buildah", "runc", "debootstrap"]
NO_ENGINE = 77

# The engine's settings: crun fails here ("cgroups in hybrid mode not supported"), and default
# ulimits above the hard limits cannot be set.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
events_logger = "file"
"""

# Everything that decides the base image; its digest is the image's tag.
BASE_SUITE = "bookworm"
BASE_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# python3-dev: what the CUDA Dockerfile installs beside python3 (its rehearsal uses this base too)
BASE_PACKAGES = ["python3", "python3-venv", "python3-dev", "ca-certificates", "g++", "make", "git", "wget"]
BASE_VENV = "/opt/python"
BASE_ENV = {
    "PATH": f"{BASE_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
BASE_RECIPE = json.dumps({
    "suite": BASE_SUITE, "variant": "minbase", "mirror": BASE_MIRROR, "packages": BASE_PACKAGES,
    "venv": BASE_VENV, "env": BASE_ENV, "recipe": 1,
}, sort_keys=True)

# The smallest pipeline run that still trains: a small corpus and model, a few steps.
STEP_OVERRIDES = [
    "data.generated.num_train_docs=600", "data.generated.num_heldout_docs=60",
    "data.preferences.num_train=200",
    "model.hidden_size=64", "model.intermediate_size=192", "model.num_layers=2",
    "model.max_seq_len=128",
    "pretrain.warmup_steps=2", "pretrain.log_every=2",
]


class CheckFailed(Exception):
    """A phase failed; the message says which and why."""


def log(msg: str) -> None:
    print(f"image-check: {msg}", flush=True)


def run(cmd: list[str], *, env: dict | None = None, capture: bool = False, check: bool = True,
        input: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, text=True, input=input, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.STDOUT if capture else None)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout or "").splitlines()[-25:]) if capture else ""
        raise CheckFailed(f"`{shlex.join(cmd[:6])}{' ...' if len(cmd) > 6 else ''}` exited with "
                          f"{proc.returncode}" + (f":\n{tail}" if tail else ""))
    return proc


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.timings: list[tuple[str, float, str]] = []
        CACHE.mkdir(parents=True, exist_ok=True)
        conf = CACHE / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.image = ""
        self.uid = "0"

    def phase(self, name: str, fn) -> None:
        log(f"--- {name}")
        start = time.monotonic()
        try:
            note = fn() or ""
        except CheckFailed as err:
            self.timings.append((name, time.monotonic() - start, "FAILED"))
            raise CheckFailed(f"phase {name} failed: {err}") from None
        self.timings.append((name, time.monotonic() - start, note))
        log(f"{name}: {time.monotonic() - start:.1f} s {note}")

    def podman(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run(["podman", *args], env=self.env, **kw)

    # --- engine -------------------------------------------------------------------------
    def engine(self) -> str:
        missing = [p for p in ("podman", "buildah", "runc", "debootstrap") if not shutil.which(p)
                   and not Path(f"/usr/sbin/{p}").exists()]
        if missing:
            if os.geteuid() != 0 or not shutil.which("apt-get"):
                raise SystemExit(NO_ENGINE)
            log(f"installing {' '.join(ENGINE_PACKAGES)} from Debian's packages (missing: {' '.join(missing)})")
            apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            run(["apt-get", "update", "-qq"], env=apt_env, capture=True)
            run(["apt-get", "install", "-y", "-qq", *ENGINE_PACKAGES], env=apt_env, capture=True)
            note = "installed"
        else:
            note = "already installed"
        version = self.podman("--version", capture=True).stdout.strip()
        runtime = self.podman("info", "--format", "{{.Host.OCIRuntime.Name}}", capture=True).stdout.strip()
        if runtime != "runc":
            raise CheckFailed(f"podman uses runtime {runtime!r}, not runc: is CONTAINERS_CONF honoured?")
        return f"({version}, runtime {runtime}, {note})"

    # --- base image ---------------------------------------------------------------------
    def base(self) -> str:
        self.base_image = f"localhost/fromscratch-base:{BASE_SUITE}-{digest(BASE_RECIPE)}"
        if self.podman("image", "exists", self.base_image, check=False).returncode == 0:
            return f"(reused {self.base_image})"
        work = Path(tempfile.mkdtemp(prefix="fromscratch-base-", dir="/var/tmp"))
        try:
            root = work / "rootfs"
            run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 BASE_SUITE, str(root), BASE_MIRROR], capture=True)
            run(["chroot", str(root), "python3", "-m", "venv", BASE_VENV], capture=True)
            run(["chroot", str(root), f"{BASE_VENV}/bin/pip", "--version"], capture=True)
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (root / sub).glob("*"):
                    if item.is_file():
                        item.unlink()
            changes = [f"ENV {k}={v}" for k, v in BASE_ENV.items()] + ['CMD ["python3"]']
            cmd = ["podman", "import"]
            for change in changes:
                cmd += ["--change", change]
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            proc = subprocess.run([*cmd, "-", self.base_image], stdin=tar.stdout, env=self.env,
                                  capture_output=True, text=True)
            tar.stdout.close()
            if tar.wait() != 0 or proc.returncode != 0:
                raise CheckFailed(f"podman import failed: {proc.stderr.strip()}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # older recipes' images are of no use any more
        for line in self.podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/fromscratch-base",
                                capture=True).stdout.split():
            if line != self.base_image:
                self.podman("rmi", line, check=False, capture=True)
        return f"(built {self.base_image})"

    # --- wheelhouse ---------------------------------------------------------------------
    def requirements(self) -> tuple[list[str], str]:
        import tomllib

        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
        dockerfile = (REPO / "docker" / "Dockerfile.cpu").read_text()
        match = re.search(r'^ARG EXTRA_REQUIREMENTS="([^"]*)"', dockerfile, re.M)
        if not match:
            raise CheckFailed("docker/Dockerfile.cpu has no ARG EXTRA_REQUIREMENTS=\"...\"")
        torch = re.search(r"^torch==(\S+)", (REPO / "constraints.txt").read_text(), re.M).group(1)
        return [f"torch=={torch}", "deepspeed", "ninja", *deps, *match.group(1).split(),
                "pip", "setuptools>=68", "wheel"], torch

    def wheels(self) -> str:
        reqs, torch = self.requirements()
        constraints = (REPO / "constraints.txt").read_text()
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        if py != "3.11":
            raise CheckFailed(f"the wheelhouse is built with this Python ({py}); the base image has 3.11")
        key = digest(constraints, "\n".join(reqs), py, "wheels-1")
        self.wheelhouse = CACHE / f"wheelhouse-{key}"
        if (self.wheelhouse / ".complete").exists():
            n = len(list(self.wheelhouse.glob("*.whl")))
            return f"(reused {self.wheelhouse.name}, {n} wheels)"
        for old in CACHE.glob("wheelhouse-*"):
            shutil.rmtree(old, ignore_errors=True)
        tmp = CACHE / f"partial-{key}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(tmp), "-c", str(REPO / "constraints.txt")]
        # DeepSpeed is an sdist: built against the CPU torch of this environment, not an isolated one
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise CheckFailed("building the DeepSpeed wheel needs torch installed here (run `make install`)")
        run([*pip, "--no-deps", "--no-build-isolation", "deepspeed"], capture=True)
        run([*pip, "--find-links", str(tmp), *reqs], capture=True)
        tmp.rename(self.wheelhouse)
        (self.wheelhouse / ".complete").write_text("\n".join(reqs) + "\n")
        size = sum(p.stat().st_size for p in self.wheelhouse.glob("*.whl"))
        return f"(built {self.wheelhouse.name}: {len(list(self.wheelhouse.glob('*.whl')))} wheels, {size / 1e6:.0f} MB)"

    # --- build --------------------------------------------------------------------------
    def build(self) -> str:
        build_sh = REPO / "docker" / "build.sh"
        tag = run(["bash", str(build_sh), "--print-tag"], capture=True).stdout.strip()
        registry = os.environ.get("REGISTRY", "ghcr.io/fromscratch")
        self.image = f"{registry}/fromscratch-cpu:{tag}"
        env = {**self.env, "CONTAINER_ENGINE": "podman", "BASE_IMAGE": self.base_image,
               "WHEELHOUSE": str(self.wheelhouse), "BUILD_NETWORK": "none", "REGISTRY": registry}
        proc = subprocess.Popen(["bash", str(build_sh), "cpu"], env=env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = []
        build_log = self.storage / "build.log"
        with build_log.open("w") as fh:
            for line in proc.stdout:  # the engine's output as it comes: all of it to build.log,
                fh.write(line)        # the steps (and whether they came from the cache) here
                line = line.rstrip("\n")
                lines.append(line)
                if line.startswith(("STEP ", "--> Using cache", "built ", "building ")) or "rror" in line:
                    print(f"  | {line[:150]}", flush=True)
        if proc.wait() != 0:
            raise CheckFailed(f"the image did not build (whole log: {build_log}):\n" + "\n".join(lines[-30:]))
        size = int(self.podman("image", "inspect", "--format", "{{.Size}}", self.image, capture=True).stdout)
        self.size_mb = size / 1e6
        return f"({self.image}, {self.size_mb:.0f} MB)"

    def cleanup(self) -> str:
        """Earlier builds of these repositories and superseded base images: this machine keeps
        only the newest (a cached layer that is still in use stays)."""
        kept = [i for i in (self.image, getattr(self, "cuda_image", "")) if i]
        for keep in kept:
            repo = keep.rsplit(":", 1)[0]
            for name in self.podman("images", "--format", "{{.Repository}}:{{.Tag}}", repo,
                                    capture=True).stdout.split():
                if name != keep:
                    self.podman("rmi", name, check=False, capture=True)
        for name in self.podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/fromscratch-base",
                                capture=True).stdout.split():
            if name != self.base_image:
                self.podman("rmi", name, check=False, capture=True)
        self.podman("image", "prune", "-f", capture=True, check=False)  # layers nothing uses any more
        return f"(kept {', '.join(kept)})"

    # --- inside the image ---------------------------------------------------------------
    def container(self, *cmd: str, mounts: list[str] = (), check: bool = True,
                  timeout: float = 1800) -> subprocess.CompletedProcess:
        args = ["run", "--rm", "--network=none"]
        for m in mounts:
            args += ["-v", m]
        return self.podman(*args, self.image, *cmd, capture=True, check=check, timeout=timeout)

    def inspect(self) -> str:
        cfg = json.loads(self.podman("image", "inspect", self.image, capture=True).stdout)[0]["Config"]
        user = cfg.get("User", "")
        self.uid = user.split(":")[0]
        if not user or self.uid in ("0", "root"):
            raise CheckFailed(f"the image runs as root (USER is {user!r}); it must name a non-root user")
        secret = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIALS?|AUTH)(_|$)", re.I)
        leaked = [e.split("=")[0] for e in cfg.get("Env", []) if secret.search(e.split("=")[0])]
        if leaked:
            raise CheckFailed(f"the image's environment carries credentials: {leaked}")
        probe = ("import os, glob; id=os.getuid(); "
                 "found=[p for p in ['/root/.aws','/root/.netrc','/root/.docker/config.json','/root/.config/pip',"
                 "os.path.expanduser('~/.aws'),os.path.expanduser('~/.netrc'),'/etc/pip.conf','/opt/fromscratch/.git']"
                 " if os.path.exists(p)]; print(id, found)")
        out = self.container("python3", "-c", probe).stdout.strip().splitlines()[-1]
        uid, found = out.split(" ", 1)
        if uid == "0":
            raise CheckFailed("the container's process runs as uid 0")
        if found != "[]":
            raise CheckFailed(f"the image holds credential or config files: {found}")
        return f"(runs as uid {uid}, no credentials found)"

    def modules(self) -> list[str]:
        names = []
        for pkg in ("components", "pipelines"):
            for path in sorted((REPO / pkg).rglob("*.py")):
                rel = path.relative_to(REPO).with_suffix("")
                parts = list(rel.parts)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                names.append(".".join(parts))
        return names

    def imports(self) -> str:
        names = self.modules()
        probe = (
            "import importlib, json, sys\n"
            "names = json.loads(sys.argv[1]); missing = {}\n"
            "for n in names:\n"
            "    try: importlib.import_module(n)\n"
            "    except Exception as e: missing[n] = f'{type(e).__name__}: {e}'\n"
            "import components; print(json.dumps({'missing': missing, 'where': components.__file__}))\n"
        )
        out = self.container("python3", "-c", probe, json.dumps(names)).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        if result["missing"]:
            lines = "\n".join(f"  {n}: {why}" for n, why in sorted(result["missing"].items()))
            raise CheckFailed(f"{len(result['missing'])} of this checkout's modules do not import inside the "
                              f"image (left out of it? see .dockerignore and the Dockerfile's COPY lines):\n{lines}")
        if "site-packages" not in result["where"]:
            raise CheckFailed(f"the package imports from {result['where']}, not from the installed project")
        return f"({len(names)} modules, installed at {Path(result['where']).parent})"

    def compile(self) -> str:
        out = self.storage / "compiled"
        out.mkdir(parents=True, exist_ok=True)
        os.chown(out, int(self.uid), int(self.uid))
        self.container("fromscratch", "compile", "--preset", "tiny", "--set", f"pipeline.base_image={self.image}",
                       "-o", "/storage/compiled/pipeline.yaml", mounts=[f"{self.storage}:/storage"])
        import yaml

        self.spec = yaml.safe_load((self.storage / "compiled" / "pipeline.yaml").read_text())
        image = self.spec["deploymentSpec"]["executors"]["exec-data-prep"]["container"]["image"]
        if image != self.image:
            raise CheckFailed(f"the compiled pipeline runs its steps on {image}, not on {self.image}")
        return f"({len(self.spec['deploymentSpec']['executors'])} executors on {image})"

    def run_component(self, name: str, inputs: dict, outputs: dict) -> dict:
        """Run component ``name`` as KFP's launcher would: the compiled container command and args
        with ``{{$}}`` replaced by an executor input, in the image, against /storage."""
        executor = self.spec["deploymentSpec"]["executors"][f"exec-{name.replace('_', '-')}"]["container"]
        comp = self.spec["components"][f"comp-{name.replace('_', '-')}"]
        task_dir = f"/storage/kfp/{name}"
        (self.storage / "kfp" / name).mkdir(parents=True, exist_ok=True)
        out_artifacts = {}
        for art, spec in comp.get("outputDefinitions", {}).get("artifacts", {}).items():
            out_artifacts[art] = {"artifacts": [{
                "name": art, "type": {"schemaTitle": spec["artifactType"]["schemaTitle"]},
                "uri": f"{task_dir}/{art}", "metadata": {},
            }]}
        out_params = {p: {"outputFile": f"{task_dir}/{p}"}
                      for p in comp.get("outputDefinitions", {}).get("parameters", {})}
        executor_input = {
            "inputs": {"parameterValues": inputs, "artifacts": outputs},
            "outputs": {"artifacts": out_artifacts, "parameters": out_params,
                        "outputFile": f"{task_dir}/executor_output.json"},
        }
        placeholder = json.dumps(executor_input)
        command = [*executor["command"], *[a.replace("{{$}}", placeholder) for a in executor["args"]]]
        for root, _, files in os.walk(self.storage):
            os.chown(root, int(self.uid), int(self.uid))
            for f in files:
                os.chown(os.path.join(root, f), int(self.uid), int(self.uid))
        # DeepSpeed JIT-compiles its CPU communication op in every fresh container (1-3 min on
        # 2 cores); like a cache volume on a cluster, a host folder per image keeps the result.
        # Keyed by what the op is built from (base image + torch/DeepSpeed wheels), not by the
        # image: a code change keeps it.
        jit = CACHE / f"torch-extensions-{digest(self.base_image, self.wheelhouse.name)}"
        for old in CACHE.glob("torch-extensions-*"):
            if old != jit:
                shutil.rmtree(old, ignore_errors=True)
        jit.mkdir(exist_ok=True)
        # A step killed while compiling leaves torch's lock file behind, and the next one would
        # wait for it forever; no other check runs now (see main), so any lock here is stale.
        for stale in jit.glob("*/*/lock"):
            stale.unlink()
        os.chown(jit, int(self.uid), int(self.uid))
        log_path = self.storage / "kfp" / name / "container.log"
        args = ["podman", "run", "--rm", "--network=none", "--shm-size=1g",
                "-v", f"{self.storage}:/storage", "-v", f"{jit}:/home/fromscratch/.cache/torch_extensions",
                "-e", "RAY_DISABLE_USAGE_STATS=1", self.image, *command]
        log(f"  running {name} in the container (output: {log_path})")
        with log_path.open("w") as fh:
            rc = subprocess.run(args, env=self.env, stdout=fh, stderr=subprocess.STDOUT, timeout=3600).returncode
        if rc != 0:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if "State API" not in ln]
            tail = "\n".join(lines[-25:])
            raise CheckFailed(f"the {name} step exited with {rc} inside the container:\n{tail}")
        result = json.loads((self.storage / "kfp" / name / "executor_output.json").read_text())
        return result

    def markers(self, before: set[Path], what: str) -> list[Path]:
        """The _COMPLETE markers a step added to the mounted folder (it must add some)."""
        found = sorted(set((self.storage / "runs").rglob("_COMPLETE")) - before)
        if not found:
            raise CheckFailed(f"{what} exited 0 but left no _COMPLETE marker under {self.storage / 'runs'}")
        for m in found:
            log(f"  marker {m.relative_to(self.storage)}")
        return found

    def existing_markers(self) -> set[Path]:
        return set((self.storage / "runs").rglob("_COMPLETE"))

    def config_json(self) -> str:
        return self.spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"]

    def data_prep(self) -> str:
        overrides = "; ".join(["storage.root=/storage/runs", *STEP_OVERRIDES,
                               f"pretrain.steps={self.args.steps}", f"pretrain.checkpoint_every={self.args.steps}"])
        self.overrides = overrides
        params = {"config_json": self.config_json(), "overrides": overrides, "run_id": "image-check",
                  "kfp_job_id": "image-check"}
        before = self.existing_markers()
        self.prep_out = self.run_component("data_prep", params, {})
        found = self.markers(before, "data_prep")
        return f"({len(found)} _COMPLETE markers)"

    def pretrain(self) -> str:
        data = self.prep_out["artifacts"]["data"]["artifacts"][0]
        run_id = self.prep_out["parameterValues"]["run_id"]
        params = {"config_json": self.config_json(), "overrides": self.overrides, "run_id": run_id}
        arts = {"data": {"artifacts": [{"name": "data", "type": {"schemaTitle": "system.Dataset"},
                                        "uri": data["uri"], "metadata": data.get("metadata", {})}]}}
        before = self.existing_markers()
        out = self.run_component("pretrain", params, arts)
        found = self.markers(before, "pretrain")
        model = out["artifacts"]["pretrain_model"]["artifacts"][0]["metadata"]
        return f"({len(found)} _COMPLETE markers; pretrain model at {model.get('uri')})"

    # --- the CUDA Dockerfile, as far as a machine without CUDA goes -----------------------
    def cuda_build(self) -> str:
        """docker/Dockerfile.cuda on the same local base instead of nvidia/cuda (no CUDA
        libraries, no nvcc): the CPU torch from the wheelhouse stands in for the CUDA build and
        DeepSpeed's fused Adam is not prebuilt. Tagged under localhost/rehearsal so it can never
        be pushed as the real CUDA image."""
        registry = "localhost/rehearsal"
        tag = run(["bash", str(REPO / "docker" / "build.sh"), "--print-tag"], capture=True).stdout.strip()
        self.cuda_image = f"{registry}/fromscratch-cuda:{tag}"
        env = {**self.env, "CONTAINER_ENGINE": "podman", "CUDA_IMAGE": self.base_image, "REGISTRY": registry,
               "WHEELHOUSE": str(self.wheelhouse), "BUILD_NETWORK": "none", "DS_BUILD_FUSED_ADAM": "0",
               "VLLM_REQUIREMENT": "", "FLASH_ATTN_REQUIREMENT": ""}
        build_log = self.storage / "build-cuda.log"
        with build_log.open("w") as fh:
            rc = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), "cuda"], env=env, cwd=REPO,
                                stdout=fh, stderr=subprocess.STDOUT).returncode
        lines = build_log.read_text(errors="replace").splitlines()
        if rc != 0:
            raise CheckFailed(f"docker/Dockerfile.cuda did not build (whole log: {build_log}):\n" + "\n".join(lines[-30:]))
        for line in lines:
            if line.startswith(("STEP ", "--> Using cache", "built ")):
                print(f"  | {line[:150]}", flush=True)
        size = int(self.podman("image", "inspect", "--format", "{{.Size}}", self.cuda_image, capture=True).stdout)
        return f"({self.cuda_image}, {size / 1e6:.0f} MB)"

    def cuda_run(self) -> str:
        saved, self.image = self.image, self.cuda_image
        try:
            cfg = json.loads(self.podman("image", "inspect", self.image, capture=True).stdout)[0]["Config"]
            if cfg.get("User", "").split(":")[0] in ("", "0", "root"):
                raise CheckFailed(f"the CUDA image runs as root (USER is {cfg.get('User')!r})")
            note = self.imports()
            probe = ("import torch, deepspeed, ray, kfp, mlflow, transformers, trl; "
                     "print(torch.__version__, deepspeed.__version__, torch.cuda.is_available())")
            versions = self.container("python3", "-c", probe).stdout.strip().splitlines()[-1]
            self.container("fromscratch", "compile", "--preset", "gpu", "-o", "/tmp/gpu.yaml")
        finally:
            self.image = saved
        return f"{note}; torch, deepspeed, cuda available: {versions}; compiled the gpu preset"

    def main(self) -> int:
        import fcntl

        lock = (CACHE / ".lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("another image-check runs on this machine; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        self.storage = Path(self.args.storage).resolve()
        if self.storage.exists() and any(self.storage.iterdir()):
            raise SystemExit(f"image-check: --storage {self.storage} is not empty")
        self.storage.mkdir(parents=True, exist_ok=True)
        total = time.monotonic()
        ok = False
        try:
            self.phase("engine", self.engine)
            self.phase("base", self.base)
            self.phase("wheels", self.wheels)
            self.phase("build", self.build)
            self.phase("inspect", self.inspect)
            self.phase("import", self.imports)
            self.phase("compile", self.compile)
            self.phase("data_prep", self.data_prep)
            self.phase("pretrain", self.pretrain)
            if self.args.cuda:
                self.phase("cuda_build", self.cuda_build)
                self.phase("cuda_run", self.cuda_run)
            self.phase("cleanup", self.cleanup)
            ok = True
        except CheckFailed as err:
            print(f"image-check: FAILED: {err}", file=sys.stderr, flush=True)
        finally:
            print("\nimage-check: phase times", flush=True)
            for name, secs, note in self.timings:
                print(f"  {name:<10} {secs:7.1f} s  {note}", flush=True)
            print(f"  {'total':<10} {time.monotonic() - total:7.1f} s", flush=True)
            if self.image and hasattr(self, "size_mb"):
                print(f"  image      {self.image}  {self.size_mb:.0f} MB", flush=True)
            print(f"  storage    {self.storage}", flush=True)
        print(f"image-check: {'PASSED' if ok else 'FAILED'}", flush=True)
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=str(REPO / "build" / "image-check"),
                        help="empty host folder mounted at /storage in the container (default build/image-check)")
    parser.add_argument("--steps", type=int, default=4, help="pre-training steps inside the container")
    parser.add_argument("--cuda", action="store_true",
                        help="also build docker/Dockerfile.cuda on the local base (CPU torch) and import the project in it")
    args = parser.parse_args(argv)
    if args.storage == str(REPO / "build" / "image-check"):
        shutil.rmtree(args.storage, ignore_errors=True)
    try:
        return Check(args).main()
    except SystemExit as exit_:
        if exit_.code == NO_ENGINE:
            print("image-check: SKIPPED: no container engine (podman) and it cannot be installed here "
                  "(needs root and apt-get)", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
