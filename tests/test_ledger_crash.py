"""Crash consistency of the JSONL writer, proven, in both formats (v1: a hash per line; v2: a seal per batch).

* A ledger cut at every byte of its last events (a crash), its last newline dropped, garbage or NUL
  bytes appended after it (a power loss), reopens and goes on: verify passes, the seq runs on without
  a gap or a reuse, the chain runs on, and every event written whole before the cut is read back
  (in v2, every event of a batch written whole with its seal: a batch cut short is torn whole).
* An append that fails half-way (a full disk, a file size limit) leaves the ledger as it was: the
  next append goes on from the last acknowledged event, in the writer and in a live Tollbooth, whose
  reopened ledger replays to the live booth's state. If the file cannot be cut back, the writer
  refuses every later append, and reopening recovers as after a crash.
* One writer at a time holds a ledger (a lock naming its holder); a dead holder's lock is gone.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.jsonl
from ledger import JsonlWriter, read_events
from ledger.files import segments
from ledger.jsonl import encode_events
from ledger.verify import verify
from mesh import ManualClock, Tollbooth, TollboothConfig
from mesh.core.errors import LedgerError
from mesh.core.records import SettlementStatus

DAY_US = 86_400_000_000
START_US = 1_767_225_600_000_000  # 2026-01-01
START_S = START_US / 1_000_000
REPO = Path(__file__).resolve().parent.parent
FEW = min(settings.default.max_examples, 60)  # examples of the slower properties
FORMATS = pytest.mark.parametrize("format_version", [1, 2], ids=["v1", "v2"])


def deposit(marker: int, ts_us: int = START_US) -> dict[str, Any]:
    """A deposit event whose ``target_agent`` names it (``a<marker>``), to find it again."""
    return {"v": 1, "seq": None, "ts_us": ts_us, "kind": "deposit", "target_agent": f"a{marker}", "amount_micros": marker + 1}


def markers(path: Path) -> list[int]:
    return [int(e["target_agent"][1:]) for e in read_events(path).events if e["kind"] == "deposit"]


def append_batch(writer: JsonlWriter, batch: list[dict[str, Any]], way: int) -> None:
    """Append through each of the writer's ways in, by turns."""
    if way % 3 == 0:
        writer.append(batch)
    elif way % 3 == 1:
        writer.append_encoded(encode_events(batch))
    else:
        for event in batch:
            writer.append_one(event)


def write_ledger(path: Path, batch_sizes: list[int], *, max_segment_bytes: Optional[int], fsync: str = "never",
                 format_version: int = 2) -> list[int]:
    """A ledger of deposit batches (rotated by size); the markers written, in order."""
    writer = JsonlWriter(path, fsync, max_segment_bytes=max_segment_bytes, format_version=format_version)
    written: list[int] = []
    for way, size in enumerate(batch_sizes):
        batch = [deposit(len(written) + n) for n in range(size)]
        append_batch(writer, batch, way)
        written.extend(range(len(written), len(written) + size))
    writer.close()
    return written


def line_ends(data: bytes) -> list[tuple[int, int]]:
    """(end without its newline, end with it) of each whole line of a file's bytes."""
    ends, start = [], 0
    while (newline := data.find(b"\n", start)) >= 0:
        ends.append((newline, newline + 1))
        start = newline + 1
    return ends


def ends_a_batch(data: bytes, end: tuple[int, int]) -> bool:
    """Whether the line ending at ``end`` is a v1 line or a v2 batch's last (its events count once it is whole)."""
    return data[:end[0]].endswith(b'"}') and data[max(0, end[0] - 43):end[0] - 34] in (b',"hash":"', b',"seal":"')


