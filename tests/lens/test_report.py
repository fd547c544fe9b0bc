"""The HTML report: self-contained (figures as base64 PNG, no external resource), tables hold the metrics, text
is escaped, and non-PNG bytes are refused."""

from __future__ import annotations

import base64
import re

import pytest
import torch

from visattn.lens import plots
from visattn.lens.report import Picture, Report, format_value


def a_png() -> bytes:
    return plots.png_bytes(plots.metrics_figure({"entropy": {0: 1.0, 1: 0.5}}))


def test_report_embeds_pictures_and_tables(tmp_path):
    png = a_png()
    report = Report(title="lens <run>", info={"model": "vit & co"},
                    per_layer={"entropy": {0: 2.0, 1: 1.23456}, "distance": {1: 3.5}},
                    summary={"phases": "0, 1 | 2"}, pictures=[Picture("metrics", png, "by layer")],
                    notes=["grad_rollout skipped: no classifier."])
    path = report.write(tmp_path / "out" / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert [base64.b64decode(e) for e in embedded] == [png]
    assert not re.search(r'(src|href)="(https?:|/|\.)', text)
    assert "<title>lens &lt;run&gt;</title>" in text and "vit &amp; co" in text
    # one row per layer; layer 0 has no distance
    assert "<tr><th>0</th><td>2</td><td>-</td></tr>" in text
    assert "<tr><th>1</th><td>1.235</td><td>3.5</td></tr>" in text
    assert "0, 1 | 2" in text and "grad_rollout skipped: no classifier." in text


def test_empty_parts_are_left_out():
    text = Report(title="t").html()
    assert "Metrics by layer" not in text and "<img" not in text and "Summary" not in text


def test_format_value():
    assert format_value(None) == "-"
    assert format_value(float("nan")) == "-"
    assert format_value(3) == "3"
    assert format_value(0.000123456) == "0.0001235"
    assert format_value(float(torch.tensor(2.5))) == "2.5"


def test_picture_must_be_png():
    with pytest.raises(ValueError, match="picture 'x': png must be PNG-encoded bytes"):
        Picture("x", b"GIF89a")
