"""Who signed a digest: secp256k1 public key recovery, with coincurve or eth-keys.

Both backends answer the same 20-byte address; coincurve (libsecp256k1) is the faster
(``benchmarks/x402_verify.py`` measures both) and is chosen when it is installed,
eth-keys' pure-Python backend otherwise. A signature is refused as the token contract
refuses it: 65 bytes ``r || s || v`` with ``v`` 27 or 28 (or 0, 1), ``r`` and ``s`` in range
and ``s`` in the lower half of the curve order (EIP-2), so no malleated twin of a used
signature verifies.

>>> signer = Signer(b"\\x11" * 32)
>>> digest = b"\\x42" * 32
>>> recover_address(digest, signer.sign(digest)) == signer.address_bytes
True
>>> recover_address(digest, b"\\x00" * 65) is None
True
"""

from __future__ import annotations

from typing import Callable, Optional

from mesh.core.errors import InvalidArgumentError
from mesh.x402.sdk import require_sdk

require_sdk()
from eth_utils import keccak  # noqa: E402

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = SECP256K1_N // 2
BACKENDS = ("coincurve", "eth-keys")


def coincurve_available() -> bool:
    try:
        import coincurve  # noqa: F401
    except ImportError:
        return False
    return True


def default_backend() -> str:
    """``coincurve`` if it is installed (the faster), else ``eth-keys``."""
    return "coincurve" if coincurve_available() else "eth-keys"


def canonical_signature(signature: bytes) -> Optional[bytes]:
    """``r || s || v`` with ``v`` as 0 or 1, or None when the token would refuse the signature."""
    if len(signature) != 65:
        return None
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1) or not 0 < r < SECP256K1_N or not 0 < s <= _HALF_N:
        return None
    return signature[:64] + bytes([v])


def _recover_coincurve(digest: bytes, rsv: bytes) -> bytes:
    from coincurve import PublicKey

    return PublicKey.from_signature_and_message(rsv, digest, hasher=None).format(compressed=False)[1:]


_native = None


def _eth_keys_native():
    """eth-keys' own pure-Python backend (each datatype is given it: by default eth-keys would use coincurve)."""
    global _native
    if _native is None:
        from eth_keys.backends import NativeECCBackend

        _native = NativeECCBackend()
    return _native


def _recover_eth_keys(digest: bytes, rsv: bytes) -> bytes:
    from eth_keys.datatypes import Signature

    return Signature(rsv, backend=_eth_keys_native()).recover_public_key_from_msg_hash(digest).to_bytes()


_RECOVER: dict[str, Callable[[bytes, bytes], bytes]] = {"coincurve": _recover_coincurve, "eth-keys": _recover_eth_keys}


def check_backend(backend: Optional[str]) -> str:
    """``backend``, or the default one; InvalidArgumentError for an unknown or missing one."""
    if backend is None:
        return default_backend()
    if backend not in BACKENDS:
        raise InvalidArgumentError("backend", backend, f"must be one of {', '.join(BACKENDS)}")
    if backend == "coincurve" and not coincurve_available():
        raise InvalidArgumentError("backend", backend, "coincurve is not installed (pip install coincurve)")
    return backend


def recover_address(digest: bytes, signature: bytes, backend: Optional[str] = None) -> Optional[bytes]:
    """The 20-byte address that signed ``digest``, or None for a signature the token would refuse."""
    rsv = canonical_signature(signature)
    if rsv is None:
        return None
    try:
        public = _RECOVER[backend or default_backend()](digest, rsv)
    except Exception:  # noqa: BLE001 - a point off the curve, a bad recovery id: not a signature
        return None
    return keccak(public)[-20:]


class Signer:
    """A local secp256k1 key that signs digests as EIP-712 wants (``r || s || v``, v 27 or 28, low s)."""

    __slots__ = ("_key", "_backend", "address_bytes")

    def __init__(self, private_key: bytes, backend: Optional[str] = None) -> None:
        if not isinstance(private_key, bytes) or len(private_key) != 32:
            raise InvalidArgumentError("private_key", "<hidden>", "must be 32 bytes")
        self._backend = check_backend(backend)
        if self._backend == "coincurve":
            from coincurve import PrivateKey

            self._key = PrivateKey(private_key)
            public = self._key.public_key.format(compressed=False)[1:]
        else:
            from eth_keys.datatypes import PrivateKey

            self._key = PrivateKey(private_key, backend=_eth_keys_native())
            public = self._key.public_key.to_bytes()
        self.address_bytes: bytes = keccak(public)[-20:]

    def sign(self, digest: bytes) -> bytes:
        if self._backend == "coincurve":
            rsv = self._key.sign_recoverable(digest, hasher=None)
        else:
            rsv = self._key.sign_msg_hash(digest).to_bytes()
        return rsv[:64] + bytes([rsv[64] + 27])

    def __repr__(self) -> str:  # never the key
        return f"Signer(0x{self.address_bytes.hex()})"
