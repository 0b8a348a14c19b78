"""Small helpers the report notebooks share: load the result tables, write a sentence, show a figure or a
table, or say what is missing instead. Keeps the notebooks to a few calls per section."""

from __future__ import annotations

import html
from types import SimpleNamespace

import pandas as pd

from visor_model.audit.analysis import PALETTE, SERIES, SERIES_LABELS
from visor_model.audit.claims import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, read_table

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


def table(frame: pd.DataFrame, caption: str = "", formats: dict | None = None, otherwise: str = "") -> None:
    """Display a table without its index, with per-column number formats and a caption."""
    from IPython.display import display

    if frame is None or frame.empty:
        if otherwise:
            missing(otherwise)
        return
    styler = frame.style.hide(axis="index").format(formats or {}, na_rep="n/a", precision=2)
    if caption:
        styler = styler.set_caption(caption)
    styler = styler.set_table_styles([{"selector": "caption", "props": "caption-side: top; text-align: left; "
                                                                      "font-weight: bold; padding: 4px 0;"}])
    display(styler)


VERDICT_COLOURS = {REPRODUCED: "#d9f2d9", NOT_REPRODUCED: "#f9d6d5", NOT_TESTABLE: "#eeeeee"}


def verdict_table(frame: pd.DataFrame, caption: str = "") -> None:
    """The claims table with a background colour per verdict."""
    from IPython.display import display

    styler = frame.style.hide(axis="index").format(na_rep="n/a", precision=2)
    if "verdict" in frame:
        styler = styler.map(lambda v: f"background-color: {VERDICT_COLOURS.get(v, 'white')}", subset=["verdict"])
    styler = styler.set_properties(**{"text-align": "left", "vertical-align": "top"})
    if caption:
        styler = styler.set_caption(caption)
    display(styler)


def legend() -> None:
    """The fixed colour of every series (method), as coloured swatches."""
    from IPython.display import HTML, display

    items = "".join(
        f'<span style="display:inline-block;margin:2px 14px 2px 0;"><span style="display:inline-block;width:14px;'
        f'height:14px;background:{PALETTE[SERIES_LABELS[s]]};vertical-align:middle;margin-right:5px;"></span>'
        f"{html.escape(SERIES_LABELS[s])}</span>" for s in SERIES)
    display(HTML(f"<div>{items}</div>"))
