"""``ledger verify``: one pass over a JSONL ledger that reports every problem, never crashing.

Checks, line by line across all files: JSON and schema (:class:`~ledger.schema.LedgerEvent`);
the sequence (a gap or a step back means a dropped, inserted or reordered line); the hash
chain of a v1 ledger (a changed line, or one dropped or inserted before it), the seals of a
v2 ledger (a batch whose bytes changed, named by its seqs and lines, see :mod:`ledger.seal`;
a line of it that is no event, or out of sequence, is named by its line); amounts (``amount_usd``
agrees with ``amount_micros``); legal transitions (no release without a lock, no second
settlement, a settlement of the locked amount between the locked agents, the status each
kind implies); an x402 payment (a signed authorization, see :mod:`ledger.payments`) spent
by one call only, never by two; and, replaying through the core, caps and conservation of balances.
A torn line left by a crash is a warning, not a problem. A file none of whose first
:data:`NOT_A_LEDGER_PROBE_LINES` lines is a tollmesh event is not read further: the result
says it is not a tollmesh ledger (``not_a_ledger`` tells why), rather than list every line.

>>> import tempfile, pathlib
>>> from ledger.jsonl import JsonlWriter
>>> path = pathlib.Path(tempfile.mkdtemp()) / "l.jsonl"
>>> w = JsonlWriter(path)
>>> _ = w.append([{"v": 1, "seq": None, "ts_us": 0, "kind": "release", "task_id": "t1", "status": "released"}])
>>> w.close()
>>> [p.message for p in verify(path).problems]
['release of task_id=t1 that is not locked (state: none)']
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import orjson
from pydantic import ValidationError

from ledger.credits import CreditMatch, Transfer
from ledger.files import segments
from ledger.partitions import families, manifest_path, owner, partition_count, partitions
from ledger.jsonl import chain_hash, line_body
from ledger.payments import PaymentKey, payment_of
from ledger.reader import RawLine, event_lines, iter_lines
from ledger.replay import PartitionedReplay, apply_event, partition_book, snapshot
from ledger.schema import GENESIS_HASH, LedgerEvent
from ledger.seal import SEAL_MAX_LINES, batch_body, seal_digest, split_seal
from mesh.core.budget import BudgetBook
from mesh.core.errors import LedgerError
from mesh.core.escrow import EscrowBook
from mesh.core.money import MICROS_PER_USD

_STATUS_OF_KIND = {
    "lock": "escrow_locked", "paper_release": "released", "release": "released", "refund": "refunded",
    "expire": "refunded", "reject": "failed", "pending": "pending",
}
_OPENING_KINDS = {"lock", "paper_release", "reject", "pending"}
#: Lines read before a file without one tollmesh event is called no tollmesh ledger (and read no further).
NOT_A_LEDGER_PROBE_LINES = 1_000
_SETTLING_KINDS = {"release", "refund", "expire"}


@dataclass
class Finding:
    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class VerifyResult:
    files: list[Path]
    events: int = 0
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    open_escrows: int = 0
    state: Optional[dict[str, Any]] = None  # the replayed state, when asked for (see verify)
    not_a_ledger: Optional[str] = None  # why the file is no tollmesh ledger at all, or None
    partition_events: list[int] = field(default_factory=list)  # the events of each partition (of an ordinary ledger: one)

    @property
    def ok(self) -> bool:
        return not self.problems and self.not_a_ledger is None


class LedgerVerifyError(LedgerError):
    """A ledger that fails ``ledger verify``, so a tool that would act on it (``settle``) refuses; see ``result``."""

    def __init__(self, ledger: Path | str, result: VerifyResult) -> None:
        self.result = result
        count = len(result.problems)
        super().__init__(f"{ledger}: the ledger fails verify ({count} problem{'s' if count != 1 else ''}; "
                         f"the first: {result.problems[0]}): nothing done; `tollmesh ledger verify` lists them all")


@dataclass
class _TaskState:
    status: str
    amount_micros: int
    source_agent: str
    target_agent: str


class _At(NamedTuple):
    """A line of a ledger file, as a credit's problems name it."""

    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}:{self.line}"


@dataclass
class _Partition:
    """Which partition of a partitioned ledger a verifier reads, and what the partitions share."""

    index: int
    count: int
    credits: CreditMatch


