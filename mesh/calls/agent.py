"""Mesh agents: a class with handlers and prices, the context a handler gets, messages and results.

An agent subclasses :class:`Agent`, sets a price per call (``price_usd``) and optionally
per method (``prices_usd``), and implements ``handle(ctx, payload)`` and any other
public methods, sync or async. Inside a handler, ``ctx`` calls other agents through
the mesh; the agent pays for those calls (it is their source).

>>> class Echo(Agent):
...     price_usd = "0.001"
...     prices_usd = {"shout": "0.002"}
...     def handle(self, ctx, payload):
...         return payload
...     def shout(self, ctx, payload):
...         return str(payload).upper()
>>> table = price_table(Echo)
>>> table.price_micros("handle"), table.price_micros("shout"), table.price_micros("nope")
(1000, 2000, None)

Sync handlers run inline on their host's event loop (fast, for simulations); set
``threaded = True`` for sync handlers that block or that call other agents with
``ctx.call``; async handlers may ``await ctx.acall(...)`` freely. A sync handler may
also return a coroutine for the calls that need to wait (the host awaits it, under
the same timeout), so the calls that do not stay on the fast inline path.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import pickle
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, NamedTuple, Optional, Union

from mesh.core.errors import CallFailedError, InvalidArgumentError, InvalidTypeError, TollmeshError
from mesh.core.ids import MAX_ID_CHARS, check_id, check_payment_field
from mesh.core.money import UsdLike, usd_to_micros
from mesh.core.records import Reason, SettlementStatus, TollRecord, record_from_wire, record_to_wire

DEFAULT_METHOD = "handle"


class Agent:
    """Base class of mesh agents. Subclasses set prices and write handlers ``(self, ctx, payload)``.

    ``agent_id`` is set by the host before the first call. Instance state lives as
    long as the hosting actor; after a restart the agent is built again from its class
    and constructor arguments.
    """

    price_usd: ClassVar[UsdLike] = "0.001"
    prices_usd: ClassVar[dict[str, UsdLike]] = {}
    threaded: ClassVar[bool] = False
    not_handlers: ClassVar[frozenset[str]] = frozenset()  # public helper methods other agents may not call
    agent_id: str = ""

    def handle(self, ctx: CallContext, payload: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not implement handle(ctx, payload)")


_BASE_NAMES = frozenset(name for name in dir(Agent) if name != DEFAULT_METHOD)


@dataclass(frozen=True)
class PriceTable:
    """An agent class's prices in micros: one per call, and per public method."""

    default_micros: int
    method_micros: dict[str, int]
    methods: frozenset[str]

    def price_micros(self, method: str) -> Optional[int]:
        """The price of calling ``method``, or None when the agent has no such public method."""
        if method not in self.methods:
            return None
        return self.method_micros.get(method, self.default_micros)


def price_table(agent_class: type) -> PriceTable:
    """Check ``agent_class`` and read its prices exactly (InvalidAmountError names a bad one)."""
    if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
        raise InvalidTypeError("agent_class", agent_class, "a subclass of mesh.Agent")
    methods = frozenset(
        name for name, member in inspect.getmembers(agent_class, callable)
        if not name.startswith("_") and name not in _BASE_NAMES and name not in agent_class.not_handlers
    )
    default = usd_to_micros(agent_class.price_usd, field=f"{agent_class.__name__}.price_usd")
    by_method = {}
    for method, usd in dict(agent_class.prices_usd).items():
        if method not in methods:
            raise InvalidArgumentError(f"{agent_class.__name__}.prices_usd", method, "names no public method of the agent")
        by_method[method] = usd_to_micros(usd, field=f"{agent_class.__name__}.prices_usd[{method!r}]")
    return PriceTable(default, by_method, methods)


class Message(NamedTuple):
    """One call from ``source`` to ``target``; ``task_id`` None gets a unique one."""

    source: str
    target: str
    payload: Any = None
    method: str = DEFAULT_METHOD
    task_id: Optional[str] = None
    payer_wallet: Optional[str] = None
    tx_signature: Optional[str] = None


