"""Gateway paid requests per second, against the same gateway with payment off.

    python -m benchmarks.x402_gateway [--requests N] [--concurrency C] [--json PATH]

Starts ``tollmesh serve`` twice on localhost, each time in a process of its own (its mesh on
a local Ray of its own): once as it runs for real (``live``: each request's payment verified
offline in the coordinator, escrowed, settled on the in-memory chain through the SDK's
facilitator, PAYMENT-RESPONSE encoded), once with ``--no-payment`` (the same HTTP stack and
the same escrow, no x402). The client, in this process, sends ``N`` requests ``C`` at a time
over one keep-alive pool; the payments are signed before the clock starts. Client and server
share the machine's cores (2 here), as a load test from the same host does; the CPU the server's
process tree (its Ray included, less what it burns when idle) spends a request is measured too, which other work on a shared
machine does not distort, and what it would serve with 2 cores of its own. Figures are
printed and saved as JSON (default ``tollmesh-out/bench/x402_gateway.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import orjson

DEFAULT_JSON = Path("tollmesh-out") / "bench" / "x402_gateway.json"
START_TIMEOUT_S = 180.0
IDLE_SAMPLE_S = 3.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``tollmesh serve`` in a child process, stopped (SIGINT, then its process group) on exit."""

    def __init__(self, out_dir: Path, *, free: bool) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "mesh.cli", "serve", "--port", str(self.port), "--out", str(out_dir),
                "--wallet-daily-cap", "none", "--chain-balance", "1000000"] + (["--no-payment"] if free else [])
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(out_dir.parent / f"serve-{'free' if free else 'paid'}.log", "wb")
        self.process = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> dict[str, Any]:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tollmesh serve exited ({self.process.returncode}): see {self.log.name}")
            try:
                return httpx.get(f"{self.url}/agents", timeout=2).json()
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError(f"tollmesh serve did not answer within {START_TIMEOUT_S} s: see {self.log.name}")

    def cpu_s(self) -> float:
        """CPU seconds the server's whole process tree has used (its Ray, started by it, included)."""
        import psutil

        root = psutil.Process(self.process.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.Error:  # a worker that just ended
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


async def _load(url: str, headers: list[Optional[str]], concurrency: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(headers)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def worker() -> None:
            for header in queue:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json="bench", headers={"PAYMENT-SIGNATURE": header} if header else {})
                    outcome: Any = response.status_code
                except httpx.TransportError as exc:  # counted, not fatal: a closed keep-alive under load, say
                    outcome = f"error:{type(exc).__name__}"
                latencies.append(time.perf_counter() - started)
                statuses[outcome] = statuses.get(outcome, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(headers), "elapsed_s": round(elapsed, 3), "per_s": round(len(headers) / elapsed, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "ok_per_s": round(statuses.get(200, 0) / elapsed, 1)}


def _signed(count: int, listing: dict[str, Any]) -> list[str]:
    from mesh.x402.terms import PaymentTerms
    from mesh.x402.wallet import PayingWallet

    terms = PaymentTerms(pay_to=listing["pay_to"], network=listing["network"])
    wallets = [PayingWallet.derived(0, f"bench-gateway-{i}") for i in range(32)]
    now = time.time()
    return [wallets[i % 32].pay(terms, 1_000, now_s=now, valid_for_s=3_600) for i in range(count)]


def run(requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"requests": requests, "concurrency": concurrency, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="tollmesh-bench-gateway-") as tmp:
        for mode in ("paid", "free"):
            server = Server(Path(tmp) / mode, free=mode == "free")
            try:
                listing = server.wait_ready()
                url = f"{server.url}/agents/echo"
                headers: list[Optional[str]] = _signed(warmup + requests, listing) if mode == "paid" else [None] * (warmup + requests)
                asyncio.run(_load(url, headers[:warmup], concurrency))  # connections open, lanes warm
                idle_before, idle_started = server.cpu_s(), time.perf_counter()
                time.sleep(IDLE_SAMPLE_S)  # what the server's tree burns doing nothing (Ray's own loops)
                idle_rate = (server.cpu_s() - idle_before) / (time.perf_counter() - idle_started)
                cpu_before = server.cpu_s()
                figures[mode] = asyncio.run(_load(url, headers[warmup:], concurrency))
                busy_s = server.cpu_s() - cpu_before - idle_rate * figures[mode]["elapsed_s"]
                figures[mode]["server_idle_cpu_cores"] = round(idle_rate, 3)
                cpu_ms = max(busy_s, 0.0) * 1e3 / requests
                figures[mode]["server_cpu_ms_per_request"] = round(cpu_ms, 3)
                figures[mode]["modeled_per_s_on_2_cores"] = round(2_000 / cpu_ms, 1) if cpu_ms > 0 else None
            finally:
                server.stop()
    figures["paid_over_free"] = round(figures["paid"]["ok_per_s"] / max(figures["free"]["ok_per_s"], 1e-9), 3)
    figures["load_average_1m_after"] = os.getloadavg()[0]
    return figures


def format_figures(f: dict[str, Any]) -> str:
    lines = [f"x402 gateway on localhost, {f['requests']:,} requests {f['concurrency']} at a time ({f['cpus']} cores, client included)"]
    for mode, label in (("paid", "paid (verify + escrow + settle)"), ("free", "payment off (escrow only)")):
        r = f[mode]
        lines.append(f"  {label:<34} {r['ok_per_s']:>8,.0f} answered 200/s  p50 {r['p50_ms']:>7.1f} ms  p99 {r['p99_ms']:>7.1f} ms  {r['statuses']}")
    for mode in ("paid", "free"):
        r = f[mode]
        lines.append(f"  {mode}: {r['server_cpu_ms_per_request']:.2f} ms of server CPU a request (its Ray included): "
                     f"{r['modeled_per_s_on_2_cores']:,.0f} req/s if 2 cores were the server's alone")
    lines.append(f"  paid / payment off: {f['paid_over_free']:.2f} (answered/s), "
                 f"{f['free']['server_cpu_ms_per_request'] / max(f['paid']['server_cpu_ms_per_request'], 1e-9):.2f} (by server CPU)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.x402_gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2_000, help="requests per mode (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--warmup", type=int, default=200, help="requests sent before timing (default 200)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to save the figures (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    if args.requests < 10 or args.concurrency < 1:
        parser.error("--requests must be at least 10 and --concurrency at least 1")
    figures = run(args.requests, args.concurrency, args.warmup)
    print(format_figures(figures))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    print(f"saved: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
