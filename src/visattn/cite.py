"""``visattn cite NAME``: the BibTeX of the paper(s) behind a mixer, edit, metric, transform, paper key or arXiv id.

Everything comes from :mod:`visattn.papers` (the table that also feeds the docs) and the mixer registry.
"""

from __future__ import annotations

from .papers import IMPLEMENTATIONS, PAPERS, bibtex
from .registry import get_mixer_spec, get_module_spec, list_mixers, list_modules

VISATTN_BIBTEX = """@software{visattn,
  title = {{visattn: attention mechanisms of vision papers behind one API}},
  author = {{The visattn maintainers}},
  version = {0.1.0},
  license = {Apache-2.0},
  note = {See CITATION.cff}
}
"""
"""The entry for visattn itself (``visattn cite`` without a name); CITATION.cff holds the same facts."""


def papers_for(name: str) -> list[str]:
    """The keys of the papers behind ``name``, in table order.

    ``name`` is matched, case-insensitively, against paper keys, arXiv ids (with or without ``arXiv:``), mixer
    and feature-map module names, and the names of the edits, metrics, transforms, modules and tools in
    :data:`visattn.papers.IMPLEMENTATIONS` (``VisualAttentionRedistribution``, ``mean_attention_distance``,
    ``log_polar``, ...); failing those, a word that begins exactly one paper key (``var`` for ``var_sink``).
    Raises ``ValueError`` naming what was tried when nothing matches.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"NAME must be a non-empty string, got {name!r}")
    wanted = name.strip().lower().removeprefix("arxiv:")
    found: set[str] = set()
    for key, paper in PAPERS.items():
        if wanted in (key, (paper.arxiv or "").lower()):
            found.add(key)
    if wanted in list_mixers():
        found.add(get_mixer_spec(wanted).paper_key)
    if wanted in list_modules():
        found.add(get_module_spec(wanted).paper_key)
    for impl in IMPLEMENTATIONS:
        if wanted in (impl.name.lower(), impl.label.lower(), impl.target.lower()):
            found.add(impl.paper)
    if not found:
        prefixed = [key for key in PAPERS if key.startswith(wanted + "_")]
        found.update(prefixed if len(prefixed) == 1 else ())
    if not found:
        raise ValueError(
            f"NAME {name!r} is not a mixer, module, edit, metric, transform, paper key or arXiv id; mixers: "
            f"{', '.join(list_mixers())}; modules: {', '.join(list_modules())}; paper keys: {', '.join(PAPERS)}; "
            "others: "
            f"{', '.join(sorted({impl.name for impl in IMPLEMENTATIONS}))}"
        )
    return [key for key in PAPERS if key in found]


def cite(name: str | None = None) -> str:
    """BibTeX for ``name`` (see :func:`papers_for`), one entry per paper; visattn's own entry when ``name`` is
    None."""
    if name is None:
        return VISATTN_BIBTEX
    return "\n".join(bibtex(key) for key in papers_for(name))
