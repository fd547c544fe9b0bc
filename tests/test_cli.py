"""The ``visattn`` command line: ``list`` and a tiny ``bench`` (JSON checked field by field) run as subprocesses;
skips and bad input run in-process through ``main``."""

import json
import math
import os
import subprocess
import sys

import pytest

import visattn
from bench_fakes import hodges_lehmann
from visattn import cli
from visattn.bench.allocator import KEPT, SYSTEM
from visattn.bench.budget import WORKSPACE_BYTES

RECORD_TYPES = {
    "mixer": str, "label": str, "kwargs": dict, "shape": list, "tokens": int, "num_prefix_tokens": int,
    "heads": int, "head_dim": int, "batch": int, "dtype": str, "device": str, "backward": bool, "repeats": int,
    "attended_pairs": int, "density": float, "flops": int, "estimated_memory_bytes": int, "median_ms": float,
    "p25_ms": float, "p75_ms": float, "spread_ms": float, "min_ms": float, "max_ms": float, "gflops": float,
    "peak_memory_bytes": int, "sdpa_median_ms": float, "sdpa_spread_ms": float, "sdpa_gflops": float,
    "sdpa_peak_memory_bytes": int, "ratio_to_sdpa": float,
}


def _run(*args, module="visattn.cli"):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_list_shows_every_registered_mixer():
    result = _run("list")
    assert result.returncode == 0, result.stderr
    for name in visattn.list_mixers():
        assert name in result.stdout
        arxiv = visattn.get_mixer_spec(name).paper.arxiv
        assert arxiv is None or arxiv in result.stdout


def test_tiny_bench_json_and_plot(tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    result = _run("bench", "--mixers", "softmax", "neighborhood", "--sizes", "8", "--repeats", "2", "--min-sample", "0",
                  "--json", str(out_json), "--plot", str(out_png), module="visattn")
    assert result.returncode == 0, result.stderr
    assert "softmax" in result.stdout and "neighborhood" in result.stdout and "SDPA" in result.stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads(out_json.read_text())
    assert data["environment"]["allocator"] == KEPT
    assert data["settings"]["repeats"] == 2 and data["settings"]["backward"] is False
    records = data["records"]
    assert [r["mixer"] for r in records] == ["softmax", "neighborhood"]
    for r in records:
        for key, kind in RECORD_TYPES.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["skipped"] is None and r["sdpa_skipped"] is None
        assert r["shape"] == [8, 8] and r["tokens"] == 64 == math.prod(r["shape"])
        assert (r["heads"], r["head_dim"], r["batch"], r["dtype"]) == (4, 32, 1, "float32")
        assert r["density"] == pytest.approx(r["attended_pairs"] / r["tokens"] ** 2)
        assert r["flops"] == 4 * r["attended_pairs"] * r["head_dim"] * r["heads"] * r["batch"]
        assert r["gflops"] == pytest.approx(r["flops"] / (r["median_ms"] * 1e6))
        ratios = [b / a for a, b in zip(r["samples_ms"], r["sdpa_samples_ms"], strict=True)]
        assert r["ratio_to_sdpa"] == pytest.approx(hodges_lehmann(ratios))  # the estimate of the paired ratios
        assert r["spread_ms"] == pytest.approx(r["p75_ms"] - r["p25_ms"])
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["peak_memory_bytes"] > 0
    assert records[0]["attended_pairs"] == 64 * 64 and records[0]["density"] == 1.0
    assert records[1]["attended_pairs"] == 64 * 49 and records[1]["kwargs"] == {}
    assert set(data["exponents"]) == {"softmax", "neighborhood"}
    assert all(e is None for e in data["exponents"].values())
    assert data["sdpa_exponent"] is None


def test_forced_skip_is_reported_not_crashed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the reason sits in a table cell; a narrow console would fold it
    out_json = tmp_path / "skip.json"
    status = cli.main(["bench", "--mixers", "softmax", "window:window_size=4", "--sizes", "8", "10", "--repeats",
                       "1", "--memory-budget", "1K", "--json", str(out_json)])
    assert status == 0
    assert "memory budget" in capsys.readouterr().out
    records = json.loads(out_json.read_text())["records"]
    assert [(r["mixer"], r["tokens"]) for r in records] == [("softmax", 64), ("softmax", 100), ("window", 64),
                                                            ("window", 100)]
    for r in records:
        assert r["median_ms"] is None and r["ratio_to_sdpa"] is None and r["sdpa_median_ms"] is None
    softmax_io = 4 * 100 * 4 * 32 * 4 + WORKSPACE_BYTES  # q, k, v, the output and kernel workspace: 64.2 MiB
    assert records[1]["estimated_memory_bytes"] == softmax_io
    assert records[1]["skipped"] == "estimated memory 64.2 MiB > memory budget 1.0 KiB"
    assert records[0]["skipped"].startswith("estimated memory") and records[2]["skipped"].startswith("estimated")
    assert records[3]["skipped"].startswith("ValueError: window_size must divide")


@pytest.mark.parametrize(
    "args, message",
    [(["bench", "--mixers", "no_such_mixer"], "unknown mixer 'no_such_mixer'; known mixers: "),
     (["bench", "--mixers", "softmax", "--threads", "0"], "--threads must be >= 1"),
     (["bench", "--mixers", "softmax", "--heads", "0"], "heads must be an int >= 1")],
)
def test_bad_values_exit_2_with_a_message(args, message, capsys):
    assert cli.main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [(["bench", "--sizes", "0"], "size must be a positive int"), (["bench", "--memory-budget", "lots"], "budget"),
     (["bench", "--dtype", "int8"], "invalid choice"), (["frobnicate"], "invalid choice")],
)
def test_bad_arguments_exit_2_with_argparse_usage(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- errors before work, one line, no traceback


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets past its up-front checks."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the run started although an output path was bad")

    monkeypatch.setattr(cli, "_bench", forbidden)
    monkeypatch.setattr("visattn.lens.command.run", forbidden)


