"""One contract over every registered mixer (``visattn.list_mixers()``).

For each mixer and each case below: float64 forward equal to the naive oracle its registry entry names
(``MixerSpec.oracle``) on random inputs with a prefix token and an odd grid; ``gradcheck`` on tiny sizes; float32
within a stated tolerance of float64; bad input raises ``ValueError``; the forward runs on the meta device;
``torch.compile`` runs it (a few mixers by default, all under ``slow``); ``replace_attention`` puts it into a
random-init tiny timm ViT whose weights load back into timm unchanged (with ``"softmax"`` the outputs equal
timm's). Plus completeness: every mixer is
registered by ``import visattn`` alone, every ``TokenMixer`` class in the package is built by some registry entry,
and every factory is importable from the module that registers it.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest
import torch

import visattn
from visattn.nn import TokenMixer
from visattn.registry import create_mixer_for_layer
from visattn.testing import randomize_module

DIM, HEADS, HEAD_DIM = 8, 2, 4
PREFIX = 1
DEFAULT_SHAPE = (3, 5)

# name -> cases (id, factory kwargs, grid shape). Mixers absent here run with their defaults on DEFAULT_SHAPE;
# grids are odd where the mechanism allows (halo, window, grid and swin_v2 partition the grid exactly).
CASES: dict[str, list[tuple[str, dict, tuple[int, ...]]]] = {
    "axial": [("rows", {}, (3, 5)), ("cols", {"axis": 0}, (3, 5))],
    "elementwise_qk": [("full", {}, (3, 5)), ("causal", {"is_causal": True, "chunk_size": 4}, (3, 5))],
    "grid": [("g2", {"grid_size": 2}, (4, 6))],
    "halo": [("b2h1", {"block_size": 2, "halo_size": 1}, (4, 6))],
    "hedgehog": [("full", {}, (3, 5)), ("causal", {"is_causal": True, "chunk_size": 4}, (3, 5))],
    "hierarchical": [("g2", {}, (4, 5))],
    "linear": [("full", {}, (3, 5)), ("causal", {"is_causal": True, "chunk_size": 4}, (3, 5))],
    "lssa": [("causal", {"is_causal": True, "chunk_size": 4}, (3, 5)), ("full", {"is_causal": False}, (3, 5))],
    "lssar": [("causal", {"is_causal": True, "chunk_size": 4}, (3, 5)), ("full", {"is_causal": False}, (3, 5))],
    "neighborhood": [("k3", {"kernel_size": 3}, (4, 5)), ("k3d2", {"kernel_size": 3, "dilation": 2}, (6, 7)),
                     ("k3d", {"kernel_size": 3}, (3, 3, 4))],
    "paro": [("b4", {"block": 4, "qk_bits": None, "p_bits": None}, (3, 5))],
    "radial": [("paper", {}, (3, 2, 3)), ("code", {"rule": "code", "block_size": 4}, (4, 2, 3))],
    "radial_strip": [("ring", {"num_rings": 3, "num_angles": 5}, (3, 5)),
                     ("ray", {"num_rings": 3, "num_angles": 5, "strip": "ray"}, (3, 5))],
    "sliding": [("w3", {"window_size": 3}, (11,)), ("causal", {"window_size": 3, "is_causal": True}, (11,))],
    "sparsifiner": [("n16", {"num_tokens": 16}, (3, 5))],
    "strip": [("rows", {}, (3, 5)), ("cols", {"orientation": "columns"}, (3, 5))],
    "swin_v2": [("w2", {"window_size": 2}, (4, 6))],
    "taylor": [("full", {}, (3, 5)), ("causal", {"is_causal": True, "chunk_size": 4}, (3, 5))],
    "window": [("w2", {"window_size": 2}, (4, 6))],
}

# float32 against float64 on unit-normal inputs and parameters: |err| <= atol + rtol |ref| for every mixer
F32_ATOL, F32_RTOL = 1e-5, 1e-4

# mixers compiled in the default run (the rest under @slow): one masked, one linear-state, one with parameters
COMPILE_DEFAULT = ("softmax", "linear", "window")


def _cases() -> list:
    params = []
    for name in visattn.list_mixers():
        for case_id, kwargs, shape in CASES.get(name, [("default", {}, DEFAULT_SHAPE)]):
            params.append(pytest.param(name, kwargs, shape, id=f"{name}-{case_id}"))
    return params


ALL_CASES = _cases()


def _build(name: str, kwargs: dict, dtype: torch.dtype = torch.float64, seed: int = 0) -> TokenMixer:
    mixer = create_mixer_for_layer(name, dim=DIM, num_heads=HEADS, head_dim=HEAD_DIM, **kwargs)
    return randomize_module(mixer.to(dtype), seed=seed, scale=0.3)


def _inputs(shape: tuple[int, ...], dtype: torch.dtype, batch: int = 2, heads: int = HEADS, head_dim: int = HEAD_DIM,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    gen = torch.Generator().manual_seed(seed)
    n = PREFIX + torch.Size(shape).numel()
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=gen, dtype=torch.float64).to(dtype) for _ in range(3))
    x = torch.randn(batch, n, DIM, generator=gen, dtype=torch.float64).to(dtype)
    return q, k, v, {"x": x}


def _extra(mixer: TokenMixer, inputs: dict) -> dict:
    return inputs if mixer.uses_input else {}


def _ready(mixer: TokenMixer, q: torch.Tensor, k: torch.Tensor, shape: tuple[int, ...]) -> TokenMixer:
    """Mixers that need a calibration before use (PARO's reordering and block mask) get one from q, k."""
    if hasattr(mixer, "calibrate_qk"):
        mixer.calibrate_qk(q, k, shape)
    return mixer


@pytest.mark.parametrize(("name", "kwargs", "shape"), ALL_CASES)
def test_float64_equals_the_registered_oracle(name, kwargs, shape):
    mixer = _build(name, kwargs)
    q, k, v, inputs = _inputs(shape, torch.float64)
    _ready(mixer, q, k, shape)
    out = mixer(q, k, v, shape, **_extra(mixer, inputs))
    expected = visattn.get_mixer_spec(name).oracle(mixer, q, k, v, shape, **_extra(mixer, inputs))
    assert out.shape == q.shape[:-1] + v.shape[-1:] and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "kwargs", "shape"), ALL_CASES)
