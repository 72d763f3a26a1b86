"""Compiled pipelines: compile the project's pipeline to KFP IR YAML and read one back.

What tests, the CLI (``compile``, ``submit``, ``upload``) and people reviewing a YAML look at:
each task's image, resources, environment and Kubernetes platform settings as the cluster
will see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.common.config import Config
from pipelines.pipeline import build_pipeline


@dataclass
class CompiledTask:
    """One task of a compiled pipeline, as the cluster will see it."""

    name: str
    image: str
    resources: dict[str, Any]
    env: dict[str, str]
    kubernetes: dict[str, Any]


@dataclass
class CompiledPipeline:
    path: Path
    spec: dict[str, Any]
    platform: dict[str, Any]

    @property
    def parameters(self) -> dict[str, Any]:
        """Pipeline parameters and their defaults."""
        params = self.spec["root"].get("inputDefinitions", {}).get("parameters", {})
        return {name: p.get("defaultValue") for name, p in params.items()}

    @property
    def tasks(self) -> dict[str, CompiledTask]:
        executors = self.spec["deploymentSpec"]["executors"]
        k8s = self.platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        out = {}
        for name, task in self.spec["root"]["dag"]["tasks"].items():
            label = self.spec["components"][task["componentRef"]["name"]]["executorLabel"]
            container = executors[label]["container"]
            out[name] = CompiledTask(
                name=name,
                image=container["image"],
                resources=container.get("resources", {}),
                env={e["name"]: e["value"] for e in container.get("env", [])},
                kubernetes=k8s.get(label, {}),
            )
        return out


def compile_pipeline(cfg: Config, output: str | Path) -> CompiledPipeline:
    """Compile ``build_pipeline(cfg)`` to IR YAML at ``output`` and read it back."""
    from kfp import compiler


    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(cfg), str(output))
    return read_compiled(output)


def read_compiled(path: str | Path) -> CompiledPipeline:
    """Parse an IR YAML (pipeline spec, then the optional platform spec document)."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    spec = docs[0]
    platform = next((d for d in docs[1:] if "platforms" in d), {})
    return CompiledPipeline(path=Path(path), spec=spec, platform=platform)
