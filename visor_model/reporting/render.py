"""Rendering the report: execute a section notebook with papermill, export notebooks to HTML without code,
and gather the executed sections into one report with a table of contents and figures numbered through."""

from __future__ import annotations

import html
import re
from pathlib import Path

import nbformat
import papermill
from nbconvert import HTMLExporter
from nbformat.v4 import new_markdown_cell

from visor_model.files import write_atomically

TITLE = "VISOR and HiRED: an accuracy-per-FLOP audit"

# The report's page layout, added to nbconvert's: nothing wider than the page (figures scale down, tables wrap
# text and scroll inside their own box as a last resort), compact tables, the claims table with fixed columns.
STYLE = """
.jp-RenderedImage img, .jp-OutputArea-output img { max-width: 100%; height: auto; }
.jp-RenderedHTMLCommon div.report-table { max-width: 100%; overflow-x: auto; margin: 4px 0 14px; }
.jp-RenderedHTMLCommon div.report-table table { table-layout: auto; margin: 0; font-size: 12px; min-width: 40%; }
.jp-RenderedHTMLCommon div.report-table caption { caption-side: top; text-align: left; font-weight: bold;
  padding: 4px 0; }
.jp-RenderedHTMLCommon div.report-table th { overflow-wrap: break-word; vertical-align: bottom; padding: 3px 6px;
  text-align: left; }
.jp-RenderedHTMLCommon div.report-table td { overflow-wrap: break-word; vertical-align: top; padding: 3px 6px;
  text-align: left; }
.jp-RenderedHTMLCommon div.report-table table.verdicts { table-layout: fixed; width: 100%; }
.jp-RenderedHTMLCommon div.report-table table.verdict-counts { table-layout: fixed; width: 100%; font-size: 13px; }
.jp-RenderedHTMLCommon div.report-table td.claim-id { font-family: monospace; font-size: 11px; }
.jp-RenderedHTMLCommon summary { cursor: pointer; }
.jp-RenderedHTMLCommon details.report-fold { margin: 4px 0 12px; }
.jp-RenderedHTMLCommon details.report-fold > summary { font-weight: bold; font-size: 13px; }
.jp-RenderedHTMLCommon div.report-table details[open] { background: #f4f4f4; padding: 2px 4px; }
.jp-RenderedHTMLCommon div.report-table details p { margin: 4px 0 4px 14px; }
"""


def export(notebook, path: Path, title: str = TITLE) -> None:
    notebook.metadata["title"] = title
    body, _ = HTMLExporter(exclude_input=True).from_notebook_node(notebook)
    body = body.replace("</head>", f"<style>{STYLE}</style>\n</head>", 1)
    write_atomically(path, lambda tmp: tmp.write_text(body))


def execute_section(notebook: str, executed: Path, parameters: dict) -> nbformat.NotebookNode:
    executed.parent.mkdir(parents=True, exist_ok=True)
    tmp = executed.with_name(f".{executed.name}.tmp.ipynb")
    try:
        papermill.execute_notebook(notebook, str(tmp), parameters=parameters, kernel_name="python3",
                                   progress_bar=False)
        tmp.replace(executed)
    finally:
        tmp.unlink(missing_ok=True)
    return nbformat.read(executed, as_version=4)


def anchor(title: str) -> str:
    """nbconvert's heading id: the text with spaces as hyphens."""
    return re.sub(r"\s", "-", title.strip())


def renumber_figures(notebook) -> None:
    """Number the figure captions ("**Figure N.**", numbered per section) through the whole report."""
    number = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown")
            if isinstance(text, str) and re.match(r"\*\*Figure \d+\.\*\*", text):
                number += 1
                output["data"]["text/markdown"] = re.sub(r"^\*\*Figure \d+\.\*\*", f"**Figure {number}.**", text)


def gather(notebooks: list[Path]) -> nbformat.NotebookNode:
    """One notebook of every section's cells, in order, with a table of contents of their ## headings before
    the first of them: the cells before it (the title and the headline: the hard-cluster frontier and the
    verdict counts) stay the report's first screen."""
    merged = nbformat.read(notebooks[0], as_version=4)
    for path in notebooks[1:]:
        merged.cells += nbformat.read(path, as_version=4).cells
    renumber_figures(merged)
    headings = [line[3:].strip() for cell in merged.cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if line.startswith("## ")]
    contents = "**Contents:** " + " · ".join(f"[{html.escape(h)}](#{anchor(h)})" for h in headings)
    markdown = [i for i, c in enumerate(merged.cells) if c.cell_type == "markdown"]
    first = next((i for i in markdown if merged.cells[i].source.lstrip().startswith("## ")),
                 markdown[0] + 1 if markdown else 0)
    merged.cells.insert(first, new_markdown_cell(contents))
    return merged
