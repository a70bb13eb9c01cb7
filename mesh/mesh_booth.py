"""The seed's Tollbooth API backed by the mesh's actors: the router loop works unchanged.

``mesh.tollbooth(config)`` gives a :class:`MeshTollbooth`: ``charge`` locks on the source's
budget shard through the escrow coordinator (x402 verified there), ``release`` and
``refund`` settle it, each answering once its ledger event is durable. Prices, paper
mode, tokens and ``require_payment_before_route`` come from the ``TollboothConfig``;
caps it sets explicitly are applied to the whole mesh; balances and the ledger are the
mesh's.

>>> booth = mesh.tollbooth(TollboothConfig(paper_mode=False, toll_per_message_usd="0.01"))  # doctest: +SKIP
>>> record = booth.charge_sync("task-1", "alice", "bob")                                 # doctest: +SKIP
>>> record.status.value, booth.release_sync("task-1").status.value                     # doctest: +SKIP
('escrow_locked', 'released')
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Optional, Union

import ray

from mesh.calls.agent import check_id, check_payment_field
from mesh.core.ids import agent_id_of
from actors.coalesce import Coalescer
from mesh.booth.config import TollboothConfig
from mesh.core.errors import InvalidTypeError
from mesh.core.money import UsdLike, micros_to_usd, usd_to_micros
from mesh.core.records import Reason, TollRecord, record_from_wire
from mesh.booth.tollbooth import _check_reason
from mesh.booth.verifier import Verifier

_CAP_FIELDS = {"max_daily_toll_per_agent", "agent_daily_caps_usd"}


class MeshTollbooth:
    """``charge`` / ``release`` / ``refund`` (async, with ``*_sync`` twins) over a mesh's actors."""

    def __init__(self, coordinator: Any, config: Optional[TollboothConfig] = None) -> None:
        if config is not None and not isinstance(config, TollboothConfig):
            raise InvalidTypeError("config", config, "a TollboothConfig")
        self.config = config or TollboothConfig()
        self._coordinator = coordinator
        self._coalescers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {what: Coalescer}
        if _CAP_FIELDS & self.config.model_fields_set:
            ray.get(coordinator.set_caps.remote(self.config.max_daily_toll_micros, self.config.agent_daily_caps_micros()))

    # -- the seed's API -----------------------------------------------------------------

    async def charge(
        self, task_id: str, source_agent: str, target_agent: str, payer_wallet: Optional[str] = None,
        tx_signature: Optional[str] = None, *, amount_usd: Optional[UsdLike] = None, escrow: Optional[bool] = None,
    ) -> TollRecord:
        """Lock the toll (paper mode: lock and release at once); FAILED or PENDING with a reason otherwise.

        As :meth:`Tollbooth.charge <mesh.booth.tollbooth.Tollbooth.charge>`: an agent object counts by its ``name``
        (else, with a ``handle`` method, by ``str()``), and a paper-mode record without a payment names ``"paper_mode"`` as its wallet."""
        item = self._charge_item(task_id, source_agent, target_agent, payer_wallet, tx_signature, amount_usd, escrow)
        return record_from_wire((await self._coalescer("charges").submit([item]))[0])

    def charge_sync(
        self, task_id: str, source_agent: str, target_agent: str, payer_wallet: Optional[str] = None,
        tx_signature: Optional[str] = None, *, amount_usd: Optional[UsdLike] = None, escrow: Optional[bool] = None,
    ) -> TollRecord:
        """:meth:`charge` for synchronous code."""
        item = self._charge_item(task_id, source_agent, target_agent, payer_wallet, tx_signature, amount_usd, escrow)
        return record_from_wire(ray.get(self._coordinator.booth_charges.remote([item]))[0])

    async def release(self, task_id: str) -> Optional[TollRecord]:
        """Pay a locked toll to its target; a settled one comes back unchanged; unknown gives None."""
        return record_from_wire((await self._coalescer("settles").submit([self._settle_item(task_id, True, None)]))[0])

    def release_sync(self, task_id: str) -> Optional[TollRecord]:
        return self._settle_sync(self._settle_item(task_id, True, None))

    async def refund(self, task_id: str, reason: Union[Reason, str] = Reason.REFUNDED_BY_CALLER) -> Optional[TollRecord]:
        """Give a locked toll back to its source; a settled one comes back unchanged; unknown gives None."""
        item = self._settle_item(task_id, False, _check_reason(reason).value)
        return record_from_wire((await self._coalescer("settles").submit([item]))[0])

    def refund_sync(self, task_id: str, reason: Union[Reason, str] = Reason.REFUNDED_BY_CALLER) -> Optional[TollRecord]:
        return self._settle_sync(self._settle_item(task_id, False, _check_reason(reason).value))

    def get_record(self, task_id: str) -> Optional[TollRecord]:
        """The toll's current record (after expiring what is due), or None if this mesh never charged it."""
        check_id("task_id", task_id)
        return record_from_wire(ray.get(self._coordinator.booth_get.remote(task_id, self._mode)))

    def get_stats(self) -> dict[str, Any]:
        """The mesh's counters, with the seed's names where they mean the same."""
        stats = ray.get(self._coordinator.stats.remote())
        stats["active_escrows"] = stats["open_escrows"]
        stats["escrow_released"] = stats["released"]
        stats["escrow_refunded"] = stats["refunded"]
        stats["total_usd"] = micros_to_usd(stats["released_micros"])
        stats["paper_mode"] = self.config.paper_mode
        return stats

    def reset_daily(self) -> None:
        """Forget every agent's usage today, on every shard (one ``reset_daily`` event)."""
        ray.get(self._coordinator.reset_daily.remote(self._mode))

    def set_x402_verifier(self, verifier: Optional[Verifier]) -> None:
        """The mesh's verifier (it runs in the coordinator, so it must be picklable); None removes it."""
        if verifier is not None and not callable(verifier):
            raise InvalidTypeError("verifier", verifier, "a callable (wallet, signature, amount_usd) -> bool")
        ray.get(self._coordinator.set_verifier.remote(verifier))

    def deposit(self, agent: str, amount_usd: UsdLike) -> int:
        """Add funds to ``agent`` (the mesh must track balances); the micros deposited."""
        check_id("agent", agent)
        amount_micros = usd_to_micros(amount_usd)
        ray.get(self._coordinator.deposit.remote(agent, amount_micros))
        return amount_micros

    def expire_stale(self) -> list[TollRecord]:
        return ray.get(self._coordinator.expire_stale.remote())

    def snapshot(self) -> dict[str, Any]:
        return ray.get(self._coordinator.snapshot.remote())

    def close(self) -> None:
        """Nothing to close: the mesh owns the ledger (``Mesh.shutdown`` closes it)."""

    # -- internals ------------------------------------------------------------------------

    @property
    def _mode(self) -> str:
        return "paper" if self.config.paper_mode else "live"

    def _coalescer(self, what: str) -> Coalescer:
        """This event loop's coalescer of ``charges`` or ``settles``: concurrent ones go as one call."""
        per_loop = self._coalescers.setdefault(asyncio.get_running_loop(), {})
        coalescer = per_loop.get(what)
        if coalescer is None:
            send = self._coordinator.booth_charges.remote if what == "charges" else self._coordinator.booth_settles.remote
            coalescer = per_loop[what] = Coalescer(send)
        return coalescer

    def _settle_sync(self, item: tuple) -> Optional[TollRecord]:
        return record_from_wire(ray.get(self._coordinator.booth_settles.remote([item]))[0])

    def _charge_item(
        self, task_id: str, source: str, target: str, wallet: Optional[str], signature: Optional[str],
        amount_usd: Optional[UsdLike], escrow: Optional[bool],
    ) -> tuple:
        source, target = agent_id_of(source), agent_id_of(target)  # an agent object: by its name (see Tollbooth.charge)
        check_id("task_id", task_id)
        check_id("source_agent", source)
        check_id("target_agent", target)
        check_payment_field("payer_wallet", wallet)
        check_payment_field("tx_signature", signature)
        if escrow is not None and not isinstance(escrow, bool):
            raise InvalidTypeError("escrow", escrow, "a bool or None")
        config = self.config
        amount = config.toll_per_message_micros if amount_usd is None else usd_to_micros(amount_usd)
        instant = (not escrow) if escrow is not None else config.paper_mode
        paid = bool(wallet and signature)
        pend = not config.paper_mode and config.require_payment_before_route and not paid
        fields = (task_id, source, target, amount, config.toll_per_message_tokens, wallet, signature)
        return (fields, instant, pend, self._mode)

    def _settle_item(self, task_id: str, release: bool, reason: Optional[str]) -> tuple:
        check_id("task_id", task_id)
        return (task_id, release, reason, self._mode)