class CallResult(NamedTuple):
    """What a call came to: the toll's final ``record``, and the handler's ``value`` or ``error``."""

    record: TollRecord
    ok: bool
    value: Any = None
    error: Optional[str] = None

    @property
    def task_id(self) -> str:
        return self.record.task_id

    @property
    def status(self) -> SettlementStatus:
        return self.record.status

    @property
    def reason(self) -> Optional[str]:
        return self.record.reason

    def unwrap(self) -> Any:
        """The handler's value; :class:`~mesh.core.errors.CallFailedError` if the call did not succeed."""
        if not self.ok:
            raise CallFailedError(self)
        return self.value


def result_to_wire(result: CallResult) -> tuple:
    """A plain tuple of the result, cheap to send between actors (the record as :func:`~mesh.core.records.record_to_wire`)."""
    return (record_to_wire(result.record), result.ok, result.value, result.error)


def result_from_wire(fields: tuple) -> CallResult:
    """The :class:`CallResult` :func:`result_to_wire` sent."""
    return CallResult(record_from_wire(fields[0]), fields[1], fields[2], fields[3])


#: The wire form of a message: (task_id, source, target, method, payload, payer_wallet, tx_signature, problem).
WireMessage = tuple


def to_wire(message: Message, task_id: str, max_payload_bytes: int) -> WireMessage:
    """Check ``message`` (ids, method, payment fields, payload size) and give its wire form.

    Bad ids or fields raise; a payload over ``max_payload_bytes`` is not sent: the
    message carries the problem, and the mesh records the call FAILED (``payload_too_large``).
    """
    source, target, payload, method, _, wallet, signature = message
    check_id("source", source)
    check_id("target", target)
    check_id("task_id", task_id)
    if not isinstance(method, str) or not method or method.startswith("_"):
        raise InvalidArgumentError("method", method, "must be the name of a public method of the target")
    check_payment_field("payer_wallet", wallet)
    check_payment_field("tx_signature", signature)
    problem = None
    if payload_bytes(payload) > max_payload_bytes:
        payload, problem = None, "payload_too_large"
    return (task_id, source, target, method, payload, wallet, signature, problem)


def wire_or_refusal(message: Message, task_id: Any, max_payload_bytes: int) -> Union[WireMessage, CallResult]:
    """:func:`to_wire`, or, for a message that fails its checks, its own failed :class:`CallResult`
    (:func:`refusal`): in a batch, one bad message fails alone and the others go."""
    try:
        return to_wire(message, task_id, max_payload_bytes)
    except TollmeshError as exc:
        return refusal(message, task_id, exc)


def refusal(message: Message, task_id: Any, error: TollmeshError) -> CallResult:
    """The result of a message that failed its checks: FAILED, reason ``invalid_message``, ``error``
    saying what is wrong. Nothing was sent, locked or recorded (an id the ledger cannot write stays out of it)."""
    record = TollRecord(task_id, message.source, message.target, status=SettlementStatus.FAILED,
                        reason=Reason.INVALID_MESSAGE.value)
    return CallResult(record, False, None, str(error))


def in_order(refused: dict[int, CallResult], sent: Iterable[CallResult], count: int) -> list[CallResult]:
    """The results of ``count`` messages in their order: the ``refused`` ones (by index) among those ``sent``."""
    if not refused:
        return list(sent)
    results = iter(sent)
    return [refused[i] if i in refused else next(results) for i in range(count)]


def payload_bytes(payload: Any) -> int:
    """The size a payload travels at: its bytes (a str's UTF-8, not its characters), else its pickle."""
    if payload is None or isinstance(payload, (bool, int, float)):
        return 8
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, str):
        if payload.isascii():  # O(1): one byte a character
            return len(payload)
        return len(payload.encode("utf-8", "surrogatepass"))  # as pickle carries it, lone surrogates too
    try:
        return len(pickle.dumps(payload, protocol=5))
    except Exception as exc:  # noqa: BLE001 - name the problem at the boundary
        raise InvalidArgumentError("payload", type(payload).__name__, f"cannot be serialized: {exc}") from None


def child_task_id(parent: str, n: int) -> str:
    """The task id of a handler's ``n``-th call: ``parent>n``, or a digest when that grows too long."""
    task_id = f"{parent}>{n}"
    if len(task_id) > MAX_ID_CHARS:
        task_id = "h-" + hashlib.blake2b(task_id.encode(), digest_size=24).hexdigest()
    return task_id


class CallContext:
    """What a handler knows about its call, and how it calls other agents (paying for them).

    ``call``/``send`` are for threaded or driver code; ``acall``/``asend`` for async handlers.
    """

    __slots__ = ("agent_id", "task_id", "source_agent", "method", "_coordinator", "_coalescer", "_calls",
                 "_max_payload_bytes")

    def __init__(self, agent_id: str, task_id: str, source_agent: str, method: str,
                 coordinator: Any, max_payload_bytes: int, coalescer: Any = None) -> None:
        self.agent_id = agent_id
        self.task_id = task_id
        self.source_agent = source_agent
        self.method = method
        self._coordinator = coordinator
        self._coalescer = coalescer  # an actors.coalesce.Coalescer on the host's loop, or None
        self._calls = 0
        self._max_payload_bytes = max_payload_bytes

    async def acall(self, target: str, payload: Any = None, *, method: str = DEFAULT_METHOD) -> CallResult:
        """Call ``target`` (this agent pays) and wait for its result."""
        return (await self.asend([Message(self.agent_id, target, payload, method)]))[0]

    async def asend(self, messages: list[Message]) -> list[CallResult]:
        """Send many calls at once (their ``source`` must be this agent); a message that fails its
        checks (a bad id...) comes back alone as a failed result (``invalid_message``), the others go."""
        wire, refused = self._wire(messages)
        if not wire:
            sent: list = []
        elif self._coalescer is not None:
            sent = await self._coalescer.submit(wire)
        else:
            sent = await self._coordinator.submit.remote(wire, nested=True)
        return in_order(refused, (result_from_wire(r) for r in sent), len(messages))

    def call(self, target: str, payload: Any = None, *, method: str = DEFAULT_METHOD) -> CallResult:
        """:meth:`acall` for threaded handlers (``threaded = True``)."""
        return self.send([Message(self.agent_id, target, payload, method)])[0]

    def send(self, messages: list[Message]) -> list[CallResult]:
        """:meth:`asend` for threaded handlers."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            import ray

            wire, refused = self._wire(messages)
            sent = ray.get(self._coordinator.submit.remote(wire, nested=True)) if wire else []
            return in_order(refused, (result_from_wire(r) for r in sent), len(messages))
        raise InvalidArgumentError(
            "ctx.call", self.agent_id,
            "a sync handler running on the host's event loop cannot wait for another agent: "
            "make the handler async and use `await ctx.acall(...)`, or set `threaded = True` on the agent class",
        )

    def _wire(self, messages: list[Message]) -> tuple[list[WireMessage], dict[int, CallResult]]:
        """The wire forms of the messages that pass their checks, and the results of those that do not, by index."""
        wire, refused = [], {}
        for index, message in enumerate(messages):
            if not isinstance(message, Message):
                raise InvalidTypeError("message", message, "a mesh.Message")
            if message.source != self.agent_id:
                raise InvalidArgumentError("source", message.source, f"a handler of {self.agent_id!r} pays its own calls")
            self._calls += 1
            task_id = message.task_id or child_task_id(self.task_id, self._calls)
            checked = wire_or_refusal(message, task_id, self._max_payload_bytes)
            if type(checked) is CallResult:
                refused[index] = checked
            else:
                wire.append(checked)
        return wire, refused
