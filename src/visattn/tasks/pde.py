"""PDE forecasting with MORPH: generated heat and Burgers trajectories, error metrics, training and fine-tuning.

Paper: Rautela et al., "MORPH: Shape-agnostic PDE Foundation Models" (arXiv 2509.21670; network:
:class:`visattn.models.morph.Morph`).

Data (:func:`generate`), on a periodic 1-D, 2-D or 3-D grid of any sizes (odd included) with spacing
``h = 2 pi / min(grid)`` (the box ``[0, 2 pi)`` along the shortest axis), explicit finite differences in float64, in
the UPTF-7 layout ``(N, T, F, C, D, H, W)``:

- ``"heat"``: ``u_t = nu Lap(u)``, one scalar field (``F = C = 1``), forward Euler with the centred
  ``2d + 1``-point Laplacian;
- ``"burgers"``: ``u_t + (u . grad) u = nu Lap(u)``, one vector field with ``C = d`` components, first-order upwind
  advection (``u_i (u_j - u_{j-1}) / h`` where ``u_i > 0``, ``u_i (u_{j+1} - u_j) / h`` elsewhere) and the centred
  Laplacian;
- ``"burgers_tracer"``: the Burgers velocity and a passive scalar ``c_t + u . grad c = nu Lap(c)`` as a second
  field (``F = 2``; the scalar in component 0, the other ``d - 1`` components zero, as UPTF-7 pads them).

Initial conditions are random smooth fields (Fourier modes with ``1 <= |k| <= 3`` and normal coefficients, scaled
to unit RMS), drawn from ``seed``. The substep is ``0.4`` times the explicit stability limit
``1 / (sum_i |u|_max / h + 2 d nu / h^2)`` and states are stored every ``dt`` of simulated time.

Metrics: the normalised RMSE ``||pred - true||_2 / ||true||_2`` per sample (over fields, components and grid),
averaged (:func:`nrmse`); one-step error over every window of a trajectory (:func:`one_step_error`) and rollout
error per horizon step (:func:`rollout_error`), each beside the persistence baseline that predicts the last state
(:func:`persistence`).

Training: :func:`train` minimises the one-step MSE with AdamW; :func:`lora` wraps a model with LoRA adapters through
`peft` (rank 16 on every axial attention's qkv and output projections, rank 12 on the MLPs, ``alpha = 2 r``,
dropout 0.05: the release's defaults), so that fine-tuning is full (:func:`train` on the model) or adapter-only
(:func:`train` on ``lora(model)``), as the paper compares. ``python -m visattn.tasks.pde`` trains a small MORPH on
generated data and logs its errors beside persistence.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "EQUATIONS", "generate", "lora", "nrmse", "normalise", "one_step_error", "persistence", "rollout_error", "train",
    "windows",
]

log = logging.getLogger(__name__)

EQUATIONS = ("heat", "burgers", "burgers_tracer")
"""The equations :func:`generate` integrates."""

MAX_WAVENUMBER = 3
"""Initial conditions hold the Fourier modes with ``1 <= |k| <= MAX_WAVENUMBER``."""


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _smooth_field(count: int, grid: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """``count`` random real fields on ``grid`` from the modes ``1 <= |k| <= MAX_WAVENUMBER``, each of unit RMS."""
    noise = torch.randn(count, *grid, generator=generator, dtype=torch.float64)
    spectrum = torch.fft.fftn(noise, dim=tuple(range(1, len(grid) + 1)))
    axes = torch.meshgrid(*(torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64) for n in grid), indexing="ij")
    radius = torch.sqrt(sum(k * k for k in axes))
    spectrum = spectrum * ((radius >= 1) & (radius <= MAX_WAVENUMBER))
    field = torch.fft.ifftn(spectrum, dim=tuple(range(1, len(grid) + 1))).real
    rms = field.pow(2).mean(dim=tuple(range(1, len(grid) + 1)), keepdim=True).sqrt()
    return field / rms.clamp_min(1e-12)


def _laplacian(u: Tensor, axes: Sequence[int], h: float) -> Tensor:
    return sum(torch.roll(u, 1, a) + torch.roll(u, -1, a) - 2 * u for a in axes) / (h * h)


def _advect(c: Tensor, velocity: Sequence[Tensor], axes: Sequence[int], h: float) -> Tensor:
    """Upwind ``(u . grad) c`` on the periodic grid."""
    out = torch.zeros_like(c)
    for u, a in zip(velocity, axes, strict=True):
        backward = (c - torch.roll(c, 1, a)) / h
        forward = (torch.roll(c, -1, a) - c) / h
        out = out + u * torch.where(u > 0, backward, forward)
    return out


def generate(equation: str, grid: int | Sequence[int], trajectories: int, steps: int, *, seed: int = 0,
             nu: float = 0.05, dt: float = 0.1, amplitude: float = 1.0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``trajectories`` solutions of ``equation`` (see the module docstring) on ``grid`` (1 to 3 sides), ``steps``
    states each, ``dt`` apart (the first is the initial condition), as UPTF-7 ``(N, steps, F, C, D, H, W)`` in
    ``dtype``. ``nu``: viscosity or diffusivity; ``amplitude``: RMS of the initial fields. The same arguments give
    the same data."""
    if equation not in EQUATIONS:
        raise ValueError(f"equation must be one of {EQUATIONS}, got {equation!r}")
    grid = (grid,) if isinstance(grid, int) and not isinstance(grid, bool) else tuple(grid)
    if not 1 <= len(grid) <= 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 3 for n in grid):
        raise ValueError(f"grid must be 1 to 3 ints >= 3, got {grid!r}")
    trajectories, steps = _positive_int("trajectories", trajectories), _positive_int("steps", steps)
    nu, dt, amplitude = _positive_float("nu", nu), _positive_float("dt", dt), _positive_float("amplitude", amplitude)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    d = len(grid)
    h = 2 * math.pi / min(grid)
    axes = tuple(range(1, d + 1))
    generator = torch.Generator().manual_seed(seed)
    if equation == "heat":
        fields = [[amplitude * _smooth_field(trajectories, grid, generator)]]
    else:
        fields = [[amplitude * _smooth_field(trajectories, grid, generator) for _ in range(d)]]
        if equation == "burgers_tracer":
            fields.append([_smooth_field(trajectories, grid, generator)])
    speed = sum(c.abs().amax() for c in fields[0]) if equation != "heat" else 0.0
    limit = 1.0 / (float(speed) / h + 2 * d * nu / (h * h))
    substeps = max(1, math.ceil(dt / (0.4 * limit)))
    tau = dt / substeps
    states = []
    for step in range(steps):
        if step:
            for _ in range(substeps):
                velocity = fields[0]
                new = []
                for field in fields:
                    if equation == "heat":
                        new.append([c + tau * nu * _laplacian(c, axes, h) for c in field])
                    else:
                        new.append([c + tau * (nu * _laplacian(c, axes, h) - _advect(c, velocity, axes, h))
                                    for c in field])
                fields = new
        components = len(fields[0])
        rows = [torch.stack(field + [torch.zeros_like(field[0])] * (components - len(field)), dim=1)
                for field in fields]
        states.append(torch.stack(rows, dim=1))
    data = torch.stack(states, dim=1)
    return data.reshape(*data.shape[:4], *(1,) * (3 - d), *grid).to(dtype)


