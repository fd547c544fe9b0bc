"""Visual Attention Redistribution (VAR): take attention from visual sink tokens, give it to the image.

Kang et al., "See What You Are Told: Visual Attention Sink in Large Multimodal Models", arXiv 2503.03321
(ICLR 2025; code: seilk/VisAttnSink). In every layer from the third on (``skip_first_layers=2``) but the last:

1. sink tokens: ``phi(x) = max_{d in D_sink} |x[d] / RMS(x)| > tau`` on the hidden state ``x`` entering the layer
   (:func:`visattn.lens.metrics.sinks.sink_tokens`; ``tau = 20``, ``D_sink`` fixed per model);
2. image-centric rows: a query row ``A_i`` of a head is selected when its visual sink share
   ``sum_{V and S} A_ij / sum_V (A_ij + 1e-6) <= rho`` (``rho = 0.5`` in the code) and its visual mass
   ``sum_V A_ij >= 0.2``, with ``V`` the image tokens and ``S`` the sinks;
3. on the selected rows: ``A_ij <- p A_ij`` for sinks (``p = 0.6``) and the freed mass
   ``Omega_i = (1 - p) sum_S A_ij`` goes to the non-sink image tokens in proportion to their attention:
   ``A_ij <- A_ij + Omega_i A_ij / sum_{V \\ S} A_il``. Row sums are unchanged.

Layers and generated tokens as the released code does them (undocumented there): sinks are looked for only on the
hidden states entering layers 2 .. L - 1 (``sink_select_layers = range(L)[2:]``), so layers 0 and 1 are never edited
(``skip_first_layers``, 0 edits them too); the last layer is skipped (``skip_last_layer``); and sinks are looked for
only in the prefill (``output_token_count < 0``): while decoding with a KV cache the sinks found in the prefill are
kept for the cached keys and a generated token is never a sink (``sinks_in_generated=True`` tests each generated
token's hidden state as well). A forward whose hidden state covers every key (no KV cache) counts as a prefill.

As in the released code, sinks outside the image (e.g. the first text token) are scaled too and their mass also
goes to the image (``scale_text_sinks=False`` scales visual sinks only), rows are selected only where the sequence
has at least one visual sink, and only queries after the last image token are edited (``text_queries_only``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..call import AttentionCall
from ..edit_base import Edit
from ..metrics.sinks import SINK_TAU, sink_tokens
from ._common import head_mask, image_positions, indices, key_mask, number, query_positions

SHARE_EPS = 1e-6
"""Added to every visual weight in the sink-share denominator, as in the released code."""


class VisualAttentionRedistribution(Edit):
    """VAR on post-softmax probabilities (see the module docstring for the equations).

    Args:
        sink_dims: the massive-activation channels ``D_sink`` of the model (LLaVA-1.5-7B: ``(1415, 2533)``;
            :func:`visattn.lens.metrics.sinks.massive_activation_dims` finds them). Needs ``call.hidden``.
        sink_tokens: fixed sink positions instead of ``sink_dims`` (then no hidden state is needed).
        tau: sink threshold on ``phi``.
        rho: largest visual sink share of a selected row.
        min_visual_mass: smallest visual mass of a selected row (0.2 in the paper).
        p: factor kept on sink entries (0.6 in the paper).
        skip_first_layers: leave layers ``0 .. skip_first_layers - 1`` alone (2: the released code finds no sinks
            there); layer indices are the lens numbering, so use ``within=`` on the language model.
        sinks_in_generated: also look for sinks among generated tokens while decoding (the released code does not).
        skip_last_layer: leave the model's last layer alone (the paper does); the layer count comes from
            :meth:`check` (called by ``visattn.lens.edit``) or ``num_layers``.
        num_layers: the model's layer count, when the edit is applied without ``visattn.lens.edit``.
        scale_text_sinks: also scale sinks outside the image and move their mass to the image (released code).
        text_queries_only: edit only queries after the last image token (released code); False edits every row.
        layers, heads: where the edit may act (None = everywhere).
    """

    def __init__(self, sink_dims: Sequence[int] | None = None, *, sink_tokens: Sequence[int] | Tensor | None = None,
                 tau: float = SINK_TAU, rho: float = 0.5, min_visual_mass: float = 0.2, p: float = 0.6,
                 skip_first_layers: int = 2, sinks_in_generated: bool = False,
                 skip_last_layer: bool = True, num_layers: int | None = None, scale_text_sinks: bool = True,
                 text_queries_only: bool = True, layers: Sequence[int] | None = None,
                 heads: Sequence[int] | None = None) -> None:
        super().__init__(layers, heads)
        if (sink_dims is None) == (sink_tokens is None):
            raise ValueError("VisualAttentionRedistribution needs exactly one of sink_dims (channels D_sink, "
                             "detection on call.hidden) or sink_tokens (fixed positions), got "
                             f"sink_dims={sink_dims!r}, sink_tokens={sink_tokens!r}")
        self.sink_dims = None if sink_dims is None else tuple(indices(sink_dims, "sink_dims").tolist())
        self.sink_positions = None if sink_tokens is None else indices(sink_tokens, "sink_tokens", allow_empty=True)
        self.tau = number(tau, "tau")
        self.rho = number(rho, "rho", 0.0, 1.0)
        self.min_visual_mass = number(min_visual_mass, "min_visual_mass", 0.0, 1.0)
        self.p = number(p, "p", 0.0, 1.0)
        if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int)
                                       or num_layers < 1):
            raise ValueError(f"num_layers must be a positive int or None, got {num_layers!r}")
        self.num_layers = num_layers
        if isinstance(skip_first_layers, bool) or not isinstance(skip_first_layers, int) or skip_first_layers < 0:
            raise ValueError(f"skip_first_layers must be an int >= 0, got {skip_first_layers!r}")
        self.skip_first_layers = skip_first_layers
        self.sinks_in_generated = bool(sinks_in_generated)
        self.skip_last_layer = bool(skip_last_layer)
        self.scale_text_sinks = bool(scale_text_sinks)
        self.text_queries_only = bool(text_queries_only)
        self.selected: dict[int, Tensor] = {}
        self._sinks: dict[int, Tensor] = {}

    def check(self, num_layers: int, num_heads: int) -> None:
        super().check(num_layers, num_heads)
        self.num_layers = num_layers

    def prepare(self, run: Callable[..., Any]) -> None:
        """Forget the rows and sinks of earlier runs."""
        self.selected.clear()
        self._sinks.clear()

    def sinks(self, call: AttentionCall) -> Tensor:
        """Bool ``(B, Nk)``: the sink keys of this call (remembered per layer across decoding steps)."""
        b, nk = call.q.shape[0], call.k.shape[-2]
        if self.sink_positions is not None:
            return key_mask(self.sink_positions[self.sink_positions < nk], nk, call.k.device).expand(b, nk)
        if call.hidden is None:
            raise ValueError(f"VisualAttentionRedistribution with sink_dims needs the hidden state entering the "
                             f"layer, but the attention call of layer {call.layer} ('{call.name}') has hidden=None; "
                             "use an adapter that records it or pass sink_tokens=")
        found = sink_tokens(call.hidden, self.sink_dims, self.tau).to(call.k.device)
        if found.shape[-1] < nk:
            earlier = self._sinks.get(call.layer)
            if earlier is None or earlier.shape[-1] != nk - found.shape[-1]:
                raise ValueError(f"VisualAttentionRedistribution: layer {call.layer} has {nk} keys but its hidden "
                                 f"state covers {found.shape[-1]} tokens and no earlier pass covered the rest")
            if not self.sinks_in_generated:
                found = torch.zeros_like(found)
            found = torch.cat([earlier.expand(found.shape[0], -1), found], dim=-1)
        self._sinks[call.layer] = found
        return found

    def edit_probs(self, probs: Tensor, call: AttentionCall) -> Tensor:
        if call.layer < self.skip_first_layers:
            return probs
        if self.skip_last_layer:
            if self.num_layers is None:
                raise ValueError("VisualAttentionRedistribution skips the last layer but does not know the model's "
                                 "layer count: apply it through visattn.lens.edit or pass num_layers=")
            if call.layer == self.num_layers - 1:
                return probs
        nk = probs.shape[-1]
        image = image_positions(call, "VisualAttentionRedistribution")
        visual = key_mask(image, nk, probs.device)
        sink = self.sinks(call)[:, None, None, :]
        visual_sink = sink & visual
        scaled = sink if self.scale_text_sinks else visual_sink
        visual_mass = (probs * visual).sum(-1)
        share = (probs * visual_sink).sum(-1) / ((probs + SHARE_EPS) * visual).sum(-1)
        spare = (probs * (visual & ~sink)).sum(-1)
        rows = (share <= self.rho) & (visual_mass >= self.min_visual_mass) & (spare > 0)
        rows &= visual_sink.any(-1)
        rows &= head_mask(self.heads, probs.shape[1], probs.device, "VisualAttentionRedistribution")[:, None]
        if self.text_queries_only:
            rows &= query_positions(call) > image.max()
        freed = (1.0 - self.p) * (probs * scaled).sum(-1, keepdim=True)
        receivers = probs * (visual & ~sink)
        safe_spare = torch.where(spare > 0, spare, torch.ones_like(spare)).unsqueeze(-1)
        keep = torch.where(scaled, probs.new_tensor(self.p), probs.new_tensor(1.0))
        moved = probs * keep + freed * receivers / safe_spare
        self.selected[call.layer] = rows
        return torch.where(rows.unsqueeze(-1), moved, probs)
