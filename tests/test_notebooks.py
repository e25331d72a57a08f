"""The notebooks and their suite (`workbench.suite`): clean sources, every notebook executed by papermill
with the smoke profile through `python -m workbench suite`, the report, and the failure path."""

from __future__ import annotations

import ast
import json
import time

import nbformat
import pytest

from workbench import suite
from workbench.paths import REPO_ROOT

NOTEBOOK_PATHS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOK_PATHS]
COMMON_PARAMETERS = {"profile", "seed", "dataset", "data_root", "device"}


def _notebook(cells: list[str], params: str = 'profile = "smoke"\n') -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# test notebook"), p] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture
def jupyter_path(monkeypatch):
    """`ensure_kernel` prepends a private kernel folder to JUPYTER_PATH: undo it after the test."""
    import os

    monkeypatch.setenv("JUPYTER_PATH", os.environ.get("JUPYTER_PATH", ""))


def test_registry_lists_every_notebook():
    assert NAMES == [nb.name for nb in suite.NOTEBOOKS], "notebooks/ and workbench.suite.NOTEBOOKS disagree"
    assert len(NAMES) == 8
    assert suite.NOTEBOOKS[0].name == "01_training"
    assert all("01_training" in nb.needs for nb in suite.NOTEBOOKS[1:])


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=NAMES)
def test_notebook_source_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "a notebook opens with a markdown header"
    assert "How to read it" in first.source
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0] == 1, "the parameters cell comes right after the header"
    params = {}
    for stmt in ast.parse(nb.cells[tagged[0]].source).body:  # literals only: injected values are not recomputed
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name), \
            f"{path.name}: the parameters cell holds only `name = literal` lines"
        params[stmt.targets[0].id] = ast.literal_eval(stmt.value)
    assert COMMON_PARAMETERS <= set(params), f"{path.name} lacks {COMMON_PARAMETERS - set(params)}"
    assert params["profile"] == "smoke"
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None, f"{path.name}: committed with outputs"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_profile_parameters_are_declared():
    """Every parameter the suite injects per profile exists in that notebook (else it would be dropped)."""
    import papermill as pm

    declared = {p.stem: set(pm.inspect_notebook(str(p))) for p in NOTEBOOK_PATHS}
    for profile, table in suite.PROFILE_PARAMS.items():
        for name, params in table.items():
            targets = declared if name == "*" else {name: declared[name]}
            for nb_name, names in targets.items():
                assert set(params) <= names, f"{profile}/{nb_name}: {set(params) - names} not declared"


@pytest.fixture(scope="module")
def smoke_suite(tmp_path_factory):
    """`python -m workbench suite --profile smoke`, once for the module (runs and figures in temp folders)."""
    import os

    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_RUNS", str(base / "runs"))
        mp.setenv("WORKBENCH_FIGURES", str(base / "figures"))
        mp.setenv("JUPYTER_PATH", os.environ.get("JUPYTER_PATH", ""))
        out = base / "suite-smoke"
        t0 = time.perf_counter()
        rc = suite.main(["--profile", "smoke", "--out", str(out)])
        seconds = time.perf_counter() - t0
    return {"rc": rc, "out": out, "figures": base / "figures", "seconds": seconds}


@pytest.mark.slow
def test_smoke_suite_passes_in_budget(smoke_suite):
    assert smoke_suite["rc"] == 0, f"the smoke suite failed; executed notebooks in {smoke_suite['out']}"
    assert smoke_suite["seconds"] < 180, f"smoke suite took {smoke_suite['seconds']:.0f} s (budget 180 s)"
    report = (smoke_suite["figures"] / "REPORT.md").read_text()
    for name in NAMES:
        assert f"## {name}" in report
    assert "git commit" in report and "| torch |" in report and "config</summary>" in report
    html = (smoke_suite["figures"] / "REPORT.html").read_text()
    assert html.count("<img ") >= len(NAMES) and "<table" in html


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_with_smoke_profile(smoke_suite, name):
    executed = smoke_suite["out"] / f"{name}.ipynb"
    assert executed.exists(), f"{name} was not executed"
    nb = nbformat.read(executed, as_version=4)
    assert nb.metadata["papermill"]["parameters"]["profile"] == "smoke"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    assert nb.metadata["papermill"].get("exception") in (None, False)
    index = json.loads((smoke_suite["figures"] / "smoke" / name / "index.json").read_text())
    figures = [e for e in index["entries"] if e["kind"] == "figure"]
    assert figures, f"{name} saved no figure"
    for e in figures:
        assert {"png", "pdf", "csv"} <= set(e["files"]), f"{name}/{e['name']}: PNG, PDF and CSV expected"
    for e in index["entries"]:
        for rel in e["files"].values():
            assert (smoke_suite["figures"] / "smoke" / name / rel).stat().st_size > 0


