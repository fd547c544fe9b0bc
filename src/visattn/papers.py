"""The papers visattn is built from: titles, arXiv ids, public code.

One place for paper metadata so the registry, the docs tables and the CLI cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FAMILIES",
    "FOUNDATIONAL",
    "IMPLEMENTATIONS",
    "IMPLEMENTATION_KINDS",
    "NOT_YET",
    "PAPERS",
    "Implementation",
    "Paper",
    "bibtex",
    "get_paper",
]

FAMILIES: tuple[str, ...] = (
    "search",
    "lens",
    "structured",
    "feature-map",
    "reformulated",
    "transform",
    "model",
)
"""The allowed values of :attr:`Paper.family`."""

FOUNDATIONAL: tuple[str, ...] = ("vit", "swin_v2", "longformer", "linear_transformer")
"""Keys of the reference papers the registry needs that are not among the 42 source papers."""


@dataclass(frozen=True)
class Paper:
    """One paper: ``key`` is a short lowercase identifier used by the registry."""

    key: str
    title: str
    arxiv: str | None
    year: int | None
    code: str | None
    family: str
    notes: str = ""

    @property
    def url(self) -> str | None:
        """The arXiv abstract page, when the paper has an arXiv id."""
        return f"https://arxiv.org/abs/{self.arxiv}" if self.arxiv else None


# The 42 source papers in the order of the paper-notes table, then the foundational references.
PAPERS: dict[str, Paper] = {
    p.key: p
    for p in (
        Paper(
            "eccnet",
            "Visual Search Asymmetry: Deep Nets and Humans Share Similar Inherent Biases",
            "2106.02953",
            2021,
            "kreimanlab/VisualSearchAsymmetry",
            "search",
        ),
        Paper(
            "var_sink",
            "See What You Are Told: Visual Attention Sink in Large Multimodal Models",
            "2503.03321",
            2025,
            "seilk/VisAttnSink",
            "lens",
            notes="ICLR 2025.",
        ),
        Paper(
            "rst",
            "Spread Your Wings: A Radial Strip Transformer for Image Deblurring",
            "2404.00358",
            2024,
            "Calvin11311/MDT",
            "structured",
            notes=(
                "Code is the authors' follow-up MDT (CVPR 2025), which reuses the radial strip attention "
                "solver."
            ),
        ),
        Paper(
            "psa",
            "Polarized Self-Attention: Towards High-quality Pixel-wise Regression",
            "2107.00782",
            2021,
            "DeLightCMU/PSA",
            "feature-map",
        ),
        Paper(
            "affine_scaled",
            "Affine-Scaled Attention: Towards Flexible and Stable Transformer Attention",
            "2602.23057",
            2026,
            None,
            "reformulated",
            notes="No public code.",
        ),
        Paper(
            "rtnet",
            "RoI Tanh-polar Transformer Network for Face Parsing in the Wild",
            "2102.02717",
            2021,
            "hhj1897/roi_tanh_warping",
            "transform",
            notes="Also hhj1897/face_parsing; published in Image and Vision Computing 112 (2021).",
        ),
        Paper(
            "brain_encoder",
            "Transformer brain encoders explain human high-level visual responses",
            "2505.17329",
            2025,
            "Hosseinadeli/transformer_brain_encoder",
            "model",
            notes="NeurIPS 2025.",
        ),
        Paper(
            "imbalanced_attention",
            "Fixing Imbalanced Attention to Mitigate In-Context Hallucination of Large Vision-Language Model",
            "2501.12206",
            2025,
            "hasanar1f/llava-hallunication-fix",
            "lens",
        ),
        Paper(
            "dependency_vit",
            "Visual Dependency Transformers: Dependency Tree Emerges from Reversed Attention",
            "2304.03282",
            2023,
            "huggingface/pytorch-image-models",
            "reformulated",
            notes=(
                "Code read from timm PR #2062 (unmerged); the paper names dingmyu/DependencyViT. CVPR 2023."
            ),
        ),
        Paper(
            "vhd",
            "Cracking the Code of Hallucination in LVLMs with Vision-aware Head Divergence",
            "2412.13949",
            2024,
            "jinghan1he/VHR",
            "lens",
        ),
        Paper(
            "pavlovian",
            "Understanding Transformers through the Lens of Pavlovian Conditioning",
            "2508.08289",
            2025,
            None,
            "reformulated",
            notes="Analysis paper; no public code.",
        ),
        Paper(
            "cdfsod_astigmatism",
            "Remedying Target-Domain Astigmatism for Cross-Domain Few-Shot Object Detection",
            "2603.18541",
            2026,
            None,
            "lens",
            notes="CVPR 2026; no public code.",
        ),
        Paper(
            "morph",
            "MORPH: Shape-agnostic PDE Foundation Models",
            "2509.21670",
            2025,
            "lanl/MORPH",
            "structured",
            notes=(
                "Later arXiv versions are titled 'MORPH: PDE Foundation Models with Arbitrary Data Modality'."
            ),
        ),
        Paper(
            "l2vit",
            "The Linear Attention Resurrection in Vision Transformer",
            "2501.16182",
            2025,
            "ChuanyangZheng/L2ViT",
            "reformulated",
        ),
        Paper(
            "radial_attention",
            "Radial Attention: O(nlog n) Sparse Attention with Energy Decay for Long Video Generation",
            "2506.19852",
            2025,
            "mit-han-lab/radial-attention",
            "structured",
            notes="The repository README's BibTeX cites arXiv:2505.18875, which is a different paper.",
        ),
        Paper(
            "complexformer",
            (
                "ComplexFormer: Disruptively Advancing Transformer Inference Ability via Head-Specific "
                "Complex Vector Attention"
            ),
            "2505.10222",
            2025,
            "shaojintian/complexFormer",
            "reformulated",
            notes="arXiv 2505.10222 has been withdrawn by its authors.",
        ),
        Paper(
            "ulsam",
            "ULSAM: Ultra-Lightweight Subspace Attention Module for Compact Convolutional Neural Networks",
            "2006.15102",
            2020,
            "Nandan91/ULSAM",
            "feature-map",
            notes="WACV 2020.",
        ),
        Paper(
            "carve",
            "Focusing by Contrastive Attention: Enhancing VLMs' Visual Reasoning",
            "2509.06461",
            2025,
            "YuyaoGe/CARVE",
            "lens",
        ),
        Paper(
            "trackvla_pp",
            (
                "TrackVLA++: Unleashing Reasoning and Memory Capabilities in VLA Models for Embodied Visual "
                "Tracking"
            ),
            "2510.07134",
            2025,
            None,
            "model",
            notes="No public code.",
        ),
        Paper(
            "maxvit",
            "MaxViT: Multi-Axis Vision Transformer",
            "2204.01697",
            2022,
            "huggingface/pytorch-image-models",
            "structured",
            notes="Code read from timm maxxvit.py.",
        ),
        Paper(
            "headhunter",
            "Fine-Grained Perturbation Guidance via Attention Head Selection",
            "2506.10978",
            2025,
            "cvlab-kaist/HeadHunter",
            "lens",
            notes=(
                "Later arXiv versions are titled 'Where and How to Perturb: On the Design of Perturbation "
                "Guidance in Diffusion and Flow Models'."
            ),
        ),
        Paper(
            "s2lic",
            (
                "S2LIC: Learned Image Compression with the SwinV2 Block, Adaptive Channel-wise and "
                "Global-inter Attention Context"
            ),
            "2403.14471",
            2024,
            "wyq2021/S2LIC",
            "structured",
        ),
        Paper(
            "hedgehog",
            "The Hedgehog & the Porcupine: Expressive Linear Attentions with Softmax Mimicry",
            "2402.04347",
            2024,
            "HazyResearch/lolcats",
            "reformulated",
            notes="Feature maps read from HazyResearch/lolcats (the authors' follow-up). ICLR 2024.",
        ),
        Paper(
            "davit",
            "DaViT: Dual Attention Vision Transformers",
            "2204.03645",
            2022,
            "dingmyu/davit",
            "structured",
            notes="Also timm davit.py.",
        ),
        Paper(
            "gift",
            (
                "Capturing Gaze Shifts for Guidance: Cross-Modal Fusion Enhancement for VLM Hallucination "
                "Mitigation"
            ),
            "2510.22067",
            2025,
            "amazon-science/GIFT",
            "lens",
        ),
        Paper(
            "sparsifiner",
            "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
            "2303.13755",
            2023,
            "lim142857/Sparsifiner",
            "reformulated",
            notes="CVPR 2023.",
        ),
        Paper(
            "hierarchical_attention",
            "Hierarchical Self-Attention: Generalizing Neural Attention Mechanics to Multi-Scale Problems",
            "2509.15448",
            2025,
            None,
            "reformulated",
            notes="No public code.",
        ),
        Paper(
            "raptor",
            "Block-Recurrent Dynamics in Vision Transformers",
            "2512.19941",
            2025,
            "KempnerInstitute/raptor",
            "lens",
        ),
        Paper(
            "faster_neighborhood",
            (
                "Faster Neighborhood Attention: Reducing the O(n^2) Cost of Self Attention at the "
                "Threadblock Level"
            ),
            "2403.04690",
            2024,
            "SHI-Labs/NATTEN",
            "structured",
        ),
        Paper(
            "softplus_attention",
            "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models",
            "2501.13428",
            2025,
            "iminfine/freeatten",
            "reformulated",
            notes=(
                "Repository name as in the paper notes; the latest arXiv abstract links "
                "github.com/iminfine/freeattn."
            ),
        ),
        Paper(
            "oat",
            "OAT: Object-Level Attention Transformer for Gaze Scanpath Prediction",
            "2407.13335",
            2024,
            "HKUST-NISL/oat_eccv24",
            "search",
            notes="ECCV 2024.",
        ),
        Paper(
            "decon_attention",
            "Deconstructing Attention: Investigating Design Principles for Effective Language Modeling",
            "2510.11602",
            2025,
            "HUIYINXUE/DeconAttn",
            "reformulated",
        ),
        Paper(
            "foveated_retinotopy",
            "Foveated Retinotopy Improves Classification and Localization in CNNs",
            "2402.15480",
            2024,
            "laurentperrinet/retinoto_py",
            "transform",
            notes="Later versions are titled '... in Convolutional Neural Networks'.",
        ),
        Paper(
            "aps_vit",
            "Reviving Shift Equivariance in Vision Transformers",
            "2306.07470",
            2023,
            "willding123/Shift-Equivariant-Vision-Transformers",
            "transform",
        ),
        Paper(
            "halonet",
            "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
            "2103.12731",
            2021,
            "huggingface/pytorch-image-models",
            "structured",
            notes="No official code; read from timm halo_attn.py.",
        ),
        Paper(
            "vision_matters",
            "Vision Matters: Simple Visual Perturbations Can Boost Multimodal Math Reasoning",
            "2506.09736",
            2025,
            "YutingLi0606/Vision-Matters",
            "transform",
            notes=(
                "The repository README cites other arXiv ids (2412.04234, 2505.22453); 2506.09736 is this "
                "paper."
            ),
        ),
        Paper(
            "paroattention",
            (
                "PAROAttention: Pattern-Aware ReOrdering for Efficient Sparse and Quantized Attention in "
                "Visual Generation Models"
            ),
            "2506.16054",
            2025,
            "jamescsq47/PAROAtten",
            "reformulated",
            notes="NeurIPS 2025.",
        ),
        Paper(
            "inline",
            "Bridging the Divide: Reconsidering Softmax and Linear Attention",
            "2412.06590",
            2024,
            "LeapLabTHU/InLine",
            "reformulated",
            notes="NeurIPS 2024.",
        ),
        Paper(
            "consistedit",
            "ConsistEdit: Highly Consistent and Precise Training-free Visual Editing",
            "2510.17803",
            2025,
            "zxYin/ConsistEdit_Code",
            "lens",
            notes="SIGGRAPH Asia 2025.",
        ),
        Paper(
            "vas_avar",
            "From Narrow to Panoramic Vision: Attention-Guided Cold-Start Reshapes Multimodal Reasoning",
            "2603.03825",
            2026,
            "lrlbbzl/Qwen-AVAR",
            "lens",
            notes="ICLR 2026.",
        ),
        Paper(
            "infsa",
            (
                "Self-Attention And Beyond the Infinite: Towards Linear Transformers with Infinite "
                "Self-Attention"
            ),
            "2603.00175",
            2026,
            "giorgioroffo/infinite-self-attention",
            "reformulated",
        ),
        Paper(
            "partialnet",
            "Partial Convolution Meets Visual Attention",
            "2503.03148",
            2025,
            "haiduo/PartialNet",
            "feature-map",
            notes="FasterNet PConv reference code: JierunChen/FasterNet.",
        ),
        # Foundational references used by the registry.
        Paper(
            "vit",
            "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
            "2010.11929",
            2020,
            "google-research/vision_transformer",
            "model",
            notes="Foundational reference.",
        ),
        Paper(
            "swin_v2",
            "Swin Transformer V2: Scaling Up Capacity and Resolution",
            "2111.09883",
            2021,
            "microsoft/Swin-Transformer",
            "structured",
            notes="Foundational reference: scaled-cosine window attention.",
        ),
        Paper(
            "longformer",
            "Longformer: The Long-Document Transformer",
            "2004.05150",
            2020,
            "allenai/longformer",
            "structured",
            notes="Foundational reference: sliding-window attention.",
        ),
        Paper(
            "linear_transformer",
            "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
            "2006.16236",
            2020,
            "idiap/fast-transformers",
            "reformulated",
            notes="Foundational reference: kernel (linear) attention with the elu+1 feature map.",
        ),
    )
}


IMPLEMENTATION_KINDS: tuple[str, ...] = ("edit", "metric", "transform", "module", "tool")
"""The allowed values of :attr:`Implementation.kind`; registered mixers are listed by the registry instead."""


@dataclass(frozen=True)
class Implementation:
    """Something in visattn, other than a registered mixer, that implements (part of) a paper.

    ``target`` is the dotted path of the object (``"visattn.lens.edits.VisualAttentionRedistribution"``); the tests
    import every target, and check that its module docstring names the paper's arXiv id, so this table cannot
    point at code that does not exist or that cites another paper.
    """

    paper: str
    kind: str
    target: str

    @property
    def name(self) -> str:
        """The object's own name, the last part of :attr:`target`."""
        return self.target.rpartition(".")[2]

    @property
    def label(self) -> str:
        """``target`` without the leading ``visattn.``, as the docs show it."""
        return self.target.removeprefix("visattn.")


