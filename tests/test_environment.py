"""environment.yml (conda) names the same packages as pyproject.toml, and every conda spec parses."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_TO_PYPI = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's
SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<ver>(==|>=|<=|=|>|<|!=)\s*[0-9][0-9A-Za-z.*]*"
                  r"(\s*,\s*(==|>=|<=|>|<|!=)\s*[0-9][0-9A-Za-z.*]*)*)?$")


def _name(spec: str) -> str:
    return re.split(r"[\s<>=!\[]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = {_name(d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_specs = [d for d in env["dependencies"] if isinstance(d, str)]
    for spec in conda_specs:
        assert SPEC.match(spec), f"conda spec {spec!r} does not parse as 'name[op version]'"
    conda = {CONDA_TO_PYPI.get(_name(s), _name(s)) for s in conda_specs} - {"python", "pip"}
    assert conda == pypi, f"only in environment.yml: {sorted(conda - pypi)}; only in pyproject: {sorted(pypi - conda)}"
    # the versions agree too
    lower = {_name(d): d for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    for spec in conda_specs:
        name = CONDA_TO_PYPI.get(_name(spec), _name(spec))
        if name in lower:
            assert spec.split(_name(spec), 1)[1].replace(" ", "") == lower[name].split(name, 1)[1].replace(" ", ""), spec
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section


def test_ci_runs_make_test_and_readme_shows_both_commands():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make suite" in readme and "make test" in readme


def test_every_package_the_workbench_imports_is_declared():
    """A module imported by workbench/ comes from a package named in pyproject.toml (and so, by the test
    above, in environment.yml), not only as a dependency of another package (safetensors and mistune did)."""
    import ast
    import importlib.metadata
    import sys

    imported = set()
    for path in (ROOT / "workbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    imported -= set(sys.stdlib_module_names) | {"workbench"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(d) for d in project["dependencies"]}
    declared |= {_name(d) for extra in project["optional-dependencies"].values() for d in extra}
    providers = importlib.metadata.packages_distributions()
    missing = {m: providers.get(m) for m in imported
               if not {_name(p) for p in providers.get(m, [m])} & declared}
    assert not missing, f"imported by workbench/ but not declared in pyproject.toml: {missing}"
    assert {"safetensors", "mistune"} <= declared
