"""Offline x402 verifications per second, and what each step costs: parse, digest, signer recovery, the whole check.

    python -m benchmarks.x402_verify [--payments N] [--json PATH]

Every payment is distinct (its own nonce), signed by one of 64 wallets, and verified once.
Signer recovery is measured with both backends, eth-keys' pure-Python one and coincurve
(libsecp256k1), and so is the whole :class:`~mesh.x402.exact.ExactEvmVerifier` check with
each; the SDK's own EIP-712 hash and its facilitator's ``verify`` (on the in-memory chain) are
measured beside ours. One process, one core; both the wall-clock rate and the CPU each step takes
(its rate per CPU-second, which a machine shared with other work does not distort) are printed
and saved as JSON
(default ``tollmesh-out/bench/x402_verify.json``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

DEFAULT_JSON = Path("tollmesh-out") / "bench" / "x402_verify.json"


def _rate(fn: Callable[[Any], Any], items: list) -> dict[str, float]:
    started = time.perf_counter()
    cpu = time.process_time()
    for item in items:
        fn(item)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"per_s": round(len(items) / wall, 1), "us_each": round(wall / len(items) * 1e6, 2),
            "cpu_us_each": round(cpu / len(items) * 1e6, 2), "count": len(items)}


def run(payments: int) -> dict[str, Any]:
    from mesh.x402.chain import InMemoryChain
    from mesh.x402.digest import authorization_digest, domain_separator
    from mesh.x402.exact import ExactEvmVerifier
    from mesh.x402.facilitator import LocalFacilitator
    from mesh.x402.proof import parse_payment
    from mesh.x402.recover import coincurve_available, recover_address
    from mesh.x402.terms import PaymentTerms
    from mesh.x402.wallet import PayingWallet

    terms = PaymentTerms(pay_to="0x" + "22" * 20)
    now = time.time()
    wallets = [PayingWallet.derived(0, f"bench-{i}") for i in range(64)]
    backends = ["eth-keys"] + (["coincurve"] if coincurve_available() else [])
    figures: dict[str, Any] = {"payments": payments, "backends": backends}

    for backend in backends:
        signer = PayingWallet.derived(0, "bench-signer", backend=backend)
        figures[f"sign_{backend}"] = _rate(lambda i: signer.pay(terms, 1_000, now_s=now, nonce=i.to_bytes(32, "big")),
                                           list(range(min(payments, 2_000))))
    headers = [wallets[i % 64].pay(terms, 1_000, now_s=now, nonce=os.urandom(32)) for i in range(payments)]
    wanted = [(f"t{i}", wallets[i % 64].address, h, 1_000) for i, h in enumerate(headers)]
    parsed = [parse_payment(h) for h in headers]
    separator = domain_separator(terms.token_name, terms.token_version, terms.chain_id, terms.asset)

    figures["parse"] = _rate(parse_payment, headers)
    figures["digest_ours"] = _rate(lambda p: authorization_digest(separator, p.payer_bytes, p.payee_bytes, p.value,
                                                                  p.valid_after, p.valid_before, p.nonce), parsed)
    figures["digest_sdk"] = _rate(_sdk_digest(terms), parsed[: min(payments, 2_000)])
    digests = [authorization_digest(separator, p.payer_bytes, p.payee_bytes, p.value, p.valid_after, p.valid_before, p.nonce)
               for p in parsed]
    pairs = list(zip(digests, (p.signature for p in parsed)))
    for backend in backends:
        figures[f"recover_{backend}"] = _rate(lambda pair, b=backend: recover_address(pair[0], pair[1], b), pairs)
        verifier = ExactEvmVerifier(terms, backend=backend)
        figures[f"verify_{backend}"] = _rate(lambda item, v=verifier: _must_pass(v.check_payment(*item)), wanted)
    paper = ExactEvmVerifier(terms, paper=True)
    figures["verify_paper"] = _rate(lambda item: _must_pass(paper.check_payment(*item)), wanted)
    batch = ExactEvmVerifier(terms)
    started = time.perf_counter()
    assert all(r is None for r in batch.check_payments(wanted))
    figures["verify_batch_default"] = {"per_s": round(payments / (time.perf_counter() - started), 1), "backend": batch.backend}
    chain = InMemoryChain(terms, default_balance_micros=10**9)
    facilitator = LocalFacilitator(chain)
    some = parsed[: min(payments, 500)]
    figures["sdk_facilitator_verify"] = _rate(lambda p: _must_valid(facilitator.verify(p)), some)
    figures["sdk_facilitator_settle_memory_chain"] = _rate(lambda p: _must_settle(facilitator.settle(p)), some)
    fastest = max(backends, key=lambda b: figures[f"verify_{b}"]["per_s"])
    figures["chosen_backend"] = fastest
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    return figures


def _sdk_digest(terms: Any) -> Callable[[Any], bytes]:
    from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
    from x402.mechanisms.evm.types import ExactEIP3009Authorization

    def digest(p: Any) -> bytes:
        auth = ExactEIP3009Authorization(p.payer, "0x" + p.payee_bytes.hex(), str(p.value), str(p.valid_after),
                                         str(p.valid_before), p.nonce_hex)
        return hash_eip3009_authorization(auth, terms.chain_id, terms.asset, terms.token_name, terms.token_version)

    return digest


def _must_pass(reason: Any) -> None:
    if reason is not None:
        raise AssertionError(f"a good payment was refused: {reason}")


def _must_valid(answer: Any) -> None:
    if not answer.is_valid:
        raise AssertionError(f"the SDK's facilitator refused a good payment: {answer.invalid_reason}")


def _must_settle(answer: Any) -> None:
    if not answer.success:
        raise AssertionError(f"the SDK's facilitator did not settle a good payment: {answer.error_reason}")


def format_figures(f: dict[str, Any]) -> str:
    rows = [("sign (eth-keys)", "sign_eth-keys"), ("sign (coincurve)", "sign_coincurve"), ("parse header (SDK codec)", "parse"),
            ("EIP-712 digest, ours", "digest_ours"), ("EIP-712 digest, the SDK's", "digest_sdk"),
            ("recover signer, eth-keys", "recover_eth-keys"), ("recover signer, coincurve", "recover_coincurve"),
            ("verify, eth-keys", "verify_eth-keys"), ("verify, coincurve", "verify_coincurve"),
            ("verify, paper (no recovery)", "verify_paper"), ("SDK facilitator verify (memory chain)", "sdk_facilitator_verify"),
            ("SDK facilitator settle (memory chain)", "sdk_facilitator_settle_memory_chain")]
    lines = [f"x402 offline verification, {f['payments']:,} distinct payments, one core ({f['machine']['cpus']} on the machine)"]
    for label, key in rows:
        if key in f:
            r = f[key]
            lines.append(f"  {label:<40} {r['per_s']:>9,.0f} /s wall  {r['us_each']:>9,.1f} us   "
                         f"{r['cpu_us_each']:>9,.1f} us CPU = {1e6 / max(r['cpu_us_each'], 1e-3):>9,.0f} /CPU-s")
    lines.append(f"  chosen recovery backend: {f['chosen_backend']} (batch check: {f['verify_batch_default']['per_s']:,.0f} /s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.x402_verify", description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=5_000, help="distinct payments to verify (default 5000)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to save the figures (default {DEFAULT_JSON})")
    args = parser.parse_args(argv)
    if args.payments < 10:
        parser.error("--payments must be at least 10")
    figures = run(args.payments)
    print(format_figures(figures))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    print(f"saved: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
