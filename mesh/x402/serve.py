"""``tollmesh serve``: start a mesh, expose its agents through the 402 gateway, serve it with uvicorn.

:func:`build_gateway` makes the pieces from :class:`ServeOptions` (the verifier the mode
asks for, the mesh with its agents and the per-wallet cap, the settler); :func:`serve`
runs it until Ctrl-C, then shuts the mesh down (its ledger flushed). The run directory is
fixed (default ``tollmesh-out/gateway``), so a gateway started again adopts its ledger:
the payments it accepted stay spent.

Modes: ``live`` (default): payments verified offline, settled on the in-memory chain (every
wallet holds ``chain_balance_usd`` there to start with; nothing leaves the process);
``facilitator``: verified and settled by the operator's facilitator at ``facilitator_url``;
``paper``: structural checks only, nothing settled, said in every answer and record.

>>> ServeOptions().mode, ServeOptions(paper=True).mode, ServeOptions(facilitator_url="http://127.0.0.1:9").mode
('live', 'paper', 'facilitator')
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from mesh.core.errors import ConfigError
from mesh.core.money import usd_to_micros

DEFAULT_PORT = 8402
DEFAULT_OUT = Path("tollmesh-out") / "gateway"
DEMO_PAYEE_NAME = "tollmesh-demo-payee"
DEMO_PAYER_NAME = "tollmesh-demo-payer"


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    out_dir: Path = DEFAULT_OUT
    pay_to: Optional[str] = None  # None: a demo payee (said at start)
    network: str = "eip155:84532"
    agents: dict[str, str] = field(default_factory=dict)  # agent id -> "module:Class"; none: the demo agents
    paper: bool = False
    free: bool = False  # payment off: the benchmarks' baseline (escrow without x402)
    facilitator_url: Optional[str] = None
    facilitator_timeout_s: float = 5.0
    chain_balance_usd: str = "10"
    wallet_daily_cap_usd: Optional[str] = "1.00"
    max_body_bytes: int = 64 * 1024
    timeout_s: float = 30.0
    shards: int = 2
    address: Optional[str] = None

    @property
    def mode(self) -> str:
        if self.paper and self.facilitator_url:
            raise ConfigError("--paper and --facilitator exclude each other: paper mode settles nothing")
        if self.free and (self.paper or self.facilitator_url):
            raise ConfigError("--no-payment excludes --paper and --facilitator")
        return "free" if self.free else "paper" if self.paper else "facilitator" if self.facilitator_url else "live"


def demo_key(name: str) -> bytes:
    """The private key of a demo wallet: derived from its name, the same everywhere (never hold money with it)."""
    from eth_utils import keccak

    return keccak(text=f"tollmesh-x402-wallet:0:{name}")


def agent_classes(options: ServeOptions) -> dict[str, type]:
    from mesh.calls.agent import Agent
    from mesh.behaviours import load_class
    from mesh.x402.demo_agents import DEMO_AGENTS

    if not options.agents:
        return dict(DEMO_AGENTS)
    return {agent_id: load_class(spec, Agent, field=f"--agent {agent_id}") for agent_id, spec in options.agents.items()}


def build_gateway(options: ServeOptions, *, mesh: Any = None) -> Any:
    """The :class:`~mesh.x402.gateway.Gateway` of ``options`` (a mesh is started unless given one)."""
    from mesh.mesh import Mesh
    from mesh.calls.mesh_config import MeshConfig
    from mesh.x402.chain import InMemoryChain
    from mesh.x402.exact import ExactEvmVerifier
    from mesh.x402.facilitator import FacilitatorVerifier, HttpFacilitator, LocalFacilitator
    from mesh.x402.gateway import Gateway, GatewayLimits
    from mesh.x402.settle import PaymentSettler, PaymentsLog
    from mesh.x402.terms import PaymentTerms
    from mesh.x402.wallet import PayingWallet

    mode = options.mode
    pay_to = options.pay_to or PayingWallet(demo_key(DEMO_PAYEE_NAME)).address
    terms = PaymentTerms(pay_to=pay_to, network=options.network)
    classes = agent_classes(options)
    limits = GatewayLimits(max_body_bytes=options.max_body_bytes)
    if mode == "facilitator":
        facilitator = HttpFacilitator(options.facilitator_url, terms, timeout_s=options.facilitator_timeout_s)
        verifier: Any = FacilitatorVerifier(facilitator, terms)
        settler_facilitator: Any = facilitator
    else:
        verifier = None if mode == "free" else ExactEvmVerifier(terms, paper=mode == "paper")
        chain = InMemoryChain(terms, default_balance_micros=usd_to_micros(options.chain_balance_usd, field="--chain-balance"))
        settler_facilitator = None if mode in ("paper", "free") else LocalFacilitator(chain)
    if mesh is None:
        mesh = Mesh(MeshConfig(
            name="gateway", out_dir=options.out_dir, shards=options.shards, handler_timeout_s=options.timeout_s,
            max_daily_toll_per_agent=options.wallet_daily_cap_usd, max_payload_bytes=options.max_body_bytes,
            fast_lane=False,  # concurrent requests are batched by the coalescer; the lane serves one call at a time
        ), address=options.address)
    mesh.add_agent_groups([(cls, [agent_id], {}) for agent_id, cls in classes.items()], hosts=1)
    mesh.set_x402_verifier(verifier)
    settler = PaymentSettler(PaymentsLog(mesh.ledger_path), settler_facilitator)
    return Gateway(mesh, classes, terms, settler, limits=limits, mode=mode)


def banner(gateway: Any, options: ServeOptions) -> str:
    from mesh.core.money import format_usd

    t = gateway.terms
    lines = [f"tollmesh gateway on http://{options.host}:{options.port}  (mode: {gateway.mode}; OpenAPI page: /docs)",
             f"  pays: USDC {t.asset} on {t.network} to {t.pay_to}" + ("  (a demo payee: give --pay-to)" if not options.pay_to else ""),
             f"  ledger: {gateway.mesh.ledger_path}  payments: {gateway.settler.log.path}"]
    for agent_id, prices in gateway.prices.items():
        for method in sorted(prices.methods):
            path = f"/agents/{agent_id}" + ("" if method == "handle" else f"/{method}")
            lines.append(f"  POST {path:<28} ${format_usd(prices.price_micros(method))} a call")
    if gateway.mode == "live":
        lines.append(f"  settlement: the in-memory chain (every wallet starts with ${options.chain_balance_usd} there)")
    lines.append("  pay it: tollmesh pay http://%s:%d/agents/%s --data '\"hi\"'" % (options.host, options.port,
                                                                                   next(iter(gateway.prices))))
    return "\n".join(lines)


def serve(options: ServeOptions) -> int:
    """Run the gateway until Ctrl-C; the exit code."""
    import uvicorn

    gateway = build_gateway(options)
    print(banner(gateway, options), file=sys.stderr, flush=True)
    config = uvicorn.Config(gateway.app, host=options.host, port=options.port, log_level="warning",
                            timeout_keep_alive=5, server_header=False, limit_concurrency=1_000)
    try:
        uvicorn.Server(config).run()
    finally:
        gateway.mesh.shutdown()
    logging.getLogger("tollmesh").info("gateway stopped")
    return 0