def normalise(data: Tensor, *others: Tensor, eps: float = 1e-6) -> tuple[Tensor, ...]:
    """``data`` and ``others`` standardised with the mean and std of ``data`` per field and component (over
    trajectories, time and grid), as the release's dataset normalisation; returns
    ``(data, *others, mean, std)``."""
    _check_uptf7("data", data)
    dims = (0, 1, 4, 5, 6)
    mean = data.mean(dim=dims, keepdim=True)
    std = data.std(dim=dims, keepdim=True).clamp_min(eps)
    return (*((x - mean) / std for x in (data, *others)), mean, std)


def _check_uptf7(name: str, data: object) -> Tensor:
    if not isinstance(data, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(data).__name__}")
    if data.dim() != 7:
        raise ValueError(f"{name} must be UPTF-7 (N, T, F, C, D, H, W), got shape {tuple(data.shape)}")
    return data


def windows(data: Tensor, ar_order: int = 1) -> tuple[Tensor, Tensor]:
    """Every (input, target) pair of the trajectories ``data`` ``(N, T, F, C, D, H, W)``: inputs ``(M, ar_order,
    F, C, D, H, W)`` of ``ar_order`` consecutive states, targets ``(M, F, C, D, H, W)`` the state after them,
    ``M = N (T - ar_order)``."""
    _check_uptf7("data", data)
    _positive_int("ar_order", ar_order)
    if data.shape[1] <= ar_order:
        raise ValueError(f"data has T={data.shape[1]} states, need more than ar_order={ar_order}")
    inputs = data.unfold(1, ar_order, 1)[:, :-1]
    inputs = inputs.movedim(-1, 2).reshape(-1, ar_order, *data.shape[2:])
    return inputs, data[:, ar_order:].reshape(-1, *data.shape[2:])


