"""x402 for real: signed "exact" EVM payments verified offline, settled, and an HTTP 402 gateway.

Built on the official SDK (``x402`` on PyPI: its schemas, header codecs, EVM helpers,
client and facilitator), installed with ``pip install 'tollmesh[x402]'``:

- :class:`PaymentTerms` (``terms``): what a payee quotes: network, token, ``pay_to``;
- :class:`ExactEvmVerifier` (``exact``): offline verification, a verifier for
  ``set_x402_verifier`` of a booth or a mesh, with replay protection that survives restarts;
- :class:`PayingWallet` (``wallet``): a local key that pays by signing;
- :class:`InMemoryChain` (``chain``): a token contract in memory, for the SDK's facilitator offline;
- :class:`FacilitatorVerifier` (``facilitator``): verification by an operator's facilitator over HTTP;
- ``settle`` (settlement of released, paid tolls), ``gateway`` (``tollmesh serve``).

>>> from mesh.x402 import PaymentTerms
>>> PaymentTerms(pay_to="0x" + "22" * 20).network
'eip155:84532'
"""

from typing import Any

_LAZY = {
    "PaymentTerms": "mesh.x402.terms", "ExactEvmVerifier": "mesh.x402.exact", "Verdict": "mesh.x402.exact",
    "PayingWallet": "mesh.x402.wallet", "NonceBook": "mesh.x402.nonces", "parse_payment": "mesh.x402.proof",
    "MalformedPayment": "mesh.x402.proof", "InMemoryChain": "mesh.x402.chain",
    "FacilitatorVerifier": "mesh.x402.facilitator", "LocalFacilitator": "mesh.x402.facilitator",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    """Import each part on first use: the SDK is loaded only when x402 is used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mesh.x402' has no attribute {name!r}")
