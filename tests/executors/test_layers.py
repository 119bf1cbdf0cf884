"""Executors sit below the pipeline: they import nothing from the engine above them."""

from __future__ import annotations

import ast
from pathlib import Path

import spindle.executors

#: What executors may import from spindle: errors, failures, worker state, policies,
#: and one another.
ALLOWED = ("spindle._errors", "spindle._failure", "spindle._worker_state", "spindle.policies")
PACKAGE = Path(spindle.executors.__file__).parent


def spindle_imports(path: Path) -> set[str]:
    """The spindle modules a module imports, relative imports made absolute."""
    package = ["spindle", "executors"]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.update(f"{module}.{a.name}" if not node.module else module for a in node.names)
    return {m for m in found if m == "spindle" or m.startswith("spindle.")}


def test_executors_import_only_what_lies_below_them() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 10  # the package was found

    wrong = {
        f"{path.name}: {m}"
        for path in modules
        for m in spindle_imports(path)
        if not m.startswith(("spindle.executors", *ALLOWED))
    }

    assert not wrong


def test_the_check_sees_an_import_from_the_engine(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("from .._core.stage import Stage\nfrom . import _wire\nimport spindle._api\n")

    assert spindle_imports(module) == {
        "spindle._core.stage",
        "spindle.executors._wire",
        "spindle._api",
    }
