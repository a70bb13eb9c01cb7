"""The ledger writer: every batch to JSONL (durable per the fsync policy), then to Parquet.

The JSONL is the truth and is written first; the same bytes feed the Parquet dataset,
which is derived: buffered into row groups, and brought up to the JSONL when a writer
opens it (:func:`ledger.catch_up.catch_up`), so the rows a crash lost are written then.

>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> writer = LedgerWriter(root / "toll_ledger.jsonl", parquet_dir=root / "parquet")
>>> writer.append([{"v": 1, "seq": None, "ts_us": 0, "kind": "deposit", "target_agent": "a", "amount_micros": 1}])
>>> writer.close()
>>> [p.parent.name for p in writer.parquet.files_written]
['day=1970-01-01']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ledger.catch_up import catch_up
from ledger.jsonl import FsyncPolicy, JsonlWriter
from ledger.parquet import DEFAULT_MAX_FILE_ROWS, DEFAULT_ROW_GROUP_EVENTS, ParquetLedgerWriter


class LedgerWriter:
    """One JSONL ledger family and, optionally, its Parquet dataset."""

    def __init__(
        self,
        jsonl_path: Path | str,
        *,
        parquet_dir: Optional[Path | str] = None,
        fsync: FsyncPolicy | str = FsyncPolicy.BATCH,
        max_segment_bytes: Optional[int] = None,
        rotate_daily: bool = False,
        row_group_events: int = DEFAULT_ROW_GROUP_EVENTS,
        max_file_rows: int = DEFAULT_MAX_FILE_ROWS,
        format_version: Optional[int] = None,
    ) -> None:
        self.jsonl = JsonlWriter(jsonl_path, fsync, max_segment_bytes=max_segment_bytes, rotate_daily=rotate_daily,
                                 format_version=format_version)
        self.parquet: Optional[ParquetLedgerWriter] = None
        if parquet_dir is not None:
            self.parquet = ParquetLedgerWriter(parquet_dir, row_group_events=row_group_events, max_file_rows=max_file_rows)
            # what a crash left unwritten (the buffer, the open files) comes again from the JSONL
            catch_up(self.parquet, jsonl_path, through_seq=self.jsonl.next_seq - 1)

    def append(self, events: list[dict[str, Any]]) -> None:
        """Append a batch: durable in JSONL when this returns; buffered for Parquet."""
        lines = self.jsonl.append(events)
        if self.parquet is not None and lines:
            self.parquet.append_lines(lines, len(events))

    def append_one(self, event: dict[str, Any]) -> None:
        """:meth:`append` for one event."""
        line = self.jsonl.append_one(event)
        if self.parquet is not None:
            self.parquet.append_lines(line, 1)

    def close(self) -> None:
        """Close the JSONL file and write out and close the Parquet files."""
        self.jsonl.close()
        if self.parquet is not None:
            self.parquet.close()
