"""``visattn arena``: a tiny run writes its table, JSON and plots; output paths are checked before any work; a
previous run is only continued with --resume; a mixer that cannot run at a test size is recorded, not fatal; and
under torchrun two processes write one result (slow)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from visattn import cli
from visattn.train.arena_report import JSON_NAME, PLOTS, TABLE_NAME

TINY = ["--task", "search", "--size", "16", "--eval-sizes", "16", "24", "--steps", "4", "--batch", "8",
        "--train-count", "16", "--test-count", "8", "--eval-every", "2", "--checkpoint-every", "2", "--warmup", "1",
        "--model-kwargs", "embed_dim=16,depth=1"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models gain nothing from a second thread; the fixture restores the setting after."""


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = cli.main(["arena", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_tiny_run_writes_table_json_and_plots(tmp_path, capsys):
    out = tmp_path / "arena"
    status, stdout, _ = _run(capsys, *TINY, "--mixers", "softmax", "linear", "--out", str(out))
    assert status == 0
    assert "softmax" in stdout and "acc@24" in stdout
    results = json.loads((out / JSON_NAME).read_text())
    assert [r["label"] for r in results["results"]] == ["softmax", "linear"]
    for record in results["results"]:
        assert set(record["accuracy"]) == {"16", "24"}
        assert all(0.0 <= a <= 1.0 for a in record["accuracy"].values())
        assert record["images_per_s"] > 0 and [step for step, _ in record["curve"]] == [2, 4]
    assert results["config"]["train"]["steps"] == 4 and results["env"]["world_size"] == 1
    table = (out / TABLE_NAME).read_text()
    assert "| softmax |" in table and "acc@16 (train size)" in table
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for mixer in ("softmax", "linear"):
        assert (out / mixer / "checkpoint.pt").is_file() and (out / mixer / "metrics.jsonl").is_file()


def test_previous_run_needs_resume(tmp_path, capsys):
    out = tmp_path / "arena"
    assert _run(capsys, *TINY, "--mixers", "softmax", "--out", str(out))[0] == 0
    first = json.loads((out / JSON_NAME).read_text())["results"][0]
    status, _, err = _run(capsys, *TINY, "--mixers", "softmax", "--out", str(out))
    assert status == 2 and "holds a previous arena run; pass --resume" in err
    status, _, _ = _run(capsys, *TINY, "--mixers", "softmax", "--out", str(out), "--resume")
    assert status == 0
    again = json.loads((out / JSON_NAME).read_text())["results"][0]
    assert again["accuracy"] == first["accuracy"] and again["curve"] == first["curve"]


def test_mixer_that_cannot_run_at_a_test_size_is_recorded(tmp_path, capsys):
    """A 4 x 4 window tiles the 4 x 4 training grid but not the 6 x 6 grid of a 24-pixel test image."""
    out = tmp_path / "arena"
    status, _, _ = _run(capsys, *TINY, "--mixers", "window:window_size=4", "--out", str(out))
    assert status == 0
    record = json.loads((out / JSON_NAME).read_text())["results"][0]
    assert record["accuracy"]["24"] is None and "window_size" in record["failures"]["24"]
    assert record["accuracy"]["16"] is not None
    assert "could not run" in (out / TABLE_NAME).read_text()


def test_causal_default_mixers_run_bidirectional(tmp_path, capsys):
    out = tmp_path / "arena"
    assert _run(capsys, *TINY, "--mixers", "lssar", "--out", str(out), "--eval-sizes", "16")[0] == 0
    assert json.loads((out / JSON_NAME).read_text())["results"][0]["label"] == "lssar(is_causal=False)"


@pytest.mark.parametrize(("argv", "message"), [
    (["--mixers", "nope"], "nope"),
    (["--size", "20"], "multiple of 8"),
    (["--eval-sizes", "30"], "multiple of 8"),
    (["--steps", "0"], "steps must be an int >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--mixers", "softmax", "softmax"], "mixers must differ"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "arena"
    status, _, err = _run(capsys, *TINY, *argv, "--out", str(out))
    assert status == 2 and message in err
    assert not out.exists()


def test_out_must_be_a_writable_folder(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    status, _, err = _run(capsys, *TINY, "--out", str(path))
    assert status == 2 and "is an existing file" in err


def test_help_names_torchrun(capsys):
    with pytest.raises(SystemExit):
        cli.main(["arena", "--help"])
    assert "torchrun" in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    """The documented command: torchrun starts two gloo processes; rank 0 writes the one result."""
    out = tmp_path / "arena"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
               "-m", "visattn", "arena", *TINY, "--mixers", "softmax", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / JSON_NAME).read_text())
    assert record["env"]["world_size"] == 2 and record["env"]["backend"] == "gloo"
    assert result.stdout.count("softmax") >= 1 and (out / "softmax" / "checkpoint.pt").is_file()