@pytest.mark.parametrize(("option", "make", "message"), [
    ("--json", lambda d: d, "is a folder; expected a file path, e.g."),
    ("--plot", lambda d: d, "is a folder; expected a file path, e.g."),
    ("--json", lambda d: d / "missing" / "out.json", "does not exist; create it first"),
    ("--plot", lambda d: d / "a_file" / "out.png", "is not a folder"),
])
def test_bench_output_paths_are_checked_before_the_run(tmp_path, capsys, no_work, option, make, message):
    (tmp_path / "a_file").write_text("")
    path = make(tmp_path)
    assert cli.main(["bench", "--mixers", "softmax", option, str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"visattn bench: {option} {str(path)!r}" in line and message in line


def test_lens_out_that_is_a_file_is_refused_before_the_model_is_built(tmp_path, capsys, no_work):
    out = tmp_path / "report"
    out.write_text("")
    assert cli.main(["lens", str(tmp_path / "x.png"), "--model", "vit_tiny_patch16_224", "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"visattn lens: --out {str(out)!r} is an existing file" in line


def test_lens_empty_checkpoint_is_one_line(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert cli.main(["lens", str(tmp_path / "x.png"), "--model", str(tmp_path / "empty.pt"), "--model-name",
                     "vit_tiny_patch16_224", "--model-kwargs", "img_size=32,patch_size=8,embed_dim=32,depth=1,"
                     "num_heads=2", "--out", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "could not be read as a checkpoint" in line and "the file is empty" in line


def test_lens_pretrained_offline_says_the_weights_are_not_cached(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants
    from PIL import Image

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    assert cli.main(["lens", str(tmp_path / "x.png"), "--model", "vit_tiny_patch16_224", "--pretrained", "--out",
                     str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not in the local cache" in line and "--model FILE --model-name vit_tiny_patch16_224" in line


def test_os_error_during_a_run_is_one_line_exit_1(capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_bench", full_disk)
    assert cli.main(["bench", "--mixers", "softmax"]) == 1
    assert "visattn bench: OSError: [Errno 28] No space left on device" in _one_line(capsys.readouterr().err)


def test_system_allocator_keeps_glibc_defaults(tmp_path):
    out_json = tmp_path / "out.json"
    result = _run("bench", "--mixers", "softmax", "--sizes", "4", "--repeats", "1", "--min-sample", "0", "--no-memory",
                  "--system-allocator", "--json", str(out_json), module="visattn")
    assert result.returncode == 0, result.stderr
    assert json.loads(out_json.read_text())["environment"]["allocator"] == SYSTEM


def test_bad_output_path_in_a_subprocess_prints_no_traceback(tmp_path):
    result = _run("bench", "--mixers", "softmax", "--json", str(tmp_path), module="visattn")
    assert result.returncode == 2 and result.stdout == ""
    assert "is a folder" in _one_line(result.stderr)


# ---------------------------------------------------------------- list, help


def test_list_unknown_family_names_the_families(capsys):
    assert cli.main(["list", "--family", "nope"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "--family 'nope' is not a mixer family; choose from" in line and "structured" in line


def test_list_shows_causal_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["list"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 3}
    for name in visattn.list_mixers():
        expected = "default" if visattn.get_mixer_spec(name).causal_default else None
        if expected:
            assert f"│ {expected} " in rows[name], rows[name]
    assert "│ default " in rows["lssa"] and "│ default " not in rows["softmax"]


def test_list_at_100_columns_keeps_every_name_on_one_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert max(map(len, out.splitlines())) <= 100
    names = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 3]
    assert sorted(n for n in names if n) == visattn.list_mixers()


@pytest.mark.parametrize("command", [[], ["list"], ["bench"], ["lens"], ["cite"]], ids=lambda c: "-".join(c))
def test_help_has_no_rst_backticks(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: visattn" in text and "``" not in text
