"""The arena's trainer: seeded runs repeat, a run stopped mid-way resumes to a byte-identical final checkpoint (in
process, and after a real SIGKILL of a subprocess), checkpoints round-trip, metrics land in JSON lines, and bad
configs raise errors naming the field."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_tiny import build_vit, data

from visattn.train import checkpoint as ckpt
from visattn.train.metrics import MetricsLog, read_metrics, tensorboard_available
from visattn.train.trainer import TrainConfig, Trainer, resolve_precision, warmup_cosine

CONFIG = TrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2, eval_every=5, checkpoint_every=4)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Bit-identical reruns rely on the same thread count in both runs."""


def _same_checkpoint(a: Path, b: Path) -> bool:
    return ckpt.checkpoint_fingerprint(a) == ckpt.checkpoint_fingerprint(b)


def _trainer(out: Path, config: TrainConfig = CONFIG, **kwargs) -> Trainer:
    return Trainer(build_vit, data(), {"16": data(32, "test")}, config, out_dir=out, **kwargs)


def test_uninterrupted_runs_repeat_exactly(tmp_path):
    first = _trainer(tmp_path / "a").fit()
    second = _trainer(tmp_path / "b").fit()
    assert first.losses == second.losses and len(first.losses) == CONFIG.steps
    assert _same_checkpoint(tmp_path / "a/checkpoint.pt", tmp_path / "b/checkpoint.pt")
    assert first.step == CONFIG.steps and first.images_per_s > 0
    assert 0.0 <= first.evals["16"]["accuracy"] <= 1.0


def test_stop_and_resume_gives_the_same_final_checkpoint(tmp_path):
    whole = _trainer(tmp_path / "whole").fit()
    stopped = _trainer(tmp_path / "cut").fit(stop_after=6)
    assert stopped.step == 6
    assert ckpt.load_checkpoint(tmp_path / "cut/checkpoint.pt")["step"] == 4  # the last one written
    resumed = _trainer(tmp_path / "cut").fit(resume=True)
    assert _same_checkpoint(tmp_path / "whole/checkpoint.pt", tmp_path / "cut/checkpoint.pt")
    assert resumed.losses == whole.losses  # the log reads as one run: steps 5-6 of the cut run were dropped
    assert [r["step"] for r in read_metrics(tmp_path / "cut/metrics.jsonl")] == \
        [r["step"] for r in read_metrics(tmp_path / "whole/metrics.jsonl")]


def test_resume_refuses_another_config(tmp_path):
    _trainer(tmp_path).fit(stop_after=4)
    with pytest.raises(ValueError, match="lr=0.003 there, 0.001 now"):
        _trainer(tmp_path, TrainConfig(**{**CONFIG.__dict__, "lr": 1e-3})).fit(resume=True)


def test_checkpoint_round_trip_holds_everything(tmp_path):
    _trainer(tmp_path).fit(stop_after=4)
    state = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    keys = {"model", "optimizer", "scheduler", "scaler", "rng", "step", "epoch", "batch_in_epoch", "config"}
    assert keys <= set(state)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 0, 4)  # 64 samples / 8 = 8 steps an epoch
    model = build_vit()
    model.load_state_dict(state["model"])
    assert state["optimizer"]["state"], "AdamW moments saved"
    assert state["scheduler"]["last_epoch"] == 4
    before = torch.rand(3)
    ckpt.set_rng_state(state["rng"][0])
    after_restore = torch.rand(3)
    ckpt.set_rng_state(state["rng"][0])
    assert torch.equal(torch.rand(3), after_restore) and not torch.equal(before, after_restore)


def test_fingerprint_sees_one_changed_bit(tmp_path):
    state = {"model": {"w": torch.zeros(4)}, "step": 3}
    ckpt.save_checkpoint(tmp_path / "a.pt", state)
    ckpt.save_checkpoint(tmp_path / "b.pt", {"model": {"w": torch.zeros(4)}, "step": 3})
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()  # torch's random serialization id
    assert _same_checkpoint(tmp_path / "a.pt", tmp_path / "b.pt")
    flipped = torch.zeros(4)
    flipped.view(torch.int32)[2] = 1  # the smallest subnormal: one bit
    ckpt.save_checkpoint(tmp_path / "c.pt", {"model": {"w": flipped}, "step": 3})
    assert not _same_checkpoint(tmp_path / "a.pt", tmp_path / "c.pt")


