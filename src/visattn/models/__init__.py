"""visattn's backbones, registered in timm's model registry under ``visattn_*`` names.

``import visattn`` does not import this package (it imports timm's models, seconds); import it to register the
models, then build them with timm::

    import timm
    import visattn.models  # registers visattn_* in timm

    print(timm.list_models("visattn_*"))
    model = timm.create_model("visattn_vit_small_patch16_224", mixer="neighborhood", kernel_size=7)

One module per family; each registers its models with ``@timm.models.register_model`` when imported here. Published
parameter counts and FLOPs for the docs table live in :mod:`visattn.models.published`.
"""

from . import vit  # noqa: F401
from . import maxvit  # noqa: F401
from . import swin_v2  # noqa: F401
from . import davit  # noqa: F401
from . import nat  # noqa: F401
