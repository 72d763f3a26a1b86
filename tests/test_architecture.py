"""The stage folders form a strict stack and no modules import each other in a circle."""

from __future__ import annotations

from pathlib import Path

from tests.import_rules import import_cycles, project_imports, upward_imports

REPO = Path(__file__).resolve().parents[1]


def test_no_module_imports_a_stage_that_runs_after_it():
    assert upward_imports(project_imports(REPO)) == []


def test_no_import_circles():
    assert import_cycles(project_imports(REPO)) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"components/__init__.py": "", "pipelines/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_check_names_an_upward_import_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "components/data_prep/__init__.py": "",
        "components/data_prep/step.py": "def f():\n    from components.rlvr.verifiers import score\n",
        "components/rlvr/__init__.py": "",
        "components/rlvr/verifiers.py": "from components.data_prep import step\n",
    })
    found = upward_imports(project_imports(root))
    assert len(found) == 1
    assert "step.py:2: components.data_prep.step imports components.rlvr.verifiers" in found[0]
    assert import_cycles(project_imports(root)) == [["components.data_prep.step", "components.rlvr.verifiers"]]


def test_the_check_finds_a_circle_within_one_layer_and_allows_the_stack(tmp_path):
    root = _tree(tmp_path, {
        "components/common/__init__.py": "",
        "components/common/a.py": "from components.common import b\n",
        "components/common/b.py": "import components.common.c\n",
        "components/common/c.py": "def f():\n    from components.common.a import x\n",
        "components/sft/__init__.py": "",
        "components/sft/step.py": "from components.common import a\n",
        "pipelines/cli.py": "from components.sft import step\n",
    })
    imports = project_imports(root)
    assert upward_imports(imports) == []
    assert import_cycles(imports) == [["components.common.a", "components.common.b", "components.common.c"]]
