"""visattn's backbones, registered in timm's model registry under ``visattn_*`` names.

``import visattn`` does not import this package (it imports timm's models, seconds); import it to register the
models, then build them with timm::

    import timm
    import visattn.models  # registers visattn_* in timm

    print(timm.list_models("visattn_*"))
    model = timm.create_model("visattn_vit_small_patch16_224", mixer="neighborhood", kernel_size=7)

One module per family (imports below, one line each as ``from . import name as name``, alphabetical); each registers
its models with ``@timm.models.register_model`` when imported here and maps the models that have a timm twin (same
architecture, same weights) to its name in a module-level ``TIMM_COUNTERPARTS`` dict (:func:`timm_counterpart`, used
by the benchmarks). Published parameter counts and FLOPs for the docs table live in :mod:`visattn.models.published`.
"""

import sys

from . import davit as davit
from . import dependency_vit as dependency_vit
from . import dinat as dinat
from . import fasternet as fasternet
from . import halonet as halonet
from . import infvit as infvit
from . import inline as inline
from . import l2vit as l2vit
from . import maxvit as maxvit
from . import nat as nat
from . import patnet as patnet
from . import raptor as raptor
from . import rst as rst
from . import rtnet as rtnet
from . import s2lic as s2lic
from . import shift_equivariant as shift_equivariant
from . import sparsifiner as sparsifiner
from . import swin_v2 as swin_v2
from . import vit as vit


def timm_counterpart(name: str) -> str | None:
    """The timm model with the same architecture and weights as the registered ``visattn_*`` model ``name`` (from
    its family module's ``TIMM_COUNTERPARTS``), or None when timm has none (NAT, DiNAT)."""
    import timm

    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"name must be a registered timm model name, got {name!r}")
    module = sys.modules[timm.models.model_entrypoint(name).__module__]
    return getattr(module, "TIMM_COUNTERPARTS", {}).get(name)
