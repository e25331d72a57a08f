"""The project's own docs (docs/METHOD.md, docs/DATASETS.md): required headings, and every relative link
pointing at an existing file (and, for links into a Markdown file, at an existing heading anchor)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

METHOD_HEADINGS = [
    "# RobustSeg in this workbench",
    "## Notation",
    "## Architecture",
    "## Missing modalities: the zero and drop protocols",
    "## Training pipeline",
    "## Losses",
    "### Cross-entropy and OHEM",
    "### Anymodal Dropout",
    "### Logits distillation (L_KL)",
    "### Class prototypes",
    "### Cross-modal prototype distillation (L_cp)",
    "### Center feature map and IFV map",
    "### IFV distillation (L_ifv)",
    "### ASM: primary-modality selection",
    "### Feedback step (student to teacher)",
    "### The objectives (L_origin, L_hp, L_feedback)",
    "## Evaluation",
    "### mIoU and its two conventions",
    "### All combinations and EMM",
    "### Failure-weighted expectations",
    "### Shapley values",
    "### One-pass evaluation",
    "## Paper conventions and public-code conventions",
    "## Decisions and departures",
    "## The paper's ablation and main table",
]
DATASETS_HEADINGS = [
    "# Datasets in this workbench",
    "## The sample and batch contract",
    "## The synthetic benchmark (SynthDeLiVER)",
    "## DeLiVER",
    "## MUSES",
    "## MCubeS",
    "## Differences from the reference loaders",
    "## Checking a dataset tree",
]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # link text may wrap onto the next line


def _lines_outside_code(text: str) -> list[str]:
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            out.append(line)
    return out


def _headings(path: Path) -> list[str]:
    return [line.rstrip() for line in _lines_outside_code(path.read_text()) if re.match(r"#{1,6} ", line)]


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lowercase, punctuation other than '-' and '_' removed, spaces to '-'."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in _headings(path):
        a = github_anchor(h)
        out.add(a if a not in seen else f"{a}-{seen[a]}")
        seen[a] = seen.get(a, 0) + 1
    return out


def test_github_anchor_examples():
    assert github_anchor("### Cross-modal prototype distillation (L_cp)") == "cross-modal-prototype-distillation-l_cp"
    assert github_anchor("## The paper's ablation and main table") == "the-papers-ablation-and-main-table"
    assert github_anchor("### ASM: primary-modality selection") == "asm-primary-modality-selection"


@pytest.mark.parametrize("name, required", [("METHOD.md", METHOD_HEADINGS), ("DATASETS.md", DATASETS_HEADINGS)])
def test_required_headings_in_order(name, required):
    path = DOCS / name
    assert path.is_file(), f"{path} is missing"
    found = [h for h in _headings(path) if h in required]
    assert found == required, f"{name}: required headings missing or out of order; found {found}"


def test_relative_links_point_at_existing_files_and_anchors():
    bad = []
    for doc in [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]:
        for target in LINK.findall("\n".join(_lines_outside_code(doc.read_text()))):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
                continue
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            if not dest.exists() or ROOT not in (dest, *dest.parents):
                bad.append(f"{doc.name}: {target} (no such file in the repository)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{doc.name}: {target} (no heading with that anchor in {dest.name})")
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_code_links_point_at_their_definitions():
    """README links of the form [`name`](path#Lnnn) land on the line that defines `name`."""
    import ast

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\[`([\w.]+)`\]\(([\w/.]+\.py)#L(\d+)\)", readme)
    assert len(links) >= 15, "the README's table from each term to its function"
    for qual, path, line in links:
        tree = ast.parse((ROOT / path).read_text())
        nodes, node = tree.body, None
        for part in qual.split("."):
            node = next(n for n in nodes if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part)
            nodes = node.body
        assert node.lineno == int(line), f"README links {qual} to {path}#L{line}, but it is defined at line {node.lineno}"