def _impl(paper: str, kind: str, *targets: str) -> tuple[Implementation, ...]:
    return tuple(Implementation(paper, kind, target) for target in targets)


IMPLEMENTATIONS: tuple[Implementation, ...] = (
    *_impl("var_sink", "edit", "visattn.lens.edits.VisualAttentionRedistribution"),
    *_impl("var_sink", "metric", "visattn.lens.metrics.sink_tokens", "visattn.lens.metrics.massive_activation_dims"),
    *_impl("rst", "transform", "visattn.transforms.polar_resample", "visattn.transforms.polar_inverse"),
    *_impl("rst", "module", "visattn.nn.RadialStripAttention", "visattn.nn.DynamicRadialEmbedding",
           "visattn.models.rst.RadialStripTransformer"),
    *_impl("rst", "tool", "visattn.tasks.deblur.random_blur", "visattn.tasks.deblur.train_deblur"),
    *_impl("affine_scaled", "edit", "visattn.lens.edits.AffineAttentionScaling"),
    *_impl("imbalanced_attention", "edit", "visattn.lens.edits.ImbalancedAttentionBoost"),
    *_impl("dependency_vit", "module", "visattn.nn.ReversedEncoder", "visattn.nn.dependency_tree"),
    *_impl("vhd", "edit", "visattn.lens.edits.VisionHeadReinforcement"),
    *_impl("vhd", "metric", "visattn.lens.metrics.vision_head_divergence"),
    *_impl("pavlovian", "tool", "visattn.ops.associative_memory.hebbian_memory",
           "visattn.ops.associative_memory.retrieve"),
    *_impl("cdfsod_astigmatism", "metric", "visattn.lens.metrics.mean_attention_distance"),
    *_impl("morph", "module", "visattn.nn.MorphAxialAttention", "visattn.models.morph.Morph"),
    *_impl("morph", "tool", "visattn.tasks.pde.generate", "visattn.tasks.pde.lora"),
    *_impl("carve", "edit", "visattn.lens.edits.contrastive_attention", "visattn.lens.edits.refine_image"),
    *_impl("carve", "metric", "visattn.lens.metrics.visual_attention_entropy"),
    *_impl("headhunter", "edit", "visattn.lens.edits.SoftPerturbedAttention", "visattn.lens.edits.head_hunter"),
    *_impl("hedgehog", "tool", "visattn.nn.distill_attention", "visattn.nn.hedgehog_student",
           "visattn.train.convert.convert"),
    *_impl("gift", "edit", "visattn.lens.edits.GazeShiftAmplification"),
    *_impl("raptor", "metric", "visattn.lens.metrics.layer_dissimilarity", "visattn.lens.metrics.max_cut_phases"),
    *_impl("faster_neighborhood", "module", "visattn.nn.NeighborhoodAttention2d"),
    *_impl("s2lic", "module", "visattn.nn.ShiftedWindowAttentionV2", "visattn.nn.WindowAttentionV2",
           "visattn.nn.acgc.ChannelAttentionContext", "visattn.nn.acgc.DeformableGlobalContext",
           "visattn.models.s2lic.S2LIC"),
    *_impl("s2lic", "tool", "visattn.tasks.compression.rate_distortion_loss", "visattn.tasks.compression.train"),
    *_impl("softplus_attention", "edit", "visattn.lens.edits.AttentionReweighting"),
    *_impl("foveated_retinotopy", "transform", "visattn.transforms.log_polar.log_polar",
           "visattn.transforms.log_polar.inverse_log_polar", "visattn.transforms.fixation_grid.localize"),
    *_impl("rtnet", "transform", "visattn.transforms.roi_tanh_polar_warp", "visattn.transforms.roi_tanh_polar_restore"),
    *_impl("rtnet", "module", "visattn.models.rtnet.RTNet"),
    *_impl("rtnet", "tool", "visattn.tasks.face_parsing.synthetic_faces",
           "visattn.tasks.face_parsing.FaceParsingFolder"),
    *_impl("rtnet", "metric", "visattn.tasks.face_parsing.segmentation_scores"),
    *_impl("aps_vit", "transform", "visattn.transforms.polyphase_anchor", "visattn.transforms.make_shift_equivariant"),
    *_impl("aps_vit", "metric", "visattn.models.shift_equivariant.shift_consistency"),
    *_impl("vision_matters", "transform", "visattn.transforms.DistractorConcat", "visattn.transforms.DominanceMixup",
           "visattn.transforms.RandomRotationExpand"),
    *_impl("consistedit", "edit", "visattn.lens.edits.ConsistEditControl"),
    *_impl("vas_avar", "edit", "visattn.lens.edits.VisualSystemModulation"),
    *_impl("vas_avar", "metric", "visattn.lens.metrics.visual_attention_score"),
    *_impl("eccnet", "module", "visattn.search.eccentricity_pooling.EccentricityPool2d"),
    *_impl("eccnet", "tool", "visattn.search.eccnet.EccNet", "visattn.search.chance.chance_search",
           "visattn.search.asymmetry.generate_display"),
    *_impl("eccnet", "metric", "visattn.search.asymmetry.reaction_time", "visattn.search.asymmetry.asymmetry_index"),
)
"""Edits, metrics, transforms, modules and tools that implement a paper, beside the registered mixers."""

