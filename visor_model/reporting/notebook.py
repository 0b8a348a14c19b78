"""Small helpers the report notebooks share: load the result tables, write a sentence, show a figure or a
table, or say what is missing instead. Keeps the notebooks to a few calls per section."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import pandas as pd

from visor_model.audit.analysis import PALETTE, SERIES, SERIES_LABELS
from visor_model.audit.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, read_table

FIGURE_DPI = 90


def load(summary_path=None, samples_path=None, latency_path=None, claims_path=None) -> SimpleNamespace:
    """The result tables (empty frames for missing files) and the figure style."""
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": FIGURE_DPI, "savefig.dpi": FIGURE_DPI, "font.size": 9})
    return SimpleNamespace(summary=read_table(summary_path), samples=read_table(samples_path),
                           latency=read_table(latency_path), claims=read_table(claims_path))


def say(text: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(text))


def missing(text: str) -> None:
    say(f"*Not shown: {text}*")


_figures = {"n": 0}


def show(fig, caption: str, otherwise: str) -> None:
    """Display a figure with a numbered caption, or the sentence `otherwise` when there is none."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    if fig is None:
        missing(otherwise)
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))
    _figures["n"] += 1
    say(f"**Figure {_figures['n']}.** {caption}")


FOLD_ROWS = 40  # a table with more rows opens with a click (at paper scale the raw tables have hundreds)
FOLD_LINES = 12  # likewise a bulleted list
LONG_WORD = 24  # characters: text columns with longer words (hashes) may break them anywhere


def bullets(title: str, lines: list[str]) -> None:
    """A markdown list after `title`; folded under the title (one line in the page, a click away) when it has
    more than FOLD_LINES items."""
    import mistune
    from IPython.display import HTML, display

    text = "\n".join(f"- {line}" for line in lines)
    if len(lines) <= FOLD_LINES:
        say(f"{title}:\n\n{text}")
        return
    display(HTML(f'<details class="report-fold"><summary>{html.escape(title)} ({len(lines)} items)</summary>'
                 f"{mistune.html(text)}</details>"))


def table(frame: pd.DataFrame, caption: str = "", formats: dict | None = None, otherwise: str = "") -> None:
    """Display a table without its index, with per-column number formats and a caption. Numbers stay on one
    line, text wraps; a table still wider than the page scrolls inside its own box (class `report-table`, styled
    by `render.STYLE`), so the page never does. Tables of more than FOLD_ROWS rows are folded under their
    caption."""
    from IPython.display import HTML, display

    if frame is None or frame.empty:
        if otherwise:
            missing(otherwise)
        return
    styler = frame.style.hide(axis="index").format(formats or {}, na_rep="n/a", precision=2)
    numbers = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    if numbers:
        styler = styler.set_properties(subset=numbers, **{"white-space": "nowrap", "text-align": "right"})
    unbroken = [c for c in frame.columns if c not in numbers
                and frame[c].astype(str).str.split().explode().str.len().max() > LONG_WORD]
    if unbroken:  # hashes and the like: broken anywhere rather than widening the table past the page
        styler = styler.set_properties(subset=unbroken, **{"word-break": "break-all"})
    if caption:
        styler = styler.set_caption(caption)
    box = f'<div class="report-table">{styler.to_html()}</div>'
    if len(frame) > FOLD_ROWS:
        box = (f'<details class="report-fold"><summary>{html.escape(caption or "Table")} ({len(frame)} rows)'
               f"</summary>{box}</details>")
    display(HTML(box))


VERDICT_COLOURS = {REPRODUCED: "#d9f2d9", NOT_REPRODUCED: "#f9d6d5", INCONCLUSIVE: "#fff2cc",
                   NOT_TESTABLE: "#eeeeee"}
SHORT_CLAIM = 64  # characters of the claim shown in the table's row; the full text is in the row's details


def shorten(text: str, limit: int = SHORT_CLAIM) -> str:
    """The text cut at a word boundary to at most `limit` characters, with an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(") + " …"


def claim_anchor(claim_id) -> str:
    """The HTML id of a claim's row in the claims table, which the verdict counts link to."""
    return "claim-" + re.sub(r"[^A-Za-z0-9_-]", "-", str(claim_id))


def _cell(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and value != value) else html.escape(str(value))


def _verdict_cell(verdict) -> str:
    verdict = "" if verdict is None or verdict != verdict else str(verdict)
    return (f'<td class="verdict" style="background-color: {VERDICT_COLOURS.get(verdict, "white")}">'
            f"{_cell(verdict)}</td>")


