"""The small integer codes the columnar book stores instead of enum members and texts.

Status, reason and event kind are int8 columns; these tables turn them into the
ledger's texts (and JSON fragments) and back.

>>> STATUS_NAMES[LOCKED], REASON_NAMES[REASON_CODE[Reason.OVER_DAILY_CAP]]
('escrow_locked', 'over_daily_cap')
"""

from __future__ import annotations

import orjson

from mesh.core.records import Reason, SettlementStatus

# -- statuses: what a task row is in (0: no such task) ---------------------------------
UNKNOWN, PENDING, LOCKED, RELEASED, REFUNDED, FAILED = range(6)
STATUS_NAMES: tuple = (None, "pending", "escrow_locked", "released", "refunded", "failed")
STATUS_OF_CODE: tuple = (None, *(SettlementStatus(name) for name in STATUS_NAMES[1:]))

# -- reasons: 0 is none --------------------------------------------------------------
REASON_NAMES: tuple = (None, *(reason.value for reason in Reason))
REASON_CODE: dict = {reason: code for code, reason in enumerate(Reason, start=1)}
REASON_CODE.update({reason.value: code for reason, code in list(REASON_CODE.items())})
NO_REASON = 0
OVER_DAILY_CAP = REASON_CODE[Reason.OVER_DAILY_CAP]
INSUFFICIENT_FUNDS = REASON_CODE[Reason.INSUFFICIENT_FUNDS]
UNKNOWN_AGENT = REASON_CODE[Reason.UNKNOWN_AGENT]
ESCROW_TIMEOUT = REASON_CODE[Reason.ESCROW_TIMEOUT]
PAYMENT_REQUIRED = REASON_CODE[Reason.PAYMENT_REQUIRED]

# -- event kinds ---------------------------------------------------------------------
DEPOSIT, LOCK, PAPER_RELEASE, RELEASE, REFUND, EXPIRE, REJECT, PEND = range(8)
KIND_NAMES: tuple = ("deposit", "lock", "paper_release", "release", "refund", "expire", "reject", "pending")
KIND_CODE: dict = {name: code for code, name in enumerate(KIND_NAMES)}

#: JSON fragments by code (what the encoder takes from).
STATUS_JSON: list = [orjson.dumps(name).decode() for name in STATUS_NAMES]
REASON_JSON: list = [orjson.dumps(name).decode() for name in REASON_NAMES]
KIND_JSON: list = [orjson.dumps(name).decode() for name in KIND_NAMES]
