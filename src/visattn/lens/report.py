"""One self-contained HTML page per lens run: figures embedded as base64 PNG, metrics as tables, no external files.

``Report`` collects what a run produced; :meth:`Report.html` renders it and :meth:`Report.write` saves it. Text is
HTML-escaped, so model names or paths cannot break the page.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
figure { margin: 1em 0 2em; }
figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; }
"""


@dataclass(frozen=True)
class Picture:
    """A PNG figure with a title and a caption."""

    title: str
    png: bytes
    caption: str = ""

    def __post_init__(self) -> None:
        if not self.png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"picture {self.title!r}: png must be PNG-encoded bytes")


@dataclass
class Report:
    """What one lens run produced.

    Attributes:
        title: page title.
        info: run facts shown first (model, image, layers, ...), in order.
        per_layer: metric name -> {layer: value}, shown as one table with a row per layer.
        summary: single values or short texts (e.g. the phases), shown as a two-column table.
        pictures: figures, in order.
        notes: paragraphs of plain text (e.g. why a metric was skipped).
    """

    title: str
    info: dict[str, str] = field(default_factory=dict)
    per_layer: dict[str, dict[int, float]] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)
    pictures: list[Picture] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def html(self) -> str:
        """The page as a string."""
        esc = html.escape
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title><style>{STYLE}</style></head><body>",
            f"<h1>{esc(self.title)}</h1>",
        ]
        if self.info:
            parts.append(_pairs_table(self.info, "run"))
        if self.per_layer:
            parts += ["<h2>Metrics by layer</h2>", _layer_table(self.per_layer)]
        if self.summary:
            parts += ["<h2>Summary</h2>", _pairs_table(self.summary, "value")]
        parts += [f"<p>{esc(note)}</p>" for note in self.notes]
        for picture in self.pictures:
            data = base64.b64encode(picture.png).decode("ascii")
            parts += [f"<figure><h2>{esc(picture.title)}</h2>",
                      f'<img alt="{esc(picture.title)}" src="data:image/png;base64,{data}">',
                      f"<figcaption>{esc(picture.caption)}</figcaption></figure>"]
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def write(self, path: str | Path) -> Path:
        """Write the page (UTF-8) to ``path``; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path


def format_value(value: float | None) -> str:
    """A number for a table: 4 significant digits, '-' for missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:.4g}"


def _pairs_table(pairs: Mapping[str, str], header: str) -> str:
    esc = html.escape
    rows = "".join(f'<tr><th class="text">{esc(k)}</th><td class="text">{esc(str(v))}</td></tr>'
                   for k, v in pairs.items())
    return f'<table><tr><th class="text"></th><th class="text">{esc(header)}</th></tr>{rows}</table>'


def _layer_table(per_layer: Mapping[str, Mapping[int, float]]) -> str:
    esc = html.escape
    names: Sequence[str] = list(per_layer)
    layers = sorted({layer for values in per_layer.values() for layer in values})
    head = "".join(f"<th>{esc(name)}</th>" for name in names)
    rows = "".join(
        f"<tr><th>{layer}</th>" + "".join(f"<td>{format_value(per_layer[n].get(layer))}</td>" for n in names) + "</tr>"
        for layer in layers
    )
    return f"<table><tr><th>layer</th>{head}</tr>{rows}</table>"
