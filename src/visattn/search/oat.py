"""OAT: object-level scanpath prediction with an encoder-decoder transformer and an object attention head.

"OAT: Object-Level Attention Transformer for Gaze Scanpath Prediction" (arXiv 2407.13335). Each object crop goes
through a CNN (any timm backbone, ``num_classes=0``) and a linear map to ``d``; a learned 2-D positional encoding
of its grid cell is added, ``e_o = W_f CNN(crop_o) + [P_row[r_o], P_col[c_o]]``. The encoder reads the object
tokens and a target token (the target crop through the same CNN plus a learned type vector). The decoder, causal,
reads a start token and the tokens ``e`` of the objects fixated so far plus a 1-D sinusoidal encoding of the step.
The object attention head scores every object for the next fixation with two heads
``s_h(o, t) = (W_e^h z_o) . (W_d^h u_t) / sqrt(d)`` (``z`` the encoder output, ``u`` the decoder output), appends a
constant logit 0 for end-of-scanpath (EOS) in each head, mixes the heads with ``Linear(2 -> 1)`` and applies a
softmax over ``O + 1`` choices (index ``O`` = EOS).

Positional prior: the rows of each positional table are trained so that ``cos(P_i, P_j) ~ exp(-(i - j)^2 /
(2 sigma^2))`` (``sigma = 2``) with equal norms (:func:`positional_prior_loss`, :func:`pretrain_positional`).
Published sizes: ``d = 512``, 4 heads, 4 encoder + 4 decoder layers (the defaults here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OAT", "ObjectPositionalEncoding", "cosine_prior", "oat_loss", "positional_prior_loss",
           "pretrain_positional", "scanpath_targets"]

IGNORE = -100


def cosine_prior(n: int, sigma: float = 2.0, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """``(n, n)`` target cosine similarities ``exp(-(i - j)^2 / (2 sigma^2))``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    i = torch.arange(n, dtype=dtype, device=device)
    return torch.exp(-(i[:, None] - i[None, :]) ** 2 / (2 * sigma ** 2))


def positional_prior_loss(table: Tensor, sigma: float = 2.0) -> Tensor:
    """``mean((cos(P_i, P_j) - prior_ij)^2) + var(|P_i|) / mean(|P_i|)^2`` for a table ``(n, dim)``."""
    if not isinstance(table, Tensor) or table.dim() != 2:
        raise ValueError(f"table must be an (n, dim) tensor, got {table!r}")
    norms = table.norm(dim=1)
    unit = table / norms.clamp_min(1e-12)[:, None]
    cos = unit @ unit.T
    prior = cosine_prior(table.shape[0], sigma, table.dtype, table.device)
    spread = norms.var(unbiased=False) / norms.mean().square().clamp_min(1e-12)
    return (cos - prior).square().mean() + spread