class _Verifier:
    """Checks one ledger family: an ordinary ledger, or one partition of a partitioned one (then
    ``result``, ``tasks`` and ``payments`` are the whole ledger's, shared by its partitions' verifiers)."""

    def __init__(self, files: list[Path], *, result: Optional[VerifyResult] = None,
                 tasks: Optional[dict[str, "_TaskState"]] = None, payments: Optional[dict] = None,
                 partition: Optional[_Partition] = None) -> None:
        self.result = result if result is not None else VerifyResult(files)
        self.partition = partition
        self.expected_seq = 0
        self.previous_hash = GENESIS_HASH
        self.tasks: dict[str, _TaskState] = tasks if tasks is not None else {}
        # Balances are tracked from the first deposit on: a booth with balances rejects every lock
        # before its first deposit, and a booth without balances writes no deposits.
        self.book = (EscrowBook(BudgetBook(default_cap_micros=None, track_balances=False), escrow_timeout_s=None)
                     if partition is None else partition_book(partition.index, partition.count))
        self.replay_broken = False
        self.locked_any = False
        self.format_version: Optional[int] = None  # of the last event
        # this file's lines since the last batch ended, as (line number, bytes, seq or None): what a seal covers
        self.unsealed: deque[tuple[int, bytes, Any]] = deque(maxlen=SEAL_MAX_LINES)
        self.path: Optional[Path] = None
        # what each spent payment paid for, and where
        self.payments: dict[PaymentKey, tuple[str, Path, int]] = payments if payments is not None else {}

    def see(self, line: RawLine) -> None:
        """Check the next line of the ledger (each, in order): an event, a torn line (a warning), or a problem."""
        if line.path is not self.path and line.path != self.path:
            self.path = line.path
            self.unsealed.clear()
        if line.event is None:
            if line.torn:
                self.result.warnings.append(Finding(line.path, line.line_no, f"torn line after a crash, tolerated ({line.problem})"))
            else:
                self.problem(line.path, line.line_no, line.problem)
            self.unsealed.append((line.line_no, line.raw, None))  # its bytes are its batch's, if a seal comes
            return
        self.check_line(line.path, line.line_no, line.raw, line.event)
        if line.event["v"] == 1 or "seal" in line.event:
            self.unsealed.clear()
        else:
            self.unsealed.append((line.line_no, line.raw, line.event.get("seq")))

    def problem(self, path: Path, line: int, message: str) -> None:
        self.result.problems.append(Finding(path, line, message))

    def check_line(self, path: Path, line_no: int, raw: bytes, event: dict[str, Any]) -> None:
        self.result.events += 1
        problems_before = len(self.result.problems)
        self._check_schema(path, line_no, event)
        self._check_sequence(path, line_no, event)
        self._check_format(path, line_no, event)
        if event["v"] == 1:
            self._check_chain(path, line_no, raw)
        elif "seal" in event:
            self._check_seal(path, line_no, raw, event)
        kind = event.get("kind")
        if kind in _STATUS_OF_KIND:
            self._check_amount(path, line_no, event)
            self._check_transition(path, line_no, event)
            if event.get("tx_signature") and kind in _OPENING_KINDS:
                self._check_payment(path, line_no, event)
        if kind == "credit":
            self._check_credit(path, line_no, event)
        if self.partition is not None:
            self._check_owner(path, line_no, event)
        if len(self.result.problems) > problems_before and not self.replay_broken:
            self.replay_broken = True
            self.result.warnings.append(Finding(path, line_no, "replay through the core stops at this bad line"))
        self._replay(path, line_no, event)
        if self.partition is not None and kind in ("release", "paper_release"):
            self._note_sent(path, line_no, event)

    def _check_schema(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        try:
            LedgerEvent.model_validate(event)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            self.problem(path, line_no, f"does not match the event schema ({fields})")

    def _check_sequence(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        seq = event.get("seq")
        if not isinstance(seq, int):
            return
        if seq != self.expected_seq:
            self.problem(path, line_no, f"seq {seq} where {self.expected_seq} was expected: a line was dropped, inserted or reordered")
        self.expected_seq = seq + 1

    def _check_chain(self, path: Path, line_no: int, raw: bytes) -> None:
        try:
            body, stored = line_body(raw)
        except ValueError as exc:
            self.problem(path, line_no, str(exc))
            return
        if chain_hash(self.previous_hash, body) != stored:
            self.problem(path, line_no, "hash chain broken: this line was changed, or a line before it dropped or inserted")
        self.previous_hash = stored

    def _check_format(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        version = event["v"]
        if self.format_version is not None and version != self.format_version:
            self.problem(path, line_no, f"a v{version} line after v{self.format_version} lines: a ledger is written in one format")
        self.format_version = version
        if version == 2 and event.get("hash") is not None:
            self.problem(path, line_no, "a v2 line with a hash field: v2 seals batches (the seal is on a batch's last line)")
        elif version == 1 and any(event.get(name) is not None for name in ("seal", "lines", "first_seq")):
            self.problem(path, line_no, "a v1 line with a v2 seal's fields: v1 chains each line by its hash")

    def _check_seal(self, path: Path, line_no: int, raw: bytes, event: dict[str, Any]) -> None:
        """The seal of the batch this line ends: its fields, then the digest of the batch's bytes."""
        seq, first_seq, count = event.get("seq"), event.get("first_seq"), event.get("lines")
        if not _is_count(count) or count > SEAL_MAX_LINES:
            self.problem(path, line_no, f"a seal of lines={count!r}: a batch holds 1 to {SEAL_MAX_LINES} lines")
            count = 1
        if isinstance(seq, int) and not isinstance(seq, bool) and first_seq != seq - count + 1:
            self.problem(path, line_no, f"a seal of first_seq={first_seq!r} and lines={count} on seq {seq}: "
                                        f"first_seq must be {seq - count + 1}")
        before = list(self.unsealed)[len(self.unsealed) - (count - 1):] if count > 1 else []
        if len(before) < count - 1:
            self.problem(path, line_no, f"a seal of {count} lines with only {len(before)} lines before it in its file: "
                                        "lines of its batch were dropped")
        try:
            _, stored = split_seal(raw)
        except ValueError as exc:
            self.problem(path, line_no, str(exc))
            return
        if seal_digest(self.previous_hash, batch_body([line[1] for line in before], raw)) != stored:
            first_line = before[0][0] if before else line_no
            first = before[0][2] if before and before[0][2] is not None else first_seq
            self.problem(path, first_line, f"seal broken: the batch of seq {first}..{seq} (lines {first_line}-{line_no}) "
                                           "was changed (a line of it changed, dropped or inserted), or a batch before it dropped or inserted")
        self.previous_hash = stored

    def _check_amount(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        micros, usd = event.get("amount_micros"), event.get("amount_usd")
        if isinstance(micros, int) and isinstance(usd, (int, float)) and usd != micros / MICROS_PER_USD:
            self.problem(path, line_no, f"amount_usd={usd} disagrees with amount_micros={micros}")

    def _check_transition(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        kind, task_id = event["kind"], event.get("task_id")
        expected_status = _STATUS_OF_KIND[kind]
        if event.get("status") != expected_status:
            self.problem(path, line_no, f"{kind} with status {event.get('status')!r}, expected {expected_status!r}")
        state = self.tasks.get(task_id)
        if kind in _OPENING_KINDS:
            if state is not None and state.status != "pending":
                self.problem(path, line_no, f"{kind} of task_id={task_id} that is already {state.status}: one task id, one escrow")
                return
            self.tasks[task_id] = _TaskState(expected_status, event.get("amount_micros"), event.get("source_agent"), event.get("target_agent"))
            return
        if state is None or state.status != "escrow_locked":
            settled = "none" if state is None else state.status
            self.problem(path, line_no, f"{kind} of task_id={task_id} that is not locked (state: {settled})")
            return
        same = (event.get("amount_micros"), event.get("source_agent"), event.get("target_agent"))
        if same != (state.amount_micros, state.source_agent, state.target_agent):
            self.problem(path, line_no, f"{kind} of task_id={task_id} changes its amount or agents from the lock")
        state.status = expected_status

    def _check_payment(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        """An x402 authorization pays for one call: a second call spending its nonce is a replay the ledger let through."""
        spent = payment_of(event)
        if spent is None:
            return
        first = self.payments.setdefault(spent.key, (spent.task_id, path, line_no))
        if first[0] != spent.task_id:
            network, _, payer, nonce = spent.key
            self.problem(path, line_no, f"x402 nonce {nonce} of payer {payer} on {network} used twice: by task_id={first[0]} "
                                        f"({first[1].name}:{first[2]}) and task_id={spent.task_id}")

    def _check_credit(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        """A credit's fields; in a partitioned ledger, paired with its release (:mod:`ledger.credits`)."""
        if self.partition is None:
            self.problem(path, line_no, "a credit in a ledger that is not partitioned: credits pass between partitions")
            return
        from_shard, from_seq = event.get("from_shard"), event.get("from_seq")
        if not _is_index(from_shard) or not _is_index(from_seq):
            self.problem(path, line_no, f"a credit of from_shard={from_shard!r} and from_seq={from_seq!r}: it must name "
                                        "the partition and seq of its release")
            return
        if from_shard == self.partition.index or from_shard >= self.partition.count:
            self.problem(path, line_no, f"a credit from shard {from_shard} in partition {self.partition.index} of "
                                        f"{self.partition.count}: a credit comes from another partition")
            return
        if event.get("status") is not None:
            self.problem(path, line_no, f"a credit with status {event.get('status')!r}: a credit moves no escrow (no status)")
        for problem in self.partition.credits.received((from_shard, from_seq), Transfer.of(event),
                                                      partition=self.partition.index, where=_At(path, line_no)):
            self.problem(path, line_no, problem)

    def _note_sent(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        """A release that paid another partition's agent (with balances) is one that partition must credit
        (noted even past a broken replay, so that its credit still pairs)."""
        partition, target = self.partition, event.get("target_agent")
        if not self.book.budget.track_balances or not isinstance(target, str) or owner(target, partition.count) == partition.index:
            return
        for problem in partition.credits.sent((partition.index, event.get("seq")), Transfer.of(event), where=_At(path, line_no)):
            self.problem(path, line_no, problem)

    def _check_owner(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        """A partition holds its agents' events: by source, or by target for a deposit or credit."""
        kind, index, count = event.get("kind"), self.partition.index, self.partition.count
        shard = event.get("shard")
        if shard != index:  # also what a Parquet reader takes from the partition's shard=K directory
            self.problem(path, line_no, f"an event of shard={shard!r} in partition {index}: each event of a partition names its shard")
        role = "target_agent" if kind in ("deposit", "credit") else "source_agent" if kind in _STATUS_OF_KIND else None
        agent = event.get(role) if role else None
        if isinstance(agent, str) and owner(agent, count) != index:
            self.problem(path, line_no, f"{kind} of {role}={agent!r} in partition {index}: that agent's account is in "
                                        f"partition {owner(agent, count)} of {count}")

    def _replay(self, path: Path, line_no: int, event: dict[str, Any]) -> None:
        if self.replay_broken:
            return
        kind = event.get("kind")
        if kind in ("deposit", "credit") and not self.book.budget.track_balances:
            if self.locked_any:
                self.replay_broken = True
                self.problem(path, line_no, "a deposit after locks without balances: a ledger of two kinds of booth")
                return
            self.book.budget.track_balances = True
        self.locked_any = self.locked_any or kind in ("lock", "paper_release")
        try:
            apply_event(self.book, event)
        except (LedgerError, AssertionError, KeyError, ValueError, TypeError) as exc:
            self.replay_broken = True
            self.problem(path, line_no, f"replay through the core fails here ({exc or type(exc).__name__}); later lines are not replayed")
            return


def verified_events(ledger: Path | str, result: VerifyResult) -> Iterator[dict[str, Any]]:
    """The events of ``ledger`` that ``result`` (its :func:`verified`) passed, partition by partition:
    what a tool acting on it reads (events appended since are left for the next time)."""
    for files, count in zip(families(ledger), result.partition_events):
        for line in event_lines(files):
            if line.event["seq"] >= count:
                break
            yield line.event


def verified(ledger: Path | str) -> VerifyResult:
    """:func:`verify` for a tool about to act on the ledger: its result, or LedgerVerifyError on any problem."""
    result = verify(ledger)
    if not result.ok:
        raise LedgerVerifyError(ledger, result)
    return result


def verify(ledger: Path | str, *, state_at_us: Optional[int] = None) -> VerifyResult:
    """Check the ledger named by ``ledger`` (a JSONL file or its directory); see the module doc.

    With ``state_at_us``, ``result.state`` is also the replayed state at that instant
    (:func:`ledger.replay.snapshot`; None if the replay broke), so a caller that checks a
    live system against its ledger needs no second pass. A partitioned ledger
    (:mod:`ledger.partitions`) is checked partition by partition, each as a ledger of its own,
    then across them: each partition holds only its agents' events, each credit receives one
    release that paid its partition's agent, and once (a release not credited yet is a warning:
    a crash between the two leaves it, and a restarted mesh credits it).
    """
    count = partition_count(ledger)
    if count is not None:
        return _verify_partitioned(ledger, count, state_at_us)
    files = segments(ledger)
    checker = _Verifier(files)
    lines = ours = seed_like = 0
    for line in iter_lines(files):
        lines += 1
        if line.event is not None and _is_tollmesh_event(line.event):
            ours += 1
        elif not ours and _is_seed_record(line.event if line.event is not None else line.raw):
            seed_like += 1
        checker.see(line)
        if not ours and lines >= NOT_A_LEDGER_PROBE_LINES:
            break  # a file of something else: its first lines are enough to say so
    checker.result.open_escrows = checker.book.open_count
    checker.result.partition_events = [checker.result.events]
    if lines and not ours:  # its "torn lines" are no crash's: they are what the file holds
        checker.result.not_a_ledger = _not_a_ledger(lines, seed_like)
        torn = [Finding(w.path, w.line, w.message.removeprefix("torn line after a crash, tolerated (")[:-1])
                for w in checker.result.warnings]
        checker.result.problems = sorted(checker.result.problems + torn, key=lambda f: f.line)
        checker.result.warnings = []
    if state_at_us is not None and not checker.replay_broken:
        checker.result.state = snapshot(checker.book, state_at_us)
    return checker.result


def _verify_partitioned(ledger: Path | str, count: int, state_at_us: Optional[int]) -> VerifyResult:
    families = [segments(first) for first in partitions(ledger)]
    result = VerifyResult([path for family in families for path in family])
    tasks: dict[str, _TaskState] = {}
    payments: dict = {}
    credits = CreditMatch()
    checkers = []
    for index, files in enumerate(families):
        checker = _Verifier(files, result=result, tasks=tasks, payments=payments, partition=_Partition(index, count, credits))
        for line in iter_lines(files):
            checker.see(line)
        checkers.append(checker)
        result.partition_events.append(result.events - sum(result.partition_events))
    result.open_escrows = sum(checker.book.open_count for checker in checkers)
    for where, problem in credits.unmatched():
        result.problems.append(Finding(where.path, where.line, problem))
    uncredited = credits.uncredited()
    for (shard, seq), transfer, where in uncredited:
        result.warnings.append(Finding(where.path, where.line, (
            f"release of task_id={transfer.task_id} (shard {shard} seq {seq}) paid {transfer.amount_micros} micros to "
            f"{transfer.target_agent}, whose partition {owner(transfer.target_agent, count)} has no credit of it yet "
            "(a crash between the two): a restarted mesh credits it")))
    tracking = {checker.book.budget.track_balances for checker in checkers if checker.locked_any or checker.book.budget.track_balances}
    if len(tracking) > 1:
        result.problems.append(Finding(manifest_path(ledger), 0, "some partitions track balances and some lock without them: "
                                                    "a ledger of two kinds of booth"))
    if state_at_us is not None and not any(checker.replay_broken for checker in checkers):
        replayed = PartitionedReplay([c.book for c in checkers], [c.expected_seq for c in checkers], uncredited)
        result.state = replayed.snapshot(state_at_us)
    return result



def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_tollmesh_event(event: Any) -> bool:
    """Whether a parsed line has the shape of a tollmesh event: a schema version, a seq and a kind."""
    return isinstance(event, dict) and "v" in event and "seq" in event and "kind" in event


def _is_seed_record(event: Any) -> bool:
    """Whether a line (parsed, or its bytes) is a record of the seed's own ledger: a JSON object with
    ``task_id`` and ``status`` and no schema version."""
    if isinstance(event, bytes):
        try:
            event = orjson.loads(event)
        except orjson.JSONDecodeError:
            return False
    return isinstance(event, dict) and "task_id" in event and "status" in event and "v" not in event


def _not_a_ledger(lines: int, seed_like: int) -> str:
    read = f"the first {lines} lines" if lines >= NOT_A_LEDGER_PROBE_LINES else f"its {lines} line{'s' * (lines != 1)}"
    if seed_like == lines:
        return (f"this is not a tollmesh ledger: {read} look like a nano-empire-tollbooth (seed) ledger, "
                "which has no sequence or hash chain to verify (`tollmesh ledger settle` reads it)")
    return f"this is not a tollmesh ledger: none of {read} is a tollmesh event (a JSON object with v, seq and kind)"