def assert_ledger_goes_on(path: Path, survivors: list[int], torn_bytes: int, *, twice: bool = True) -> None:
    """Reopen the ledger and write on (``twice``: and again): verify passes, seqs run 0..n-1, the
    survivors come first, then what was written after, and one recover event names the torn bytes."""
    before = read_events(path)
    writer = JsonlWriter(path, max_segment_bytes=700)  # in the ledger's own format
    assert writer.next_seq == len(before.events) + (1 if torn_bytes else 0)  # reader and writer agree on the end
    writer.append([deposit(10_000), deposit(10_001)])
    writer.append_one(deposit(10_002))
    writer.close()
    after = [10_000, 10_001, 10_002]
    if twice:
        writer = JsonlWriter(path, max_segment_bytes=700)
        writer.append([deposit(10_003)])
        writer.close()
        after.append(10_003)
    result = verify(path)
    assert result.ok, [str(p) for p in result.problems]
    events = read_events(path).events
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert [int(e["target_agent"][1:]) for e in events if e["kind"] == "deposit"] == survivors + after
    recovers = [e for e in events if e["kind"] == "recover"]
    assert [e["torn_bytes"] for e in recovers] == ([torn_bytes] if torn_bytes else [])


class Layout:
    """A written ledger's files, to cut its last one again and again."""

    def __init__(self, path: Path, written: list[int]) -> None:
        self.path = path
        self.files = segments(path)
        self.last = self.files[-1].read_bytes()
        self.earlier = sum(1 for f in self.files[:-1] for line in f.read_bytes().splitlines())
        self.written = written

    def restore(self, last_bytes: bytes) -> None:
        for extra in segments(self.path)[len(self.files):]:
            extra.unlink()
        self.files[-1].unlink()  # a new file (ext4 makes a file truncated and rewritten wait for the disk)
        self.files[-1].write_bytes(last_bytes)

    def check_cut(self, cut: int, junk: bytes = b"", *, twice: bool = False) -> None:
        """Cut the last file at ``cut``, append ``junk`` (no JSON: what a power loss leaves), go on."""
        self.restore(self.last[:cut] + junk)
        ends = line_ends(self.last)
        whole = [end for end in ends if (end[0] if not junk else end[1]) <= cut]  # junk glues onto a line without its newline
        while whole and not ends_a_batch(self.last, whole[-1]):  # v2: lines of a batch whose seal is cut count not
            whole.pop()
        survivors = self.written[: self.earlier + len(whole)]
        kept = whole[-1][1] if whole else 0
        torn = max(0, cut - kept) + len(junk)
        if not junk and whole and whole[-1][0] == cut:
            torn = 0  # the last event lost only its newline: it is whole, the writer adds the newline
        assert_ledger_goes_on(self.path, survivors, torn, twice=twice)


@pytest.mark.parametrize(("format_version", "batch_sizes", "max_segment_bytes"),
                         [(1, [3, 1, 4, 2, 3, 3], 1_000), (2, [3, 1, 4, 2, 3, 3, 4], 1_300)], ids=["v1", "v2"])
def test_a_cut_at_every_byte_of_the_last_events_loses_only_what_was_not_written(tmp_path, format_version, batch_sizes,
                                                                                  max_segment_bytes):
    """Every offset within the last three events (of a rotated ledger; in v2, of its last batch, of four):
    cut there (at its last byte: the last newline dropped), cut there and add NULs; and garbage after each
    of their lines."""
    path = tmp_path / "toll_ledger.jsonl"
    layout = Layout(path, write_ledger(path, batch_sizes, max_segment_bytes=max_segment_bytes, format_version=format_version))
    ends = line_ends(layout.last)
    assert len(layout.files) > 1 and len(ends) > 4
    assert [ends_a_batch(layout.last, end) for end in ends[-4:]] == ([True] * 4 if format_version == 1 else [False] * 3 + [True])
    first = ends[-4][1]
    for cut in range(first, len(layout.last) + 1):
        layout.check_cut(cut, twice=cut == len(layout.last) - 1)
        layout.check_cut(cut, b"\x00" * 37)  # a power loss: the file grew, its data never came
    for _, after_line in [(0, first), *ends[-3:]]:
        layout.check_cut(after_line, b"\xffgarbage\n\xfe\x00more\n\xff", twice=True)  # several lines of it
        layout.check_cut(after_line, b"\xff\n")