def nrmse(pred: Tensor, target: Tensor) -> Tensor:
    """Normalised RMSE ``||pred - target||_2 / ||target||_2`` over the last five axes (F, C, D, H, W) of each
    sample, averaged over the leading axes; a 0-d tensor."""
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"pred and target must be tensors, got {type(pred).__name__} and {type(target).__name__}")
    if pred.shape != target.shape or pred.dim() < 5:
        raise ValueError(f"pred and target must have one shape (..., F, C, D, H, W), got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    dims = tuple(range(-5, 0))
    return ((pred - target).pow(2).sum(dims).sqrt() / target.pow(2).sum(dims).sqrt().clamp_min(1e-12)).mean()


def persistence(x: Tensor) -> Tensor:
    """The persistence forecast: the last state of the window ``x`` ``(N, T, F, C, D, H, W)``."""
    return _check_uptf7("x", x)[:, -1]


@torch.no_grad()
def one_step_error(model: nn.Module, data: Tensor, ar_order: int = 1, batch_size: int = 64) -> tuple[float, float]:
    """``(model, persistence)`` one-step nRMSE over every window of ``data`` (:func:`windows`), the model in eval
    mode."""
    inputs, targets = windows(data, ar_order)
    was_training = model.training
    model.eval()
    preds = torch.cat([model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])
    model.train(was_training)
    return float(nrmse(preds, targets)), float(nrmse(persistence(inputs), targets))


@torch.no_grad()
def rollout_error(model: nn.Module, data: Tensor, steps: int, ar_order: int = 1) -> tuple[Tensor, Tensor]:
    """nRMSE per horizon step ``1..steps`` of the model's autoregressive rollout from the first ``ar_order`` states
    of each trajectory of ``data``, and of persistence; two ``(steps,)`` tensors."""
    _check_uptf7("data", data)
    _positive_int("steps", steps)
    if data.shape[1] < ar_order + steps:
        raise ValueError(f"data has T={data.shape[1]} states, need ar_order + steps = {ar_order + steps}")
    window, future = data[:, :ar_order], data[:, ar_order:ar_order + steps]
    was_training = model.training
    model.eval()
    preds = model.rollout(window, steps)
    model.train(was_training)
    still = persistence(window)[:, None].expand_as(future)
    per_step = [(nrmse(preds[:, s], future[:, s]), nrmse(still[:, s], future[:, s])) for s in range(steps)]
    return torch.stack([m for m, _ in per_step]), torch.stack([p for _, p in per_step])


def train(model: nn.Module, data: Tensor, steps: int, *, ar_order: int = 1, batch_size: int = 16, lr: float = 1e-3,
          weight_decay: float = 0.0, seed: int = 0) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps on the one-step MSE over random windows of ``data``, updating the
    parameters that require grad (all of them for full fine-tuning; the adapters only for a :func:`lora` model);
    returns the losses."""
    inputs, targets = windows(data, ar_order)
    _positive_int("steps", steps)
    _positive_int("batch_size", batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no parameters that require grad")
    optimizer = torch.optim.AdamW(params, lr=_positive_float("lr", lr), weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        index = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
        loss = nn.functional.mse_loss(model(inputs[index]), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return [float(v) for v in losses]


LORA_ATTENTION = r".*blocks\.\d+\.attn\.(time|space\.lines\.\d+)\.(qkv|proj)"
"""The axial attentions' projections (time and every spatial axis) of a :class:`~visattn.models.morph.Morph`."""
LORA_MLP = r".*blocks\.\d+\.mlp\.fc[12]"
"""The blocks' MLP layers."""


def lora(model: nn.Module, rank: int = 16, mlp_rank: int = 12, dropout: float = 0.05,
         also_train: Sequence[str] = ()) -> nn.Module:
    """``model`` (a :class:`~visattn.models.morph.Morph`) with `peft` LoRA adapters ``W x + (alpha / r) B A x``
    (``alpha = 2 r``, ``B = 0`` at the start) on every axial attention's qkv and output projections (rank ``rank``)
    and on the MLP layers (rank ``mlp_rank``), as the release's fine-tuning; every other parameter frozen. The
    release puts separate adapters on q, k and v; visattn's axial attention has one fused qkv projection, so here
    one adapter of rank ``rank`` covers all three. ``also_train`` names modules trained in full beside the adapters
    (peft's ``modules_to_save``; e.g. ``("head",)`` for the decoder, which the release's fine-tuning levels 3-4
    unfreeze). Returns peft's wrapper (calls and ``rollout`` reach the model)."""
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is in the dev extra
        raise ImportError("LoRA fine-tuning needs peft: pip install peft") from error
    _positive_int("rank", rank)
    _positive_int("mlp_rank", mlp_rank)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    names = [name for name, _ in model.named_modules()]
    if not any(name.endswith(".qkv") for name in names):
        raise ValueError(f"model must be a Morph (axial attention qkv projections to adapt), got "
                         f"{type(model).__name__}")
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout,
                             target_modules=f"({LORA_ATTENTION})|({LORA_MLP})",
                             rank_pattern={"mlp.fc1": mlp_rank, "mlp.fc2": mlp_rank},
                             alpha_pattern={"mlp.fc1": 2 * mlp_rank, "mlp.fc2": 2 * mlp_rank},
                             modules_to_save=list(also_train) or None)
    return peft.get_peft_model(model, config)


