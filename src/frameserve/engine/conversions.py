"""Colour conversions the runner need not repeat: the same frame again, and a plate passed through.

A model that works in another colourspace than its requests (``srgb`` networks fed Nuke's
scene-linear plates) costs two OpenColorIO conversions per request, about 40 ms each for a
1080p frame on a CPU core. Two cases need neither:

- **The same frame again.** An artist tweaking knobs (a new click for ``segment``, another
  threshold) sends the same plate with other knob values: the result cache misses, but the
  plate's conversion is the same. :class:`ConvertedFrames` keeps the last few conversions,
  keyed by the frame's content (a 128-bit xxHash of its bytes, about 3 ms at 1080p) and the
  two colourspaces, within a byte budget.
- **A plate passed through.** A model whose output's RGB is its input's RGB as it got it (a
  matte in alpha over the untouched plate: ``person_matte``, ``segment``, ``cutout``...) would
  have that RGB converted back, a round trip that costs 40 ms and is exact only to 1e-5.
  :func:`passed_through` recognises it (the output's RGB equals the converted input's, bit for
  bit) so that the request's own pixels are handed back instead: faster, and exact.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch
import xxhash

__all__ = ["DEFAULT_CONVERSION_BYTES", "ConvertedFrames", "passed_through"]

#: What :class:`ConvertedFrames` keeps at most: two 4K RGB float frames.
DEFAULT_CONVERSION_BYTES = 2 * 3 * 3840 * 2160 * 4


class ConvertedFrames:
    """The last conversions of whole frames, by content and colourspaces (thread-safe).

    ::

        converted = conversions.get(frame, "scene_linear", "srgb", convert)

    ``convert(frame, source, target)`` runs on a miss. What is kept is a copy of the result
    and every hit returns a copy of it (4 ms at 1080p, against 40 ms for the conversion), so a
    model that writes into its input cannot change what the next request gets.
    """

    def __init__(self, budget_bytes: int = DEFAULT_CONVERSION_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self._kept: OrderedDict[tuple[bytes, tuple[int, ...], str, str], torch.Tensor]
        self._kept = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(
        self,
        frame: torch.Tensor,
        source: str,
        target: str,
        convert: Callable[[torch.Tensor, str, str], torch.Tensor],
    ) -> torch.Tensor:
        """Return ``frame`` converted from ``source`` to ``target``, computed once per content."""
        nbytes = frame.numel() * frame.element_size()
        if frame.device.type != "cpu" or nbytes > self.budget_bytes:
            return convert(frame, source, target)
        key = (_digest(frame), tuple(frame.shape), source, target)
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                self.hits += 1
                return kept.clone()
        converted = convert(frame, source, target)
        if converted is frame:
            return converted  # a no-op conversion: nothing worth keeping
        with self._lock:
            self.misses += 1
            self._kept[key] = converted.clone()
            total = sum(t.numel() * t.element_size() for t in self._kept.values())
            while total > self.budget_bytes and len(self._kept) > 1:
                _, dropped = self._kept.popitem(last=False)
                total -= dropped.numel() * dropped.element_size()
        return converted


def passed_through(output: torch.Tensor, model_input: torch.Tensor) -> bool:
    """Whether ``output``'s first three channels are ``model_input``'s, bit for bit."""
    if (
        output.dim() != 3
        or model_input.dim() != 3
        or output.shape[0] < 3
        or model_input.shape[0] < 3
        or output.shape[1:] != model_input.shape[1:]
        or output.device != model_input.device
        or output.dtype != model_input.dtype
    ):
        return False
    return bool(torch.equal(output[:3], model_input[:3]))


def _digest(frame: torch.Tensor) -> bytes:
    contiguous = frame.detach().contiguous()
    return xxhash.xxh3_128_digest(contiguous.view(torch.uint8).numpy().data)
