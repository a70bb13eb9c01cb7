"""``tollmesh pay URL``: pay a 402 gateway with the official x402 client, show the answer, optionally replay.

The SDK's ``x402Client`` with ``ExactEvmClientScheme(EthAccountSigner(...))`` behind its httpx
transport (``x402HttpxClient``): the first request gets the 402 quote, the transport signs an
EIP-3009 authorization and sends it again with ``PAYMENT-SIGNATURE``. With ``replay``, the
very same ``PAYMENT-SIGNATURE`` is sent once more, as a thief who copied it would: the gateway
must refuse it (402 ``x402_replayed``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class PayOutcome:
    status: int
    body: Any
    settlement: Optional[dict[str, Any]]
    payer: str
    replay_status: Optional[int] = None
    replay_body: Any = None
    sent_headers: list[dict[str, str]] = field(default_factory=list)


def pay(url: str, payload: Any, *, key: bytes, replay: bool = False, timeout_s: float = 30.0) -> PayOutcome:
    """POST ``payload`` (JSON) to ``url``, paying what it asks with ``key``'s wallet (see the module doc)."""
    return asyncio.run(_pay(url, payload, key=key, replay=replay, timeout_s=timeout_s))


async def _pay(url: str, payload: Any, *, key: bytes, replay: bool, timeout_s: float) -> PayOutcome:
    import httpx
    from eth_account import Account
    from x402 import x402Client
    from x402.http.clients.httpx import x402AsyncTransport
    from x402.http.utils import decode_payment_response_header
    from x402.mechanisms.evm.exact import ExactEvmClientScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    account = Account.from_key(key)
    client = x402Client().register("eip155:*", ExactEvmClientScheme(EthAccountSigner(account)))
    recorder = _Recording(httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=x402AsyncTransport(client, recorder), timeout=timeout_s) as http:
        response = await http.post(url, json=payload)
    header = response.headers.get("PAYMENT-RESPONSE")
    settlement = decode_payment_response_header(header).model_dump(by_alias=True, exclude_none=True) if header else None
    outcome = PayOutcome(response.status_code, _body(response), settlement, account.address, sent_headers=recorder.sent)
    signature = next((h["payment-signature"] for h in recorder.sent if "payment-signature" in h), None)
    if replay and signature is not None:
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            again = await http.post(url, json=payload, headers={"PAYMENT-SIGNATURE": signature})
        outcome.replay_status, outcome.replay_body = again.status_code, _body(again)
    return outcome


def _body(response: Any) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class _Recording:
    """An httpx transport that keeps the headers of what it sends (to replay the payment)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[dict[str, str]] = []

    async def handle_async_request(self, request: Any) -> Any:
        self.sent.append({k.lower(): v for k, v in request.headers.items()})
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
