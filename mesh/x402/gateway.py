"""The HTTP 402 gateway: mesh agents served over HTTP to real x402 clients (``tollmesh serve``).

An ASGI app (FastAPI, on Starlette) served by uvicorn. Each exposed agent method is a
``POST /agents/<agent>`` (``handle``) or ``POST /agents/<agent>/<method>`` route whose body
is the call's JSON payload:

- no ``PAYMENT-SIGNATURE`` header: **402** with the quote, the SDK's ``PaymentRequired``
  (base64 in ``PAYMENT-REQUIRED``, JSON in the body): the agent's price in atomic USDC units;
- a payment that does not even decode: **402** ``x402_malformed``, nothing recorded;
- otherwise the call goes through the mesh's escrow, paid by the payer's wallet (the call's
  source agent is the payer's address, so per-agent daily caps hold per payer wallet):
  the mesh's verifier checks the payment (**402** with the reason: ``x402_expired``,
  ``x402_replayed``, ``x402_underpaid``...), the toll is locked, the agent runs, and
  - it succeeded: the toll is released, the payment settled (:mod:`mesh.x402.settle`) and
    the answer is **200** ``{"result": ...}`` with ``PAYMENT-RESPONSE`` (the SDK's ``SettleResponse``);
  - it failed: the toll is refunded, nothing is settled, **502** (``handler_error``),
    **504** (``handler_timeout``) or **503**; over its daily cap: **429** ``over_daily_cap``.

Limits: bodies over ``max_body_bytes`` get 413, bodies slower than ``body_timeout_s`` 408,
a call is bounded by the mesh's ``handler_timeout_s``. Errors never carry a stack trace:
every answer is JSON naming a reason. ``GET /agents`` lists the agents and prices;
``/openapi.json`` and ``/docs`` (the OpenAPI page) list every route with its price.

Why an ASGI app under uvicorn rather than Ray Serve: the gateway is a thin driver of the
mesh (one ``acall`` per request, batched by the mesh's coalescer), the SDK's server side and
its clients are ASGI/httpx, and one uvicorn process needs nothing of Ray but a driver: on a
``ray up`` cluster it runs on the head node (``tollmesh serve --address auto``) while the
mesh's actors spread over the nodes. Ray Serve would add its controller and proxy actors
and a second HTTP layer in front of the same coordinator (``ray[serve]`` is not a dependency).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import orjson

from mesh.calls.agent import DEFAULT_METHOD, CallResult, PriceTable, price_table
from mesh.core.errors import InvalidArgumentError
from mesh.core.money import format_usd
from mesh.core.records import Reason, SettlementStatus
from mesh.x402.proof import ExactPayment, MalformedPayment, parse_payment
from mesh.x402.sdk import require_sdk
from mesh.x402.settle import PaymentSettler
from mesh.x402.terms import PaymentTerms

require_sdk()
from eth_utils import to_checksum_address  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from x402.http.constants import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER  # noqa: E402
from x402.http.utils import encode_payment_required_header, encode_payment_response_header  # noqa: E402

logger = logging.getLogger("tollmesh.gateway")

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_BODY_TIMEOUT_S = 10.0
TIMEOUT_MARGIN_S = 5.0  # past the mesh's own handler timeout, the gateway stops waiting (the mesh refunds by then)
FREE_SOURCE = "gateway-free"  # who pays when payment is off (mode "free")
_URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")

#: A sentence for each refusal a client can get, for the ``detail`` of the JSON body.
REASON_TEXT = {
    "payment_required": "this call costs the quoted amount: pay it with a PAYMENT-SIGNATURE header (x402 v2)",
    Reason.X402_MALFORMED.value: "the PAYMENT-SIGNATURE header is not an x402 v2 exact EVM payment",
    Reason.X402_WRONG_SCHEME.value: "only the 'exact' scheme of x402 v2 is accepted",
    Reason.X402_WRONG_NETWORK.value: "the payment is signed for another network than the quote's",
    Reason.X402_WRONG_ASSET.value: "the payment is in another token than the quote's",
    Reason.X402_WRONG_DOMAIN.value: "the payment's EIP-712 domain (token name, version) is not the token's",
    Reason.X402_WRONG_PAYEE.value: "the payment pays someone else than the quote's payTo",
    Reason.X402_WRONG_PAYER.value: "the payment is not signed by the paying wallet",
    Reason.X402_UNDERPAID.value: "the payment authorizes less than the price",
    Reason.X402_NOT_YET_VALID.value: "the payment is not valid yet (validAfter)",
    Reason.X402_EXPIRED.value: "the payment has expired or is about to (validBefore)",
    Reason.X402_BAD_SIGNATURE.value: "the signature does not recover to the payer",
    Reason.X402_REPLAYED.value: "this payment (its nonce) paid for another call already: sign a new one",
    Reason.X402_REJECTED.value: "the payment was refused",
    Reason.X402_ERROR.value: "the payment could not be verified (the verifier failed): refused",
    Reason.X402_TIMEOUT.value: "the payment could not be verified in time: refused",
    Reason.OVER_DAILY_CAP.value: "this wallet reached its daily cap on this gateway",
    Reason.HANDLER_ERROR.value: "the agent failed: the toll was refunded, nothing is settled",
    Reason.HANDLER_TIMEOUT.value: "the agent took too long: the toll was refunded, nothing is settled",
    Reason.AGENT_UNAVAILABLE.value: "the agent is unavailable: the toll was refunded, nothing is settled",
    Reason.PAYLOAD_TOO_LARGE.value: "the request body is too large",
    "settlement_failed": "the agent answered, but its payment could not be settled: no answer is given",
    "bad_json": "the request body is not JSON",
    "body_timeout": "the request body did not arrive in time",
    "gateway_timeout": "the call took too long",
    "internal_error": "the gateway failed",
}
_STATUS_OF_REASON = {
    Reason.OVER_DAILY_CAP.value: 429, Reason.PAYLOAD_TOO_LARGE.value: 413, Reason.HANDLER_ERROR.value: 502,
    Reason.HANDLER_TIMEOUT.value: 504, Reason.AGENT_UNAVAILABLE.value: 503, Reason.INSUFFICIENT_FUNDS.value: 402,
}


@dataclass(frozen=True)
class GatewayLimits:
    """Bounds on a request: its body's size and arrival time (the mesh bounds the call itself)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        if isinstance(self.max_body_bytes, bool) or not isinstance(self.max_body_bytes, int) or not 1 <= self.max_body_bytes <= 1 << 30:
            raise InvalidArgumentError("max_body_bytes", self.max_body_bytes, "must be an int of 1 to 2**30 bytes")
        if isinstance(self.body_timeout_s, bool) or not isinstance(self.body_timeout_s, (int, float)) or not 0 < self.body_timeout_s <= 3_600:
            raise InvalidArgumentError("body_timeout_s", self.body_timeout_s, "must be a number of seconds above 0, at most 3600")


