"""The package's shape: imports run one way (the measurements, `visor_model.efficiency`, and the methods,
`visor_model.methods`, import neither the audit nor the report; statistics they share with the audit are in
`visor_model.stats`), and no module is over 600 lines. Read from the source with ast: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LOWER = ("visor_model/efficiency", "visor_model/methods")  # packages that must not import the ones above them
UPPER = ("visor_model.audit", "visor_model.reporting")
MAX_LINES = 600


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (inside functions too); for
    `from package import name` both `package` and `package.name` (the name may be a submodule)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def upward_imports(folders=LOWER, forbidden=UPPER, root: Path = REPO) -> dict[str, list[str]]:
    """{module path: the forbidden modules it imports} over the .py files under `folders` (relative to `root`)."""
    found = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            bad = sorted(name for name in imported_modules(path)
                         if any(name == top or name.startswith(top + ".") for top in forbidden))
            if bad:
                found[str(path.relative_to(root))] = bad
    return found


def long_modules(folders=("visor_model", "lmms_plugins"), root: Path = REPO) -> dict[str, int]:
    """{module path: lines} of the modules over MAX_LINES lines."""
    lengths = {str(path.relative_to(root)): len(path.read_text().splitlines())
               for folder in folders for path in sorted((root / folder).rglob("*.py"))}
    return {path: n for path, n in lengths.items() if n > MAX_LINES}


def test_efficiency_and_methods_import_neither_the_audit_nor_the_report():
    assert upward_imports() == {}, "modules importing upwards (move what they share to visor_model.stats)"


def test_no_module_is_over_600_lines():
    assert long_modules() == {}, f"modules over {MAX_LINES} lines: split them by concern"


@pytest.mark.parametrize("line", ["from visor_model.audit.analysis import pareto_mask",
                                  "import visor_model.reporting.figures",
                                  "from visor_model import audit",
                                  "def f():\n    from visor_model.audit import claims"])
def test_an_upward_import_is_named_with_its_module(tmp_path, line):
    module = tmp_path / "visor_model" / "methods" / "toy.py"
    module.parent.mkdir(parents=True)
    module.write_text(f"from visor_model.stats import pareto_mask\n{line}\n")
    (tmp_path / "visor_model" / "efficiency").mkdir()
    found = upward_imports(root=tmp_path)
    assert list(found) == ["visor_model/methods/toy.py"]
    assert all(name.startswith(UPPER) for name in found["visor_model/methods/toy.py"])


def test_a_long_module_is_named_with_its_length(tmp_path):
    (tmp_path / "visor_model").mkdir()
    (tmp_path / "lmms_plugins").mkdir()
    (tmp_path / "visor_model" / "short.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "lmms_plugins" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_modules(root=tmp_path) == {"lmms_plugins/long.py": MAX_LINES + 1}
