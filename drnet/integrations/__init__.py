"""Optional integrations with the libraries DRN users already use (docs/integrations.md).

None of them is needed by drnet itself. ``import drnet`` does not import timm or
segmentation_models_pytorch (that would slow every command by seconds): :func:`install` hooks
their import instead, so that drnet's models appear in timm's registry and its encoders in SMP's
the moment either library is imported, before or after drnet.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)


def _register_timm() -> None:
    from drnet.integrations.timm_models import register_timm_models

    register_timm_models()


def _register_smp() -> None:
    from drnet.integrations.smp_encoders import register_smp_encoders

    register_smp_encoders()


# module whose import completes the registration -> what to run then
_HOOKS: dict[str, Callable[[], None]] = {
    "timm.models": _register_timm,
    "segmentation_models_pytorch.encoders": _register_smp,
}


def _run(name: str) -> None:
    try:
        _HOOKS[name]()
    except Exception as exc:  # an integration must never break the other library's import
        logger.warning("drnet: could not register with %s: %s", name.split(".")[0], exc)


class _LoaderThen(importlib.abc.Loader):
    """Runs the original loader, then a callback; everything else is the original's."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader, self._name = loader, name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _run(self._name)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._loader, attribute)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of a hooked module."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _HOOKS or fullname in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderThen(spec.loader, fullname)
                return spec
        return None


_installed = False


def install() -> None:
    """Register with the integrations already imported; hook the others' import."""
    global _installed
    if _installed:
        return
    _installed = True
    for name in _HOOKS:
        if name in sys.modules:
            _run(name)
    sys.meta_path.insert(0, _AfterImport())
