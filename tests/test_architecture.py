"""The package's shape: no import circle anywhere in `workbench/`, and the low layers (tables, records,
plotting, the evaluation engine) import nothing above them. Imports inside functions count; imports
under `if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

from workbench.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "workbench"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(name: str) -> set[str]:
    """The workbench modules `name` imports (the root package `workbench` itself left out)."""
    tree = ast.parse(MODULES[name].read_text())
    found: set[str] = set()
    package = name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from workbench import analysis` imports the module workbench.analysis
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != "workbench" and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            connect(v)
    return out


def layers() -> dict[str, int]:
    """Each module's layer: 0 for modules that import no other workbench module, else 1 + the highest
    layer it imports (defined because there is no circle)."""
    level: dict[str, int] = {}

    def of(m: str) -> int:
        if m not in level:
            level[m] = 1 + max((of(d) for d in GRAPH[m]), default=-1)
        return level[m]

    for m in GRAPH:
        of(m)
    return level


def test_no_import_circle():
    assert _cycles() == [], "import circles (modules that import each other, directly or through others)"


def _closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for d in GRAPH[todo.pop()]:
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def test_low_layers_import_nothing_above_them():
    above = {"workbench.runs", "workbench.train", "workbench.methods", "workbench.study", "workbench.suite",
             "workbench.report", "workbench.analysis", "workbench.samples", "workbench.sliders", "workbench.records",
             "workbench.cli"}
    assert _closure("workbench.tables") == set()
    assert _closure("workbench.records") <= {"workbench.errors"}
    assert not _closure("workbench.plotting") & above, "plotting takes numbers; it imports no analysis"
    assert not _closure("workbench.evaluate") & (above | {"workbench.models", "workbench.config"}), \
        "the evaluation engine imports nothing above it"
    assert not _closure("workbench.data") & (above | {"workbench.models", "workbench.config"})
    assert "workbench.models.mit_weights" not in _closure("workbench.models.encoders")


def test_notebooks_use_run_for_trained_models():
    """`Run` is the only way notebooks get a trained model."""
    import json

    for path in sorted((REPO_ROOT / "notebooks").glob("*.ipynb")):
        code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        for old in ("load_model", "load_checkpoint", "train(", "final.pt"):
            assert old not in code, f"{path.name} uses {old}; get trained models through workbench.runs.Run"
