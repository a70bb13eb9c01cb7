"""The EIP-712 digest a payer signs for an EIP-3009 ``TransferWithAuthorization``.

The SDK's :func:`x402.mechanisms.evm.eip712.hash_eip3009_authorization` computes it by
ABI-encoding each field and hashing the domain every time (~200 us). Here the domain
separator is computed once per token (by the SDK's ``hash_domain``) and the struct, seven
fixed 32-byte words, is packed directly: the same bytes (``tests/test_x402_exact.py``
checks them against the SDK's on random authorizations), ~10x faster.

>>> sep = domain_separator("USDC", "2", 84532, "0x036CbD53842c5426634e7929541eC2318f3dCF7e")
>>> len(sep), len(authorization_digest(sep, b"\\x01" * 20, b"\\x02" * 20, 1000, 0, 2**32, b"\\x00" * 32))
(32, 32)
"""

from __future__ import annotations

from functools import lru_cache

from mesh.x402.sdk import require_sdk

require_sdk()
from eth_utils import keccak  # noqa: E402 - after the SDK check, which names the extra to install

TRANSFER_WITH_AUTHORIZATION_TYPEHASH = keccak(
    text="TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
         "uint256 validBefore,bytes32 nonce)"
)
UINT256_MAX = 2**256 - 1
_PAD_ADDRESS = b"\x00" * 12


@lru_cache(maxsize=256)
def domain_separator(token_name: str, token_version: str, chain_id: int, contract: str) -> bytes:
    """The token's EIP-712 domain separator (cached: a payee has few tokens)."""
    from x402.mechanisms.evm.eip712 import hash_domain
    from x402.mechanisms.evm.types import TypedDataDomain

    return hash_domain(TypedDataDomain(name=token_name, version=token_version, chain_id=chain_id,
                                       verifying_contract=contract))


def authorization_digest(separator: bytes, payer: bytes, payee: bytes, value: int, valid_after: int,
                         valid_before: int, nonce: bytes) -> bytes:
    """The 32-byte digest to sign: ``keccak(0x1901 || separator || hashStruct(authorization))``.

    ``payer`` and ``payee`` are 20-byte addresses, ``nonce`` 32 bytes, the numbers uint256.
    """
    struct = keccak(b"".join((
        TRANSFER_WITH_AUTHORIZATION_TYPEHASH, _PAD_ADDRESS, payer, _PAD_ADDRESS, payee,
        value.to_bytes(32, "big"), valid_after.to_bytes(32, "big"), valid_before.to_bytes(32, "big"), nonce,
    )))
    return keccak(b"\x19\x01" + separator + struct)
