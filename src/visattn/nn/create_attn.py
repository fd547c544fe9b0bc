"""Feature-map modules by name, in the style of ``timm.layers.create_attn``, and a way into timm models.

``create_attn("psa_p", 256)`` builds a registered module (``visattn list --family modules``) for 256 channels.
``get_attn("psa_p")`` returns a layer factory for timm's ``attn_layer`` slot::

    timm.create_model("resnet50", block_args=dict(attn_layer=visattn.get_attn("psa_p")))

timm calls it as ``attn_layer(channels, device=..., dtype=...)`` (ResNet blocks, after ``bn3`` / ``bn2``) or, in
the ``se_layer`` slot of its MobileNet / EfficientNet blocks, as ``se_layer(channels, act_layer=...)``; the
modules keep their papers' activations, so ``act_layer`` is accepted and not used. Models without an attention
slot (ConvNeXt) take a module after a named convolution of every block with :func:`insert_attn`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import get_module_spec

__all__ = ["AttnLayer", "create_attn", "get_attn", "insert_attn"]


def create_attn(name: str, channels: int, **kwargs: Any) -> nn.Module:
    """Build the registered feature-map module ``name`` for ``channels`` channels (``kwargs`` go to it)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return get_module_spec(name).factory(channels, **kwargs)


class AttnLayer:
    """A layer factory ``(channels, **timm_kwargs) -> module`` for timm's ``attn_layer`` / ``se_layer`` slots."""

    def __init__(self, name: str, **kwargs: Any) -> None:
        get_module_spec(name)
        self.name, self.kwargs = name, kwargs

    def __call__(self, channels: int, act_layer: object = None, **timm_kwargs: Any) -> nn.Module:
        return create_attn(self.name, channels, **{**self.kwargs, **timm_kwargs})

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"AttnLayer({self.name!r}{extra})"


def get_attn(name: str, **kwargs: Any) -> AttnLayer:
    """The layer factory of module ``name`` with fixed ``kwargs``, for timm's ``attn_layer`` (see module doc)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return AttnLayer(name, **kwargs)


def insert_attn(model: nn.Module, name: str, after: str = "conv_dw", **kwargs: Any) -> int:
    """Put module ``name`` after the convolution called ``after`` in every submodule that has one (ConvNeXt's
    ``conv_dw``, MobileNet's ``conv_dw``, ResNet's ``conv2``): ``conv`` becomes ``Sequential(conv, module)``.

    Returns the number of modules inserted; ``ValueError`` when there is none.
    """
    hosts = [m for m in model.modules() if isinstance(getattr(m, after, None), nn.Conv2d)]
    if not hosts:
        raise ValueError(f"after={after!r}: no submodule of {type(model).__name__} has a Conv2d called {after!r}")
    for host in hosts:
        conv = getattr(host, after)
        param = conv.weight
        attn = create_attn(name, conv.out_channels, device=param.device, dtype=param.dtype, **kwargs)
        setattr(host, after, nn.Sequential(conv, attn))
    return len(hosts)