NOT_YET: dict[str, str] = {
    "eccnet": "pretrained VGG16 weights (user supplied) and the release's stimulus images for Exp 2-6 (re-rendered "
              "here from the paper's descriptions)",
    "rtnet": "trained weights (iBugMask, Helen, LaPa): the parser is trained here on synthetic faces only",
    "brain_encoder": "the transformer brain encoder (cross-attention from brain-region queries to image features)",
    "trackvla_pp": "the TrackVLA++ reasoning and memory modules",
    "oat": "the OAT object-level scanpath transformer",
    "aps_vit": "the shift-invariant mode of the authors' code (anchoring the largest patch too) and trained weights",
    "vision_matters": "the post-training pipelines (SFT, DPO, GRPO) the perturbations are used in",
    "partialnet": "PATNet backbones registered in timm and their trained weights",
    "s2lic": "full-size trained weights (the release ships none; visattn ships a 0.86 M-parameter codec trained "
             "8,883 CPU steps at one lambda, 1.6-2.1 dB above JPEG)",
    "rst": "trained weights (GoPro, HIDE, RealBlur): the network is trained here on generated blur only",
    "morph": "the pretrained MORPH-FM checkpoints (the release's weights are on the Hugging Face hub)",
    "dependency_vit": "pretrained DependencyViT models and DependencyViT-Lite pruning schedules",
    "pavlovian": "nothing beyond the associative-memory analysis (an analysis paper)",
    "cdfsod_astigmatism": "the detector-side remedy modules of the paper",
}
"""Per paper: what visattn does not implement (yet). A paper with no implementation at all must be listed; registered
mixers and feature-map modules (:func:`visattn.registry.list_modules`) count as implementations."""


