"""The HTTP 402 gateway end to end: the official x402 client pays over a real uvicorn socket, every
refusal gets 402 with its reason and leaves the ledger verifying with nothing locked, failures are
refunded and never settled, a replay is refused after a restart, and the OpenAPI page lists prices."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import httpx
import pytest

from ledger import read_events, verify
from mesh.x402.serve import ServeOptions, build_gateway
from mesh.x402.wallet import PayingWallet
from x402_helpers import OTHER, edited, forged, terms

PRICE = 1_000  # echo's, in micros = atomic USDC


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a real localhost socket, in a thread; its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@pytest.fixture
def gateway_of(make_mesh, tmp_path):
    def make(**options: Any) -> Any:
        mesh_options = {k: options.pop(k) for k in ("max_daily_toll_per_agent", "out_dir", "handler_timeout_s") if k in options}
        mesh_options.setdefault("out_dir", tmp_path / "gateway")
        mesh = make_mesh(**mesh_options)
        serve = ServeOptions(pay_to=terms().pay_to, out_dir=mesh_options["out_dir"], **options)
        return build_gateway(serve, mesh=mesh)
    return make


def official_client(key: bytes) -> Any:
    from eth_account import Account
    from x402 import x402Client
    from x402.mechanisms.evm.exact import ExactEvmClientScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    return x402Client().register("eip155:*", ExactEvmClientScheme(EthAccountSigner(Account.from_key(key))))


def nothing_locked(gateway: Any) -> None:
    result = verify(gateway.mesh.ledger_path)
    assert result.ok, result.problems
    assert result.open_escrows == 0
    assert gateway.mesh.stats()["open_escrows"] == 0


def test_the_official_client_pays_over_a_real_socket(gateway_of):
    """x402HttpxClient (httpx transport) + ExactEvmClientScheme(EthAccountSigner): 402, pays, 200 + PAYMENT-RESPONSE."""
    from x402.http.clients import x402HttpxClient
    from x402.http.utils import decode_payment_response_header

    gateway = gateway_of()
    key = b"\x31" * 32
    payer = PayingWallet(key).address

    async def pay(url: str) -> httpx.Response:
        async with x402HttpxClient(official_client(key), timeout=30) as client:
            return await client.post(f"{url}/agents/echo", json={"hello": "mesh"})

    with serving(gateway.app) as url:
        unpaid = httpx.post(f"{url}/agents/echo", json="hi", timeout=30)
        response = asyncio.run(pay(url))
    assert unpaid.status_code == 402 and unpaid.headers["PAYMENT-REQUIRED"]
    assert response.status_code == 200, response.text
    assert response.json()["result"] == {"hello": "mesh"}
    settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.transaction.startswith("0x") and settled.payer == payer
    events = read_events(gateway.mesh.ledger_path).events
    paid = [e for e in events if e["kind"] in ("lock", "release")]
    assert [e["kind"] for e in paid] == ["lock", "release"]
    assert all(e["payer_wallet"] == payer and e["source_agent"] == payer and e["proof_digest"] for e in paid)
    log = gateway.settler.log.read()
    assert [(r["success"], r["transaction"], r["value"]) for r in log] == [(True, settled.transaction, PRICE)]
    chain = gateway.settler.facilitator.chain
    start = chain.default_balance_micros  # every wallet's on the in-memory chain
    assert (chain.balance_of(payer), chain.balance_of(gateway.terms.pay_to)) == (start - PRICE, start + PRICE)
    nothing_locked(gateway)


def test_an_unpaid_call_gets_the_quote(gateway_of):
    from x402.http.utils import decode_payment_required_header

    gateway = gateway_of()
    response = asyncio.run(_post(gateway, "/agents/summarize", "One. Two."))
    assert response.status_code == 402
    quote = decode_payment_required_header(response.headers["PAYMENT-REQUIRED"])
    (accepts,) = quote.accepts
    assert (accepts.scheme, accepts.amount, accepts.pay_to, accepts.network) == ("exact", "10000", terms().pay_to, "eip155:84532")
    assert quote.error == "payment_required" and response.json()["accepts"][0]["amount"] == "10000"


async def _post(gateway: Any, path: str, payload: Any = None, headers: dict | None = None, content: bytes | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test", timeout=30) as client:
        if content is not None:
            return await client.post(path, content=content, headers=headers or {})
        return await client.post(path, json=payload, headers=headers or {})


def _signed(wallet: PayingWallet, amount: int = PRICE, **options: Any) -> str:
    return wallet.pay(options.pop("terms", terms()), amount, now_s=options.pop("now_s", time.time()), **options)


@pytest.mark.parametrize("case, reason", [
    ("forged", "x402_bad_signature"),
    ("wrong_payee", "x402_wrong_payee"),
    ("short", "x402_underpaid"),
    ("expired", "x402_expired"),
    ("not_yet_valid", "x402_not_yet_valid"),
    ("wrong_network", "x402_wrong_network"),
    ("wrong_asset", "x402_wrong_asset"),
    ("malformed", "x402_malformed"),
    ("not_base64", "x402_malformed"),
])
def test_each_bad_payment_gets_402_with_its_reason(gateway_of, case, reason):
    gateway = gateway_of()
    wallet = PayingWallet.derived(3, case)
    now = time.time()
    header = {
        "forged": lambda: forged(_signed(wallet)),
        "wrong_payee": lambda: _signed(wallet, terms=terms(pay_to=OTHER)),
        "short": lambda: _signed(wallet, PRICE - 1),
        "expired": lambda: _signed(wallet, now_s=now - 600, valid_for_s=300),
        "not_yet_valid": lambda: _signed(wallet, valid_after_s=int(now) + 120),
        "wrong_network": lambda: _signed(wallet, terms=terms(network="eip155:8453")),
        "wrong_asset": lambda: edited(_signed(wallet), lambda p: p["accepted"].update({"asset": OTHER})),
        "malformed": lambda: edited(_signed(wallet), lambda p: p["payload"]["authorization"].update({"nonce": "0x12"})),
        "not_base64": lambda: "*** not a payment ***",
    }[case]()
    response = asyncio.run(_post(gateway, "/agents/echo", "hi", {"PAYMENT-SIGNATURE": header}))
    assert response.status_code == 402, response.text
    body = response.json()
    assert body["error"] == reason and body["detail"]
    assert response.headers["PAYMENT-REQUIRED"]
    assert "Traceback" not in response.text
    assert gateway.settler.log.read() == []
    nothing_locked(gateway)


def test_a_replay_is_refused_also_after_the_gateway_restarts(gateway_of, tmp_path):
    out_dir = tmp_path / "restarting"
    first = gateway_of(out_dir=out_dir)
    header = _signed(PayingWallet.derived(3, "replayer"))
    ok = asyncio.run(_post(first, "/agents/echo", "once", {"PAYMENT-SIGNATURE": header}))
    again = asyncio.run(_post(first, "/agents/echo", "twice", {"PAYMENT-SIGNATURE": header}))
    assert ok.status_code == 200 and (again.status_code, again.json()["error"]) == (402, "x402_replayed")
    first.mesh.shutdown()
    second = gateway_of(out_dir=out_dir)  # a new gateway on the same ledger
    after = asyncio.run(_post(second, "/agents/echo", "thrice", {"PAYMENT-SIGNATURE": header}))
    assert (after.status_code, after.json()["error"]) == (402, "x402_replayed")
    nothing_locked(second)


def test_a_failing_agent_is_refunded_and_never_settled(gateway_of):
    gateway = gateway_of()
    response = asyncio.run(_post(gateway, "/agents/echo", "boom", {"PAYMENT-SIGNATURE": _signed(PayingWallet.derived(3, "f"))}))
    assert response.status_code == 502 and response.json()["error"] == "handler_error"
    assert "PAYMENT-RESPONSE" not in response.headers and "Traceback" not in response.text
    assert [e["kind"] for e in read_events(gateway.mesh.ledger_path).events if e["kind"] in ("lock", "refund", "release")] == ["lock", "refund"]
    assert gateway.settler.log.read() == []
    nothing_locked(gateway)


def test_a_wallet_over_its_daily_cap_gets_429(gateway_of):
    gateway = gateway_of(max_daily_toll_per_agent="0.0015")
    wallet = PayingWallet.derived(3, "spender")
    first = asyncio.run(_post(gateway, "/agents/echo", 1, {"PAYMENT-SIGNATURE": _signed(wallet)}))
    second = asyncio.run(_post(gateway, "/agents/echo", 2, {"PAYMENT-SIGNATURE": _signed(wallet)}))
    other = asyncio.run(_post(gateway, "/agents/echo", 3, {"PAYMENT-SIGNATURE": _signed(PayingWallet.derived(3, "other"))}))
    assert first.status_code == 200
    assert (second.status_code, second.json()["error"]) == (429, "over_daily_cap")
    assert other.status_code == 200  # the cap is the wallet's own
    nothing_locked(gateway)


def test_bodies_are_bounded_and_must_be_json(gateway_of):
    gateway = gateway_of(max_body_bytes=1_000)
    header = {"PAYMENT-SIGNATURE": _signed(PayingWallet.derived(3, "b"))}
    large = asyncio.run(_post(gateway, "/agents/echo", content=b'"' + b"x" * 2_000 + b'"', headers=header))
    garbage = asyncio.run(_post(gateway, "/agents/echo", content=b"{not json", headers=header))
    assert (large.status_code, large.json()["error"]) == (413, "payload_too_large")
    assert (garbage.status_code, garbage.json()["error"]) == (400, "bad_json")
    assert asyncio.run(_post(gateway, "/agents/echo", "fine", header)).status_code == 200  # the payment was not spent
    nothing_locked(gateway)


def test_the_openapi_page_lists_agents_and_prices(gateway_of):
    gateway = gateway_of()

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway.app), base_url="http://g") as client:
            return await client.get(path)

    spec = asyncio.run(get("/openapi.json")).json()
    echo = spec["paths"]["/agents/echo"]["post"]
    assert echo["x-x402-price"]["amount"] == "1000" and "$0.001" in echo["summary"]
    assert spec["paths"]["/agents/summarize"]["post"]["x-x402-price"]["amount"] == "10000"
    listing = asyncio.run(get("/agents")).json()
    assert {(a["agent"], a["price_micros"]) for a in listing["agents"]} == {("echo", 1000), ("summarize", 10000)}
    assert asyncio.run(get("/docs")).status_code == 200


def test_paper_mode_settles_nothing_and_says_so(gateway_of):
    from x402.http.utils import decode_payment_response_header

    gateway = gateway_of(paper=True)
    header = forged(_signed(PayingWallet.derived(3, "paper")))  # paper mode recovers no signature
    response = asyncio.run(_post(gateway, "/agents/echo", "hi", {"PAYMENT-SIGNATURE": header}))
    assert response.status_code == 200 and response.json()["mode"] == "paper"
    settled = decode_payment_response_header(response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.transaction == "" and settled.extra["mode"] == "paper"
    (record,) = gateway.settler.log.read()
    assert record["mode"] == "paper" and "no funds moved" in record["note"]
    nothing_locked(gateway)


def test_an_agent_past_its_time_is_refunded_with_504(gateway_of):
    gateway = gateway_of(agents={"slow": "x402_helpers:Slow"}, handler_timeout_s=0.5)
    response = asyncio.run(_post(gateway, "/agents/slow", 5, {"PAYMENT-SIGNATURE": _signed(PayingWallet.derived(3, "s"))}))
    assert (response.status_code, response.json()["error"]) == (504, "handler_timeout")
    assert gateway.settler.log.read() == []
    nothing_locked(gateway)
