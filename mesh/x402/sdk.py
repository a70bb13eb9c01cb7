"""The official x402 SDK, imported once, with one clear error when it is not installed.

tollmesh's x402 parts (``mesh.x402``) use the SDK's schemas, header codecs, EVM helpers,
client and facilitator; they come with the ``x402`` extra:
``pip install 'tollmesh[x402]'`` (the ``test`` extra has them too).

>>> require_sdk().__name__
'x402'
"""

from __future__ import annotations

from types import ModuleType

from mesh.core.errors import ConfigError

INSTALL_HINT = "pip install 'tollmesh[x402]' (the official x402 SDK with its EVM and HTTP parts, uvicorn, coincurve)"


def require_sdk() -> ModuleType:
    """The ``x402`` package, or ConfigError saying how to install it (with its EVM parts)."""
    try:
        import x402
        import x402.mechanisms.evm  # noqa: F401 - the [evm] extra: eth-account, eth-abi, eth-keys
    except ImportError as exc:
        raise ConfigError(f"the x402 parts of tollmesh need the x402 SDK ({exc}): {INSTALL_HINT}") from None
    return x402