def test_gradients(name, kwargs, shape):
    """gradcheck (fast mode: random projections of the Jacobian) with respect to q, k, v and to the mixer's
    parameters, one batch element. ``nondet_tol``: the native tile kernels add per-thread dK/dV copies in the
    order threads finish, so two backward passes may differ by float64 round-off."""
    mixer = _build(name, kwargs)
    q, k, v, inputs = _inputs(shape, torch.float64, batch=1, seed=1)
    _ready(mixer, q, k, shape)
    extra = _extra(mixer, inputs)
    names = [n for n, p in mixer.named_parameters() if p.requires_grad]
    params = tuple(p.detach().clone().requires_grad_() for n, p in mixer.named_parameters() if p.requires_grad)

    def run(q, k, v, *params):
        return torch.func.functional_call(mixer, dict(zip(names, params, strict=True)), (q, k, v, shape), extra)

    leaves = tuple(t.requires_grad_() for t in (q, k, v)) + params
    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-5, nondet_tol=1e-12, fast_mode=True)


@pytest.mark.parametrize(("name", "kwargs", "shape"), ALL_CASES)
def test_float32_within_tolerance_of_float64(name, kwargs, shape):
    mixer64 = _build(name, kwargs, torch.float64)
    q, k, v, inputs = _inputs(shape, torch.float64)
    _ready(mixer64, q, k, shape)
    mixer32 = copy.deepcopy(mixer64).float()
    ref = mixer64(q, k, v, shape, **_extra(mixer64, inputs))
    out = mixer32(q.float(), k.float(), v.float(), shape, **_extra(mixer32, {"x": inputs["x"].float()}))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=F32_ATOL, rtol=F32_RTOL)


