"""Mixed precision: which low-precision dtype a device runs natively, and the autocast for it.

- CUDA: bfloat16 where the GPU supports it, else float16 (with a gradient scaler).
- CPU: bfloat16 only where the CPU has native bf16 instructions (``avx512_bf16`` or AMX); on
  other CPUs bf16 is emulated and slower than float32, so mixed precision is refused with a
  one-line reason and the work stays in float32.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from drnet.constants import DTYPE_CHOICES

NATIVE_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bfloat16 natively (fast), not by emulation."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # the CPU's flags, and oneDNN willing to use them (ONEDNN_MAX_CPU_ISA can cap it: then
        # bf16 convolutions are emulated, several times slower than float32)
        return any(flag in _cpu_flags() for flag in NATIVE_CPU_BF16_FLAGS) and onednn_bf16()
    return False


def onednn_bf16() -> bool:
    """Whether oneDNN runs bfloat16 kernels here (they need avx512bw/vl/dq or avx_ne_convert, and
    no ``ONEDNN_MAX_CPU_ISA`` below them); True where torch has no oneDNN to ask."""
    try:
        if not torch.backends.mkldnn.is_available():
            return True  # nothing to ask: the flags decide
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the op
        return True


def amp_dtype(device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of mixed precision on ``device``; None where it would not pay."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if native_bf16(device) else None


def amp_unavailable_reason(device: torch.device | str) -> str | None:
    """One line saying why mixed precision is off on ``device`` (None when it is available)."""
    device = torch.device(device)
    if amp_dtype(device) is not None:
        return None
    if device.type == "cpu":
        return (
            "this CPU has no native bfloat16 (no avx512_bf16 or AMX), where bf16 is slower than "
            "float32"
        )
    return f"no mixed precision on {device.type}"


def autocast_context(device: torch.device, amp: bool):
    """``torch.autocast`` in :func:`amp_dtype` when ``amp`` and the device has one, else a
    no-op."""
    dtype = amp_dtype(device) if amp else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


#: the ``--dtype`` choices of evaluation and prediction (and the demo)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def inference_dtype(
    requested: str | torch.dtype | None, device: torch.device | str
) -> tuple[torch.dtype, str | None]:
    """The dtype inference runs in for ``requested`` on ``device``, and a one-line note when the
    request cannot be honoured.

    ``"float32"`` (or None) is float32. ``"bfloat16"`` is bfloat16 where the device computes it
    natively, else float32 with a note (emulated bf16 is several times slower than float32, so
    it is never worth it). ``"auto"`` is bfloat16 where native, else float32, silently.
    """
    if isinstance(requested, torch.dtype):
        requested = {v: k for k, v in _DTYPES.items()}.get(requested, str(requested))
    requested = requested or "float32"
    if requested not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, not {requested!r}")
    if requested == "float32":
        return torch.float32, None
    if native_bf16(device):
        return torch.bfloat16, None
    if requested == "auto":
        return torch.float32, None
    reason = amp_unavailable_reason(device) or f"no native bfloat16 on {torch.device(device)}"
    if torch.device(device).type == "cuda":
        reason = "this GPU has no native bfloat16"
    return torch.float32, f"--dtype bfloat16 ignored: {reason}; running in float32"
