"""The layout a newcomer reads: sub-packages by concern with docstrings, imports one way, small
modules, and nothing that points outside the repository."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

PIPELINE = REPO / "pipeline"
# what each sub-package may import from the others (the rule in pipeline/__init__.py)
ALLOWED = {
    "model": set(),
    "data": set(),
    "tracking": set(),
    "batch": {"model", "data", "tracking"},
    "serve": {"model", "data"},
    "experiments": {"batch", "tracking", "model", "data"},
    "testbed": {"model", "experiments", "tracking"},
}
MAX_LINES = 450
OUTSIDE = "../" + "shared"  # the folder beside a clone, which users of the repository do not have


def _pipeline_imports(path) -> set[str]:
    """Sub-packages of ``pipeline`` that the module imports (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return found - {"configs"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_sub_packages_import_one_way_and_say_what_they_own(package):
    folder = PIPELINE / package
    assert ast.get_docstring(ast.parse((folder / "__init__.py").read_text())), f"{package}/__init__.py has no docstring"
    for module in folder.glob("*.py"):
        others = _pipeline_imports(module) - {package}
        assert others <= ALLOWED[package], f"{module.relative_to(REPO)} imports {sorted(others - ALLOWED[package])}"
        assert len(module.read_text().splitlines()) <= MAX_LINES, f"{module.relative_to(REPO)} is over {MAX_LINES} lines"
        assert ast.get_docstring(ast.parse(module.read_text())), f"{module.relative_to(REPO)} has no docstring"


def test_model_and_data_import_without_ray_or_mlflow():
    # the GPU machine has torch and transformers only: the model path must stand alone
    code = (
        "import sys, pipeline.model.replica, pipeline.model.builtin, pipeline.data.sources, pipeline.data.images; "
        "print(sorted({'ray', 'mlflow', 'fastapi'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


def test_nothing_refers_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout.split()
    for name in tracked:
        path = REPO / name
        if path.suffix in (".py", ".md", ".yaml", ".yml", ".toml", "") and path.is_file():
            text = path.read_text(errors="ignore")
            assert OUTSIDE not in text and "shared" + "/DESIGN" not in text, name