@pytest.mark.parametrize(("name", "kwargs", "shape"), ALL_CASES)
def test_bad_input_raises_value_error(name, kwargs, shape):
    mixer = _build(name, kwargs)
    q, k, v, inputs = _inputs(shape, torch.float64)
    _ready(mixer, q, k, shape)
    extra = _extra(mixer, inputs)
    with pytest.raises(ValueError, match="q|shape|N="):
        mixer(q[0], k[0], v[0], shape, **extra)  # (heads, N, d): no batch axis
    too_big = (shape[0] + 3, *shape[1:])
    with pytest.raises(ValueError, match="shape|N="):
        mixer(q, k, v, too_big, **extra)  # the grid has more tokens than q
    with pytest.raises(ValueError, match="k|keys|N="):
        mixer(q, k[:, :, :-1], v[:, :, :-1], shape, **extra)  # fewer keys than queries


# forwards that still read a value on the host (a .item() sync), which the meta device refuses
@pytest.mark.parametrize(("name", "kwargs", "shape"), ALL_CASES)
def test_meta_device(name, kwargs, shape):
    """Device-generic: the forward runs on the meta device (no CPU tensor made, no host sync)."""
    mixer = _build(name, kwargs)
    q, k, v, inputs = _inputs(shape, torch.float64)
    _ready(mixer, q, k, shape)
    mixer = mixer.to("meta")
    q, k, v = (t.to("meta") for t in (q, k, v))
    out = mixer(q, k, v, shape, **_extra(mixer, {"x": inputs["x"].to("meta")}))
    assert out.is_meta and out.shape == q.shape[:-1] + v.shape[-1:]


def _check_compiles(name: str, backend: str) -> None:
    _, kwargs, shape = CASES.get(name, [("default", {}, DEFAULT_SHAPE)])[0]
    mixer = _build(name, kwargs, torch.float32)
    q, k, v, inputs = _inputs(shape, torch.float32)
    _ready(mixer, q, k, shape)
    extra = _extra(mixer, inputs)
    eager = mixer(q, k, v, shape, **extra)
    torch._dynamo.reset()
    compiled = torch.compile(mixer, backend=backend)
    torch.testing.assert_close(compiled(q, k, v, shape, **extra), eager, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", COMPILE_DEFAULT)
def test_torch_compile_smoke(name):
    """Dynamo traces the mixer and AOTAutograd builds its graph (no Inductor code generation: fast)."""
    _check_compiles(name, "aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize("name", visattn.list_mixers())
def test_torch_compile_every_mixer(name):
    _check_compiles(name, "inductor")


# replace_attention into a 4 x 4-patch ViT with a class token: factory kwargs that fit that grid
VIT_KWARGS = {
    "grid": {"grid_size": 2}, "halo": {"block_size": 2, "halo_size": 1}, "neighborhood": {"kernel_size": 3},
    "radial": {}, "radial_strip": {"num_rings": 4, "num_angles": 4}, "sliding": {"window_size": 3},
    "sparsifiner": {"num_tokens": 17}, "swin_v2": {"window_size": 2}, "window": {"window_size": 2},
    "paro": {"block": 4, "qk_bits": None, "p_bits": None}, "lssa": {"is_causal": False},
    "lssar": {"is_causal": False},
}


@pytest.fixture(scope="module")
def tiny_vit() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random-init timm ViT (4 x 4 patches, a class token, one block), an input and timm's output for it."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=16, patch_size=4,
                              embed_dim=DIM, depth=1, num_heads=HEADS).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        return model, x, model(x)


def _calibrate_on_first_call(model: torch.nn.Module) -> None:
    """PARO needs a calibration per layer: take it from the layer's own q, k on the first forward."""
    for module in model.modules():
        if isinstance(module, visattn.Attention) and hasattr(module.mixer, "calibrate_qk"):
            def hook(mod, args):
                q, k, _ = mod.qkv_heads(args[0])
                mod.mixer.calibrate_qk(q, k, mod.grid_shape(q.shape[2]))
            module.register_forward_pre_hook(hook)


@pytest.mark.parametrize("name", visattn.list_mixers())
def test_replace_attention_into_timm_vit_and_back(name, tiny_vit):
    original, x, expected = tiny_vit
    model = visattn.replace_attention(copy.deepcopy(original), name, **VIT_KWARGS.get(name, {}))
    assert isinstance(model.blocks[0].attn, visattn.Attention)
    _calibrate_on_first_call(model)
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected.shape and torch.isfinite(out).all()
    if name == "softmax":
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    # back: every weight but the mixer's own loads into a timm model (zeroed first), which then computes timm's
    # outputs again: the replacement carried the weights over unchanged
    back = copy.deepcopy(original)
    with torch.no_grad():
        for p in back.parameters():
            p.zero_()
    back.load_state_dict({key: v for key, v in model.state_dict().items() if ".mixer." not in key}, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(back(x), expected, atol=0, rtol=0)


# --- completeness: registered <=> importable --------------------------------------------------------------------

LIBRARY_PACKAGES = ("masks", "nn", "ops", "transforms")


def _library_modules() -> list[str]:
    names = []
    for package in LIBRARY_PACKAGES:
        pkg = importlib.import_module(f"visattn.{package}")
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, f"visattn.{package}.")]
    return names


