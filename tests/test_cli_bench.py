"""``visattn bench`` on the command line: default output folder, --no-save, the noisy-row flag, exponents left
empty when unsound, and ``--model`` (a tiny ViT, JSON checked field by field, not times)."""

import json
import re

import pytest

from bench_fakes import per_round
from visattn import cli
from visattn.bench import runner

TINY = ["--repeats", "1", "--min-sample", "0", "--no-memory"]


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "220")  # table cells are checked; a narrow console would fold them


def test_default_run_writes_json_and_plot_into_a_new_results_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--mixers", "softmax", "window:window_size=2", "--sizes", "4", "6", *TINY]) == 0
    out = capsys.readouterr().out
    (folder,) = (tmp_path / "visattn-bench").iterdir()
    assert re.fullmatch(r"\d{8}-\d{6}", folder.name)
    assert sorted(p.name for p in folder.iterdir()) == ["bench.json", "bench.png"]
    assert f"JSON written to visattn-bench/{folder.name}/bench.json" in out
    assert f"plot written to visattn-bench/{folder.name}/bench.png" in out
    data = json.loads((folder / "bench.json").read_text())
    assert [(r["mixer"], r["tokens"]) for r in data["records"]] == [("softmax", 16), ("softmax", 36), ("window", 16),
                                                                    ("window", 36)]
    assert data["settings"]["min_sample_s"] == 0.0 and data["settings"]["spread_limit"] == 0.25
    assert data["settings"]["rounds_across_cases"] is True
    assert data["environment"]["schedule"]["scheduling"] == "rounds across cases"
    assert data["exponents"] == {"softmax": None, "window(window_size=2)": None}  # two sizes: never reported
    assert "fewer than 3 sizes timed" in out


def test_no_save_writes_nothing_and_says_how_to_save(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--mixers", "softmax", "--sizes", "4", "--no-save", *TINY]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "--json PATH and --plot PATH" in capsys.readouterr().out


def test_naming_one_output_writes_only_that(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--mixers", "softmax", "--sizes", "4", "--json", "only.json", *TINY]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.json"]


def test_noisy_rows_are_marked_with_a_footnote(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "interleaved_bursts", per_round([1.0, 1.0, 3.0], [2.0] * 3))
    path = tmp_path / "noisy.json"
    assert cli.main(["bench", "--mixers", "softmax", "--sizes", "4", "--json", str(path), *TINY, "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "1.52 !" in out  # ratios 2, 2 and 2 / 3: Hodges-Lehmann 2^0.75 (2 / 3)^0.25, marked
    assert "! 1 row(s): interquartile range above 25% of the median" in out
    data = json.loads(path.read_text())
    assert data["records"][0]["noisy"] is True and data["noisy_records"] == 1


def test_quiet_rows_carry_no_mark(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "interleaved_bursts", per_round([1.0] * 3, [2.0] * 3))
    assert cli.main(["bench", "--mixers", "softmax", "--sizes", "4", "--no-save", *TINY, "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "2.00 !" not in out and "interquartile range above" not in out
    assert "machine state probe: median" in out  # one sample per visit, three visits


def test_isolate_runs_each_mixer_in_its_own_process(tmp_path):
    path = tmp_path / "isolated.json"
    assert cli.main(["bench", "--mixers", "linear", "--sizes", "4", "--isolate", "--json", str(path), *TINY]) == 0
    data = json.loads(path.read_text())
    assert data["settings"]["isolate"] is True and data["records"][0]["median_ms"] > 0
    assert data["environment"]["schedule"]["scheduling"] == "case by case"


def test_case_by_case_is_recorded(tmp_path):
    path = tmp_path / "cases.json"
    assert cli.main(["bench", "--mixers", "linear", "softmax", "--sizes", "4", "--case-by-case", "--json", str(path),
                     *TINY]) == 0
    data = json.loads(path.read_text())
    assert data["settings"]["rounds_across_cases"] is False
    assert data["environment"]["schedule"]["scheduling"] == "case by case"
    assert [r["mixer"] for r in data["records"]] == ["linear", "softmax"]


def test_model_bench_through_the_cli(tmp_path, capsys):
    path = tmp_path / "model.json"
    status = cli.main(["bench", "--model", "vit_tiny_patch16_224", "--mixers", "softmax", "window:window_size=2",
                       "--img-size", "32", "64", "--batch", "1", "--forward-only", "--json", str(path), *TINY])
    assert status == 0
    out = capsys.readouterr().out
    assert "unmodified (timm)" in out and "window(window_size=2)" in out and "fwd img/s" in out
    data = json.loads(path.read_text())
    assert data["kind"] == "model" and data["model"] == "vit_tiny_patch16_224"
    assert data["settings"]["batch"] == 1 and data["settings"]["backward"] is False
    assert [(r["label"], r["img_size"], r["mode"]) for r in data["records"]] == [
        (label, size, "forward") for size in (32, 64) for label in ("unmodified", "softmax", "window(window_size=2)")]
    for r in data["records"]:
        assert r["skipped"] is None and r["tokens"] == (r["img_size"] // 16) ** 2 + 1
        assert isinstance(r["images_per_s"], float) and isinstance(r["ratio_to_unmodified"], float)
        assert r["images_per_s"] == pytest.approx(1e3 / r["median_ms"])


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "vit_tiny_patch16_224", "--sizes", "8"], "--sizes applies to mixer benchmarks"),
    (["--model", "vit_tiny_patch16_224", "--backward"], "--backward applies to mixer benchmarks"),
    (["--model", "vit_tiny_patch16_224", "--isolate"], "--isolate applies to mixer benchmarks"),
    (["--model", "vit_tiny_patch16_224", "--case-by-case"], "--case-by-case applies to mixer benchmarks"),
    (["--img-size", "32"], "--img-size and --forward-only apply to --model"),
    (["--model", "no_such_model"], "timm model name"),
    (["--spread-limit", "-1"], "spread_limit"),
])
def test_misused_options_exit_2_with_one_line(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no results folder left behind