@pytest.mark.slow
def test_suite_reports_a_failing_notebook(tmp_path, capsys, jupyter_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nbformat.write(_notebook(["print('first')"]), nbdir / "a_ok.ipynb")
    nbformat.write(_notebook(["x = 1", "raise ValueError('boom from the test')"]), nbdir / "b_fails.ipynb")
    nbformat.write(_notebook(["print(profile)"]), nbdir / "c_ok.ipynb")
    out = tmp_path / "executed"
    rc = suite.main(["--profile", "smoke", "--notebooks", str(nbdir), "--out", str(out)])
    text = capsys.readouterr().err  # the suite's progress and failures are log messages (stderr)
    assert rc != 0
    assert "(2/3) b_fails: FAILED" in text and "(3/3) c_ok: ok" in text, "a failure must not stop the others"
    failures = text.split("FAILED b_fails")[1]
    assert "ValueError: boom from the test" in failures
    assert str(out / "b_fails.ipynb") in failures
    assert "raise ValueError('boom from the test')" in failures, "the failing cell's source is shown"
    assert "FAILED a_ok" not in text and "FAILED c_ok" not in text
    assert (out / "b_fails.ipynb").exists() and (out / "c_ok.ipynb").exists()
    from workbench.paths import figures_dir

    report = (figures_dir() / "REPORT.md").read_text()
    assert "## Failures" in report and "b_fails" in report and "boom from the test" in report


@pytest.mark.slow
def test_dependents_of_a_failed_notebook_are_skipped(tmp_path, jupyter_path):
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    nbformat.write(_notebook(["raise RuntimeError('training broke')"]), nbdir / "train.ipynb")
    nbformat.write(_notebook(["print('uses training')"]), nbdir / "uses.ipynb")
    outcomes = suite.run_suite([suite.Notebook("train"), suite.Notebook("uses", ("train",))], nbdir,
                               tmp_path / "out", "smoke")
    assert [o.status for o in outcomes] == ["failed", "skipped"]
    assert "In [" in outcomes[0].cell and "training broke" in outcomes[0].error
    assert "train" in outcomes[1].error
    paths = suite.write_report(outcomes, "smoke", 1.0, root=tmp_path / "figures")
    report = paths["md"].read_text()
    assert "## Failures" in report and "training broke" in report and "skipped" in report


def test_select_and_params():
    nbs = list(suite.NOTEBOOKS)
    assert [nb.name for nb in suite.select(nbs, ["03", "01_training"])] == ["01_training", "03_combinations"]
    with pytest.raises(KeyError, match="matches no"):
        suite.select(nbs, ["99"])
    with pytest.raises(KeyError, match="several"):
        suite.select(nbs, ["0"])
    assert suite._param("seeds=[0,1]") == ("seeds", [0, 1])
    assert suite._param("dataset=deliver") == ("dataset", "deliver")
    params = suite.parameters_for(REPO_ROOT / "notebooks" / "02_ablations.ipynb", "02_ablations", "quick", {"seed": 3})
    assert params == {"profile": "quick", "methods": None, "seeds": [0], "seed": 3}
    params = suite.parameters_for(REPO_ROOT / "notebooks" / "06_sliders.ipynb", "06_sliders", "paper", {})
    assert params == {"profile": "paper", "dataset": "deliver", "data_root": "data/DELIVER"}