def _bibtex_escape(text: str) -> str:
    out = []
    for char in text:
        if char in "&%$#_{}":
            out.append("\\" + char)
        elif char == "^":
            out.append("\\^{}")
        elif char == "~":
            out.append("\\~{}")
        else:
            out.append(char)
    return "".join(out)


def bibtex(key: str) -> str:
    """A BibTeX ``@misc`` entry for paper ``key``: title, year, arXiv eprint (``archivePrefix = {arXiv}``), URL and
    code. The table holds no author lists, so the entry has none: complete it from the arXiv page it links."""
    paper = get_paper(key)
    fields = [("title", "{" + _bibtex_escape(paper.title) + "}")]
    if paper.year is not None:
        fields.append(("year", str(paper.year)))
    if paper.arxiv:
        fields += [("eprint", paper.arxiv), ("archivePrefix", "arXiv"), ("url", paper.url or "")]
    if paper.code:
        fields.append(("note", "Code: \\url{https://github.com/" + paper.code + "}"))
    body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
    return f"@misc{{{paper.key}{paper.year or ''},\n{body}\n}}\n"


def get_paper(key: str) -> Paper:
    """Return the paper registered under ``key``; raise ``KeyError`` naming the known keys."""
    try:
        return PAPERS[key]
    except KeyError:
        known = ", ".join(sorted(PAPERS))
        raise KeyError(f"unknown paper {key!r}; known keys: {known}") from None