@FORMATS
@pytest.mark.parametrize("max_segment_bytes", [None, 700])
@pytest.mark.parametrize("last_batch", [1, 3])
def test_a_last_file_with_nothing_whole_continues_the_file_before(tmp_path, max_segment_bytes, format_version, last_batch):
    """The rotation just began a file, and the crash tore its first line (or batch; or left it empty)."""
    path = tmp_path / "toll_ledger.jsonl"
    written = write_ledger(path, [3, 3], max_segment_bytes=max_segment_bytes, format_version=format_version)
    writer = JsonlWriter(path, max_segment_bytes=1)  # every batch starts a file
    writer.append([deposit(len(written) + n) for n in range(last_batch)])
    writer.close()
    layout = Layout(path, [*written, *range(len(written), len(written) + last_batch)])
    assert layout.last.count(b"\n") == last_batch
    for cut in range(len(layout.last) + 1):
        layout.check_cut(cut, twice=cut in (0, len(layout.last) - 1))
        layout.check_cut(cut, b"\x00" * 5)


garbage_lines = st.lists(st.binary(max_size=40).map(lambda b: b"\xff" + b.replace(b"\n", b"")), min_size=1, max_size=4)
junk = st.one_of(
    st.just(b""),
    st.integers(1, 5_000).map(lambda n: b"\x00" * n),
    st.tuples(garbage_lines, st.booleans()).map(lambda t: b"\n".join(t[0]) + (b"\n" if t[1] else b"")),
)


@settings(max_examples=FEW, deadline=None)
@given(
    batch_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=6),
    max_segment_bytes=st.none() | st.integers(200, 2_000),
    fsync=st.sampled_from(["never", "batch", "always"]),
    cut_fraction=st.floats(0, 1),
    junk=junk,
    format_version=st.sampled_from([1, 2]),
)
def test_any_cut_and_any_junk_after_any_ledger(batch_sizes, max_segment_bytes, fsync, cut_fraction, junk, format_version):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "toll_ledger.jsonl"
        layout = Layout(path, write_ledger(path, batch_sizes, max_segment_bytes=max_segment_bytes, fsync=fsync,
                                           format_version=format_version))
        layout.check_cut(round(cut_fraction * len(layout.last)), junk, twice=True)


# -- failed writes ----------------------------------------------------------------------


class FailingOs:
    """``os`` for ledger.jsonl, whose writes fail once ``budget`` bytes more are written: the write that
    crosses it writes up to it (a short write), the next raises ``error`` (ENOSPC: a full disk)."""

    def __init__(self, budget: Optional[int] = None, *, error: int = errno.ENOSPC, fail_fsync: int = 0,
                 fail_truncate: bool = False) -> None:
        self.budget, self.error, self.fail_fsync, self.fail_truncate = budget, error, fail_fsync, fail_truncate
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.budget is None or len(data) <= self.budget:
            if self.budget is not None:
                self.budget -= len(data)
            return os.write(fd, data)
        if self.budget > 0:
            written = os.write(fd, bytes(data[: self.budget]))
            self.budget = 0
            return written
        self.failures += 1
        raise OSError(self.error, os.strerror(self.error))

    def fsync(self, fd: int) -> None:
        if self.fail_fsync:  # the first ``fail_fsync`` ones fail
            self.fail_fsync -= 1
            self.failures += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        if self.fail_truncate:
            raise OSError(errno.EIO, "the disk is gone")
        os.ftruncate(fd, size)


def ledger_bytes(path: Path) -> list[bytes]:
    return [f.read_bytes() for f in segments(path)] if path.exists() else []


