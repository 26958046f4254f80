"""drnet: Dilated Residual Networks (Yu, Koltun, Funkhouser, CVPR 2017).

The public API (:func:`create_model`, :func:`list_models`, ...) is imported on first use
(PEP 562), so ``import drnet`` and ``drnet --help`` stay cheap: torch is only imported when a
model is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from drnet.integrations import install as _install_integrations

__version__ = "0.1.0"

# name -> the module that defines it
_LAZY = {
    "create_model": "drnet.models.registry",
    "create_segmentation_model": "drnet.models.registry",
    "from_pretrained": "drnet.integrations.hub",
    "list_models": "drnet.models.registry",
    "load_model": "drnet.models.loading",
}
_SUBPACKAGES = frozenset(
    {
        "analysis",
        "atomic",
        "cli",
        "constants",
        "data",
        "demo",
        "engine",
        "errors",
        "integrations",
        "machine",
        "metrics",
        "models",
        "serve",
        "speed",
        "tasks",
        "timing",
    }
)

__all__ = [
    "__version__",
    "create_model",
    "create_segmentation_model",
    "from_pretrained",
    "list_models",
    "load_model",
]

if TYPE_CHECKING:  # pragma: no cover
    from drnet.integrations.hub import from_pretrained
    from drnet.models.loading import load_model
    from drnet.models.registry import create_model, create_segmentation_model, list_models


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f"drnet.{name}")
    raise AttributeError(f"module 'drnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBPACKAGES)


# drnet's models in timm's registry and its encoders in SMP's, when (and if) either is imported:
# a hook on their import (drnet.integrations imports neither, nor torch)
_install_integrations()
