"""Choosing the torch device models run on, and asking it about memory.

Device names, as the settings and ``--device`` take them::

    resolve_device("auto")    # CUDA when torch.cuda.is_available(), else the CPU
    resolve_device("cpu")
    resolve_device("cuda")    # the current CUDA device, e.g. cuda:0
    resolve_device("cuda:1")

A CUDA name on a machine without one, or an index past the last GPU, raises
:class:`~frameserve.errors.ConfigError` saying what this machine has. Other torch device types
(``mps``...) are passed through unchecked and run without the CUDA-only speed-ups.

**Memory.** :func:`default_memory_budget` is what loaded models may hold when the settings do
not say: 80% of a GPU's total memory, half of the machine's RAM on the CPU (read with
``os.sysconf``). :func:`is_out_of_memory` recognises the ways an allocation failure surfaces:
``torch.OutOfMemoryError`` (CUDA), ``MemoryError``, and a ``RuntimeError`` whose message says
the allocator ran out ("out of memory", "can't allocate memory", "not enough memory").
"""

from __future__ import annotations

import gc
import os

import torch

from frameserve.errors import ConfigError

__all__ = [
    "AUTO",
    "CPU_BUDGET_FRACTION",
    "CUDA_BUDGET_FRACTION",
    "allocated_bytes",
    "check_device_name",
    "default_memory_budget",
    "is_out_of_memory",
    "release_memory",
    "resolve_device",
    "total_memory",
]

#: The device name that picks CUDA when it is there, else the CPU.
AUTO = "auto"
#: Share of a GPU's memory loaded models may hold by default (the rest is for activations).
CUDA_BUDGET_FRACTION = 0.8
#: Share of the machine's RAM loaded models may hold by default (frames and buffers need RAM).
CPU_BUDGET_FRACTION = 0.5

_OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")


def check_device_name(device: str | torch.device) -> None:
    """Raise :class:`ConfigError` unless ``device`` is ``"auto"`` or a torch device name."""
    if isinstance(device, str) and device.strip().lower() == AUTO:
        return
    try:
        torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"device {device!r} is not a device name; use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc


def resolve_device(device: str | torch.device) -> torch.device:
    """Return the torch device ``device`` names; ``"auto"`` picks CUDA when it is there.

    Raises:
        ConfigError: an unknown name, CUDA on a machine without it, or a GPU index past the
            last GPU.
    """
    check_device_name(device)
    if isinstance(device, str) and device.strip().lower() == AUTO:
        return resolve_device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise ConfigError(
            f"device {str(device)!r} is not available: PyTorch sees no CUDA GPU here "
            f"(PyTorch {torch.__version__}); use 'cpu' or 'auto'"
        )
    count = torch.cuda.device_count()
    if resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if resolved.index >= count:
        raise ConfigError(
            f"device {str(device)!r} does not exist: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return resolved


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed (on the GPU or in host memory)."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def total_memory(device: torch.device) -> int | None:
    """Return the bytes of memory ``device`` has (the GPU's, or the machine's RAM), or None."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type == "cpu":
        try:
            pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):  # not a POSIX system
            return None
        return pages * page_size if pages > 0 and page_size > 0 else None
    return None


def default_memory_budget(device: torch.device) -> int | None:
    """Return the bytes loaded models may hold on ``device`` by default (None: no limit)."""
    total = total_memory(device)
    if total is None:
        return None
    fraction = CUDA_BUDGET_FRACTION if device.type == "cuda" else CPU_BUDGET_FRACTION
    return int(total * fraction)


def allocated_bytes(device: torch.device) -> int:
    """Return the bytes of tensors allocated on a CUDA ``device`` now (0 elsewhere)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    return 0


def release_memory(device: torch.device) -> None:
    """Collect unreachable objects and hand cached CUDA blocks back to the driver."""
    gc.collect()
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
