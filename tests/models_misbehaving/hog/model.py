"""A misbehaving test plug-in: predict allocates memory until its worker is killed.

It declares ``memory_limit_mb``: the server must kill its worker once it holds more. The
allocations are written to (``bytes`` filled with ones), so they are resident, not just
reserved. To spare the machine if nothing stops it, it stops growing at
:data:`CEILING_BYTES` and holds that until it is killed (or its timeout ends it).
"""

from __future__ import annotations

import time

from frameserve import ImageSpec, Model

#: What it allocates at a time: 50 MB.
CHUNK_BYTES = 50 << 20
#: Where it stops growing (and keeps holding): far past its cap.
CEILING_BYTES = 1536 << 20


class Hog(Model):
    """Allocates 50 MB every 10 ms and never returns."""

    id = "hog"
    memory_limit_mb = 400  # torch alone is about 220 MB resident
    cacheable = False  # every request must reach predict
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames, knobs):
        hoard: list[bytes] = []
        while True:
            if len(hoard) * CHUNK_BYTES < CEILING_BYTES:
                hoard.append(b"\x01" * CHUNK_BYTES)
            time.sleep(0.01)
