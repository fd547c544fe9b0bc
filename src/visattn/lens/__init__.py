"""The lens: capture, measure and edit attention inside timm, Hugging Face and visattn models."""

from .call import AttentionCall
from .compute import STATE, lens_attention
from .edit_base import Edit

__all__ = ["STATE", "AttentionCall", "Edit", "lens_attention"]
