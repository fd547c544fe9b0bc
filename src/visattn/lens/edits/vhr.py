"""Vision-aware Head Reinforcement (VHR): amplify the heads whose output the image changes most.

He et al., "Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence", arXiv 2412.13949
(code: jinghan1he/VHR). For head ``i`` of layer ``l`` at the current generation step,
``VHD_{l,i} = ||A_{l,i}(image, text) - A_{l,i}(text only)||_2`` with ``A_{l,i}`` the head's output (before the
output projection) at the last position (:func:`visattn.lens.metrics.vhd.vision_head_divergence`). Heads with
``VHD`` above the median of their layer get their outputs scaled by ``alpha = 2``; the paper edits layer 1 and the
last 14 layers of LLaVA-1.5.

The text-only pass runs in :meth:`prepare`: ``visattn.lens.edit(model, [vhr], inputs=...)`` calls it with a
:class:`visattn.lens.ModelRun`, which runs the model on ``inputs`` updated by ``text_only``, e.g.
``{"input_ids": ids_without_image, "pixel_values": None}``. Heads are
chosen at the first edited forward (the first generation step) and kept for later steps. Because the choice for a
layer is made during the edited forward, the VHD of layer ``l`` already sees the reinforced layers before it: heads
are chosen layer by layer, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..call import AttentionCall
from ..compute import pushed
from ..edit_base import Edit
from ..metrics.vhd import vision_head_divergence
from ._common import Rows, head_mask, number, row_mask, rows_arg


class VisionHeadReinforcement(Edit):
    """Scale per-head outputs by ``alpha`` where VHD exceeds the per-layer median.

    Args:
        text_only: keyword overrides for the text-only pass run by :meth:`prepare`.
        text_head_outputs: precomputed text-only head outputs per layer, ``{layer: (B, heads, head_dim)}`` at the
            last position, instead of ``text_only``.
        alpha: the reinforcement factor (2 in the paper); 1 = no change.
        rows: query rows whose outputs are scaled in the chosen heads (``"all"``, ``"last"`` or positions).
        layers, heads: where heads may be chosen (the paper: ``[1] + last 14`` of LLaVA-1.5's 32 layers).
    """

    def __init__(self, text_only: Mapping[str, Any] | None = None, *,
                 text_head_outputs: Mapping[int, Tensor] | None = None, alpha: float = 2.0, rows: Rows = "all",
                 layers: Sequence[int] | None = None, heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        if (text_only is None) == (text_head_outputs is None):
            raise ValueError("VisionHeadReinforcement needs exactly one of text_only (overrides for the text-only "
                             "pass) or text_head_outputs (its per-layer head outputs)")
        if text_only is not None and not isinstance(text_only, Mapping):
            raise TypeError(f"text_only must be a mapping of keyword overrides, got {type(text_only).__name__}")
        self.text_only = None if text_only is None else dict(text_only)
        self.text_outputs: dict[int, Tensor] = {}
        for layer, value in (text_head_outputs or {}).items():
            if not isinstance(value, Tensor) or value.dim() != 3:
                raise ValueError(f"text_head_outputs[{layer!r}] must be a (B, heads, head_dim) tensor, got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
            self.text_outputs[layer] = value
        self.alpha = number(alpha, "alpha")
        self.rows = rows_arg(rows)
        self.chosen: dict[int, Tensor] = {}
        self._preparing = False

    def prepare(self, run: Callable[..., Any]) -> None:
        """Run the text-only pass and keep each layer's head outputs at the last position.

        ``run`` is the :class:`visattn.lens.ModelRun` of ``visattn.lens.edit`` (its ``capture`` routes the layers
        through the lens), or any callable that runs the model while its attention already goes through the lens.
        """
        self.chosen.clear()
        if self.text_only is None:
            return
        self.text_outputs.clear()
        capture = getattr(run, "capture", None)
        if capture is not None:
            _, recording = capture(what=("head_outputs",), layers=self.layers, **self.text_only)
            for layer in recording.layers:
                if recording.calls(layer):
                    self.text_outputs[layer] = recording.get("head_outputs", layer).tensor[:, :, -1, :]
        else:
            self._record_text_pass(run)
        if not self.text_outputs:
            raise RuntimeError("VisionHeadReinforcement: the text-only pass recorded no attention layer; the model's "
                               "attention is not routed through the lens (or layers= matches none of its layers)")

    def _record_text_pass(self, run: Callable[..., Any]) -> None:
        def record(call: AttentionCall, tensors: dict[str, Tensor]) -> None:
            if self.applies_to(call.layer):
                self.text_outputs[call.layer] = tensors["head_outputs"][:, :, -1, :].detach()

        self._preparing = True
        try:
            with pushed(recorders=[record]):
                run(**self.text_only)
        finally:
            self._preparing = False

    def edit_output(self, out: Tensor, call: AttentionCall) -> Tensor:
        if self._preparing:
            return out
        heads = head_mask(self.heads, out.shape[1], out.device, "VisionHeadReinforcement")
        if call.layer not in self.chosen:
            text = self.text_outputs.get(call.layer)
            if text is None:
                raise ValueError(f"VisionHeadReinforcement has no text-only head outputs for layer {call.layer}: "
                                 "apply it through visattn.lens.edit with text_only=..., or pass "
                                 "text_head_outputs={layer: (B, heads, head_dim)}")
            image = out[:, :, -1, :]
            vhd = vision_head_divergence(image, text.to(image).expand_as(image))
            self.chosen[call.layer] = (vhd > vhd.median(dim=-1, keepdim=True).values) & heads
        scale = torch.where(self.chosen[call.layer][:, :, None, None] & row_mask(call, self.rows)[:, None],
                            out.new_tensor(self.alpha), out.new_tensor(1.0))
        return out * scale