@FORMATS
@pytest.mark.parametrize("fsync", ["never", "batch", "always"])
@pytest.mark.parametrize("way", [0, 1, 2])
def test_a_short_write_leaves_the_ledger_as_it_was(tmp_path, monkeypatch, fsync, way, format_version):
    path = tmp_path / "toll_ledger.jsonl"
    writer = JsonlWriter(path, fsync, format_version=format_version)
    writer.append([deposit(0), deposit(1)])
    before, seq, chain = ledger_bytes(path), writer.next_seq, writer.last_hash
    batch = [deposit(100)] if way == 2 else [deposit(100), deposit(101), deposit(102)]  # way 2: an append per event
    for budget in (0, 1, 60, 100) if way == 2 else (0, 1, 60, 150, 300):  # nothing, a byte, part of a line, a line and part of the next
        monkeypatch.setattr(ledger.jsonl, "os", FailingOs(budget))
        with pytest.raises(LedgerError, match=r"cannot append to ledger .*toll_ledger\.jsonl: .*No space left.*as it was before"):
            append_batch(writer, batch, way)
        monkeypatch.setattr(ledger.jsonl, "os", os)
        assert ledger_bytes(path) == before and (writer.next_seq, writer.last_hash) == (seq, chain)
    writer.append([deposit(2)])
    writer.close()
    assert verify(path).ok and markers(path) == [0, 1, 2]


@FORMATS
def test_a_failed_fsync_undoes_the_batch_too(tmp_path, monkeypatch, format_version):
    path = tmp_path / "toll_ledger.jsonl"
    writer = JsonlWriter(path, "batch", format_version=format_version)
    writer.append([deposit(0)])
    before = ledger_bytes(path)
    monkeypatch.setattr(ledger.jsonl, "os", FailingOs(fail_fsync=1))
    with pytest.raises(LedgerError, match="cannot append to ledger .*Input/output error.*as it was before this batch"):
        writer.append([deposit(1)])
    monkeypatch.setattr(ledger.jsonl, "os", os)
    assert ledger_bytes(path) == before
    writer.append([deposit(2)])
    monkeypatch.setattr(ledger.jsonl, "os", FailingOs(fail_fsync=2))  # nor can the cut be made durable: it stops
    with pytest.raises(LedgerError, match="refuses appends: an append failed .*Input/output error"):
        writer.append([deposit(3)])
    monkeypatch.setattr(ledger.jsonl, "os", os)
    with pytest.raises(LedgerError, match="refuses appends"):
        writer.append([deposit(4)])
    writer.close()
    assert verify(path).ok and markers(path) == [0, 2]


@FORMATS
@pytest.mark.parametrize("encoded", [False, True])
def test_a_batch_of_several_days_that_fails_on_a_later_day_is_undone_whole(tmp_path, monkeypatch, encoded, format_version):
    """A daily-rotated ledger writes a batch a day at a time, in a file a day: a failure on the second
    day undoes the first day's lines and drops the file the batch began."""
    path = tmp_path / "toll_ledger.jsonl"
    writer = JsonlWriter(path, "batch", rotate_daily=True, format_version=format_version)
    writer.append([deposit(0)])
    before, seq = ledger_bytes(path), writer.next_seq
    batch = [deposit(1, START_US + DAY_US), deposit(2, START_US + DAY_US), deposit(3, START_US + 2 * DAY_US)]
    scratch = JsonlWriter(tmp_path / "scratch" / "l.jsonl", format_version=format_version)
    one_day_bytes = len(scratch.append([dict(e) for e in batch[:2]]))  # seqs of as many digits: as long
    scratch.close()
    monkeypatch.setattr(ledger.jsonl, "os", FailingOs(one_day_bytes + 10))
    with pytest.raises(LedgerError, match="No space left"):
        writer.append_encoded(encode_events(batch)) if encoded else writer.append(batch)
    monkeypatch.setattr(ledger.jsonl, "os", os)
    assert ledger_bytes(path) == before and writer.next_seq == seq
    writer.append([deposit(4, START_US + DAY_US)])
    writer.close()
    assert verify(path).ok and markers(path) == [0, 4] and len(segments(path)) == 2


