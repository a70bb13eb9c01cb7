"""Shared pieces of the x402 tests: terms, wallets, and payments made wrong on purpose."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from mesh import Agent
from mesh.x402.terms import PaymentTerms
from mesh.x402.wallet import PayingWallet

PAY_TO = "0x2222222222222222222222222222222222222222"
OTHER = "0x3333333333333333333333333333333333333333"
BASE_MAINNET_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"


def terms(**changes: Any) -> PaymentTerms:
    return PaymentTerms(**{"pay_to": PAY_TO, **changes})


def payer(name: str = "alice") -> PayingWallet:
    return PayingWallet.derived(1, name)


def edited(header: str, edit: Any) -> str:
    """``header`` decoded, changed by ``edit(payload_dict)``, encoded again (its signature unchanged)."""
    payload = json.loads(base64.b64decode(header))
    edit(payload)
    return base64.b64encode(json.dumps(payload).encode()).decode()


def forged(header: str) -> str:
    """The payment with one byte of its signature changed."""
    def flip(payload: dict) -> None:
        sig = payload["payload"]["signature"]
        payload["payload"]["signature"] = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    return edited(header, flip)


def encoded(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


class Slow(Agent):
    """Sleeps for its payload's seconds: past the mesh's handler timeout, the gateway answers 504."""

    price_usd = "0.001"

    async def handle(self, ctx, payload):
        await asyncio.sleep(float(payload))
        return "late"
