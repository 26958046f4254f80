"""drnet: Dilated Residual Networks (Yu, Koltun, Funkhouser, CVPR 2017)."""

from __future__ import annotations

__version__ = "0.1.0"

from drnet.integrations.hub import from_pretrained  # noqa: E402
from drnet.models import (  # noqa: E402
    create_model,
    create_segmentation_model,
    list_models,
    load_model,
)

__all__ = [
    "__version__",
    "create_model",
    "create_segmentation_model",
    "from_pretrained",
    "list_models",
    "load_model",
]

from drnet.integrations import install as _install_integrations  # noqa: E402

_install_integrations()  # timm / SMP registrations, when (and if) they are imported
