"""A mesh's run directory, reached from any node: read and written through the ledger writer.

The run directory (``out_dir``: the JSONL ledger, the per-agent caps, the classes each host
builds its agents from) lies on the disk of one node: the one whose driver started the
mesh, where the ledger writer and the coordinator are pinned. Shards and hosts may run on
any node of a cluster, so they never open those files themselves: they ask the writer
(:class:`WriterFiles`), which serves them from its disk (:class:`RunDirectory`), a ledger
in chunks of at most ``CHUNK_BYTES``. Without Ray, :class:`LocalFiles` answers the same
calls from the local disk. No shared filesystem is needed.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "toll_ledger.jsonl").write_bytes(b'{"v":1}\\n{"v":1}\\n')
>>> files = LocalFiles()
>>> [pathlib.Path(p).name for p in files.segments(str(root / "toll_ledger.jsonl"))]
['toll_ledger.jsonl']
>>> from ledger.reader import lines_of
>>> list(lines_of(files.chunks(str(root / "toll_ledger.jsonl"))))
[b'{"v":1}\\n', b'{"v":1}\\n']
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol

import ray

from ledger.files import segments
from ledger.replay import LedgerFiles
from mesh.core.errors import LedgerError

CHUNK_BYTES = 8 << 20  # a ledger travels to a rebuilding shard in pieces of at most this much
RETRY_WINDOW_S = 60.0  # a call cut short by the writer's death is made again for this long...
RETRY_PAUSE_S = 0.2  # ...this far apart
WRITABLE_DIRS = ("hosts",)  # what others may write through the writer: each host's agent groups


def write_whole(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader (or a restarted actor) sees the old file or the new one.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "caps.json"
    >>> write_whole(path, b"{}"); path.read_bytes()
    b'{}'
    """
    tmp = Path(f"{os.fspath(path)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunFiles(LedgerFiles, Protocol):
    """What shards and hosts read (and drivers write) of the run directory: a ledger's files, and whole files."""

    def read(self, path: str) -> Optional[bytes]: ...

    def write(self, path: str, data: bytes) -> None: ...


class LocalFiles:
    """The run directory on this node's disk."""

    def segments(self, ledger: str) -> list[str]:
        """The ledger's files in order; none if it has none yet."""
        return [str(p) for p in segments(ledger)] if Path(ledger).exists() else []

    def chunks(self, path: str) -> Iterator[bytes]:
        """The bytes of ``path``, in pieces of at most ``CHUNK_BYTES``."""
        try:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    yield chunk
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {path}: {exc}") from exc

    def read(self, path: str) -> Optional[bytes]:
        """The whole file, or None if there is none."""
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        """Replace the file whole (a reader sees the old one or the new one), making its directory."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_whole(path, data)


class RunDirectory:
    """The writer's side: :class:`LocalFiles` limited to the files under ``root``, and writes to
    those under ``WRITABLE_DIRS`` (the ledger and its dataset are never written this way)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self._local = LocalFiles()

    def segments(self, ledger: str) -> list[str]:
        return self._local.segments(self._inside(ledger))

    def chunk(self, path: str, offset: int, max_bytes: int) -> bytes:
        """At most ``max_bytes`` of ``path`` from ``offset`` (empty at its end)."""
        if type(offset) is not int or offset < 0 or type(max_bytes) is not int or not 0 < max_bytes <= CHUNK_BYTES:
            raise LedgerError(f"offset={offset!r}, max_bytes={max_bytes!r}: expected offset >= 0 and 0 < max_bytes <= {CHUNK_BYTES}")
        try:
            with open(self._inside(path), "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {path}: {exc}") from exc

    def read(self, path: str) -> Optional[bytes]:
        return self._local.read(self._inside(path))

    def write(self, path: str, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise LedgerError(f"data={type(data).__name__}: expected bytes")
        inside = self._inside(path)
        if Path(inside).relative_to(self.root).parts[0] not in WRITABLE_DIRS:
            raise LedgerError(f"{path}: only files under {', '.join(WRITABLE_DIRS)}/ of the run directory are written this way")
        self._local.write(inside, data)

    def _inside(self, path: str) -> str:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root) or resolved == self.root:
            raise LedgerError(f"{path}: not a file of the run directory {self.root}")
        return str(resolved)


class WriterFiles:
    """The run directory as the ledger writer actor named ``writer_name`` serves it (any node).

    Every call is a read, or a write of a whole file, so one that the writer's death cut short
    is made again once Ray has restarted it, for up to ``RETRY_WINDOW_S``.
    """

    def __init__(self, writer_name: str, namespace: Optional[str] = None) -> None:
        self._writer: Any = ray.get_actor(writer_name, namespace=namespace)

    def segments(self, ledger: str) -> list[str]:
        return self._call("run_file_segments", ledger)

    def chunks(self, path: str) -> Iterator[bytes]:
        offset = 0
        while chunk := self._call("run_file_chunk", path, offset, CHUNK_BYTES):
            offset += len(chunk)
            yield chunk

    def read(self, path: str) -> Optional[bytes]:
        return self._call("run_file_read", path)

    def write(self, path: str, data: bytes) -> None:
        self._call("run_file_write", path, data)

    def _call(self, method: str, *args: Any) -> Any:
        deadline = time.monotonic() + RETRY_WINDOW_S
        while True:
            try:
                return ray.get(getattr(self._writer, method).remote(*args))
            except ray.exceptions.RayActorError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_PAUSE_S)


def files_from(writer_name: Optional[str], namespace: Optional[str]) -> RunFiles:
    """:class:`WriterFiles` of the writer named ``writer_name`` in ``namespace``, or
    :class:`LocalFiles` for None (a shard or host started without a mesh around it)."""
    return LocalFiles() if writer_name is None else WriterFiles(writer_name, namespace)
