"""glibc malloc settings for the mesh's actor processes: keep freed buffers for the next batch.

A batch of 20,000 calls makes buffers of several megabytes (its JSON lines, their numbered and
sealed copies, Arrow columns, Ray's serialized payloads). glibc serves a request above its mmap
threshold (128 KiB at start, raised as buffers are freed) with fresh pages from the kernel and
gives them back on free, and trims the heap's free top past its trim threshold; so each batch
faults its buffers' pages in again and the kernel zeroes every one. On this 2-core VM, where the
host backs a page on its first touch, that cost the ledger writer's append path about 0.3 us of
kernel CPU an event (appends of 40,000 shard-encoded events: 0.24 page faults an event, 0.08 with
these settings; 2026-12-03). Buffers up to ``MMAP_THRESHOLD_BYTES`` now come from the heap, and up to
``TRIM_THRESHOLD_BYTES`` of freed memory stays in it for the next batch.

>>> keep_freed_memory() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed mmap threshold on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds in this process; False where there is no glibc (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