class _Refusal(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class Gateway:
    """The app over ``mesh`` exposing ``agents`` (``{agent_id: agent_class}``, already in the mesh); see the module doc."""

    def __init__(self, mesh: Any, agents: dict[str, type], terms: PaymentTerms, settler: PaymentSettler, *,
                 limits: Optional[GatewayLimits] = None, mode: str = "live") -> None:
        if not agents:
            raise InvalidArgumentError("agents", agents, "the gateway needs at least one agent to expose")
        for agent_id in agents:
            if not _URL_SAFE.match(agent_id):
                raise InvalidArgumentError("agent_id", agent_id, "an exposed agent's id must be URL-safe: letters, digits, . _ ~ -")
        self.mesh, self.terms, self.settler = mesh, terms, settler
        self.limits = limits or GatewayLimits()
        self.mode = mode
        self.prices: dict[str, PriceTable] = {agent_id: price_table(cls) for agent_id, cls in agents.items()}
        self.classes = dict(agents)
        self.timeout_s = mesh.config.handler_timeout_s + TIMEOUT_MARGIN_S
        self.app = self._build_app()

    # -- the app -------------------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        t = self.terms
        app = FastAPI(
            title="tollmesh x402 gateway", version="1",
            description=(f"Agents of a tollmesh mesh, paid per call with x402 v2 ('exact' scheme, EIP-3009) in "
                         f"USDC ({t.asset}) on {t.network}, to {t.pay_to}. A call without a PAYMENT-SIGNATURE "
                         f"header is answered 402 with its quote; mode: {self.mode}."),
        )
        app.add_exception_handler(Exception, self._internal_error)
        app.add_api_route("/agents", self._list_agents, methods=["GET"], summary="The agents and their prices (free)")
        for agent_id, prices in self.prices.items():
            for method in sorted(prices.methods):
                self._add_route(app, agent_id, method, prices.price_micros(method))
        return app

    def _add_route(self, app: FastAPI, agent_id: str, method: str, price_micros: int) -> None:
        path = f"/agents/{agent_id}" if method == DEFAULT_METHOD else f"/agents/{agent_id}/{method}"

        async def call(request: Request) -> Response:
            return await self._handle(request, agent_id, method, price_micros)

        doc = (self.classes[agent_id].__doc__ or "").strip().splitlines()
        app.add_api_route(
            path, call, methods=["POST"], name=f"{agent_id}.{method}", operation_id=f"{agent_id}__{method}",
            summary=f"{agent_id}.{method}: ${format_usd(price_micros)} a call ({price_micros} atomic USDC)",
            description=(doc[0] + "\n\n" if doc else "") + (
                f"Price: {price_micros} atomic units of USDC ({_asset_text(self.terms)}), paid to {self.terms.pay_to} on "
                f"{self.terms.network}. The request body is the call's JSON payload; the answer is "
                "`{\"result\": ...}` with a PAYMENT-RESPONSE header."),
            responses={
                200: {"description": "paid and answered; PAYMENT-RESPONSE holds the settlement"},
                402: {"description": "payment required (PAYMENT-REQUIRED holds the quote) or refused (the reason)"},
                429: {"description": "the paying wallet is over its daily cap"},
                502: {"description": "the agent failed: refunded, not settled"},
            },
            openapi_extra={
                "requestBody": {"content": {"application/json": {"schema": {}}}, "required": False},
                "x-x402-price": {"scheme": "exact", "network": self.terms.network, "asset": self.terms.asset,
                                 "amount": str(price_micros), "payTo": self.terms.pay_to, "usd": format_usd(price_micros)},
            },
        )

    async def _list_agents(self) -> dict[str, Any]:
        return {
            "network": self.terms.network, "asset": self.terms.asset, "pay_to": self.terms.pay_to, "mode": self.mode,
            "agents": [
                {"agent": agent_id, "method": method,
                 "path": f"/agents/{agent_id}" + ("" if method == DEFAULT_METHOD else f"/{method}"),
                 "price_micros": prices.price_micros(method), "price_usd": format_usd(prices.price_micros(method))}
                for agent_id, prices in self.prices.items() for method in sorted(prices.methods)
            ],
        }

    async def _internal_error(self, request: Request, exc: Exception) -> Response:
        logger.exception("gateway: %s %s failed", request.method, request.url.path, exc_info=exc)
        return _json(500, {"error": "internal_error", "detail": REASON_TEXT["internal_error"]})

    # -- one call --------------------------------------------------------------------------------

    async def _handle(self, request: Request, agent_id: str, method: str, price_micros: int) -> Response:
        try:
            payload = await self._payload(request)
            if self.mode == "free":
                return await self._free_call(agent_id, method, payload)
            header = request.headers.get("payment-signature")
            if not header:
                reason = Reason.X402_WRONG_SCHEME.value if request.headers.get("x-payment") else "payment_required"
                return self._payment_required(request, price_micros, reason)
            try:
                payment = parse_payment(header)
            except MalformedPayment as exc:
                return self._payment_required(request, price_micros, Reason.X402_MALFORMED.value, str(exc))
            payer = to_checksum_address(payment.payer_bytes)
            task_id = f"x402-{uuid.uuid4().hex}"
            result = await asyncio.wait_for(self.mesh.acall(
                payer, agent_id, payload, method=method, task_id=task_id, payer_wallet=payer, tx_signature=header,
            ), self.timeout_s)
            return await self._answer(request, result, payment, header, price_micros)
        except _Refusal as refusal:
            return refusal.response
        except asyncio.TimeoutError:
            return _json(504, {"error": "gateway_timeout", "detail": REASON_TEXT["gateway_timeout"]})

    async def _free_call(self, agent_id: str, method: str, payload: Any) -> Response:
        """Payment off (the benchmarks' baseline): the same escrow, paid by the gateway's own budget, no x402."""
        result = await asyncio.wait_for(self.mesh.acall(FREE_SOURCE, agent_id, payload, method=method), self.timeout_s)
        if result.ok:
            return _json(200, {"result": result.value, "task_id": result.task_id, "mode": self.mode})
        reason = result.record.reason or result.record.status.value
        return _json(_STATUS_OF_REASON.get(reason, 502), {"error": reason, "task_id": result.task_id})

    async def _payload(self, request: Request) -> Any:
        """The body as JSON (None when empty), within the size and time limits."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Refusal(_too_large(limit))

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _Refusal(_too_large(limit))
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            body = await asyncio.wait_for(read(), self.limits.body_timeout_s)
        except asyncio.TimeoutError:
            raise _Refusal(_json(408, {"error": "body_timeout", "detail": REASON_TEXT["body_timeout"]})) from None
        if not body.strip():
            return None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Refusal(_json(400, {"error": "bad_json", "detail": REASON_TEXT["bad_json"]})) from None

    async def _answer(self, request: Request, result: CallResult, payment: ExactPayment, header: str,
                      price_micros: int) -> Response:
        record = result.record
        reason = record.reason
        if record.status is SettlementStatus.RELEASED and result.ok:
            settled = await asyncio.to_thread(self.settler.settle, record.task_id, payment, header)
            headers = {PAYMENT_RESPONSE_HEADER: encode_payment_response_header(settled)}
            if not settled.success:
                return _json(402, {"error": "settlement_failed", "detail": REASON_TEXT["settlement_failed"],
                                   "settle_error": settled.error_reason, "task_id": record.task_id}, headers)
            return _json(200, {"result": result.value, "task_id": record.task_id, "paid_micros": record.amount_micros,
                               "mode": self.mode}, headers)
        if record.status is SettlementStatus.FAILED and reason is not None and reason.startswith("x402_"):
            return self._payment_required(request, price_micros, reason, task_id=record.task_id)
        status = _STATUS_OF_REASON.get(reason or "", 503 if record.status is SettlementStatus.FAILED else 502)
        return _json(status, {"error": reason or record.status.value, "detail": REASON_TEXT.get(reason or "", ""),
                              "task_id": record.task_id, "status": record.status.value})

    def _payment_required(self, request: Request, price_micros: int, reason: str, detail: str = "",
                          task_id: Optional[str] = None) -> Response:
        quote = self.terms.payment_required(price_micros, url=str(request.url), error=reason,
                                            description=f"{request.url.path}: ${format_usd(price_micros)} a call")
        body = quote.model_dump(by_alias=True, exclude_none=True)
        body["detail"] = detail or REASON_TEXT.get(reason, "")
        if task_id is not None:
            body["task_id"] = task_id
        return _json(402, body, {PAYMENT_REQUIRED_HEADER: encode_payment_required_header(quote)})


def _asset_text(terms: PaymentTerms) -> str:
    return f"{terms.token_name} {terms.asset}"


def _json(status: int, body: dict[str, Any], headers: Optional[dict[str, str]] = None) -> Response:
    return Response(orjson.dumps(body, default=str), status_code=status, headers=headers, media_type="application/json")


def _too_large(limit: int) -> Response:
    return _json(413, {"error": Reason.PAYLOAD_TOO_LARGE.value,
                       "detail": f"{REASON_TEXT[Reason.PAYLOAD_TOO_LARGE.value]}: at most {limit} bytes"})