@FORMATS
def test_a_write_that_cannot_be_undone_stops_the_writer_and_reopening_recovers(tmp_path, monkeypatch, format_version):
    path = tmp_path / "toll_ledger.jsonl"
    writer = JsonlWriter(path, "batch", format_version=format_version)
    writer.append([deposit(0), deposit(1)])
    monkeypatch.setattr(ledger.jsonl, "os", FailingOs(250, fail_truncate=True))
    with pytest.raises(LedgerError, match=r"toll_ledger\.jsonl refuses appends: an append failed .*No space left.* cutting the file back to \d+ bytes failed too .*the disk is gone"):
        writer.append([deposit(2), deposit(3), deposit(4)])
    monkeypatch.setattr(ledger.jsonl, "os", os)
    for _ in range(2):  # every later append is refused, with the first error
        with pytest.raises(LedgerError, match="refuses appends: an append failed .*No space left"):
            writer.append_one(deposit(5))
    writer.close()
    writer = JsonlWriter(path, "batch")  # as after a crash: the whole lines of the batch count, the rest is torn
    writer.append([deposit(6)])
    writer.close()
    assert verify(path).ok
    assert markers(path) in ([0, 1, 6], [0, 1, 2, 6], [0, 1, 2, 3, 6]) if format_version == 1 else markers(path) == [0, 1, 6]
    assert [e["kind"] for e in read_events(path).events].count("recover") == 1


@FORMATS
def test_the_recover_event_written_on_reopening_is_undone_if_it_fails(tmp_path, monkeypatch, format_version):
    path = tmp_path / "toll_ledger.jsonl"
    write_ledger(path, [3], max_segment_bytes=None, format_version=format_version)
    with open(path, "ab") as f:
        f.write(b'{"v":1,"seq":3,"ts_us":')  # the crash
    before = ledger_bytes(path)
    for budget in (0, 1, 30):
        monkeypatch.setattr(ledger.jsonl, "os", FailingOs(budget))
        with pytest.raises(LedgerError, match="No space left"):
            JsonlWriter(path)
        monkeypatch.setattr(ledger.jsonl, "os", os)
        assert ledger_bytes(path) == before
    assert_ledger_goes_on(path, [0, 1, 2], torn_bytes=len(b'{"v":1,"seq":3,"ts_us":'))


