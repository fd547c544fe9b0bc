"""DDP under a gloo process group: two processes with the same global batch follow the single-process loss curve
(within float32 rounding: the gradient mean is summed in another order), evaluate the same accuracy, and only rank
0 writes files. This is the 2-process smoke job of the normal suite."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp
from train_tiny import DDP_CONFIG, build_mlp, build_vit, data, ddp_worker

from visattn.train import checkpoint as ckpt
from visattn.train.distributed import DistContext, all_gather_objects, all_reduce_mean, init_distributed
from visattn.train.trainer import TrainConfig, Trainer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_follow_the_single_process_curve(tmp_path, one_thread):
    single = Trainer(build_mlp, data(), {"16": data(32, "test")}, TrainConfig(**DDP_CONFIG),
                     out_dir=tmp_path / "one").fit()
    # forked after the single run: the children inherit torch and the torch._dynamo that AdamW imports on first use
    # instead of importing them again (seconds each on a busy machine)
    mp.start_processes(ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, start_method="fork")
    ddp = torch.load(tmp_path / "ddp/result.pt", weights_only=False)
    assert ddp["context"] == (0, 2, "gloo")

    def curve(records, kind, key):
        return torch.tensor([r[key] for r in records if r["kind"] == kind], dtype=torch.float64)

    ddp_losses, losses = curve(ddp["records"], "train", "loss"), curve(single.records, "train", "loss")
    assert len(losses) == DDP_CONFIG["steps"]
    torch.testing.assert_close(ddp_losses, losses, rtol=1e-4, atol=1e-5)
    assert losses[0] != losses[-1]  # the curve moves, so agreement means something
    torch.testing.assert_close(curve(ddp["records"], "eval", "loss/16"), curve(single.records, "eval", "loss/16"),
                               rtol=1e-4, atol=1e-5)
    ddp_weights = ckpt.load_checkpoint(tmp_path / "ddp/checkpoint.pt")["model"]
    weights = ckpt.load_checkpoint(tmp_path / "one/checkpoint.pt")["model"]
    for name, value in weights.items():
        torch.testing.assert_close(ddp_weights[name], value, rtol=1e-3, atol=1e-4, msg=name)
    assert len(ckpt.load_checkpoint(tmp_path / "ddp/checkpoint.pt")["rng"]) == 2  # every rank's generators
    assert not (tmp_path / "ddp/result.pt.partial").exists()


def test_single_process_context_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = init_distributed("cpu")
    assert context == DistContext() and context.is_main and not context.distributed
    assert all_reduce_mean(torch.tensor(3.0), context).item() == 3.0
    assert all_gather_objects({"a": 1}, context) == [{"a": 1}]


def test_bad_environment_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer, got 'two'"):
        init_distributed("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 and WORLD_SIZE=2"):
        init_distributed("cpu")


def test_global_batch_must_split_evenly():
    with pytest.raises(ValueError, match="batch_size 9 must be a multiple of the 2 processes"):
        Trainer(build_vit, data(), {}, TrainConfig(batch_size=9), context=DistContext(world_size=2))
