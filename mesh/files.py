"""Files the mesh keeps beside its ledger (agent directory, hosts, caps) are replaced whole.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "caps.json"
>>> write_whole(path, b"{}"); path.read_bytes()
b'{}'
"""

from __future__ import annotations

import os
from pathlib import Path


def write_whole(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader (or a restarted actor) sees the old file or the new one."""
    tmp = Path(f"{os.fspath(path)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