@settings(max_examples=FEW, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 2), st.integers(0, 2), st.none() | st.integers(0, 1_500)), min_size=1, max_size=8),
    fsync=st.sampled_from(["never", "batch", "always"]),
    max_segment_bytes=st.none() | st.integers(300, 1_500),
    rotate_daily=st.booleans(),
    format_version=st.sampled_from([1, 2]),
)
def test_the_ledger_holds_exactly_the_acknowledged_events_whatever_fails(steps, fsync, max_segment_bytes, rotate_daily,
                                                                         format_version):
    """Batches of random days through random ways in, some failing after a random number of bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "toll_ledger.jsonl"
        writer = JsonlWriter(path, fsync, max_segment_bytes=max_segment_bytes, rotate_daily=rotate_daily,
                             format_version=format_version)
        acknowledged: list[int] = []
        for number, (size, way, days, budget) in enumerate(steps):
            batch = [deposit(100 * number + n, START_US + DAY_US * (number + min(n, days))) for n in range(size)]
            ledger.jsonl.os = FailingOs(budget)
            try:  # way 2 appends event by event: each is acknowledged on its own
                for unit in ([[e] for e in batch] if way == 2 else [batch]):
                    append_batch(writer, unit, way)
                    acknowledged.extend(int(e["target_agent"][1:]) for e in unit)
            except LedgerError:
                pass
            finally:
                ledger.jsonl.os = os
        writer.close()
        assert verify(path).ok and markers(path) == acknowledged
        assert_ledger_goes_on(path, acknowledged, torn_bytes=0)


# -- a live booth -----------------------------------------------------------------------


def booth_config(path: Path, **extra: Any) -> TollboothConfig:
    return TollboothConfig(ledger_path=path, paper_mode=False, max_daily_toll_per_agent=None, **extra)


def assert_reopened_booth_replays_the_live_one(path: Path, live: Tollbooth, clock: ManualClock) -> None:
    state = live.snapshot()
    live.close()
    result = verify(path)
    assert result.ok, [str(p) for p in result.problems]
    reopened = Tollbooth(live.config, clock=clock)
    assert reopened.snapshot() == state
    reopened.close()


@FORMATS
@pytest.mark.parametrize("budget", [0, 1, 120])
@pytest.mark.parametrize("fsync", ["never", "always"])
def test_a_failed_write_in_a_live_booth_fails_that_charge_alone(tmp_path, monkeypatch, budget, fsync, format_version):
    path, clock = tmp_path / "toll_ledger.jsonl", ManualClock(START_S)
    booth = Tollbooth(booth_config(path, ledger_fsync=fsync, ledger_format=format_version), clock=clock)
    booth.charge_sync("t1", "alice", "bob")
    monkeypatch.setattr(ledger.jsonl, "os", FailingOs(budget))
    with pytest.raises(LedgerError, match="No space left"):
        booth.charge_sync("t2", "alice", "bob")
    monkeypatch.setattr(ledger.jsonl, "os", os)
    assert booth.get_record("t2") is None  # journaled first: the charge did not happen
    assert booth.charge_sync("t3", "alice", "bob").status is SettlementStatus.ESCROW_LOCKED  # acknowledged
    assert booth.release_sync("t1").status is SettlementStatus.RELEASED
    assert [e["task_id"] for e in read_events(path).events] == ["t1", "t3", "t1"]
    assert_reopened_booth_replays_the_live_one(path, booth, clock)


@settings(max_examples=FEW, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["charge", "release", "refund"]), st.integers(0, 5), st.none() | st.integers(0, 400)), min_size=1, max_size=12),
       st.sampled_from([1, 2]))
def test_a_live_booth_whose_writes_fail_at_random_replays_to_its_own_state(operations, format_version):
    with tempfile.TemporaryDirectory() as tmp:
        path, clock = Path(tmp) / "toll_ledger.jsonl", ManualClock(START_S)
        booth = Tollbooth(booth_config(path, track_balances=True, ledger_format=format_version), clock=clock)
        booth.deposit("alice", 1)
        for operation, task, budget in operations:
            ledger.jsonl.os = FailingOs(budget)
            try:
                if operation == "charge":
                    booth.charge_sync(f"t{task}", "alice", "bob")
                else:
                    getattr(booth, f"{operation}_sync")(f"t{task}")
            except LedgerError:
                pass
            finally:
                ledger.jsonl.os = os
        assert_reopened_booth_replays_the_live_one(path, booth, clock)


RLIMIT_CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    from pathlib import Path
    from mesh import ManualClock, Tollbooth, TollboothConfig
    from mesh.core.errors import LedgerError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG (Python's default too)
    path = Path(sys.argv[1])
    config = TollboothConfig(ledger_path=path, paper_mode=False, max_daily_toll_per_agent=None,
                             ledger_fsync=sys.argv[2], ledger_format=int(sys.argv[4]))
    booth = Tollbooth(config, clock=ManualClock(float(sys.argv[3])))
    for n in range(5):
        booth.charge_sync(f"t{n}", "alice", "bob")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    size_before = path.stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size_before + 100, hard))  # room for part of a line
    try:
        booth.charge_sync("t-full", "alice", "bob")
        error = None
    except LedgerError as exc:
        error = str(exc)
    size_after_failure = path.stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again
    status = booth.charge_sync("t-next", "alice", "bob").status.value
    booth.release_sync("t0")
    print(json.dumps({"error": error, "cut_back": size_after_failure == size_before, "status": status,
                      "snapshot": booth.snapshot()}, default=str))
    booth.close()
    """
)


