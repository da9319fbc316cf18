"""How much one request may carry: the size caps every front door checks before it allocates.

::

    limit = request_bytes_limit(DEFAULT_MAX_FRAME_BYTES, inputs=2)   # two 8K frames + overhead
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_BATCH_FRAMES",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_FRAME_PIXELS",
    "DEFAULT_MAX_REQUEST_IMAGES",
    "MESSAGE_OVERHEAD_BYTES",
    "request_bytes_limit",
]

#: One 8K (8192x4320) four-channel float32 frame: the default cap per model input.
DEFAULT_MAX_FRAME_BYTES = 8192 * 4320 * 4 * 4
#: 8K x 8K: the largest frame, in pixels, accepted anywhere unless told otherwise (checked from
#: the sizes a request or an image header announces, before anything is decoded).
DEFAULT_MAX_FRAME_PIXELS = 8192 * 8192
#: Frames one HTTP inference request may carry (an ``[N, H, W, C]`` batch).
DEFAULT_MAX_BATCH_FRAMES = 64
#: Images one MLClient inference request may carry (one per model input; temporal models add
#: their neighbour frames).
DEFAULT_MAX_REQUEST_IMAGES = 64
#: Room for the message around the frames (model, options, field headers).
MESSAGE_OVERHEAD_BYTES = 1 << 20


def request_bytes_limit(max_frame_bytes: int, inputs: int) -> int:
    """Return the largest request accepted when a model takes ``inputs`` frames of at most
    ``max_frame_bytes`` each (at least one frame, plus the message around them)."""
    return max_frame_bytes * max(inputs, 1) + MESSAGE_OVERHEAD_BYTES
