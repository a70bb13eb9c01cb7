"""A ledger partitioned by budget shard: N ordinary ledger families under one name.

A mesh of N budget shards writes shard K's events to partition K, so that no one
process writes every event. Each partition is a whole ledger of its own (its seq from 0,
its seals, its segments, its torn-tail rule: :mod:`ledger.jsonl`); a manifest beside
them says how many there are, and makes the ledger's name mean all of them::

    run/toll_ledger.partitions.json     {"format": "tollmesh.partitioned", "version": 1, "partitions": N}
    run/shard=0/toll_ledger.jsonl       partition 0
    run/shard=1/toll_ledger.jsonl       partition 1 ...
    run/parquet/shard=0/day=.../        partition 0's Parquet dataset (hive directories)

Partition K holds the events of the agents shard K holds (``shard_of(agent, N) == K``):
the locks, rejects and settlements of its sources, the deposits of its targets, and
the ``credit`` events of the releases another partition paid to its agents, each naming
that release by ``from_shard`` and ``from_seq``. ``reset_daily`` is in every partition.
Events are named by ``(shard, seq)``; nothing orders two partitions.

:func:`create` writes the partitions' first files, then the manifest (atomically): a
manifest on disk means every partition's file is there. :func:`partitions` lists them,
or the one file of an ordinary ledger, so a reader reads either.

>>> import tempfile, pathlib
>>> run = pathlib.Path(tempfile.mkdtemp())
>>> create(run / "toll_ledger.jsonl", 2)
>>> [str(p.relative_to(run)) for p in partitions(run / "toll_ledger.jsonl")]
['shard=0/toll_ledger.jsonl', 'shard=1/toll_ledger.jsonl']
>>> partition_count(run), partitions(run) == partitions(run / "toll_ledger.jsonl")
(2, True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import orjson

from ledger.files import PARTITIONS_SUFFIX as MANIFEST_SUFFIX, first_segment, segments
from mesh.core.errors import LedgerError
from mesh.core.sharding import MAX_SHARDS, check_shards, shard_of

MANIFEST_FORMAT = "tollmesh.partitioned"
MANIFEST_VERSION = 1

__all__ = ["MANIFEST_FORMAT", "MANIFEST_SUFFIX", "create", "families", "manifest_path", "owner", "parquet_partitions",
           "partition_count", "partition_dir", "partition_path", "partitions"]


def ledger_name(ledger: Path | str) -> Path:
    """The name of the ledger given by ``ledger``: a file path (which need not exist), or a directory
    holding one ledger (a partitioned one's manifest, or one ledger's first file)."""
    ledger = Path(ledger)
    if not ledger.is_dir():
        return ledger
    manifests = sorted(ledger.glob("*" + MANIFEST_SUFFIX))
    if len(manifests) > 1:
        raise LedgerError(f"{ledger}: expected one ledger in the directory, found the manifests: "
                          + ", ".join(p.name for p in manifests))
    if manifests:
        return manifests[0].with_name(manifests[0].name.removesuffix(MANIFEST_SUFFIX) + ".jsonl")
    return first_segment(ledger)


def manifest_path(ledger: Path | str) -> Path:
    """Where the manifest of the ledger named ``ledger`` is (or would be)."""
    name = ledger_name(ledger)
    return name.with_name(name.stem + MANIFEST_SUFFIX)


def partition_dir(ledger: Path | str, partition: int) -> Path:
    """The directory of partition ``partition`` (``shard=K`` beside the ledger's name)."""
    return ledger_name(ledger).parent / f"shard={partition}"


def partition_path(ledger: Path | str, partition: int) -> Path:
    """The first file of partition ``partition`` of the ledger named ``ledger``."""
    name = ledger_name(ledger)
    return partition_dir(name, partition) / name.name


def partition_count(ledger: Path | str) -> Optional[int]:
    """How many partitions the ledger named ``ledger`` has; None if it is an ordinary ledger (no manifest).

    LedgerError if the manifest cannot be read or is not one, naming the file and what is wrong.
    """
    path = manifest_path(ledger)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):  # no manifest: an ordinary ledger (or none at all)
        return None
    except OSError as exc:
        raise LedgerError(f"cannot read the partition manifest {path}: {exc}") from exc
    try:
        manifest = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise LedgerError(f"{path}: the partition manifest is not JSON ({exc})") from None
    return _checked_manifest(path, manifest)