def main(argv: list[str] | None = None) -> int:
    """Train a small MORPH on generated data and log its one-step and rollout nRMSE beside persistence."""
    from visattn.models.morph import Morph

    parser = argparse.ArgumentParser(prog="python -m visattn.tasks.pde", description=main.__doc__)
    parser.add_argument("--equation", choices=EQUATIONS, default="heat")
    parser.add_argument("--grid", type=int, nargs="+", default=[32, 32])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--horizon", type=int, default=5)
    parser.add_argument("--dt", type=float, default=0.1, help="simulated time between stored states")
    parser.add_argument("--residual", action="store_true", help="predict the change from the last state")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    train_data = generate(args.equation, args.grid, 24, 12, seed=args.seed, dt=args.dt)
    test_data = generate(args.equation, args.grid, 8, 12, seed=args.seed + 1, dt=args.dt)
    train_data, test_data, _, _ = normalise(train_data, test_data)
    model = Morph(dim=64, depth=2, heads=4, mlp_dim=128, patch_size=4, heads_xa=4, max_patches=256, dropout=0.0,
                  emb_dropout=0.0, residual=args.residual)
    losses = train(model, train_data, args.steps, seed=args.seed)
    step, still = one_step_error(model, test_data)
    roll, roll_still = rollout_error(model, test_data, args.horizon)
    log.info("loss %.4f -> %.4f", losses[0], losses[-1])
    log.info("one-step nRMSE: MORPH %.4f, persistence %.4f", step, still)
    log.info("rollout nRMSE (mean of %d steps): MORPH %.4f, persistence %.4f", args.horizon, roll.mean(),
             roll_still.mean())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
