"""Training-free attention edits from the lens papers, one file per paper; apply them with ``visattn.lens.edit``.

Each edit is an :class:`~visattn.lens.edit_base.Edit` acting on chosen layers, heads and query rows through the
hooks of :func:`visattn.lens.compute.lens_attention`; the helpers compute what the edits need (token sets, saliency,
masks) or run the searches around them.
"""

from .affine import AffineAttentionScaling
from .avar import VisualSystemModulation
from .carve import (
    CARVE_LAYERS,
    RefinedImage,
    VisualAttentionRecorder,
    connected_regions,
    contrastive_attention,
    refine_image,
    salient_regions,
    upsample_map,
)
from .consistedit import ConsistEditControl, edit_region_mask
from .gift import GazeShiftAmplification, gaze_shift_saliency
from .headhunter import HeadSearch, head_hunter
from .lssar import AttentionReweighting
from .paint import ImbalancedAttentionBoost, paint_token_sets
from .softpag import SoftPerturbedAttention, fisher_rao_path, perturbation_guidance
from .var import VisualAttentionRedistribution
from .vhr import VisionHeadReinforcement

__all__ = [
    "CARVE_LAYERS",
    "AffineAttentionScaling",
    "AttentionReweighting",
    "ConsistEditControl",
    "GazeShiftAmplification",
    "HeadSearch",
    "ImbalancedAttentionBoost",
    "RefinedImage",
    "SoftPerturbedAttention",
    "VisionHeadReinforcement",
    "VisualAttentionRecorder",
    "VisualAttentionRedistribution",
    "VisualSystemModulation",
    "connected_regions",
    "contrastive_attention",
    "edit_region_mask",
    "fisher_rao_path",
    "gaze_shift_saliency",
    "head_hunter",
    "paint_token_sets",
    "perturbation_guidance",
    "refine_image",
    "salient_regions",
    "upsample_map",
]