def test_import_visattn_registers_every_mixer():
    """A mixer module that ``import visattn`` does not reach (its import deleted from its package) registers
    nothing until imported by hand: a fresh ``import visattn`` must register every mixer that importing each
    library module registers."""
    for module_name in _library_modules():
        importlib.import_module(module_name)
    script = "import visattn; print(' '.join(visattn.list_mixers()))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    missing = sorted(set(visattn.list_mixers()) - set(result.stdout.split()))
    assert not missing, f"mixers registered only when their module is imported by hand: {missing}"


def test_every_registered_factory_is_importable_from_its_module():
    for name in visattn.list_mixers():
        factory = visattn.get_mixer_spec(name).factory
        module = importlib.import_module(factory.__module__)
        assert getattr(module, factory.__name__) is factory, f"{name}: {factory.__module__}.{factory.__name__}"
        oracle = visattn.get_mixer_spec(name).oracle
        assert getattr(importlib.import_module(oracle.__module__), oracle.__name__) is oracle


def _token_mixer_classes() -> set[type]:
    classes = set()
    for module_name in _library_modules():
        module = importlib.import_module(module_name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, TokenMixer) and obj.__module__ == module_name and not obj.__name__.startswith("_"):
                classes.add(obj)
    return classes


def test_every_token_mixer_class_is_registered():
    """Each public ``TokenMixer`` subclass in the library is what some registry entry builds (or a base of it)."""
    built = set()
    for param in ALL_CASES:
        name, kwargs, _ = param.values
        built.update(type(_build(name, kwargs)).__mro__)
    unregistered = sorted(c.__qualname__ for c in _token_mixer_classes() - built - {TokenMixer})
    assert not unregistered, f"TokenMixer classes no registry entry builds: {unregistered}"


def test_every_token_mixer_class_is_exported():
    """Every public ``TokenMixer`` class is reachable from ``visattn.nn`` (deleting its import there fails)."""
    missing = sorted(c.__qualname__ for c in _token_mixer_classes() if getattr(visattn.nn, c.__name__, None) is not c)
    assert not missing, f"TokenMixer classes not exported by visattn.nn: {missing}"
