"""One writer at a time: an exclusive ``flock`` on a lock file, which names its holder.

The JSONL ledger (``<ledger>.lock`` beside its first file) and the Parquet dataset
(``.writer.lock`` in its directory) are each written by one process at a time. The lock is
an ``flock``: the OS drops it when its holder dies, so a writer that replaces a dead one (a
restarted actor, in a new process) gets it at once; it waits, up to ``timeout_s``, only while
the old process is still going (it may be closing its files). The holder writes its pid and
host into the file, so the one refused can say who holds it. Readers take no lock.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl.lock"
>>> fd = take_lock(path, timeout_s=0, what="the ledger l.jsonl")
>>> take_lock(path, timeout_s=0, what="the ledger l.jsonl")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mesh.core.errors.LedgerError: the ledger l.jsonl is being written by another process (it holds l.jsonl.lock); waited 0 s; holder: pid ... on host ...
>>> release_lock(fd)
>>> release_lock(take_lock(path, timeout_s=0, what="the ledger l.jsonl"))
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from mesh.core.errors import LedgerError

DEFAULT_LOCK_TIMEOUT_S = 30.0  # how long a new writer waits for an old one to let go
LOCK_POLL_S = 0.05
_HOLDER_MAX_BYTES = 128  # the holder's line in the lock file, padded to this length


def check_lock_timeout(timeout_s: Any) -> float:
    """``timeout_s`` if it is a finite number of seconds, 0 or more; LedgerError naming it otherwise."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 <= timeout_s < math.inf:
        raise LedgerError(f"lock_timeout_s={timeout_s!r}: must be a finite number of seconds, 0 or more")
    return float(timeout_s)


def take_lock(path: Path, *, timeout_s: float, what: str) -> int:
    """Hold the lock ``path`` (created if need be), waiting up to ``timeout_s``; return its file descriptor.

    ``what`` names what the lock guards, in the error a second writer gets (it names the holder too).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(f"cannot write {what}: cannot open its lock file {path}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _read_holder(fd)
                os.close(fd)
                raise LedgerError(
                    f"{what} is being written by another process (it holds {path.name}); waited {timeout_s:g} s; holder: {holder}"
                ) from None
            time.sleep(LOCK_POLL_S)
        except OSError as exc:
            os.close(fd)
            raise LedgerError(f"cannot lock {what} ({path}): {exc}") from exc
    _write_holder(fd)
    return fd


def release_lock(fd: int) -> None:
    """Let the lock go (closing its descriptor drops the ``flock``)."""
    os.close(fd)


def _write_holder(fd: int) -> None:
    """Name this process in the lock file, over what the last holder wrote (a line of a fixed length: no
    truncation, which a filesystem may make wait for the disk); best effort: a full disk must not stop a writer."""
    name = f"pid {os.getpid()} on host {socket.gethostname()}".encode("utf-8", "replace")[: _HOLDER_MAX_BYTES - 1]
    try:
        os.pwrite(fd, name.ljust(_HOLDER_MAX_BYTES - 1) + b"\n", 0)
    except OSError:
        pass


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, _HOLDER_MAX_BYTES, 0).decode("utf-8", "replace").strip()
    except OSError as exc:
        return f"unknown (cannot read the lock file: {exc})"
    return text or "unknown (it has not named itself yet)"
