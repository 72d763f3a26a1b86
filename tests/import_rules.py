"""The project's layering, as data and as a check (tests/test_architecture.py runs it).

Stage folders form a stack in pipeline order; a module may import its own layer and the
layers below it, never one above. ``pipelines`` sits on top of every stage. Imports inside
functions count too: a lazy import still ties the two modules together.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# Bottom to top. ``label`` serves pairs from any checkpoint, so it sits above evaluation.
LAYERS: tuple[str, ...] = (
    "components.common",
    "components.data_prep",
    "components.pretrain",
    "components.sft",
    "components.preference",
    "components.rlvr",
    "components.evaluate",
    "components.label",
    "pipelines",
)
PACKAGES = ("components", "pipelines")


@dataclass(frozen=True)
class Import:
    """One import statement of a project module: who imports what, where."""

    module: str
    target: str
    path: Path
    line: int


def layer_of(module: str) -> int | None:
    """The index in ``LAYERS`` of the layer a dotted module name belongs to."""
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return None


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports(root: Path) -> list[Import]:
    """Every import of a project module by a project module, with its line."""
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(root, path)
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    targets = [node.module]
                    # ``from components.common import storage`` imports the module storage
                    targets += [f"{node.module}.{alias.name}" for alias in node.names]
                elif isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                else:
                    continue
                for target in targets:
                    if target.split(".")[0] in PACKAGES and _exists(root, target):
                        found.append(Import(module, target, path, node.lineno))
    return found


def _exists(root: Path, module: str) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def upward_imports(imports: list[Import]) -> list[str]:
    """Imports of a layer above the importer's, as ``file:line: a imports b (layer)``."""
    out = []
    for imp in imports:
        source, target = layer_of(imp.module), layer_of(imp.target)
        if source is not None and target is not None and target > source:
            out.append(
                f"{imp.path}:{imp.line}: {imp.module} imports {imp.target}, which runs after it "
                f"({LAYERS[source]} < {LAYERS[target]})"
            )
    return out


def import_cycles(imports: list[Import]) -> list[list[str]]:
    """Groups of modules that import each other, directly or around a circle (Tarjan's SCC)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.module and not imp.module.startswith(imp.target + "."):
            graph.setdefault(imp.module, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles
