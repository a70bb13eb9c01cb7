"""The seed-compatible :class:`TollboothConfig`, validated by pydantic, with exact money.

Money fields accept int, float, str or Decimal USD and are checked exactly (see
:mod:`mesh.core.money`); every other field is strict: a count is an int (not a bool, a float
or a string), a duration is an int or float of seconds (at least one microsecond, the
clock's unit), a flag is a bool, text is a str (not bytes). Bad values raise
:class:`~mesh.core.errors.ConfigError` naming every bad field. ``TOLLBOOTH_PAPER_MODE=1|0``
in the environment overrides the mode.

>>> TollboothConfig(toll_per_message_usd="0.002").toll_per_message_micros
2000
>>> TollboothConfig(toll_per_message_usd=True)
Traceback (most recent call last):
...
mesh.core.errors.ConfigError: invalid TollboothConfig: toll_per_message_usd=True: expected a number of USD (int, float, str or Decimal; not bool, bytes or other types), got bool
"""

from __future__ import annotations

import difflib
import os
import time
import typing
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, WrapValidator

from ledger.jsonl import FsyncPolicy
from mesh.core.errors import ConfigError, InvalidArgumentError, InvalidTypeError, TollmeshError
from mesh.core.ids import check_id
from mesh.core.money import usd_to_micros

#: The shortest duration a config accepts: the clock counts whole microseconds, so a shorter
#: timeout would round to 0 (an escrow that expires as it is locked).
MIN_DURATION_S = 1e-6


def _exact_usd(value: Any, handler: Any, info: ValidationInfo) -> Any:
    """A money field is checked by :func:`~mesh.core.money.usd_to_micros` as given, never coerced
    first (pydantic would read ``True`` as 1 and ``b"1"`` as "1"); the value is kept as given."""
    try:
        usd_to_micros(value, field=info.field_name or "amount_usd")
    except TollmeshError as exc:
        raise ValueError(_problem(exc)) from None
    return value


def _valid_id(value: str) -> str:
    try:
        check_id("agent id", value)
    except TollmeshError as exc:
        raise ValueError(_problem(exc)) from None
    return value


#: A USD amount: int, float, str or Decimal, exact to the micro (see :func:`~mesh.core.money.usd_to_micros`).
UsdField = Annotated[Union[int, float, str, Decimal], WrapValidator(_exact_usd)]
#: An agent id as a key of a config's caps (see :func:`~mesh.core.ids.check_id`).
AgentIdKey = Annotated[str, AfterValidator(_valid_id)]

#: Where default ledgers go: a booth without ``ledger_path`` writes a fresh ledger of its own there
#: (see :func:`default_ledger_path`), never one an earlier run left.
DEFAULT_OUT_DIR = Path("tollmesh-out")
_PROCESS_STAMP: dict[int, str] = {}  # pid -> stamp: a forked child gets a ledger of its own


def default_ledger_path(mode: str) -> Path:
    """The ledger of a booth given no ``ledger_path``: ``tollmesh-out/booth-<time>-<pid>-<mode>/toll_ledger.jsonl``.

    One per process and mode: this run's booths share it (paper and live apart), and an earlier
    run's ledger (and the caps it used) never comes back unasked; give a ``ledger_path`` to keep one.

    >>> default_ledger_path("paper").name, default_ledger_path("paper") == default_ledger_path("paper")
    ('toll_ledger.jsonl', True)
    """
    pid = os.getpid()
    stamp = _PROCESS_STAMP.setdefault(pid, f"{time.strftime('%Y%m%d-%H%M%S')}-{pid}")
    return DEFAULT_OUT_DIR / f"booth-{stamp}-{mode}" / "toll_ledger.jsonl"


class TollboothMode(str, Enum):
    PAPER = "paper"
    LIVE = "live"


