"""The in-process :class:`Tollbooth`: the seed's API over the exact escrow core.

Every state change is appended to the JSONL ledger before the call returns;
concurrent threads and asyncio tasks may share one booth (a lock guards the
books; x402 verification runs outside it, so a slow verifier never blocks others).

>>> import asyncio, tempfile, pathlib
>>> config = TollboothConfig(paper_mode=False, toll_per_message_usd=0.01,
...                          ledger_path=pathlib.Path(tempfile.mkdtemp()) / "toll_ledger.jsonl")
>>> booth = Tollbooth(config)
>>> record = asyncio.run(booth.charge("task-1", "alice", "bob"))
>>> record.status.value, record.amount_micros
('escrow_locked', 10000)
>>> asyncio.run(booth.release("task-1")).status.value
'released'
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Optional, Union

from ledger.events import record_event
from ledger.schema import EventKind
from ledger.writer import LedgerWriter
from ledger.replay import balances_conflict, event_at, ledger_has_events, replay_file, snapshot
from mesh.core.budget import BudgetBook
from mesh.core.clock import Clock, SystemClock, iso_utc, now_us
from mesh.booth.config import TollboothConfig
from mesh.core.errors import ConfigError, InvalidArgumentError, InvalidTypeError, LedgerError
from mesh.core.escrow import EscrowBook
from mesh.core.ids import MAX_ID_CHARS, MAX_PAYMENT_FIELD_CHARS, agent_id_of, check_id, check_payment_field, is_id  # noqa: F401
from mesh.core.money import UsdLike, micros_to_usd, usd_to_micros
from mesh.core.records import PAPER_WALLET, Reason, SettlementStatus, TollRecord
from mesh.booth.restored import announce, restore_info
from mesh.booth.verifier import Verifier, verify_async, verify_sync

logger = logging.getLogger("tollmesh")


class Tollbooth:
    """Charge, release and refund tolls between agents, with caps, x402 and a ledger.

    The seed's methods ``charge``, ``release`` and ``refund`` are coroutines; each has
    a ``*_sync`` twin for code without an event loop.
    """

    def __init__(self, config: Optional[TollboothConfig] = None, *, clock: Optional[Clock] = None) -> None:
        if config is not None and not isinstance(config, TollboothConfig):
            raise InvalidTypeError("config", config, "a TollboothConfig")
        self.config = config or TollboothConfig()
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._verifier: Optional[Verifier] = None
        self._stats = _new_stats()
        self._toll_cache: tuple[Any, int] = (None, 0)
        self._book = EscrowBook(
            BudgetBook(default_cap_micros=None, track_balances=self.config.track_balances),
            escrow_timeout_s=self.config.escrow_timeout_s,
            max_settled_records=self.config.max_settled_records,
        )
        self._writer: Optional[LedgerWriter] = None
        self.ledger_path: Optional[Path] = None  # the ledger this booth writes (see _claim_default_ledger)
        self._default_ledger = False
        #: what the booth restored from an existing ledger (see :mod:`mesh.booth.restored`); None: it started empty
        self.restored: Optional[dict[str, Any]] = None
        if self.config.ledger_enabled:
            self._open_ledger()
        self._apply_caps()
        self._book.journal = self._journal

    # -- the seed's API ---------------------------------------------------------

    async def charge(
        self,
        task_id: str,
        source_agent: str,
        target_agent: str,
        payer_wallet: Optional[str] = None,
        tx_signature: Optional[str] = None,
        *,
        amount_usd: Optional[UsdLike] = None,
        escrow: Optional[bool] = None,
    ) -> TollRecord:
        """Charge the toll for one message from ``source_agent`` to ``target_agent``.

        Paper mode releases at once (RELEASED); live mode locks (ESCROW_LOCKED), or
        answers PENDING when payment is required and missing. Over the cap, short of
        funds, or a payment the verifier refuses gives FAILED with a ``reason``.
        ``amount_usd`` overrides the configured toll; ``escrow=True`` locks even in
        paper mode (what ``@monetize`` does), ``escrow=False`` releases at once.
        A ``task_id`` already charged returns its first record.

        An agent may be given as an object, as the seed's router passes the target agent
        itself: it is recorded by its ``name`` attribute (a str), else, if it has a ``handle``
        method (the seed's agents do), by ``str(agent)``; other non-str values are refused.
        A paper-mode record without a payment names ``"paper_mode"`` as its
        ``payer_wallet`` and ``tx_signature``, as the seed's do.
        """
        draft, instant = self._draft(task_id, source_agent, target_agent, payer_wallet, tx_signature, amount_usd, escrow)
        reason = None
        if self._verifier is not None and payer_wallet and tx_signature:
            early = self._answer_before_payment(draft)
            if early is not None:
                return early
            reason = await verify_async(
                self._verifier, payer_wallet, tx_signature, draft.amount_usd,
                timeout_s=self.config.x402_verify_timeout_s, task_id=draft.task_id, amount_micros=draft.amount_micros,
            )
        return self._charge_now(draft, instant, reason)

    def charge_sync(
        self,
        task_id: str,
        source_agent: str,
        target_agent: str,
        payer_wallet: Optional[str] = None,
        tx_signature: Optional[str] = None,
        *,
        amount_usd: Optional[UsdLike] = None,
        escrow: Optional[bool] = None,
    ) -> TollRecord:
        """:meth:`charge` for synchronous code."""
        draft, instant = self._draft(task_id, source_agent, target_agent, payer_wallet, tx_signature, amount_usd, escrow)
        reason = None
        if self._verifier is not None and payer_wallet and tx_signature:
            early = self._answer_before_payment(draft)
            if early is not None:
                return early
            reason = verify_sync(
                self._verifier, payer_wallet, tx_signature, draft.amount_usd,
                timeout_s=self.config.x402_verify_timeout_s, task_id=draft.task_id, amount_micros=draft.amount_micros,
            )
        return self._charge_now(draft, instant, reason)

    async def release(self, task_id: str) -> Optional[TollRecord]:
        """Pay a locked toll to its target; a settled toll comes back unchanged; unknown gives None."""
        return self.release_sync(task_id)

    def release_sync(self, task_id: str) -> Optional[TollRecord]:
        """:meth:`release` for synchronous code."""
        if not _is_id(task_id):
            _check_id("task_id", task_id)
        with self._lock:
            record = self._book.release(task_id, now_us(self.clock))
        if record is None:
            logger.warning("release: no toll record for task_id=%r", task_id)
        return record

    async def refund(
        self, task_id: str, reason: Union[Reason, str] = Reason.REFUNDED_BY_CALLER
    ) -> Optional[TollRecord]:
        """Give a locked toll back to its source; a settled toll comes back unchanged; unknown gives None."""
        return self.refund_sync(task_id, reason)

    def refund_sync(
        self, task_id: str, reason: Union[Reason, str] = Reason.REFUNDED_BY_CALLER
    ) -> Optional[TollRecord]:
        """:meth:`refund` for synchronous code."""
        _check_id("task_id", task_id)
        why = _check_reason(reason)
        with self._lock:
            record = self._book.refund(task_id, now_us(self.clock), why)
        if record is None:
            logger.warning("refund: no toll record for task_id=%r", task_id)
        return record

    def get_record(self, task_id: str) -> Optional[TollRecord]:
        """The current record of ``task_id``, or None (also once it left the settled window)."""
        _check_id("task_id", task_id)
        with self._lock:
            self._book.expire_due(now_us(self.clock))
            return self._book.get(task_id)

    def get_stats(self) -> dict[str, Any]:
        """The seed's counters (``messages_charged``, ``total_usd``, ...) plus exact ones."""
        with self._lock:
            self._book.expire_due(now_us(self.clock))
            stats = dict(self._stats)
            stats["rejected_by_reason"] = dict(self._stats["rejected_by_reason"])
            stats["active_escrows"] = self._book.open_count
            stats["total_records"] = self._book.record_count
            stats["locked_micros"] = self._book.budget.locked_total_micros
        stats["total_usd"] = micros_to_usd(stats["total_micros"])
        stats["paper_mode"] = self.config.paper_mode
        return stats

    def reset_daily(self) -> None:
        """Forget every agent's usage today (the seed's manual midnight reset; days also roll over by themselves)."""
        with self._lock:
            self._book.reset_usage(now_us(self.clock))

    def set_x402_verifier(self, verifier: Optional[Verifier]) -> None:
        """Verify payments with ``verifier(wallet, signature, amount_usd) -> bool`` (sync or async); None removes it.

        It is called when a charge carries both ``payer_wallet`` and ``tx_signature``;
        it fails closed on an exception, a non-bool or a run past ``x402_verify_timeout_s``.
        A :class:`~mesh.booth.verifier.PaymentChecker` (such as :class:`mesh.x402.ExactEvmVerifier`)
        names its reasons, judges validity windows on this booth's clock and first learns
        which payments this booth's ledger already spent (a replay is refused after a restart too).
        """
        if verifier is not None and not callable(verifier):
            raise InvalidTypeError("verifier", verifier, "a callable (wallet, signature, amount_usd) -> bool")
        if verifier is not None:
            if callable(getattr(verifier, "bind_clock", None)):
                verifier.bind_clock(self.clock.now_s)
            if callable(getattr(verifier, "restore_from_ledger", None)) and self.ledger_path is not None:
                verifier.restore_from_ledger(self.ledger_path)
        self._verifier = verifier

    # -- beyond the seed --------------------------------------------------------

    def deposit(self, agent: str, amount_usd: UsdLike) -> int:
        """Add funds to ``agent``'s balance; returns the new balance in micros. Needs ``track_balances``."""
        if not self.config.track_balances:
            raise InvalidArgumentError("track_balances", False, "deposits need a booth that tracks balances")
        _check_id("agent", agent)
        amount_micros = usd_to_micros(amount_usd)
        with self._lock:
            self._book.deposit(agent, amount_micros, now_us(self.clock))
            return self._book.budget.balance_micros(agent)

    def balance_micros(self, agent: str) -> int:
        with self._lock:
            return self._book.budget.balance_micros(agent)

    def expire_stale(self) -> list[TollRecord]:
        """Refund every escrow past ``escrow_timeout_s`` now (the booth also does it on every call)."""
        with self._lock:
            return self._book.expire_due(now_us(self.clock))

    def snapshot(self) -> dict[str, Any]:
        """Balances, locked amounts, today's caps used and open escrows, as replay rebuilds them."""
        with self._lock:
            return snapshot(self._book, now_us(self.clock))

    def close(self) -> None:
        """Close the ledger (writing out its Parquet files); the booth refuses further state changes."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
                self._book.journal = _closed_journal
                if self._default_ledger:
                    _free_default_ledger(self.ledger_path)

    def __enter__(self) -> Tollbooth:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------

    def _draft(
        self, task_id: str, source_agent: str, target_agent: str, payer_wallet: Optional[str],
        tx_signature: Optional[str], amount_usd: Optional[UsdLike], escrow: Optional[bool],
    ) -> tuple[TollRecord, bool]:
        if not (_is_id(task_id) and _is_id(source_agent) and _is_id(target_agent)):
            source_agent, target_agent = agent_id_of(source_agent), agent_id_of(target_agent)
            _check_id("task_id", task_id)
            _check_id("source_agent", source_agent)
            _check_id("target_agent", target_agent)
        if payer_wallet is not None or tx_signature is not None:
            _check_payment_field("payer_wallet", payer_wallet)
            _check_payment_field("tx_signature", tx_signature)
        if escrow is not None and not isinstance(escrow, bool):
            raise InvalidTypeError("escrow", escrow, "a bool or None")
        amount_micros = self._toll_micros() if amount_usd is None else usd_to_micros(amount_usd)
        if self.config.paper_mode:  # the seed's paper-mode record names its (absent) payment so
            payer_wallet, tx_signature = payer_wallet or PAPER_WALLET, tx_signature or PAPER_WALLET
        draft = TollRecord(
            task_id=task_id, source_agent=source_agent, target_agent=target_agent,
            amount_micros=amount_micros, amount_tokens=self.config.toll_per_message_tokens,
            payer_wallet=payer_wallet, tx_signature=tx_signature,
            nonce=hashlib.blake2b(task_id.encode(), digest_size=16).hexdigest(),
            created_at=iso_utc(now_us(self.clock), "seconds"),
        )
        instant = (not escrow) if escrow is not None else self.config.paper_mode
        return draft, instant

    def _answer_before_payment(self, draft: TollRecord) -> Optional[TollRecord]:
        with self._lock:
            return self._early_answer(draft, now_us(self.clock))

    def _early_answer(self, draft: TollRecord, ts_us: int) -> Optional[TollRecord]:
        """The answer that needs no payment check (a known task id, or PENDING), else None."""
        self._book.expire_due(ts_us)
        existing = self._book.find(draft.task_id)  # past the settled window too (read back from the ledger)
        if existing is not None and existing.status is not SettlementStatus.PENDING:
            return existing
        paid = draft.payer_wallet and draft.tx_signature
        if not self.config.paper_mode and self.config.require_payment_before_route and not paid:
            return self._book.pend(draft, ts_us)
        return None

    def _charge_now(self, draft: TollRecord, instant: bool, reason: Optional[Reason]) -> TollRecord:
        """Decide the charge under the lock: early answer, rejection for ``reason``, or the lock itself."""
        with self._lock:
            ts_us = now_us(self.clock)
            early = self._early_answer(draft, ts_us)
            if early is not None:
                return early
            if reason is not None:
                return self._book.reject(draft, reason, ts_us)
            return self._book.charge(draft, ts_us, instant_release=instant, unseen=True)  # _early_answer looked it up

    def _journal(self, kind: str, record: TollRecord, ts_us: int) -> Optional[int]:
        """Append one event (under the booth's lock), then count it; its seq (None without a ledger)."""
        seq = None
        if self._writer is not None:
            mode = "paper" if self.config.paper_mode else "live"  # paper_mode drives the booth, as in the seed
            self._writer.append_one(record_event(kind, record, ts_us=ts_us, mode=mode))
            seq = self._writer.jsonl.next_seq - 1
        _count(self._stats, kind, record)
        return seq

    def _toll_micros(self) -> int:
        value = self.config.toll_per_message_usd
        cached_value, micros = self._toll_cache
        if value is not cached_value:
            micros = usd_to_micros(value, field="toll_per_message_usd")
            self._toll_cache = (value, micros)
        return micros

    def _open_ledger(self) -> None:
        default = "ledger_path" not in self.config.model_fields_set  # the default: other booths of this process may use it
        path = _claim_default_ledger(self.config.ledger_path) if default else self.config.ledger_path
        try:
            self._open_ledger_at(path)
        except BaseException:
            if default:
                _free_default_ledger(path)
            raise
        self.ledger_path, self._default_ledger = path, default

    def _open_ledger_at(self, path: Path) -> None:
        if ledger_has_events(path):  # a booth never writes onto a ledger it did not read
            if not self.config.restore_from_ledger:
                raise ConfigError(f"ledger_path={str(path)!r} already holds a ledger and restore_from_ledger is False: "
                                  "set it True to adopt that ledger, or give a new ledger_path")
            events = replay_file(self._book, path)  # what happened, not judged again by today's caps and timeout
            conflict = balances_conflict(self._book, path, self.config.track_balances)
            if conflict is not None:
                raise ConfigError(conflict)
            self.restored = restore_info(path, events, snapshot(self._book, now_us(self.clock)))
            announce(self.restored, "tollbooth")  # never silent: the caps used today come back with it
        self._writer = LedgerWriter(
            path, parquet_dir=self.config.ledger_parquet_dir, fsync=self.config.ledger_fsync,
            max_segment_bytes=self.config.ledger_max_segment_bytes, rotate_daily=self.config.ledger_rotate_daily,
            format_version=self.config.ledger_format,
        )
        self._book.recall = lambda task_id, seq: event_at(path, seq)  # a repeat past the window, read back

    def _apply_caps(self) -> None:
        budget = self._book.budget
        budget.default_cap_micros = self.config.max_daily_toll_micros
        for agent, cap in self.config.agent_daily_caps_micros().items():
            budget.set_cap(agent, cap)


# -- the default ledger, when one process opens several booths on it ------------------

_default_ledgers_open: set[Path] = set()  # default ledgers a booth of this process writes (until it closes)
_default_ledgers_lock = threading.Lock()


def _claim_default_ledger(path: Path) -> Path:
    """The default ledger ``path`` for a new booth; if a booth of this process already writes it (the
    seed's ``create_tollbooth()`` makes a new booth each call, and a ledger has one writer), the first
    free ``booth-2/``, ``booth-3/``... beside it, logged. The same script gets the same ledgers each run."""
    with _default_ledgers_lock:
        chosen, n = path, 1
        while chosen.resolve() in _default_ledgers_open:
            n += 1
            chosen = path.parent / f"booth-{n}" / path.name
        _default_ledgers_open.add(chosen.resolve())
    if chosen != path:
        logger.warning("the default ledger %s is written by another booth of this process: this booth writes %s",
                       path, chosen)
        chosen.parent.mkdir(parents=True, exist_ok=True)
    return chosen


def _free_default_ledger(path: Path) -> None:
    with _default_ledgers_lock:
        _default_ledgers_open.discard(path.resolve())


def _closed_journal(kind: str, record: TollRecord, ts_us: int) -> None:
    raise LedgerError("the booth is closed: its ledger takes no more events")


def _new_stats() -> dict[str, Any]:
    return {
        "messages_charged": 0, "total_micros": 0, "total_usd": 0.0, "total_tokens": 0.0,
        "escrow_locked": 0, "escrow_released": 0, "escrow_refunded": 0, "escrow_expired": 0,
        "released_micros": 0, "refunded_micros": 0, "rejected": 0, "pending": 0,
        "rejected_by_reason": {},
    }


def _count(stats: dict[str, Any], kind: str, record: TollRecord) -> None:
    """Update the booth's counters for one journaled event."""
    amount = record.amount_micros
    if kind == _LOCK or kind == _PAPER_RELEASE:
        stats["messages_charged"] += 1
        stats["total_micros"] += amount
        stats["total_tokens"] += record.amount_tokens
        if kind == _LOCK:
            stats["escrow_locked"] += 1
        else:
            stats["released_micros"] += amount
    elif kind == _RELEASE:
        stats["escrow_released"] += 1
        stats["released_micros"] += amount
    elif kind == _REFUND or kind == _EXPIRE:
        stats["escrow_refunded"] += 1
        stats["refunded_micros"] += amount
        stats["escrow_expired"] += kind == _EXPIRE
    elif kind == _REJECT:
        stats["rejected"] += 1
        by_reason = stats["rejected_by_reason"]
        by_reason[record.reason] = by_reason.get(record.reason, 0) + 1
    elif kind == _PENDING:
        stats["pending"] += 1


# Plain strings: comparing with these is cheaper than reading enum members on the hot path.
_LOCK, _PAPER_RELEASE, _RELEASE = EventKind.LOCK.value, EventKind.PAPER_RELEASE.value, EventKind.RELEASE.value
_REFUND, _EXPIRE, _REJECT, _PENDING = (
    EventKind.REFUND.value, EventKind.EXPIRE.value, EventKind.REJECT.value, EventKind.PENDING.value,
)


# The id rules live in mesh.core.ids (is_id is the hot path's check); the modules that import them from here keep working.
_is_id, _check_id, _check_payment_field = is_id, check_id, check_payment_field


def _check_reason(reason: Union[Reason, str]) -> Reason:
    try:
        return Reason(reason)
    except ValueError:
        allowed = ", ".join(r.value for r in Reason)
        raise InvalidArgumentError("reason", reason, f"must be one of: {allowed}") from None


# -- the seed's process-wide booth ------------------------------------------------

_tollbooth: Optional[Tollbooth] = None
_tollbooth_lock = threading.Lock()


def create_tollbooth(config: Optional[TollboothConfig] = None) -> Tollbooth:
    """A new, independent :class:`Tollbooth`."""
    return Tollbooth(config=config)


def get_tollbooth(config: Optional[TollboothConfig] = None) -> Tollbooth:
    """The process-wide booth, created from ``config`` on first use (``config`` is ignored after)."""
    global _tollbooth
    with _tollbooth_lock:
        if _tollbooth is None:
            _tollbooth = Tollbooth(config=config)
        return _tollbooth


def reset_tollbooth() -> None:
    """Close and forget the process-wide booth (for tests)."""
    global _tollbooth
    with _tollbooth_lock:
        if _tollbooth is not None:
            _tollbooth.close()
        _tollbooth = None
