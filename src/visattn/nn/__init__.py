"""nn.Modules: token mixers with parameters, the pluggable ``Attention`` module and model surgery."""

from . import mixers as _mixers  # noqa: F401  (registers the mixers)
from .attention import Attention
from .masked import MaskedMixer
from .replace import from_timm_attention, replace_attention
from .softmax import SoftmaxMixer
from .token_mixer import TokenMixer

__all__ = ["Attention", "MaskedMixer", "SoftmaxMixer", "TokenMixer", "from_timm_attention", "replace_attention"]