@FORMATS
@pytest.mark.parametrize("fsync", ["never", "batch"])
def test_a_file_size_limit_in_a_live_booth_fails_that_charge_alone(tmp_path, fsync, format_version):
    """A real short write: RLIMIT_FSIZE just above the file's size, in a process of its own."""
    path = tmp_path / "toll_ledger.jsonl"
    child = subprocess.run([sys.executable, "-c", RLIMIT_CHILD, str(path), fsync, str(START_S), str(format_version)],
                           capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
    report = json.loads(child.stdout)
    assert "File too large" in report["error"] and report["cut_back"] and report["status"] == "escrow_locked"
    events = read_events(path).events
    assert [e["task_id"] for e in events] == ["t0", "t1", "t2", "t3", "t4", "t-next", "t0"]
    result = verify(path)
    assert result.ok, [str(p) for p in result.problems]
    reopened = Tollbooth(booth_config(path), clock=ManualClock(START_S))
    assert json.loads(json.dumps(reopened.snapshot(), default=str)) == report["snapshot"]
    reopened.close()


# -- one writer at a time ---------------------------------------------------------------


HOLDER_CHILD = textwrap.dedent(
    """
    import sys, time
    from ledger import JsonlWriter
    writer = JsonlWriter(sys.argv[1])
    writer.append([{"v": 1, "seq": None, "ts_us": 0, "kind": "deposit", "target_agent": "child", "amount_micros": 1}])
    print("holding", flush=True)
    sys.stdin.readline()  # until told to let go (or killed)
    time.sleep(float(sys.argv[2]))
    writer.close()
    """
)


def start_holder(path: Path, linger_s: float = 0.0) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_CHILD, str(path), str(linger_s)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "holding\n"
    return holder


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    path = tmp_path / "toll_ledger.jsonl"
    first = JsonlWriter(path)
    holder = f"holder: pid {os.getpid()} on host {socket.gethostname()}"
    with pytest.raises(LedgerError, match=rf"toll_ledger\.jsonl is being written by another process \(it holds toll_ledger\.jsonl\.lock\); waited 0\.2 s; {holder}"):
        JsonlWriter(path, lock_timeout_s=0.2)
    first.close()  # closing lets it go
    JsonlWriter(path, lock_timeout_s=0).close()
    for bad in (-1, float("nan"), float("inf"), "5", True):
        with pytest.raises(LedgerError, match="lock_timeout_s=.*must be a finite number of seconds"):
            JsonlWriter(path, lock_timeout_s=bad)


def test_a_writer_in_another_process_holds_the_ledger_until_it_dies(tmp_path):
    path = tmp_path / "toll_ledger.jsonl"
    holder = start_holder(path)
    try:
        with pytest.raises(LedgerError, match=rf"waited 0\.2 s; holder: pid {holder.pid} on host"):
            JsonlWriter(path, lock_timeout_s=0.2)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    writer = JsonlWriter(path, lock_timeout_s=0)  # the dead process's lock is gone
    writer.append([deposit(0)])
    writer.close()
    assert verify(path).ok and [e["target_agent"] for e in read_events(path).events] == ["child", "a0"]


def test_a_new_writer_waits_for_an_old_one_that_is_still_closing(tmp_path):
    """As a restarted writer actor does while the old process lives on briefly."""
    path = tmp_path / "toll_ledger.jsonl"
    holder = start_holder(path, linger_s=0.3)
    holder.stdin.write("let go\n")
    holder.stdin.flush()
    started = time.monotonic()
    writer = JsonlWriter(path, lock_timeout_s=30)
    assert writer.next_seq == 1
    writer.close()
    assert holder.wait(timeout=30) == 0 and time.monotonic() - started < 30


def test_two_booths_on_one_ledger_cannot_interleave(tmp_path, monkeypatch):
    path = tmp_path / "toll_ledger.jsonl"
    holder = start_holder(path)
    monkeypatch.setattr(ledger.jsonl, "DEFAULT_LOCK_TIMEOUT_S", 0.2)
    try:
        with pytest.raises(LedgerError, match=rf"being written by another process .*holder: pid {holder.pid}"):
            Tollbooth(booth_config(path, track_balances=True), clock=ManualClock(START_S))
    finally:
        holder.stdin.write("let go\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    booth = Tollbooth(booth_config(path, track_balances=True), clock=ManualClock(START_S))  # the holder deposited
    booth.deposit("alice", 1)
    assert booth.charge_sync("t1", "alice", "bob").status is SettlementStatus.ESCROW_LOCKED
    booth.close()
    assert verify(path).ok and [e["kind"] for e in read_events(path).events] == ["deposit", "deposit", "lock"]
