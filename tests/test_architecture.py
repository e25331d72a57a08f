"""The package's shape: no import circle anywhere in `workbench/`, and the low layers (tables, records,
plotting, the evaluation engine) import nothing above them. Imports inside functions count; imports
under `if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
import re
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
    above = {"workbench.runs", "workbench.train", "workbench.study", "workbench.suite",
             "workbench.report", "workbench.analysis", "workbench.samples", "workbench.sliders", "workbench.records",
             "workbench.cli"} | {m for m in MODULES if m.startswith("workbench.methods")}
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


# -- one definition of each idea -------------------------------------------------------------------------------

TERM_NAMES = {"kd", "cp", "ifv", "kd_weight", "cp_weight", "ifv_weight", "share_kd", "share_cp", "share_ifv"}
TERMS_HOME = "workbench.methods.robustseg"  # where `TERMS`, the one table of the distillation terms, lives


def _term_lists(tree: ast.AST) -> list[int]:
    """Lines of literal collections (tuple, list, set, dict keys) that spell two or more distillation terms."""
    lines = []
    for node in ast.walk(tree):
        items = node.keys if isinstance(node, ast.Dict) else node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) \
            else None
        if items is None:
            continue
        names = {k.value for k in items if isinstance(k, ast.Constant) and isinstance(k.value, str)}
        if len(names & TERM_NAMES) >= 2:
            lines.append(node.lineno)
    return lines


def test_the_distillation_terms_are_listed_only_in_their_table():
    """{kd, cp, ifv} (or their weight / share fields) are spelled out once, in `TERMS`; every other module
    iterates the table (a new term is one line there)."""
    found = {name: lines for name, path in MODULES.items() if name != TERMS_HOME
             and (lines := _term_lists(ast.parse(path.read_text())))}
    assert found == {}, f"modules that list the distillation terms instead of iterating methods.robustseg.TERMS: {found}"


def _defined(name: str) -> set[str]:
    return {m for m, path in MODULES.items() for node in ast.parse(path.read_text()).body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name}


def test_one_registry_per_kind_and_one_definition_of_each_idea():
    assert _defined("build_method") == {"workbench.methods"}, "methods are built from the METHODS registry only"
    assert _defined("METHODS") == set() and {m for m in MODULES if m.endswith(("comparators", "weighting"))} == set()
    assert _defined("shapley") == {"workbench.evaluate"}
    assert _defined("dropout_mask") == {"workbench.methods.base"}
    assert _defined("check_device") == {"workbench.options"}
    assert not any(m.startswith("workbench.methods") for m in GRAPH["workbench.config"])
    for name in ("workbench.cli", "workbench.suite"):  # the command line imports the suite, never the reverse
        assert "workbench.cli" not in _closure("workbench.suite"), name
    assert "add_arguments" not in {n.name for n in ast.parse(MODULES["workbench.suite"].read_text()).body
                                   if isinstance(n, ast.FunctionDef)}, "the suite command lives in commands/suite.py"


def layer_listing(width: int = 110) -> list[str]:
    """The README's layer listing: per layer, its modules (without the `workbench.` prefix), wrapped."""
    by: dict[int, list[str]] = {}
    for m, level in layers().items():
        if m != "workbench.__main__":
            by.setdefault(level, []).append(m.removeprefix("workbench."))
    out = []
    for level in sorted(by):
        line = f"  {level:>2}  "
        for name in sorted(by[level]):
            if len(line) + len(name) + 1 > width:
                out.append(line.rstrip())
                line = " " * 6
            line += name + " "
        out.append(line.rstrip())
    return out


def test_the_readme_lists_the_layers_as_they_are():
    readme = (REPO_ROOT / "README.md").read_text().splitlines()
    listed = [line for line in readme if re.match(r"^  ( \d|\d\d)  \S|^      \S", line)]
    expected = layer_listing()
    assert listed == expected, "README's layer listing is stale; replace it with:\n" + "\n".join(expected)
