"""The lens: capture, measure and edit attention inside timm, Hugging Face and visattn models."""

from . import edits, metrics
from .adapters import LayerInfo, attention_layers
from .call import AttentionCall
from .capture import Record, Recording, capture
from .compute import STATE, lens_attention
from .edit_base import Edit
from .editing import ModelRun, edit
from .report import Picture, Report

__all__ = ["STATE", "AttentionCall", "Edit", "lens_attention"]
__all__ += ["LayerInfo", "ModelRun", "Record", "Recording", "attention_layers", "capture", "edit"]
__all__ += ["edits"]
__all__ += ["Picture", "Report", "metrics"]
