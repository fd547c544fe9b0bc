"""The committed docs tables equal what the registry and the paper list generate now."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from visattn import docgen

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p.name == "models.md" else p
                                  for p in sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_committed_docs_match_the_registry(page):
    """models.md is slow: its table builds and runs every visattn_* model on the meta device (minutes on 2 busy
    cores); tests/models/test_published.py checks its rows quickly."""
    text = page.read_text()
    assert docgen.render(text) == text, f"{page.name} is stale: run `python -m visattn.docgen`"


def test_mechanisms_page_lists_every_mixer():
    import visattn

    text = (DOCS / "mechanisms.md").read_text()
    for name in visattn.list_mixers():
        assert f"| `{name}` |" in text


def test_render_rewrites_a_stale_block_and_check_reports_it(tmp_path):
    page = tmp_path / "x.md"
    page.write_text("intro\n<!-- generated: mechanisms family=dense -->\nold\n<!-- end generated -->\n")
    assert docgen.main([str(tmp_path), "--check"]) == 1
    assert docgen.main([str(tmp_path)]) == 0
    assert "| `softmax` |" in page.read_text() and "old" not in page.read_text()
    assert docgen.main([str(tmp_path), "--check"]) == 0


def test_unknown_block_kind_raises():
    with pytest.raises(ValueError, match="unknown generated block kind 'tables'"):
        docgen.render("<!-- generated: tables -->\n<!-- end generated -->")


def test_every_source_paper_is_on_a_docs_page():
    from visattn.papers import FOUNDATIONAL, PAPERS

    text = "\n".join(page.read_text() for page in DOCS.glob("*.md"))
    missing = [key for key, paper in PAPERS.items() if key not in FOUNDATIONAL and f"[{paper.arxiv}](" not in text]
    assert missing == []


def test_no_implemented_paper_shows_a_dash_in_any_papers_table():
    implemented = docgen.implementations()
    for page in DOCS.glob("*.md"):
        for match in docgen.BLOCK.finditer(page.read_text()):
            if match.group(2) != "papers":
                continue
            for row in match.group(4).splitlines()[2:]:
                cells = [c.strip() for c in row.strip("|").split("|")]
                arxiv = re.search(r"\[([\d.]+)\]", cells[1]).group(1)
                key = next(k for k, p in docgen.PAPERS.items() if p.arxiv == arxiv)
                assert (cells[3] == "—") is (key not in implemented), (page.name, key, cells[3])


def test_papers_table_names_edits_metrics_transforms_and_tools():
    table = docgen.papers_table()
    for expected in ("edit `lens.edits.VisualAttentionRedistribution`", "metric `lens.metrics.vision_head_divergence`",
                     "transform `transforms.polar_resample`", "tool `ops.associative_memory.hebbian_memory`",
                     "mixer `neighborhood`"):
        assert expected in table


def test_the_polar_transform_and_the_lens_models_are_described_truthfully():
    transforms = (DOCS / "transforms.md").read_text()
    assert "## Polar resampling (RST)" in transforms and "T.polar_inverse(" in transforms
    lens = (DOCS / "lens.md").read_text()
    assert "visattn registers no models in timm yet" not in lens and "visattn's own `visattn_*` models included" in lens