class TollboothConfig(BaseModel):
    """How a :class:`~mesh.booth.tollbooth.Tollbooth` prices, limits, verifies and records tolls."""

    # strict: no field coerces (True is not 1, 2.0 is not a count, "5" is not a duration, b"x" is not text);
    # the paths and enums below opt out, to take their text
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    # Pricing (the seed's fields)
    toll_per_message_usd: UsdField = 0.001
    toll_per_message_tokens: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    # Settlement
    ledger_path: Optional[Path] = Field(default=None, strict=False)
    escrow_timeout_s: Optional[float] = Field(default=300.0, ge=MIN_DURATION_S, allow_inf_nan=False)
    # Mode
    mode: TollboothMode = Field(default=TollboothMode.PAPER, strict=False)
    paper_mode: bool = True
    # x402 integration (the endpoint and key are kept for the seed; verifiers use them as they like)
    x402_endpoint: Optional[str] = None
    x402_api_key: Optional[str] = None
    x402_verify_timeout_s: float = Field(default=5.0, ge=MIN_DURATION_S, le=600.0, allow_inf_nan=False)
    # Limits
    max_daily_toll_per_agent: Optional[UsdField] = 10.0
    agent_daily_caps_usd: dict[AgentIdKey, Optional[UsdField]] = Field(default_factory=dict)
    require_payment_before_route: bool = False
    track_balances: bool = False
    max_settled_records: int = Field(default=100_000, ge=0)
    # Ledger
    ledger_enabled: bool = True
    ledger_fsync: FsyncPolicy = Field(default=FsyncPolicy.NEVER, strict=False)
    ledger_max_segment_bytes: Optional[int] = Field(default=None, ge=1)
    ledger_rotate_daily: bool = False
    ledger_format: Optional[int] = Field(default=None, ge=1, le=2)  # a new ledger's format (None: v2); a ledger keeps its own
    ledger_parquet_dir: Optional[Path] = Field(default=None, strict=False)
    restore_from_ledger: bool = True
    # Observability
    metrics_enabled: bool = True

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise config_error(exc) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise config_error(exc) from None

    def model_post_init(self, __context: Any) -> None:
        explicit = self.model_fields_set
        if "paper_mode" in explicit or "mode" not in explicit:
            mode = TollboothMode.PAPER if self.paper_mode else TollboothMode.LIVE
        else:
            mode = self.mode
        paper_env = os.environ.get("TOLLBOOTH_PAPER_MODE", "").strip().lower()
        if paper_env in ("1", "true", "yes"):
            mode = TollboothMode.PAPER
        elif paper_env in ("0", "false", "no"):
            mode = TollboothMode.LIVE
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "paper_mode", mode is TollboothMode.PAPER)
        if self.ledger_path is None:
            object.__setattr__(self, "ledger_path", default_ledger_path(mode.value))

    # -- exact views of the money fields ----------------------------------------

    @property
    def toll_per_message_micros(self) -> int:
        return usd_to_micros(self.toll_per_message_usd, field="toll_per_message_usd")

    @property
    def max_daily_toll_micros(self) -> Optional[int]:
        cap = self.max_daily_toll_per_agent
        return None if cap is None else usd_to_micros(cap, field="max_daily_toll_per_agent")

    def agent_daily_caps_micros(self) -> dict[str, Optional[int]]:
        return {
            agent: None if cap is None else usd_to_micros(cap, field="agent_daily_caps_usd")
            for agent, cap in self.agent_daily_caps_usd.items()
        }


def _problem(exc: TollmeshError) -> str:
    """What an error says is wrong, without the ``field=value`` its text starts with (the config names those)."""
    if isinstance(exc, InvalidArgumentError):
        return exc.problem
    if isinstance(exc, InvalidTypeError):
        return f"expected {exc.expected}, got {type(exc.value).__name__}"
    return str(exc)


def config_error(exc: ValidationError, what: str = "TollboothConfig", model: Optional[type] = None) -> ConfigError:
    """One ConfigError naming every bad field of ``what`` (its path, the value given, what is allowed).

    With ``model`` (the pydantic class that refused), an unknown field is answered with the
    closest known one ("did you mean 'price_usd'?"), or the list of the known ones.
    """
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"] and error["type"] == "value_error":
            problems.append(message)  # a check across fields: its message names the field
            continue
        where = _where(error["loc"])
        if error["type"] == "missing":  # its input is the whole parent table: not worth showing
            problems.append(f"{where}: a required field is missing")
            continue
        if error["type"] == "extra_forbidden":
            message = _unknown_field(error["loc"], model)
        given = repr(error.get("input"))
        given = given if len(given) <= 80 else given[:77] + "..."
        problems.append(f"{where}={given}: {message}")
    return ConfigError(f"invalid {what}: " + "; ".join(problems))


def _unknown_field(loc: tuple, model: Optional[type]) -> str:
    """What to say of the unknown field at ``loc``: the known field it most resembles, or all of them."""
    known = _fields_at(model, loc[:-1]) if model is not None else []
    if not known:
        return "no such field"
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f"no such field: did you mean {close[0]!r}?"
    return f"no such field; the fields here are: {', '.join(known)}"


def _fields_at(model: Any, path: tuple) -> list[str]:
    """The field names of the (sub)model at ``path`` (list indexes skipped) under ``model``, or []."""
    for part in path:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = next((t for t in _types_in(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return list(getattr(model, "model_fields", {})) if model is not None else []


def _types_in(annotation: Any) -> list[Any]:
    """``annotation`` and the types inside it (``list[X]``, ``Optional[X]``...)."""
    found, todo = [], [annotation]
    while todo:
        t = todo.pop()
        found.append(t)
        todo.extend(typing.get_args(t))
    return found


def _where(loc: tuple) -> str:
    """A field's path as text: ``groups.0.count``, ``agent_daily_caps_usd['agent-1']``, ``... key`` for a dict's key.

    Keys are shown as their repr: one that is not printable text (a lone surrogate) cannot break the message.
    """
    if loc[-1:] == ("[key]",):  # (field, key, "[key]"): the key is shown as the value
        return _where(loc[:-2]) + " key"
    where = ""
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isidentifier() and part.isascii()):
            where += f".{part}"
        else:
            where += f"[{part!r}]"
    return where.lstrip(".") or "config"
