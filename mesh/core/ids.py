"""Ids at the boundary: agent ids, task ids and payment fields must be text every part of tollmesh can write.

An id is a ``str`` of 1 to :data:`MAX_ID_CHARS` characters that encodes as UTF-8 and holds
no control character. UTF-8, because the ledger (JSONL and Parquet), Ray's wire and the
reports all write it: a lone surrogate such as ``"\\ud800"`` cannot be written, and let in it
fails far from the caller (a whole batch, a shard's journal). No control characters (Unicode
category Cc: U+0000-U+001F and U+007F-U+009F), because ids are printed (``ledger report``,
logs, CSV exports, error messages): a newline forges a log line, an escape sequence rewrites a
terminal, a NUL cuts a C string short, and no real agent or task id needs one. That set is
fixed by Unicode's stability policy, so an id valid on one Python is valid on every other.
Everything else is allowed (accents, emoji, joiners, spaces).

Errors are :class:`~mesh.core.errors.InvalidTypeError` (not a str) or
:class:`~mesh.core.errors.InvalidIdError` (naming the field, the value and the problem).

>>> is_id("alice"), is_id("zoë-🦜"), is_id("\\ud800"), is_id("a\\nb"), is_id(""), is_id(b"alice")
(True, True, False, False, False, False)
>>> check_id("task_id", "t\\x1b[2J")
Traceback (most recent call last):
...
mesh.core.errors.InvalidIdError: task_id='t\\x1b[2J': holds a control character ('\\x1b' at index 1); ids are printed in reports and logs
"""

from __future__ import annotations

import re
from typing import Any

from mesh.core.errors import InvalidIdError, InvalidTypeError

MAX_ID_CHARS = 256
MAX_PAYMENT_FIELD_CHARS = 8192

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_SHOWN_CHARS = 40  # how much of a long value an error message shows
_SHOWN_REPR_CHARS = 120  # and how long its repr may be there


def is_id(value: Any) -> bool:
    """Whether ``value`` is a valid id: the hot path's check. For an ASCII id (the common case) that is
    O(1) for encodability (CPython knows a str is ASCII) and one C scan for control characters, bounded
    by MAX_ID_CHARS (about 60 ns for a 12-character id); other text is encoded and searched."""
    if type(value) is not str or not 0 < len(value) <= MAX_ID_CHARS:
        return False
    if value.isascii():  # O(1): CPython knows it; then printable ASCII is exactly "no control character"
        return value.isprintable()
    return _text_problem(value) is None


def check_id(field: str, value: Any) -> None:
    """Raise unless ``value`` is a valid id (see the module doc); ``field`` names it in the error."""
    if is_id(value):
        return
    if not isinstance(value, str):
        raise InvalidTypeError(field, value, "a str")
    if not 0 < len(value) <= MAX_ID_CHARS:
        raise InvalidIdError(field, _shown(value), f"must be 1 to {MAX_ID_CHARS} characters, not {len(value)}")
    problem = _text_problem(value)
    if problem is not None:
        raise InvalidIdError(field, _shown(value), problem)


def agent_id_of(agent: Any) -> Any:
    """The id an agent stands for in a charge. A str is itself. An agent object (the seed's router
    passes the target agent itself, then calls its ``handle``): one with a str ``name`` attribute is
    recorded by it; one with a callable ``handle`` but no such name, by ``str(agent)``. Anything else
    (None, numbers, bytes, containers, an object that is no agent) comes back as it is, for
    :func:`check_id` to refuse: a value is not taken for an id because it can be printed.

    >>> class Summarizer:
    ...     name = "summarizer"
    >>> agent_id_of("bob"), agent_id_of(Summarizer()), agent_id_of(None), agent_id_of(["bob"])
    ('bob', 'summarizer', None, ['bob'])
    """
    if isinstance(agent, (str, bytes, bytearray, int, float, list, tuple, dict, set)) or agent is None:
        return agent
    name = getattr(agent, "name", None)
    if isinstance(name, str):
        return name
    return str(agent) if callable(getattr(agent, "handle", None)) else agent


def check_payment_field(field: str, value: Any) -> None:
    """Raise unless ``value`` is None or text of at most :data:`MAX_PAYMENT_FIELD_CHARS` (the same text rules as ids)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidTypeError(field, value, "a str or None")
    if len(value) > MAX_PAYMENT_FIELD_CHARS:
        raise InvalidIdError(field, _shown(value), f"must be at most {MAX_PAYMENT_FIELD_CHARS} characters")
    if not (value.isascii() and value.isprintable()) and value:
        problem = _text_problem(value)
        if problem is not None:
            raise InvalidIdError(field, _shown(value), problem)


def _text_problem(value: str) -> str | None:
    """What makes ``value`` unwritable or unprintable, or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"is not valid text: a lone surrogate ({value[exc.start]!r} at index {exc.start}) "
                "cannot be encoded as UTF-8")
    control = _CONTROL.search(value)
    if control is not None:
        return (f"holds a control character ({control.group()!r} at index {control.start()}); "
                "ids are printed in reports and logs")
    return None


def _shown(value: str) -> str:
    """The start of ``value`` that an error message shows: at most ``_SHOWN_CHARS`` characters, and
    short enough that its repr (where a control or unprintable character takes up to 10) stays short."""
    shown = value[:_SHOWN_CHARS]
    while len(repr(shown)) > _SHOWN_REPR_CHARS:
        shown = shown[:-1]
    return shown if shown == value else shown + "..."
