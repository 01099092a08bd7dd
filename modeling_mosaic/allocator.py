"""Keep freed memory in the process between training steps instead of handing it back to the kernel.

glibc's malloc serves large blocks with mmap and trims the free top of its heap back to the kernel, so each
step of a small model on the CPU gets its activations in fresh pages that the kernel must fault in and zero:
~15,000 page faults (60 MB) per step of the demo config, ~20 ms of a ~150 ms step in a bare training loop.
A higher trim threshold, a padded heap top and blocks up to 32 MB served from the heap keep those pages for
the next step. The arithmetic is untouched (the same weights bit for bit); the process holds on to its peak
memory instead of shrinking between steps, which is what a training or inference process does anyway.

The entry points (training, evaluation, prediction, the benchmarks) call `keep_freed_memory()` once; user code
that runs many steps in its own process may do the same. Settings the user made through glibc's environment
variables win.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters of glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
#: The environment variables through which a user sets the same parameters; when any is set we leave them be.
GLIBC_ENVIRONMENT = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_")


def keep_freed_memory(trim_threshold: int = 1 << 30, top_pad: int = 64 << 20,
                      mmap_threshold: int = 32 << 20) -> bool:
    """Set glibc's trim threshold, top pad and mmap threshold (bytes; 32 MB is glibc's largest mmap threshold
    on 64-bit). Returns whether they were applied: False off Linux, without glibc's `mallopt`, when the C
    library refuses a value, or when the user set any of them in the environment."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in GLIBC_ENVIRONMENT):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((M_TRIM_THRESHOLD, trim_threshold), (M_TOP_PAD, top_pad), (M_MMAP_THRESHOLD, mmap_threshold))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
