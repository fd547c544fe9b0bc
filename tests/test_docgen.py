"""The committed docs tables equal what the registry and the paper list generate now."""

from __future__ import annotations

from pathlib import Path

import pytest

from visattn import docgen

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_committed_docs_match_the_registry(page):
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
