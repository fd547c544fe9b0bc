"""Generated documentation tables, so the docs cannot drift from the registry and the paper list.

A docs page marks a generated block with ``<!-- generated: KIND [family=NAME] -->`` ... ``<!-- end generated -->``;
KIND is ``mechanisms`` (the registry), ``papers`` (:data:`visattn.papers.PAPERS`) or ``models`` (every
``visattn_*`` model in timm's registry, counted, beside :data:`visattn.models.published.PUBLISHED`). A papers table
shows, per paper, everything in visattn that implements it: registered mixers and feature-map modules, and the lens
edits, lens metrics, transforms, modules and tools of :data:`visattn.papers.IMPLEMENTATIONS`; and what is not
implemented yet (:data:`visattn.papers.NOT_YET`). ``python -m visattn.docgen`` rewrites every block in ``docs/``;
``--check`` exits 1 if any page is stale.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path

import visattn
from visattn.papers import IMPLEMENTATIONS, NOT_YET, PAPERS
from visattn.registry import get_mixer_spec, get_module_spec, list_modules

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


def implementations() -> dict[str, list[str]]:
    """Per paper key, what implements it, as Markdown: mixers (``mixer `x```), feature-map modules, and the
    entries of :data:`~visattn.papers.IMPLEMENTATIONS` (kind and dotted path below ``visattn``)."""
    by_paper: dict[str, list[str]] = {}
    for name in visattn.list_mixers():
        by_paper.setdefault(get_mixer_spec(name).paper_key, []).append(f"mixer `{name}`")
    for name in list_modules():
        by_paper.setdefault(get_module_spec(name).paper_key, []).append(f"module `{name}`")
    for impl in IMPLEMENTATIONS:
        by_paper.setdefault(impl.paper, []).append(f"{impl.kind} `{impl.label}`")
    return by_paper


def papers_table(family: str | None = None) -> str:
    """Markdown table of the papers (of ``family`` if given, or with a mixer or module of that family): what in
    visattn implements each, and what does not exist yet."""
    by_paper = implementations()
    lines = ["| paper | arXiv | code | in visattn | not yet |", "|---|---|---|---|---|"]
    for key, paper in PAPERS.items():
        if family is not None and paper.family != family and key not in _paper_keys_of_family(family):
            continue
        code = f"`{paper.code}`" if paper.code else "—"
        lines.append(f"| {paper.title} | {_paper_link(key)} | {code} | {', '.join(by_paper.get(key, [])) or '—'} "
                     f"| {NOT_YET.get(key, '—')} |")
    return "\n".join(lines) + "\n"


def _paper_keys_of_family(family: str) -> set[str]:
    return ({get_mixer_spec(n).paper_key for n in visattn.list_mixers(family)}
            | {get_module_spec(n).paper_key for n in list_modules(family)})


@functools.cache
def count_model(name: str) -> tuple[int, int, int]:
    """Parameters, multiply-adds of one forward pass on one image and the image side, for the registered timm model
    ``name`` at its ``pretrained_cfg`` input size. Built and run on the meta device (no memory, no data); FLOPs
    from :class:`torch.utils.flop_counter.FlopCounterMode` halved (a multiply-add counts once, as papers count):
    matrix products, convolutions and SDPA are counted, elementwise work and custom operators without a
    registered FLOP formula are not."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False).eval()
    channels, height, width = model.pretrained_cfg["input_size"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, channels, height, width, device="meta"))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2, height


def _figure(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def models_table(pattern: str = "visattn_*") -> str:
    """Markdown table of the models registered in timm whose names match ``pattern`` (every ``visattn_*`` model):
    parameters and GMACs counted (:func:`count_model`) beside the paper's
    (:data:`visattn.models.published.PUBLISHED`)."""
    import timm

    import visattn.models  # noqa: F401  (registers the models)
    from visattn.models.published import PUBLISHED

    lines = ["| model | image | params (M) | paper params (M) | GMACs | paper GMACs | source |",
             "|---|---|---|---|---|---|---|"]
    for name in timm.list_models(pattern):
        params, macs, side = count_model(name)
        paper = PUBLISHED.get(name)
        lines.append(f"| `{name}` | {side} | {params / 1e6:.2f} | {_figure(paper and paper.params_m)} "
                     f"| {macs / 1e9:.2f} | {_figure(paper and paper.gmacs, 2)} | {paper.source if paper else '—'} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` with every generated block rewritten."""

    def fill(match: re.Match) -> str:
        kind, family = match.group(2), match.group(3)
        if kind == "mechanisms":
            body = mechanisms_table(family)
        elif kind == "papers":
            body = papers_table(family)
        elif kind == "models":
            body = models_table()
        else:
            raise ValueError(f"unknown generated block kind {kind!r}; expected 'mechanisms', 'papers' or 'models'")
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
