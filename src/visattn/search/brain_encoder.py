"""Transformer brain encoder: ROI queries cross-attend to frozen ViT features, per-vertex linear readout.

"Transformer brain encoders explain human high-level visual responses" (Adeli et al., arXiv 2505.17329). A frozen
backbone gives a token map ``f`` ``(N, C)`` (here any timm ViT, prefix tokens dropped) with a 2-D sine positional
encoding ``p``; one learned query ``q_r`` per region of interest (ROI) reads it with multi-head cross-attention::

    a_r = softmax_n((W_q q_r) . (W_k f_n + W_p p_n) / sqrt(d_h))        (per head)
    t_r = LN(q_r + W_o sum_n a_r[n] W_v f_n);   t_r = LN(t_r + MLP(t_r))
    y_v = sum_r mask[r, v] (w_v . t_r + b_v)                            (per-vertex readout)

The attention weights ``a_r`` are the "routing" maps (which image locations feed region ``r``). The layer here is
the cross-attention and MLP of a decoder layer, without self-attention among the queries. Baselines: a ridge
readout of the flattened token map (scikit-learn) and a factorised spatial x feature readout
``y_v = sum_n s_v[n] (w_v . f_n) + b_v``. Metric: per-vertex Pearson r.

Data layout read by :func:`load_nsd_arrays` (NSD as distributed for the Algonauts 2023 challenge, one subject)::

    root/training_split/training_fmri/{lh,rh}_training_fmri.npy   (n_images, n_vertices) float
    root/training_split/training_images.npy                        (n_images, H, W, 3) uint8, or
    root/training_split/training_images.h5                         dataset "images", same shape (needs h5py), or
    root/training_split/training_images/*.png                      one file per image, sorted by name
    root/roi_masks/{lh,rh}.<roi_set>_challenge_space.npy           (n_vertices,) int ROI labels, 0 = none
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BrainEncoder", "FactorisedReadout", "NSDArrays", "RidgeReadout", "fit_readout", "load_nsd_arrays",
    "pearson_per_vertex", "plot_routing_maps", "roi_mask_from_labels", "sine_positional_encoding_2d",
    "synthetic_voxels", "vit_token_features",
]

log = logging.getLogger(__name__)


def sine_positional_encoding_2d(height: int, width: int, dim: int, temperature: float = 10000.0,
                                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                                ) -> Tensor:
    """2-D sine encoding ``(H * W, dim)``: the first half encodes the row, the second the column, each as
    ``[sin(pos / T^(2k / (dim / 2))), cos(...)]`` interleaved by blocks (``dim`` divisible by 4)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4 or dim % 4:
        raise ValueError(f"dim must be a positive multiple of 4, got {dim!r}")
    quarter = dim // 4
    freq = temperature ** (-torch.arange(quarter, dtype=torch.float64, device=device) / quarter)
    rows = torch.arange(height, dtype=torch.float64, device=device)[:, None] * freq
    cols = torch.arange(width, dtype=torch.float64, device=device)[:, None] * freq
    pr = torch.cat((rows.sin(), rows.cos()), dim=1)
    pc = torch.cat((cols.sin(), cols.cos()), dim=1)
    pe = torch.cat((pr[:, None, :].expand(height, width, -1), pc[None, :, :].expand(height, width, -1)), dim=-1)
    return pe.reshape(height * width, dim).to(dtype)


@torch.no_grad()
def vit_token_features(model: nn.Module, images: Tensor, batch_size: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """Frozen ViT token map: ``(B, N, C)`` patch tokens of ``model.forward_features`` without the prefix tokens,
    and the grid ``(h, w)``. ``model`` is a timm ViT (``num_prefix_tokens`` and ``patch_embed.grid_size``)."""
    if not hasattr(model, "forward_features") or not hasattr(model, "patch_embed"):
        raise TypeError(f"model must be a timm ViT with forward_features and patch_embed, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {images!r}")
    was_training = model.training
    model.eval()
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    out = [model.forward_features(images[i:i + batch_size])[:, prefix:] for i in range(0, len(images), batch_size)]
    model.train(was_training)
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    tokens = torch.cat(out)
    if tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"token count {tokens.shape[1]} does not match the patch grid {grid}")
    return tokens, grid