def pretrain_positional(table: nn.Parameter, sigma: float = 2.0, steps: int = 200, lr: float = 0.05) -> list[float]:
    """Fit ``table`` to the cosine prior with Adam in place; returns the losses."""
    opt = torch.optim.Adam([table], lr=lr)
    losses = []
    for _ in range(steps):
        loss = positional_prior_loss(table, sigma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class ObjectPositionalEncoding(nn.Module):
    """Learned 2-D encoding: ``[P_row[r], P_col[c]]`` (``dim / 2`` each) of grid cells ``(..., 2)``."""

    def __init__(self, grid: Sequence[int], dim: int) -> None:
        super().__init__()
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be (rows, cols) >= 1, got {grid!r}")
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim!r}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.rows = nn.Parameter(torch.randn(self.grid[0], dim // 2) * 0.02)
        self.cols = nn.Parameter(torch.randn(self.grid[1], dim // 2) * 0.02)

    def pretrain(self, sigma: float = 2.0, steps: int = 200, lr: float = 0.05) -> tuple[list[float], list[float]]:
        """Fit both tables to the published cosine-similarity prior."""
        with torch.enable_grad():
            return pretrain_positional(self.rows, sigma, steps, lr), pretrain_positional(self.cols, sigma, steps, lr)

    def forward(self, cells: Tensor) -> Tensor:
        return torch.cat((self.rows[cells[..., 0]], self.cols[cells[..., 1]]), dim=-1)


def _sinusoid(length: int, dim: int, like: Tensor) -> Tensor:
    pos = torch.arange(length, device=like.device, dtype=like.dtype)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=like.device, dtype=like.dtype) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=like.device, dtype=like.dtype)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe


def scanpath_targets(scanpaths: Sequence[Sequence[int]], num_objects: int, max_len: int | None = None
                     ) -> tuple[Tensor, Tensor]:
    """Decoder inputs ``(B, T)`` (fixated objects, ``0`` padding) and targets ``(B, T + 1)`` (objects, then EOS =
    ``num_objects``, then ``-100`` padding) from object-index scanpaths."""
    longest = max((len(s) for s in scanpaths), default=0)
    t = longest if max_len is None else max_len
    inputs = torch.zeros(len(scanpaths), t, dtype=torch.long)
    targets = torch.full((len(scanpaths), t + 1), IGNORE, dtype=torch.long)
    for b, path in enumerate(scanpaths):
        if len(path) > t:
            raise ValueError(f"scanpath {b} has {len(path)} fixations, more than max_len={t}")
        if any(not 0 <= o < num_objects for o in path):
            raise ValueError(f"scanpath {b} must index objects in [0, {num_objects}), got {list(path)!r}")
        inputs[b, :len(path)] = torch.tensor(list(path), dtype=torch.long)
        targets[b, :len(path)] = inputs[b, :len(path)]
        targets[b, len(path)] = num_objects
    return inputs, targets


class OAT(nn.Module):
    """Object-level attention transformer (arXiv 2407.13335; see the module docstring).

    ``forward(crops, target, cells, fixated)``: crops ``(B, O, 3, s, s)``, target ``(B, 3, s, s)``, grid cells
    ``(B, O, 2)``, fixated objects ``(B, T)`` -> logits ``(B, T + 1, O + 1)`` for the next fixation after the start
    token and after each fixation (index ``O`` is EOS). ``object_mask`` ``(B, O)`` (True = real object) hides
    padding objects.
    """

    def __init__(self, backbone: str | nn.Module = "resnet10t", grid: Sequence[int] = (8, 8), dim: int = 512,
                 num_heads: int = 4, encoder_layers: int = 4, decoder_layers: int = 4, dropout: float = 0.1,
                 pretrained: bool = False, feature_dim: int | None = None) -> None:
        super().__init__()
        if isinstance(backbone, str):
            import timm

            backbone = timm.create_model(backbone, pretrained=pretrained, num_classes=0)
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be a timm model name or an nn.Module, got {backbone!r}")
        feat = feature_dim if feature_dim is not None else getattr(backbone, "num_features", None)
        if not isinstance(feat, int):
            raise ValueError("feature_dim must be given when the backbone has no int num_features")
        if dim % num_heads or dim % 2:
            raise ValueError(f"dim must be even and a multiple of num_heads={num_heads}, got {dim!r}")
        self.backbone, self.dim = backbone, dim
        self.feature = nn.Linear(feat, dim)
        self.position = ObjectPositionalEncoding(grid, dim)
        self.target_type = nn.Parameter(torch.zeros(dim))
        self.start = nn.Parameter(torch.randn(dim) * 0.02)
        enc = nn.TransformerEncoderLayer(dim, num_heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        dec = nn.TransformerDecoderLayer(dim, num_heads, 4 * dim, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(enc, encoder_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, decoder_layers)
        self.w_enc = nn.Linear(dim, 2 * dim, bias=False)
        self.w_dec = nn.Linear(dim, 2 * dim, bias=False)
        self.mix = nn.Linear(2, 1)

    def embed_objects(self, crops: Tensor, cells: Tensor) -> Tensor:
        b, o = crops.shape[:2]
        feats = self.backbone(crops.flatten(0, 1)).reshape(b, o, -1)
        return self.feature(feats) + self.position(cells)

    def encode(self, crops: Tensor, target: Tensor, cells: Tensor, object_mask: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        """Object embeddings ``(B, O, d)`` and encoder outputs ``(B, O + 1, d)`` (target token last)."""
        _check_inputs(crops, target, cells, object_mask)
        objects = self.embed_objects(crops, cells)
        tgt = self.feature(self.backbone(target)) + self.target_type
        pad = None
        if object_mask is not None:
            pad = torch.cat((~object_mask, object_mask.new_zeros(object_mask.shape[0], 1)), dim=1)
        memory = self.encoder(torch.cat((objects, tgt[:, None]), dim=1), src_key_padding_mask=pad)
        return objects, memory

    def decode(self, objects: Tensor, memory: Tensor, fixated: Tensor, object_mask: Tensor | None = None) -> Tensor:
        """Logits ``(B, T + 1, O + 1)`` given the fixated objects ``(B, T)``."""
        b, o = objects.shape[:2]
        if fixated.dim() != 2 or fixated.shape[0] != b:
            raise ValueError(f"fixated must be shaped ({b}, T), got {tuple(fixated.shape)}")
        steps = torch.cat((self.start.expand(b, 1, -1), objects.gather(1, fixated[..., None].expand(-1, -1, self.dim))),
                          dim=1)
        steps = steps + _sinusoid(steps.shape[1], self.dim, steps)
        causal = nn.Transformer.generate_square_subsequent_mask(steps.shape[1], device=steps.device,
                                                                dtype=steps.dtype)
        pad = None
        if object_mask is not None:
            pad = torch.cat((~object_mask, object_mask.new_zeros(b, 1)), dim=1)
        u = self.decoder(steps, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad)
        z = memory[:, :o]
        ze = self.w_enc(z).reshape(b, o, 2, self.dim)
        ud = self.w_dec(u).reshape(b, -1, 2, self.dim)
        scores = torch.einsum("bohd,bthd->btoh", ze, ud) / math.sqrt(self.dim)
        scores = torch.cat((scores, scores.new_zeros(b, scores.shape[1], 1, 2)), dim=2)
        logits = self.mix(scores).squeeze(-1)
        if object_mask is not None:
            keep = torch.cat((object_mask, object_mask.new_ones(b, 1)), dim=1)
            logits = logits.masked_fill(~keep[:, None, :], float("-inf"))
        return logits

    def forward(self, crops: Tensor, target: Tensor, cells: Tensor, fixated: Tensor,
                object_mask: Tensor | None = None) -> Tensor:
        objects, memory = self.encode(crops, target, cells, object_mask)
        return self.decode(objects, memory, fixated, object_mask)

    @torch.no_grad()
    def generate(self, crops: Tensor, target: Tensor, cells: Tensor, max_len: int = 10,
                 object_mask: Tensor | None = None) -> Tensor:
        """Greedy scanpaths ``(B, max_len)`` of object indices, ``-1`` after EOS (no host sync)."""
        objects, memory = self.encode(crops, target, cells, object_mask)
        b, o = objects.shape[:2]
        fixated = torch.zeros(b, 0, dtype=torch.long, device=crops.device)
        ended = torch.zeros(b, dtype=torch.bool, device=crops.device)
        out = []
        for _ in range(max_len):
            choice = self.decode(objects, memory, fixated, object_mask)[:, -1].argmax(-1)
            ended = ended | (choice == o)
            out.append(torch.where(ended, torch.full_like(choice, -1), choice))
            fixated = torch.cat((fixated, choice.clamp_max(o - 1)[:, None]), dim=1)
        return torch.stack(out, dim=1)


def oat_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy of the next fixation (objects and EOS), padding ``-100`` ignored."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"targets must be shaped {tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


def _check_inputs(crops: Tensor, target: Tensor, cells: Tensor, object_mask: Tensor | None) -> None:
    if not isinstance(crops, Tensor) or crops.dim() != 5:
        raise ValueError(f"crops must be a (B, O, 3, s, s) tensor, got {getattr(crops, 'shape', crops)}")
    b, o = crops.shape[:2]
    if not isinstance(target, Tensor) or target.dim() != 4 or target.shape[0] != b:
        raise ValueError(f"target must be a ({b}, 3, s, s) tensor, got {getattr(target, 'shape', target)}")
    if not isinstance(cells, Tensor) or cells.shape != (b, o, 2) or cells.is_floating_point():
        raise ValueError(f"cells must be a ({b}, {o}, 2) integer tensor, got {getattr(cells, 'shape', cells)}")
    if object_mask is not None and (object_mask.shape != (b, o) or object_mask.dtype != torch.bool):
        raise ValueError(f"object_mask must be a ({b}, {o}) bool tensor, got {object_mask!r}")
