"""Lens state lives in a ``contextvars.ContextVar``: two threads and two asyncio tasks that capture and edit
different models at the same time never see, or undo, each other's recorders and edits."""

from __future__ import annotations

import asyncio
import threading

import timm
import torch

from visattn import lens
from visattn.lens import STATE, Edit


class Blocking(Edit):
    """Waits at two barriers during its first attention call (while the lens has narrowed the state to its model)."""

    def __init__(self, inside: threading.Barrier, release: threading.Barrier) -> None:
        super().__init__()
        self.inside, self.release, self.done = inside, release, False

    def edit_probs(self, probs, call):
        if not self.done:
            self.done = True
            self.inside.wait(timeout=30)
            self.release.wait(timeout=30)
        return probs


class Uniform(Edit):
    """Replaces every row by the uniform distribution (an edit whose effect is unmistakable)."""

    def edit_probs(self, probs, call):
        return torch.full_like(probs, 1.0 / probs.shape[-1])


def tiny_vit(seed: int, depth: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                             depth=depth, num_heads=2).eval()


def test_two_threads_capture_different_models_at_once():
    """Thread B enters and leaves its capture while thread A is inside an attention call of its own model; with
    one module-global state A's narrowing swallowed B's recorder and B's exit raised."""
    model_a, model_b = tiny_vit(0, depth=2), tiny_vit(1, depth=3)
    x = torch.randn(1, 3, 32, 32)
    inside, release, finished = threading.Barrier(2), threading.Barrier(2), threading.Barrier(2)
    results, errors = {}, []

    def thread_a():
        try:
            with lens.edit(model_a, [Blocking(inside, release)]), lens.capture(model_a) as rec, torch.no_grad():
                model_a(x)
                finished.wait(timeout=30)
            results["a"] = rec
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    def thread_b():
        try:
            inside.wait(timeout=30)
            with lens.capture(model_b) as rec:
                release.wait(timeout=30)
                with torch.no_grad():
                    model_b(x)
            finished.wait(timeout=30)
            results["b"] = rec
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert [len(results["a"].calls(i)) for i in range(2)] == [1, 1]
    assert [len(results["b"].calls(i)) for i in range(3)] == [1, 1, 1]
    with lens.capture(model_b) as plain, torch.no_grad():
        model_b(x)
    for i in range(3):
        torch.testing.assert_close(results["b"].get("probs", i).tensor, plain.get("probs", i).tensor)
    assert STATE.edits == [] and STATE.recorders == []


def test_two_async_tasks_edit_different_models_interleaved():
    """Task A leaves its edit while task B is still inside its own; with one module-global list A's exit also
    removed B's edit, so B's model ran unedited."""
    model_a, model_b = tiny_vit(2, depth=2), tiny_vit(3, depth=2)
    x = torch.randn(1, 3, 32, 32)

    async def task_a(entered: asyncio.Event, left: asyncio.Event):
        with lens.edit(model_a, [Uniform()]):
            entered.set()
            await asyncio.sleep(0)
        left.set()

    async def task_b(entered: asyncio.Event, left: asyncio.Event):
        await entered.wait()
        with lens.edit(model_b, [Uniform()]):
            await left.wait()
            with lens.capture(model_b) as rec, torch.no_grad():
                model_b(x)
        return rec

    async def main():
        entered, left = asyncio.Event(), asyncio.Event()
        _, rec = await asyncio.gather(task_a(entered, left), task_b(entered, left))
        return rec

    rec = asyncio.run(main())
    probs = rec.get("probs", 1).tensor
    torch.testing.assert_close(probs, torch.full_like(probs, 1.0 / probs.shape[-1]))
    assert STATE.edits == [] and STATE.recorders == []