def _checked_manifest(path: Path, manifest: Any) -> int:
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise LedgerError(f"{path}: not a partition manifest (expected an object with format={MANIFEST_FORMAT!r})")
    if manifest.get("version") != MANIFEST_VERSION:
        raise LedgerError(f"{path}: partition manifest version {manifest.get('version')!r}; "
                          f"this tollmesh reads version {MANIFEST_VERSION}")
    count = manifest.get("partitions")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_SHARDS:
        raise LedgerError(f"{path}: partitions={count!r}: must be an int from 1 to {MAX_SHARDS}")
    return count


def partitions(ledger: Path | str) -> list[Path]:
    """The first file of each partition of the ledger named ``ledger``, in partition order; for an
    ordinary ledger, its one first file. LedgerError if a partitioned ledger also has a file of its
    own name (two ledgers under one name) or lacks a partition's file."""
    name = ledger_name(ledger)
    count = partition_count(name)
    if count is None:
        return [name]
    if name.exists():
        raise LedgerError(f"{name} and the partition manifest {manifest_path(name)} are both there: "
                          "two ledgers under one name")
    paths = [partition_path(name, k) for k in range(count)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise LedgerError(f"{manifest_path(name)} names {count} partitions, but these are missing: {', '.join(missing)}")
    return paths


def families(ledger: Path | str, *, missing_ok: bool = False) -> list[list[Path]]:
    """The files of each partition (:func:`ledger.files.segments`), or of the one ordinary ledger.

    ``missing_ok``: an ordinary ledger with no file yet gives ``[]`` rather than LedgerError (a
    partitioned ledger never does: its manifest says its files are there).
    """
    found = []
    for first in partitions(ledger):
        try:
            found.append(segments(first))
        except LedgerError:
            if not missing_ok or partition_count(ledger) is not None:
                raise
    return found


def is_partitioned(ledger: Path | str) -> bool:
    """Whether the ledger named ``ledger`` has a partition manifest."""
    return partition_count(ledger) is not None


def create(ledger: Path | str, count: int) -> None:
    """Make the ledger named ``ledger`` a partitioned one of ``count`` partitions (idempotent).

    Creates each partition's directory and (empty) first file, then the manifest, written to a
    temporary file, flushed and renamed into place, so that a crash leaves either no manifest
    (and nothing that reads as a ledger) or a whole one. LedgerError if the name already holds
    an ordinary ledger, or a manifest of another count.
    """
    check_shards(count)
    name = Path(ledger)
    existing = partition_count(name)
    if existing is not None:
        if existing != count:
            raise LedgerError(f"{manifest_path(name)}: the ledger has {existing} partitions, not {count}: "
                              "a partitioned ledger keeps its partitions (start a new ledger)")
        return
    if name.exists():
        raise LedgerError(f"{name}: an ordinary ledger is already there; it cannot become a partitioned one")
    for k in range(count):
        path = partition_path(name, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        _fsync_dir(path.parent)
    manifest = manifest_path(name)
    temporary = manifest.with_name(manifest.name + ".tmp")
    with temporary.open("wb") as f:
        f.write(orjson.dumps({"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "partitions": count}) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, manifest)
    _fsync_dir(manifest.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def owner(agent: str, count: int) -> int:
    """The partition that holds ``agent``'s account: its budget shard's."""
    return shard_of(agent, count)


def parquet_partitions(dataset: Path | str) -> list[Path]:
    """The dataset directories of a Parquet dataset: its ``shard=K`` directories in order if it is
    partitioned, else the dataset itself."""
    dataset = Path(dataset)
    shards = [(int(p.name.removeprefix("shard=")), p) for p in dataset.glob("shard=*")
              if p.is_dir() and p.name.removeprefix("shard=").isdigit()]
    return [p for _, p in sorted(shards)] or [dataset]
