"""Touch the machine's free memory once before anything is timed.

On this kind of VM the host backs a guest's memory page only when the guest first touches it,
and that first touch is charged to whoever touches it: a ledger writer appending to a file
(new page-cache pages) or a shard growing its arrays. Measured on the 2-core VM (2026-12-03):
appending 355-byte events to a file cost 0.89 us of kernel CPU an event before, 0.11 us after
4 GB had been written to a file and deleted. The warm-up writes such a file (the kernel frees
its pages on delete, and hands them out again first), so every run of the bench, the seed's
booth included, writes into memory the host has already backed. On a machine whose memory is
backed from the start it costs a few seconds and changes nothing.

>>> import tempfile; from pathlib import Path
>>> touch_free_memory(Path(tempfile.mkdtemp()), 8 << 20)["bytes"]
8388608
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

CHUNK_BYTES = 16 << 20
FULL_BYTES = 4 << 30  # about ten times what the full bench's largest mesh writes and holds
QUICK_BYTES = 512 << 20
MAX_SHARE_OF_AVAILABLE = 4  # never more than a quarter of the memory available now


def warmup_bytes(quick: bool) -> int:
    """How much to touch: the plan's size, at most a quarter of the memory available now."""
    wanted = QUICK_BYTES if quick else FULL_BYTES
    return min(wanted, psutil.virtual_memory().available // MAX_SHARE_OF_AVAILABLE) // CHUNK_BYTES * CHUNK_BYTES


def touch_free_memory(directory: Path, size_bytes: int) -> dict[str, Any]:
    """Write ``size_bytes`` to a file in ``directory`` and delete it; what was done and how long it took."""
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < 0:
        raise ValueError(f"size_bytes={size_bytes!r}: expected a count of bytes (int >= 0)")
    started = time.perf_counter()
    path = directory / "page-warmup.bin"
    chunk = b"\xa5" * min(CHUNK_BYTES, size_bytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        written = 0
        while written < size_bytes:
            written += os.write(fd, chunk[: size_bytes - written])
    finally:
        os.close(fd)
        path.unlink()
    return {"bytes": written, "seconds": round(time.perf_counter() - started, 2)}
