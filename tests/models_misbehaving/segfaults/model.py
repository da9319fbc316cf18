"""A misbehaving test plug-in: predict reads address 0 from native code and dies of SIGSEGV.

Never run it in the test process: it takes the process down, as a crashing native library
would.
"""

from __future__ import annotations

import ctypes
import os
import signal

from frameserve import ImageSpec, Model


class Segfaults(Model):
    """Dereferences a null pointer, as a buggy native extension does."""

    id = "segfaults"
    cacheable = False  # every request must reach predict
    inputs = (ImageSpec("image", channels=3),)
    outputs = (ImageSpec("image", channels=3),)

    def predict(self, frames, knobs):
        ctypes.string_at(0)  # reads address 0: SIGSEGV
        os.kill(os.getpid(), signal.SIGSEGV)  # not reached on any platform we serve from
        raise AssertionError("still alive after SIGSEGV")
