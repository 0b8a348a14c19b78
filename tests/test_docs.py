"""The README and docs/: every repository path they name exists, and the README stays a front door (a Quick start
of two commands, at most README_LINES lines)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_LINES = 170
# Folders the workflow writes (git-ignored): paths into them name outputs, not repository files.
OUTPUTS = ("results", "reports", "resources", "logs", "benchmarks", ".venv")

INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def named_paths(path: Path, repo: Path = REPO) -> set[str]:
    """The repository paths a markdown file names, relative to the repository root: inline code that looks like
    a path (a `/` and no spaces, placeholders or options; relative to the root) and relative link targets
    (relative to the file). Fenced blocks (commands, examples) are not read."""
    text = FENCE.sub("", path.read_text())
    paths = set()
    for code in INLINE_CODE.findall(text):
        code = code.rstrip(".,:;")
        if "/" not in code or re.search(r"[\s<>{}*=:]", code) or code.startswith(("http", "-", "/", "~")):
            continue
        if code.split("/")[0] in OUTPUTS:
            continue
        if not (repo / code.split("/")[0]).exists() and code.count("/") == 1:
            continue  # a hub id such as llava-hf/llava-v1.6-vicuna-7b-hf
        paths.add(code.rstrip("/"))
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if not target or re.match(r"[a-z]+:", target):  # anchors, URLs
            continue
        paths.add(str((path.parent / target).resolve().relative_to(repo.resolve())))
    return paths


def test_every_path_the_readme_and_docs_name_exists():
    missing = {f"{doc.relative_to(REPO)}: {name}" for doc in DOCS for name in named_paths(doc)
               if not (REPO / name).exists()}
    assert not missing, "paths named in the documentation that do not exist:\n" + "\n".join(sorted(missing))


def test_named_paths_reads_code_and_links_but_not_commands_or_outputs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "config").mkdir()
    doc = tmp_path / "docs" / "page.md"
    doc.write_text("See `config/claims.yaml`, `results/summary.csv`, `llava-hf/llava-v1.6-vicuna-7b-hf`,\n"
                   "`visor.budgets: {full: 1.0}`, [the README](../README.md#quick-start), [web](https://x.org/a),\n"
                   "`docs/gone.md`.\n\n```bash\npython tests/not_read.py\n```\n")
    assert named_paths(doc, tmp_path) == {"config/claims.yaml", "README.md", "docs/gone.md"}


def test_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines (at most {README_LINES}): move to docs/"
    assert lines[0].startswith("# ")
    quick = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", quick, re.S | re.M)
    assert blocks == [("bash", "bash install.sh && . .venv/bin/activate && snakemake --cores all reports/final.html\n"),
                      ("bash", "bash install.sh && .venv/bin/python -m pytest\n")]
    linked = {name for name in named_paths(REPO / "README.md") if name.startswith("docs/")}
    assert {str(doc.relative_to(REPO)) for doc in DOCS[1:]} <= linked, "a page of docs/ the README does not link"
