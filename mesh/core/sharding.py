"""Which budget shard holds an agent: a stable hash of its id, the same in every process.

Python's ``hash()`` of a str changes between processes, so shards use CRC-32, which
does not: a restarted shard, a replay and a second driver all agree.

>>> shard_of("alice", 4), shard_of("alice", 4) == shard_of("alice", 4)
(3, True)
>>> shard_of("anyone", 1)
0
"""

from __future__ import annotations

from zlib import crc32

from mesh.core.errors import InvalidArgumentError

MAX_SHARDS = 1_024


def shard_of(agent: str, shards: int) -> int:
    """The index (0 to ``shards - 1``) of the budget shard that holds ``agent``."""
    return crc32(agent.encode()) % shards


def check_shards(shards: int) -> int:
    """``shards`` if it is a valid shard count, else InvalidArgumentError."""
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidArgumentError("shards", shards, f"must be an int from 1 to {MAX_SHARDS}")
    return shards
