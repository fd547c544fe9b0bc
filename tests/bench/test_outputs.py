"""Where ``visattn bench`` writes: a new timestamped folder by default, the paths given, or nothing."""

import datetime
import os
from pathlib import Path

import pytest

from visattn.bench.outputs import new_results_dir, output_paths, prepare

NOW = datetime.datetime(2026, 12, 4, 20, 30, 5)


def test_default_paths_are_in_a_new_timestamped_folder(tmp_path):
    json_path, plot_path = output_paths(None, None, save=True, root=tmp_path / "visattn-bench", now=NOW)
    folder = tmp_path / "visattn-bench" / "20261204-203005"
    assert (json_path, plot_path) == (folder / "bench.json", folder / "bench.png")
    assert not folder.exists()  # created when the results are written
    assert prepare(json_path) == json_path and folder.is_dir()


def test_an_existing_folder_gets_a_number(tmp_path):
    (tmp_path / "20261204-203005").mkdir()
    (tmp_path / "20261204-203005-2").mkdir()
    assert new_results_dir(tmp_path, NOW) == tmp_path / "20261204-203005-3"


def test_default_root_is_visattn_bench_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    json_path, _ = output_paths(None, None, save=True, now=NOW)
    assert json_path == Path("visattn-bench") / "20261204-203005" / "bench.json"


@pytest.mark.parametrize(("json_arg", "plot_arg", "save"), [("a.json", None, True), (None, "b.png", True),
                                                              ("a.json", "b.png", False)])
def test_named_paths_replace_the_defaults(tmp_path, json_arg, plot_arg, save):
    json_path, plot_path = output_paths(json_arg, plot_arg, save=save, root=tmp_path, now=NOW)
    assert json_path == (None if json_arg is None else Path(json_arg))
    assert plot_path == (None if plot_arg is None else Path(plot_arg))
    assert list(tmp_path.iterdir()) == []


def test_no_save_writes_nothing(tmp_path):
    assert output_paths(None, None, save=False, root=tmp_path, now=NOW) == (None, None)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_root_is_refused_before_the_run(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="cannot be created"):
        output_paths(None, None, save=True, root=locked / "visattn-bench", now=NOW)


def test_a_file_in_the_way_is_refused_before_the_run(tmp_path):
    (tmp_path / "visattn-bench").write_text("not a folder")
    with pytest.raises(ValueError, match="not a writable folder"):
        output_paths(None, None, save=True, root=tmp_path / "visattn-bench", now=NOW)