def roi_mask_from_labels(labels: Tensor | np.ndarray, num_rois: int | None = None) -> Tensor:
    """One-hot ROI mask ``(R, V)`` from vertex labels ``(V,)`` in ``0 .. R`` (``0`` = in no ROI, row ``r - 1``)."""
    lab = torch.as_tensor(np.asarray(labels)).long()
    if lab.dim() != 1 or (lab < 0).any():
        raise ValueError(f"labels must be a (V,) array of ints >= 0, got shape {tuple(lab.shape)}")
    r = int(lab.max()) if num_rois is None else num_rois
    if r < 1 or int(lab.max()) > r:
        raise ValueError(f"num_rois must be >= 1 and >= the largest label {int(lab.max())}, got {num_rois!r}")
    return (lab[None, :] == torch.arange(1, r + 1)[:, None]).float()


class BrainEncoder(nn.Module):
    """ROI queries over a token map with a per-vertex readout (arXiv 2505.17329; see the module docstring).

    ``roi_mask`` ``(R, V)`` assigns vertices to ROIs; ``grid`` ``(h, w)`` is the token layout.
    ``forward(tokens)`` maps ``(B, h * w, in_dim)`` to ``(B, V)``; with ``return_attention=True`` it also
    returns the routing maps ``(B, heads, R, h * w)``.
    """

    def __init__(self, in_dim: int, roi_mask: Tensor, grid: Sequence[int], dim: int = 128, num_heads: int = 16,
                 mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(roi_mask, Tensor) or roi_mask.dim() != 2:
            raise ValueError(f"roi_mask must be an (R, V) tensor, got {roi_mask!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim % num_heads or dim % 4:
            raise ValueError(f"dim must be a multiple of num_heads={num_heads} and of 4, got {dim!r}")
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be (h, w) >= 1, got {grid!r}")
        num_rois, num_vertices = roi_mask.shape
        self.grid, self.num_heads, self.dim = (int(grid[0]), int(grid[1])), num_heads, dim
        self.register_buffer("roi_mask", roi_mask.float(), persistent=False)
        self.register_buffer("pos", sine_positional_encoding_2d(*self.grid, dim), persistent=False)
        self.queries = nn.Parameter(torch.randn(num_rois, dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(in_dim, dim)
        self.k_pos = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(in_dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.readout_weight = nn.Parameter(torch.randn(num_vertices, dim) / math.sqrt(dim))
        self.readout_bias = nn.Parameter(torch.zeros(num_vertices))

    def forward(self, tokens: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        n = self.grid[0] * self.grid[1]
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.shape[1] != n:
            raise ValueError(f"tokens must be shaped (B, {n}, C) for grid {self.grid}, got {tokens!r}")
        b, h = tokens.shape[0], self.num_heads
        hd = self.dim // h
        q = self.q(self.queries).reshape(-1, h, hd).transpose(0, 1)                          # (h, R, hd)
        k = (self.k(tokens) + self.k_pos(self.pos)).reshape(b, n, h, hd).transpose(1, 2)      # (B, h, N, hd)
        v = self.v(tokens).reshape(b, n, h, hd).transpose(1, 2)
        attn = torch.softmax(torch.einsum("hrd,bhnd->bhrn", q, k) / math.sqrt(hd), dim=-1)
        mixed = torch.einsum("bhrn,bhnd->brhd", attn, v).reshape(b, -1, self.dim)
        t = self.norm1(self.queries + self.proj(mixed))
        t = self.norm2(t + self.mlp(t))                                                       # (B, R, dim)
        per_roi = torch.einsum("brd,vd->brv", t, self.readout_weight)
        y = (per_roi * self.roi_mask).sum(1) + self.readout_bias
        return (y, attn) if return_attention else y


class FactorisedReadout(nn.Module):
    """Factorised baseline ``y_v = sum_n s_v[n] (w_v . f_n) + b_v``: a spatial map and a feature vector per vertex."""

    def __init__(self, in_dim: int, num_tokens: int, num_vertices: int) -> None:
        super().__init__()
        self.spatial = nn.Parameter(torch.full((num_vertices, num_tokens), 1.0 / num_tokens))
        self.feature = nn.Parameter(torch.randn(num_vertices, in_dim) / math.sqrt(in_dim))
        self.bias = nn.Parameter(torch.zeros(num_vertices))

    def forward(self, tokens: Tensor) -> Tensor:
        if not isinstance(tokens, Tensor) or tokens.dim() != 3 or tokens.shape[1] != self.spatial.shape[1]:
            raise ValueError(f"tokens must be shaped (B, {self.spatial.shape[1]}, C), got {tokens!r}")
        return torch.einsum("vn,bnc,vc->bv", self.spatial, tokens, self.feature) + self.bias


class RidgeReadout:
    """Ridge baseline: scikit-learn ``RidgeCV`` from the flattened token map ``(B, N * C)`` to all vertices."""

    def __init__(self, alphas: Sequence[float] = (1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5)) -> None:
        self.alphas = tuple(float(a) for a in alphas)
        self.model = None

    def fit(self, tokens: Tensor, voxels: Tensor) -> RidgeReadout:
        from sklearn.linear_model import RidgeCV

        self.model = RidgeCV(alphas=self.alphas).fit(tokens.flatten(1).double().cpu().numpy(),
                                                     voxels.double().cpu().numpy())
        return self

    def predict(self, tokens: Tensor) -> Tensor:
        if self.model is None:
            raise ValueError("RidgeReadout.predict called before fit")
        return torch.from_numpy(self.model.predict(tokens.flatten(1).double().cpu().numpy()))


def pearson_per_vertex(pred: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """Pearson r per vertex ``(V,)`` between ``pred`` and ``target`` ``(n_images, V)``."""
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor) or pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pred and target must be equal (n, V) tensors, got {getattr(pred, 'shape', pred)} and "
                         f"{getattr(target, 'shape', target)}")
    if pred.shape[0] < 2:
        raise ValueError(f"pearson r needs at least 2 images, got {pred.shape[0]}")
    p = pred - pred.mean(0)
    t = target - target.mean(0)
    return (p * t).sum(0) / ((p.square().sum(0) * t.square().sum(0)).sqrt() + eps)


def fit_readout(model: nn.Module, tokens: Tensor, voxels: Tensor, steps: int = 300, lr: float = 1e-3,
                batch_size: int = 64, weight_decay: float = 1e-4, seed: int = 0) -> list[float]:
    """Train ``model`` (tokens -> voxels) with AdamW on the mean squared error; returns the per-step losses."""
    if tokens.shape[0] != voxels.shape[0]:
        raise ValueError(f"tokens and voxels must have the same number of images, got {tokens.shape[0]} and "
                         f"{voxels.shape[0]}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, tokens.shape[0], (min(batch_size, tokens.shape[0]),), generator=gen)
        loss = F.mse_loss(model(tokens[idx]), voxels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def synthetic_voxels(tokens: Tensor, grid: Sequence[int], num_rois: int = 4, vertices_per_roi: int = 16,
                     routing_width: float = 1.0, noise: float = 0.1, seed: int = 0
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Voxels from a known ROI routing: ``y_v = w_v . (sum_n route_r[n] f_n) / sqrt(C) + noise``, ``v`` in ROI r.

    ``route_r`` is a normalised Gaussian bump (``routing_width`` tokens) at a random grid position. Returns the
    voxels ``(B, V)`` (standardised per vertex before the noise), the labels ``(V,)`` (``1 .. R``) and the
    routing ``(R, N)``.
    """
    h, w = int(grid[0]), int(grid[1])
    if tokens.dim() != 3 or tokens.shape[1] != h * w:
        raise ValueError(f"tokens must be shaped (B, {h * w}, C), got {tuple(tokens.shape)}")
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(num_rois, 2, generator=gen, dtype=torch.float64) * torch.tensor([h - 1, w - 1.0])
    rr, cc = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pos = torch.stack((rr.flatten(), cc.flatten()), dim=1)
    routing = torch.softmax(-torch.cdist(centres, pos).square() / (2 * routing_width ** 2), dim=1)
    feats = tokens.double()
    pooled = torch.einsum("rn,bnc->brc", routing, feats)
    c = feats.shape[-1]
    weights = torch.randn(num_rois, vertices_per_roi, c, generator=gen, dtype=torch.float64) / math.sqrt(c)
    clean = torch.einsum("brc,rvc->brv", pooled, weights).reshape(feats.shape[0], -1)
    clean = (clean - clean.mean(0)) / clean.std(0).clamp_min(1e-12)
    voxels = clean + noise * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    labels = torch.arange(1, num_rois + 1).repeat_interleave(vertices_per_roi)
    return voxels.to(tokens.dtype), labels, routing


def plot_routing_maps(attention: Tensor, grid: Sequence[int], path: str | Path, image: Tensor | None = None,
                      roi_names: Sequence[str] | None = None) -> Path:
    """Save the routing maps (attention ``(R, N)`` or ``(heads, R, N)``, heads averaged) as a PNG row of panels,
    over ``image`` ``(3, H, W)`` in ``[0, 1]`` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    att = attention.detach().float().cpu()
    if att.dim() == 3:
        att = att.mean(0)
    if att.dim() != 2 or att.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"attention must be (R, {grid[0] * grid[1]}) or (heads, R, N), got {tuple(attention.shape)}")
    r = att.shape[0]
    fig, axes = plt.subplots(1, r, figsize=(2.2 * r, 2.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        amap = att[i].reshape(int(grid[0]), int(grid[1])).numpy()
        if image is not None:
            img = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(img)
            ax.imshow(amap, cmap="inferno", alpha=0.6, extent=(0, img.shape[1], img.shape[0], 0))
        else:
            ax.imshow(amap, cmap="inferno")
        ax.set_title(roi_names[i] if roi_names else f"ROI {i + 1}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@dataclass(frozen=True)
class NSDArrays:
    """One subject's arrays: ``images`` ``(n, H, W, 3)`` uint8, ``fmri[hemi]`` ``(n, V_hemi)``, ``rois[hemi]``
    ``(V_hemi,)`` int labels (empty dict when no ``roi_set`` was asked)."""

    images: np.ndarray
    fmri: dict[str, np.ndarray]
    rois: dict[str, np.ndarray]


def _load_images(split: Path) -> np.ndarray:
    if (split / "training_images.npy").is_file():
        return np.load(split / "training_images.npy", mmap_mode="r")
    if (split / "training_images.h5").is_file():
        try:
            import h5py
        except ImportError as err:
            raise ImportError("reading training_images.h5 needs h5py: pip install h5py") from err
        with h5py.File(split / "training_images.h5", "r") as fh:
            return np.asarray(fh["images"])
    folder = split / "training_images"
    if folder.is_dir():
        from PIL import Image

        files = sorted(folder.glob("*.png"))
        if not files:
            raise ValueError(f"no .png images in {folder}")
        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    raise ValueError(f"no training_images.npy, training_images.h5 or training_images/ under {split}")


def load_nsd_arrays(root: str | Path, hemispheres: Sequence[str] = ("lh", "rh"), roi_set: str | None = None
                    ) -> NSDArrays:
    """Read one subject in the NSD / Algonauts layout (see the module docstring) and check the shapes agree."""
    base = Path(root)
    split = base / "training_split"
    if not split.is_dir():
        raise ValueError(f"root must contain training_split/, got {str(root)!r}")
    images = _load_images(split)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (n, H, W, 3), got shape {images.shape}")
    fmri, rois = {}, {}
    for hemi in hemispheres:
        if hemi not in ("lh", "rh"):
            raise ValueError(f"hemispheres must contain 'lh' or 'rh', got {hemi!r}")
        f = split / "training_fmri" / f"{hemi}_training_fmri.npy"
        if not f.is_file():
            raise ValueError(f"missing {f}")
        fmri[hemi] = np.load(f, mmap_mode="r")
        if fmri[hemi].ndim != 2 or fmri[hemi].shape[0] != images.shape[0]:
            raise ValueError(f"{f.name} must be (n_images={images.shape[0]}, V), got shape {fmri[hemi].shape}")
        if roi_set is not None:
            m = base / "roi_masks" / f"{hemi}.{roi_set}_challenge_space.npy"
            if not m.is_file():
                raise ValueError(f"missing {m}")
            rois[hemi] = np.load(m)
            if rois[hemi].shape != (fmri[hemi].shape[1],):
                raise ValueError(f"{m.name} must be ({fmri[hemi].shape[1]},), got shape {rois[hemi].shape}")
    log.info("loaded %d images, vertices %s", images.shape[0], {k: v.shape[1] for k, v in fmri.items()})
    return NSDArrays(images, fmri, rois)
