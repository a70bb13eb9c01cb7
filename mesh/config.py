"""The seed-compatible :class:`TollboothConfig`, validated by pydantic, with exact money.

Money fields accept int, float, str or Decimal USD and are checked exactly (see
:mod:`mesh.money`); bad values raise :class:`~mesh.errors.ConfigError` naming every
bad field. ``TOLLBOOTH_PAPER_MODE=1|0`` in the environment overrides the mode.

>>> TollboothConfig(toll_per_message_usd="0.002").toll_per_message_micros
2000
"""

from __future__ import annotations

import os
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ledger.jsonl import FsyncPolicy
from mesh.errors import ConfigError, TollmeshError
from mesh.money import usd_to_micros

UsdField = Union[int, float, str, Decimal]

DEFAULT_LEDGER_PATH = Path("tollmesh-out") / "toll_ledger.jsonl"


class TollboothMode(str, Enum):
    PAPER = "paper"
    LIVE = "live"


class TollboothConfig(BaseModel):
    """How a :class:`~mesh.tollbooth.Tollbooth` prices, limits, verifies and records tolls."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Pricing (the seed's fields)
    toll_per_message_usd: UsdField = 0.001
    toll_per_message_tokens: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    # Settlement
    ledger_path: Optional[Path] = None
    escrow_timeout_s: Optional[float] = Field(default=300.0, gt=0.0, allow_inf_nan=False)
    # Mode
    mode: TollboothMode = TollboothMode.PAPER
    paper_mode: bool = True
    # x402 integration (the endpoint and key are kept for the seed; verifiers use them as they like)
    x402_endpoint: Optional[str] = None
    x402_api_key: Optional[str] = None
    x402_verify_timeout_s: float = Field(default=5.0, gt=0.0, le=600.0, allow_inf_nan=False)
    # Limits
    max_daily_toll_per_agent: Optional[UsdField] = 10.0
    agent_daily_caps_usd: dict[str, Optional[UsdField]] = Field(default_factory=dict)
    require_payment_before_route: bool = False
    track_balances: bool = False
    max_settled_records: int = Field(default=100_000, ge=0)
    # Ledger
    ledger_enabled: bool = True
    ledger_fsync: FsyncPolicy = FsyncPolicy.NEVER
    ledger_max_segment_bytes: Optional[int] = Field(default=None, ge=1)
    ledger_rotate_daily: bool = False
    ledger_parquet_dir: Optional[Path] = None
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

    @field_validator("toll_per_message_usd", "max_daily_toll_per_agent")
    @classmethod
    def _exact_usd(cls, value: Any, info: Any) -> Any:
        if value is not None:
            _check_usd(value, info.field_name)
        return value

    @field_validator("agent_daily_caps_usd")
    @classmethod
    def _exact_caps(cls, caps: dict[str, Any]) -> dict[str, Any]:
        for agent, cap in caps.items():
            if cap is not None:
                _check_usd(cap, f"agent_daily_caps_usd[{agent!r}]")
        return caps

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
            object.__setattr__(self, "ledger_path", DEFAULT_LEDGER_PATH)

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


def _check_usd(value: Any, field: str) -> None:
    try:
        usd_to_micros(value, field=field)
    except TollmeshError as exc:
        raise ValueError(str(exc)) from None


def config_error(exc: ValidationError, what: str = "TollboothConfig") -> ConfigError:
    """One ConfigError naming every bad field of ``what`` (its path, the value given, what is allowed)."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"] and error["type"] == "value_error":
            problems.append(message)  # a check across fields: its message names the field
            continue
        where = ".".join(str(part) for part in error["loc"]) or "config"
        given = repr(error.get("input"))
        given = given if len(given) <= 80 else given[:77] + "..."
        problems.append(f"{where}={given}: {message}")
    return ConfigError(f"invalid {what}: " + "; ".join(problems))
