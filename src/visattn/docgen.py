"""Generated documentation tables, so the docs cannot drift from the registry and the paper list.

A docs page marks a generated block with ``<!-- generated: KIND [family=NAME] -->`` ... ``<!-- end generated -->``;
KIND is ``mechanisms`` (the registry) or ``papers`` (:data:`visattn.papers.PAPERS`). ``python -m visattn.docgen``
rewrites every block in ``docs/``; ``--check`` exits 1 if any page is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import visattn
from visattn.papers import PAPERS
from visattn.registry import get_mixer_spec

BLOCK = re.compile(r"(<!-- generated: (\w+)(?: family=([\w-]+))? -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)


def _paper_link(key: str) -> str:
    paper = PAPERS[key]
    return f"[{paper.arxiv}]({paper.url})" if paper.arxiv else "—"


def mechanisms_table(family: str | None = None) -> str:
    """Markdown table of the registered mixers (of ``family`` if given)."""
    lines = [
        "| mixer | family | what it does | paper | arXiv | cost | faces |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in visattn.list_mixers(family):
        spec = get_mixer_spec(name)
        lines.append(
            f"| `{name}` | {spec.family} | {spec.summary} | {spec.paper.title} | {_paper_link(spec.paper_key)} "
            f"| {spec.complexity} | {', '.join(spec.faces)} |"
        )
    return "\n".join(lines) + "\n"


def papers_table(family: str | None = None) -> str:
    """Markdown table of the papers (of ``family`` if given) with the mixers that implement them."""
    by_paper: dict[str, list[str]] = {}
    for name in visattn.list_mixers():
        by_paper.setdefault(get_mixer_spec(name).paper_key, []).append(f"`{name}`")
    lines = ["| paper | arXiv | code | in visattn |", "|---|---|---|---|"]
    for key, paper in PAPERS.items():
        if family is not None and paper.family != family and key not in _paper_keys_of_family(family):
            continue
        code = f"`{paper.code}`" if paper.code else "—"
        lines.append(f"| {paper.title} | {_paper_link(key)} | {code} | {', '.join(by_paper.get(key, [])) or '—'} |")
    return "\n".join(lines) + "\n"


def _paper_keys_of_family(family: str) -> set[str]:
    return {get_mixer_spec(n).paper_key for n in visattn.list_mixers(family)}


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""

    def fill(match: re.Match) -> str:
        kind, family = match.group(2), match.group(3)
        if kind == "mechanisms":
            body = mechanisms_table(family)
        elif kind == "papers":
            body = papers_table(family)
        else:
            raise ValueError(f"unknown generated block kind {kind!r}; expected 'mechanisms' or 'papers'")
        return f"{match.group(1)}{body}{match.group(5)}"

    return BLOCK.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m visattn.docgen", description=__doc__)
    parser.add_argument("docs", nargs="?", default="docs", type=Path, help="docs folder (default: docs)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is stale instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for page in sorted(args.docs.glob("*.md")):
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        sys.stderr.write("stale generated docs: " + ", ".join(map(str, stale)) + "\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