def test_checkpoint_format_checked(tmp_path):
    torch.save({"format": 99}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format 99"):
        ckpt.load_checkpoint(tmp_path / "old.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_metrics_file_and_records(tmp_path):
    seen = []
    result = _trainer(tmp_path, on_record=seen.append).fit()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == result.records == seen
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 11))
    assert [r["step"] for r in evals] == [5, 10]
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in train)
    assert set(evals[0]) == {"kind", "step", "accuracy/16", "loss/16"}


def test_training_learns_a_separable_batch(tmp_path):
    """The loss falls when the model can fit: the same 8 samples every step."""
    config = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=30, checkpoint_every=30)
    result = Trainer(build_vit, data(8), {}, config).fit()
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_bf16_autocast_and_grad_checkpointing_run_on_cpu(tmp_path):
    config = TrainConfig(**{**CONFIG.__dict__, "steps": 3, "precision": "bf16", "grad_checkpointing": True})
    trainer = _trainer(tmp_path, config)
    assert trainer.autocast_dtype is torch.bfloat16
    result = trainer.fit()
    assert trainer.model.grad_checkpointing and all(math.isfinite(x) for x in result.losses)


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) is None and resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        resolve_precision("fp16", cpu)


def test_schedule_warms_up_then_anneals_to_zero():
    factor = warmup_cosine(10, 2)
    assert [factor(0), factor(1)] == [0.5, 1.0]
    assert factor(2) == pytest.approx(1.0) and factor(10) == pytest.approx(0.0)
    assert all(factor(s) >= factor(s + 1) for s in range(2, 10))


@pytest.mark.parametrize(("field", "value"), [("steps", 0), ("batch_size", 2.5), ("lr", 0.0), ("warmup_steps", -1),
                                              ("precision", "fp8"), ("seed", -1), ("grad_clip", 0.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_bad_data_and_batch(tmp_path):
    with pytest.raises(ValueError, match="smaller than one global batch"):
        Trainer(build_vit, data(4), {}, CONFIG)
    with pytest.raises(TypeError, match="train must be a tuple"):
        Trainer(build_vit, [1, 2], {}, CONFIG)
    with pytest.raises(ValueError, match="grad_checkpointing"):
        Trainer(lambda: torch.nn.Linear(1, 1), data(), {}, TrainConfig(grad_checkpointing=True, batch_size=8)).fit()


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard is not installed")
def test_tensorboard_events_written(tmp_path):
    with MetricsLog(tmp_path / "m.jsonl", tmp_path / "tb") as log:
        log.open()
        log.write({"step": 1, "loss": 0.5})
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


_KILLED_RUN = """
import sys, time, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from train_tiny import build_vit, data
from visattn.train.trainer import TrainConfig, Trainer
config = TrainConfig(**{config!r})
def slow(record):
    time.sleep(0.2)  # seconds of room for the kill to land before the last checkpoint
Trainer(build_vit, data(), {{"16": data(32, "test")}}, config, out_dir={out!r}, on_record=slow).fit(resume=True)
"""


@pytest.mark.slow
def test_sigkill_and_resume_gives_the_same_final_checkpoint(tmp_path):
    """A real kill: the run is SIGKILLed once its first checkpoint is on disk, then run again to the end."""
    config = {**CONFIG.__dict__, "steps": 16}
    out = tmp_path / "killed"
    code = _KILLED_RUN.format(tests=str(Path(__file__).parent), config=config, out=str(out))
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = ckpt.load_checkpoint(out / "checkpoint.pt")["step"]
    assert killed_at < 16, "the run finished before the kill"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    whole = _trainer(tmp_path / "whole", TrainConfig(**config)).fit()
    assert _same_checkpoint(out / "checkpoint.pt", tmp_path / "whole/checkpoint.pt")
    assert [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"] == whole.losses
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 16
