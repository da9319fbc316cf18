"""The torch devices that device-dependent tests run on: the CPU always, CUDA when there is one.

A test that takes the ``device`` fixture (``tests/conftest.py``) runs once per device, with the
expectation written for each (``device.type == "cuda"``), instead of a CUDA-only copy that is
skipped on most machines::

    def test_results_leave_on_the_cpu(device: torch.device) -> None:
        runner = Runner(registry, device=device)
        ...

``FRAMESERVE_TEST_DEVICES`` chooses the devices instead (comma-separated torch device names,
as kornia's ``--device`` option does): ``FRAMESERVE_TEST_DEVICES=cuda:1`` runs the tests on the
second GPU only. A device named there that this machine does not have is an error when the
tests are collected, never a skip.

On CUDA, :func:`exact_float32` turns TF32 off for the test (cuDNN convolutions and matrix
products), so float32 results compare with the CPU's at float32 tolerances.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["DEVICES_ENV", "devices_under_test", "exact_float32"]

#: The environment variable that names the devices to test (default: CPU, and CUDA if present).
DEVICES_ENV = "FRAMESERVE_TEST_DEVICES"


def devices_under_test(environ: dict[str, str] | None = None) -> list[str]:
    """Return the names of the devices the tests run on, in order, without repeats.

    Raises:
        ValueError: ``FRAMESERVE_TEST_DEVICES`` names something that is not a torch device,
            or a device this machine does not have.
    """
    chosen = (os.environ if environ is None else environ).get(DEVICES_ENV, "").strip()
    if not chosen:
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    names: list[str] = []
    for raw in chosen.split(","):
        name = raw.strip().lower()
        if name and name not in names:
            _check_present(name)
            names.append(name)
    if not names:
        raise ValueError(f"{DEVICES_ENV}={chosen!r} names no device; use for example 'cpu,cuda'")
    return names


def _check_present(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a torch device this machine has."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{DEVICES_ENV}: {name!r} is not a torch device name; use 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if device.type == "cpu":
        return
    if device.type != "cuda":
        raise ValueError(f"{DEVICES_ENV}: {name!r}: only 'cpu' and CUDA devices are tested")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(f"{DEVICES_ENV}: {name!r}: PyTorch sees no CUDA GPU on this machine")
    if device.index is not None and device.index >= count:
        raise ValueError(
            f"{DEVICES_ENV}: {name!r}: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """Run the block with TF32 off on CUDA (a no-op elsewhere); restore the settings after."""
    if device.type != "cuda":
        yield
        return
    previous = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous
