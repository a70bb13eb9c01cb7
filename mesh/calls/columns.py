"""Calls as columns: the bulk form of ``Mesh.send``, for simulations and bulk senders.

:func:`checked_parts` checks what :meth:`mesh.Mesh.send_columns` is given (the same rules as
one :class:`~mesh.calls.agent.Message`, column by column: ids, methods, payload sizes) and
:class:`CallColumns` is what comes back: per call its task id, status and reason, as
arrays, with no record built. A call whose payload is too large is recorded FAILED
(``payload_too_large``), as ``send`` does; a bad id or method refuses the whole send
with an error naming the column and the index, before anything is sent.

>>> from mesh.columnar import REASON_CODE
>>> columns = CallColumns(["t1", "t2"], np.array([3, 5], np.int8), np.array([0, REASON_CODE["over_daily_cap"]], np.int8),
...                       np.zeros(2, np.int8))
>>> columns.statuses(), columns.reasons()
(['released', 'failed'], [None, 'over_daily_cap'])
>>> sorted(columns.counts().items())
[('failed:over_daily_cap', 1), ('released', 1)]
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from mesh.calls.agent import payload_bytes
from mesh.calls.coded import CodedNames
from mesh.columnar import REASON_NAMES, STATUS_NAMES
from mesh.core.errors import InvalidArgumentError, InvalidTypeError
from mesh.core.ids import check_id, is_id

#: Fault codes: the ledger may not hold how such a call ended (the caller may send it again by its task id).
FAULT_NAMES = (None, "settle_unavailable", "ledger_append_lost")


@dataclass(frozen=True)
class CallColumns:
    """What ``send_columns`` calls came to, in the order sent: status and reason codes of
    :mod:`mesh.columnar` (``statuses()``/``reasons()`` give their names), and a fault code
    (``faults()``; 0: none) where the ledger may not hold how the call ended."""

    task_ids: list[str]
    status: np.ndarray  # int8
    reason: np.ndarray  # int8
    fault: np.ndarray  # int8

    def __len__(self) -> int:
        return len(self.task_ids)

    def statuses(self) -> list[Optional[str]]:
        return [STATUS_NAMES[code] for code in self.status.tolist()]

    def reasons(self) -> list[Optional[str]]:
        return [REASON_NAMES[code] for code in self.reason.tolist()]

    def faults(self) -> list[Optional[str]]:
        return [FAULT_NAMES[code] for code in self.fault.tolist()]

    def counts(self) -> Counter:
        """How many calls ended in each ``status`` or ``status:reason`` (``fault:<name>`` for a fault), as
        ``Mesh.send_counted`` counts them."""
        counts: Counter = Counter()
        faulty = self.fault != 0
        for code, count in zip(*np.unique(self.fault[faulty], return_counts=True)):
            counts[f"fault:{FAULT_NAMES[int(code)]}"] += int(count)
        combined = self.status[~faulty].astype(np.int16) * 64 + self.reason[~faulty]
        for code, count in zip(*np.unique(combined, return_counts=True)):
            name, why = STATUS_NAMES[int(code) // 64], REASON_NAMES[int(code) % 64]
            counts[name if why is None else f"{name}:{why}"] += int(count)
        return counts


@dataclass(frozen=True)
class ColumnsPart:
    """One batch of a ``send_columns``, checked, as the coordinator takes it: agents and methods as
    :class:`~mesh.calls.coded.CodedNames`, and each call's problem by its index in the part (a call
    with a problem is recorded FAILED with it)."""

    task_ids: list[str]
    sources: CodedNames
    targets: CodedNames
    methods: CodedNames
    payloads: list[Any]
    problems: dict[int, str]

    def wire(self) -> tuple:
        """The arguments of ``EscrowCoordinator.submit_columns``: the lists stay lists (Ray packs them
        with msgpack, three times faster than pickling them inside an object), problems as pairs."""
        return self.task_ids, self.sources, self.targets, self.methods, self.payloads, list(self.problems.items())


def checked_parts(sources: Sequence[str], targets: Sequence[str], payloads: Optional[Sequence[Any]],
                  methods: str | Sequence[str], task_ids: Optional[Sequence[str]], max_payload_bytes: int,
                  part_size: int, new_task_ids: Callable[[int], list[str]]) -> list[ColumnsPart]:
    """The columns checked (see the module doc) and cut into parts of up to ``part_size`` calls; a bad
    value refuses them all, named by its index in the whole column. Without ``task_ids``, the calls
    get ``new_task_ids(count)``."""
    sources, targets = _list_column("sources", sources), _list_column("targets", targets)
    n = len(sources)
    _same_length("targets", targets, n)
    if payloads is None:
        payloads = [None] * n
    elif not isinstance(payloads, (list, tuple)):
        raise InvalidTypeError("payloads", payloads, "a list (one payload a call) or None")
    _same_length("payloads", payloads, n)
    if isinstance(methods, str):
        _check_method("method", methods)
    elif isinstance(methods, (list, tuple)):
        _same_length("methods", methods, n)
        methods = list(methods)
        for method in dict.fromkeys(methods):
            _check_method(f"methods[{methods.index(method)}]", method)
    else:
        raise InvalidTypeError("methods", methods, "a method name or a list of them")
    if task_ids is None:
        task_ids = new_task_ids(n)
    else:
        task_ids = _id_column("task_ids", task_ids)
        _same_length("task_ids", task_ids, n)
        if len(set(task_ids)) != n:
            raise InvalidArgumentError("task_ids", "repeated", "must be distinct within one send")
    payloads = list(payloads)
    problems: dict[int, dict[int, str]] = defaultdict(dict)  # part -> index in it -> problem
    for index, payload in enumerate(payloads):
        if payload is not None and payload_bytes(payload) > max_payload_bytes:
            payloads[index] = None
            problems[index // part_size][index % part_size] = "payload_too_large"
    parts = []
    for first in range(0, n, part_size):
        at = slice(first, first + part_size)
        parts.append(ColumnsPart(
            task_ids[at], CodedNames.encode("sources", sources[at], first_index=first),
            CodedNames.encode("targets", targets[at], first_index=first),
            CodedNames.repeated(methods, len(task_ids[at])) if isinstance(methods, str)
            else CodedNames.encode("methods", methods[at], first_index=first),
            payloads[at], problems.get(first // part_size, {})))
    return parts


def _list_column(field: str, values: Any) -> list:
    """A column as a list (its values are checked where it is encoded)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "UO":
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise InvalidTypeError(field, values, "a list of ids (str)")
    return list(values)


def _id_column(field: str, values: Any) -> list[str]:
    if isinstance(values, np.ndarray) and values.dtype.kind in "UO":
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise InvalidTypeError(field, values, "a list of ids (str)")
    if not all(map(is_id, values)):
        for index, value in enumerate(values):
            check_id(f"{field}[{index}]", value)
    return list(values)


def _same_length(field: str, values: Sequence, n: int) -> None:
    if len(values) != n:
        raise InvalidArgumentError(field, len(values), f"must have one item per call ({n} sources)")


def _check_method(field: str, method: Any) -> None:
    if not isinstance(method, str) or not method or method.startswith("_"):
        raise InvalidArgumentError(field, method, "must be the name of a public method of the target")