def verdict_html(frame: pd.DataFrame, caption: str = "") -> str:
    """The claims table, one row per claim: id, claim (shortened), the paper's value, the reproduced value with
    its CI (with the FLOP basis of a claim that compares compute, column `flop_basis`: LLM prefill only, or
    prefill with the vision tower), and the verdict on its colour; where the audit has VISOR runs at half its
    training budget, the verdict on those (`at_half_budget`) beside it. The claim's full text, reason, details,
    test, source and provenance open from the row (a <details> element). `frame`: the claims audit with a
    `reproduced` column (formatted)."""
    half = "at_half_budget" in frame and frame["at_half_budget"].fillna("").astype(str).str.strip().any()
    rows = []
    for claim in frame.to_dict("records"):
        interval = claim.get("interval")
        facts = [("Reason", claim.get("reason")), ("Details", claim.get("detail")), ("Needs", claim.get("test")),
                 ("Interval shown", interval if interval != "95% CI" else None),  # e.g. a decision range
                 ("FLOP basis", claim.get("flop_basis")),
                 ("Source", claim.get("source")), ("Provenance", claim.get("provenance"))]
        body = "".join(f"<p><b>{name}:</b> {_cell(value)}</p>" for name, value in facts
                       if isinstance(value, str) and value)
        text = str(claim["claim"])
        flops = claim.get("flop_basis")
        basis = f"<br><small>FLOPs: {html.escape(flops)}</small>" if isinstance(flops, str) and flops else ""
        full = f"<p>{html.escape(text)}</p>" if shorten(text) != text else ""  # the whole claim, where cut
        rows.append(
            f'<tr><td class="claim-id" id="{claim_anchor(claim["id"])}">{_cell(claim["id"])}</td>'
            f'<td><details><summary title="{html.escape(text)}">{html.escape(shorten(text))}'
            f"</summary>{full}{body}</details></td>"
            f'<td>{_cell(claim.get("paper_value"))}</td><td>{_cell(claim.get("reproduced"))}{basis}</td>'
            + _verdict_cell(claim.get("verdict", ""))
            + (_verdict_cell(claim.get("at_half_budget")) if half else "") + "</tr>")
    names = ("id", "claim (click for the reason)", "paper's value", "reproduced [95% CI]", "verdict")
    widths = (16, 42, 11, 15, 16)
    if half:
        names, widths = names + ("at half VISOR training",), (14, 36, 10, 14, 13, 13)
    head = "".join(f"<th>{name}</th>" for name in names)
    columns = "".join(f'<col style="width: {w}%">' for w in widths)
    caption = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<div class="report-table"><table class="verdicts">{caption}<colgroup>{columns}'
            f"</colgroup><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def verdict_table(frame: pd.DataFrame, caption: str = "") -> None:
    """Display `verdict_html(frame)`."""
    from IPython.display import HTML, display

    display(HTML(verdict_html(frame, caption)))


# One sentence per verdict group on the report's first screen: what the verdict means.
VERDICT_MEANINGS = {
    REPRODUCED: "the whole 95% CI of the reproduced value meets the claim",
    NOT_REPRODUCED: "none of the 95% CI meets the claim",
    INCONCLUSIVE: "the CI straddles what the claim needs, or VISOR's training failed its quality gate",
    NOT_TESTABLE: "the claim needs a checkpoint, hardware or runs this profile does not have",
}
LINKED_CLAIMS = 20  # a verdict group with more claims links to the claims table instead of to each one


def verdict_counts_html(claims: pd.DataFrame, table_anchor: str) -> str:
    """The verdict counts, one line per verdict group on its colour: the count, what the verdict means and
    links to the group's claims (their rows in the claims table) or, for a group of more than LINKED_CLAIMS,
    to the claims table (`table_anchor`)."""
    rows = []
    for verdict, meaning in VERDICT_MEANINGS.items():
        ids = claims.loc[claims["verdict"] == verdict, "id"].astype(str).tolist()
        if not ids:
            links = ""
        elif len(ids) <= LINKED_CLAIMS:
            links = ": " + ", ".join(f'<a href="#{claim_anchor(i)}">{html.escape(i)}</a>' for i in ids)
        else:
            links = f': <a href="#{table_anchor}">their reasons are in the claims table</a>'
        rows.append(f'<tr><td class="verdict" style="background-color: {VERDICT_COLOURS[verdict]}">'
                    f"<b>{len(ids)} {html.escape(verdict)}</b></td><td>{html.escape(meaning)}{links}.</td></tr>")
    caption = f"<caption>Verdicts on the {len(claims)} audited claims</caption>"
    return (f'<div class="report-table"><table class="verdict-counts">{caption}<colgroup><col style="width: 22%">'
            f"<col></colgroup><tbody>{''.join(rows)}</tbody></table></div>")


def verdict_counts(claims: pd.DataFrame, table_anchor: str) -> None:
    """Display `verdict_counts_html(claims, table_anchor)`."""
    from IPython.display import HTML, display

    display(HTML(verdict_counts_html(claims, table_anchor)))


def legend() -> None:
    """The fixed colour of every series (method), as coloured swatches."""
    from IPython.display import HTML, display

    items = "".join(
        f'<span style="display:inline-block;margin:2px 14px 2px 0;"><span style="display:inline-block;width:14px;'
        f'height:14px;background:{PALETTE[SERIES_LABELS[s]]};vertical-align:middle;margin-right:5px;"></span>'
        f"{html.escape(SERIES_LABELS[s])}</span>" for s in SERIES)
    display(HTML(f"<div>{items}</div>"))
