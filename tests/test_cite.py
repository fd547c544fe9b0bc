"""``visattn cite`` and the paper table behind it: BibTeX built from :data:`visattn.papers.PAPERS`, names resolved
through the registry and :data:`visattn.papers.IMPLEMENTATIONS`; the table's claims checked against the code."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

import visattn
from visattn import cli
from visattn.cite import VISATTN_BIBTEX, cite, papers_for
from visattn.papers import FOUNDATIONAL, IMPLEMENTATION_KINDS, IMPLEMENTATIONS, NOT_YET, PAPERS, bibtex


def _resolve(target: str) -> object:
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_cite_neighborhood_is_faster_neighborhood_attention():
    text = cite("neighborhood")
    assert text.count("@misc{") == 1
    assert "eprint = {2403.04690}" in text and "archivePrefix = {arXiv}" in text
    assert "Faster Neighborhood Attention" in text and "year = {2024}" in text


@pytest.mark.parametrize(("name", "keys"), [
    ("window", ["maxvit"]), ("lssar", ["softplus_attention"]), ("2403.04690", ["faster_neighborhood"]),
    ("arXiv:2503.03321", ["var_sink"]), ("VisualAttentionRedistribution", ["var_sink"]), ("var", ["var_sink"]),
    ("mean_attention_distance", ["cdfsod_astigmatism"]), ("polar_resample", ["rst"]),
    ("hebbian_memory", ["pavlovian"]), ("lens.edits.SoftPerturbedAttention", ["headhunter"]),
    ("HEDGEHOG", ["hedgehog"]), ("psa_p", ["psa"]), ("roi_tanh_polar_warp", ["rtnet"]),
])
def test_names_resolve_to_their_papers(name, keys):
    assert papers_for(name) == keys


def test_every_mixer_and_implementation_cites_its_paper():
    for name in visattn.list_mixers():
        assert visattn.get_mixer_spec(name).paper_key in papers_for(name)
    for impl in IMPLEMENTATIONS:
        assert impl.paper in papers_for(impl.name)


def test_unknown_name_raises_naming_it():
    with pytest.raises(ValueError, match="NAME 'nope' is not a mixer, module, edit, metric, transform, paper key"):
        papers_for("nope")


def test_bibtex_escapes_latex_specials_and_balances_braces():
    for key in PAPERS:
        text = bibtex(key)
        assert text.count("{") == text.count("}"), key
        title = re.search(r"title = \{\{(.*)\}\},", text).group(1)
        assert not re.search(r"(?<!\\)[&%#_^]", title), title
    assert r"O(n\^{}2)" in bibtex("faster_neighborhood") and r"Hedgehog \& the" in bibtex("hedgehog")


def test_cli_cite(capsys):
    assert cli.main(["cite", "neighborhood"]) == 0
    assert "eprint = {2403.04690}" in capsys.readouterr().out
    assert cli.main(["cite"]) == 0
    assert capsys.readouterr().out == VISATTN_BIBTEX
    assert cli.main(["cite", "nope"]) == 2
    err = capsys.readouterr().err
    assert "NAME 'nope'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=lambda i: i.label)
def test_implementation_exists_and_cites_its_paper(impl):
    assert impl.kind in IMPLEMENTATION_KINDS and impl.paper in PAPERS
    obj = _resolve(impl.target)
    module = sys.modules[getattr(obj, "__module__", None) or impl.target.rpartition(".")[0]]
    text = " ".join(filter(None, (module.__doc__, inspect.getdoc(obj))))
    assert PAPERS[impl.paper].arxiv in text, f"{impl.target} does not name arXiv {PAPERS[impl.paper].arxiv}"


def test_every_source_paper_has_an_implementation_or_says_what_is_missing():
    implemented = {visattn.get_mixer_spec(n).paper_key for n in visattn.list_mixers()}
    implemented |= {visattn.registry.get_module_spec(n).paper_key for n in visattn.registry.list_modules()}
    implemented |= {impl.paper for impl in IMPLEMENTATIONS}
    sources = [key for key in PAPERS if key not in FOUNDATIONAL]
    assert len(sources) == 42
    assert [key for key in sources if key not in implemented and key not in NOT_YET] == []
    assert set(NOT_YET) <= set(sources)


def test_citation_cff_and_licence_agree_with_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[1]
    cff = yaml.safe_load((root / "CITATION.cff").read_text())
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert {"message", "title", "authors"} <= set(cff) and all("name" in a or "family-names" in a
                                                                for a in cff["authors"])
    assert str(cff["version"]) == project["version"] == visattn.__version__
    assert cff["license"] == project["license"]["text"] == "Apache-2.0"
    licence = (root / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence and licence.count("\n") > 190
