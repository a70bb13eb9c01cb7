"""A USDC-like token contract in memory: the chain the SDK's facilitator settles on, offline.

The SDK's ``ExactEvmFacilitatorScheme`` reaches a chain only through the
``FacilitatorEvmSigner`` protocol (read a contract, write one, wait for a receipt, get
code). :class:`InMemoryChain` implements that protocol over one EIP-3009 token held in
memory: balances, the ``authorizationState`` of every (payer, nonce), and
``transferWithAuthorization``, which checks what the real contract checks (the signature
recovers to ``from``, the validity window on the chain's clock, a nonce used once, the
balance) and emits the ERC-20 ``Transfer`` log the facilitator looks for in the receipt.
It is for tests, demos and paper settlement: nothing leaves the process.

>>> from mesh.x402.terms import PaymentTerms
>>> chain = InMemoryChain(PaymentTerms(pay_to="0x" + "22" * 20))
>>> chain.fund("0x" + "11" * 20, 5_000)
>>> chain.balance_of("0x" + "11" * 20), chain.get_code(chain.terms.asset) != b""
(5000, True)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

from mesh.core.clock import Clock, SystemClock
from mesh.core.errors import InvalidArgumentError
from mesh.core.money import check_micros
from mesh.x402.digest import authorization_digest, domain_separator
from mesh.x402.recover import recover_address
from mesh.x402.sdk import require_sdk
from mesh.x402.terms import PaymentTerms

require_sdk()
from eth_utils import keccak, to_checksum_address  # noqa: E402
from x402.mechanisms.evm.types import TransactionReceipt  # noqa: E402

TRANSFER_TOPIC = "0x" + keccak(text="Transfer(address,address,uint256)").hex()
FACILITATOR_ADDRESS = "0x000000000000000000000000000000000000F402"  # who "sends" the settlement transactions
_TOKEN_CODE = b"\x60\x80\x60\x40"  # any non-empty code: the facilitator checks the asset is a contract


class Revert(RuntimeError):
    """A call the token refuses; the message reads as an EVM revert, as the SDK's parsers expect."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"execution reverted: FiatTokenV2: {reason}")


@dataclass(frozen=True)
class Transfer:
    """One settled authorization: who paid whom, how much, under which nonce, in which transaction."""

    tx_hash: str
    payer: str
    payee: str
    value: int
    nonce: str
    block: int


class InMemoryChain:
    """See the module doc. ``default_balance_micros``: what an account holds before any ``fund`` (paper demos)."""

    def __init__(self, terms: PaymentTerms, *, clock: Optional[Clock] = None, default_balance_micros: int = 0) -> None:
        self.terms = terms
        self.clock = clock or SystemClock()
        self.default_balance_micros = check_micros(default_balance_micros, field="default_balance_micros")
        self._separator = domain_separator(terms.token_name, terms.token_version, terms.chain_id, terms.asset)
        self._balances: dict[str, int] = {}
        self._used: set[tuple[str, str]] = set()
        self._receipts: dict[str, TransactionReceipt] = {}
        self.transfers: list[Transfer] = []
        self._lock = threading.Lock()

    # -- the token -----------------------------------------------------------------------

    def fund(self, address: str, amount_micros: int) -> None:
        """Mint ``amount_micros`` to ``address``."""
        check_micros(amount_micros)
        key = _key(address)
        with self._lock:
            self._balances[key] = self._balance(key) + amount_micros

    def balance_of(self, address: str) -> int:
        with self._lock:
            return self._balance(_key(address))

    def authorization_used(self, payer: str, nonce: bytes | str) -> bool:
        with self._lock:
            return (_key(payer), _nonce_hex(nonce)) in self._used

    def _balance(self, key: str) -> int:
        return self._balances.get(key, self.default_balance_micros)

    def _transfer_with_authorization(self, args: tuple, *, commit: bool) -> Optional[str]:
        payer, payee, value, valid_after, valid_before, nonce = args[:6]
        signature = _signature_of(args[6:])
        payer_bytes, payee_bytes = bytes.fromhex(_key(payer)[2:]), bytes.fromhex(_key(payee)[2:])
        nonce = bytes.fromhex(_nonce_hex(nonce)[2:])
        now_s = self.clock.now_s()
        if now_s <= int(valid_after):
            raise Revert("authorization is not yet valid")
        if now_s >= int(valid_before):
            raise Revert("authorization is expired")
        digest = authorization_digest(self._separator, payer_bytes, payee_bytes, int(value), int(valid_after),
                                      int(valid_before), nonce)
        if recover_address(digest, signature) != payer_bytes:
            raise Revert("invalid signature")
        with self._lock:
            used_key = (_key(payer), "0x" + nonce.hex())
            if used_key in self._used:
                raise Revert("authorization is used or canceled")
            if self._balance(used_key[0]) < int(value):
                raise Revert("transfer amount exceeds balance")
            if not commit:
                return None
            self._used.add(used_key)
            self._balances[used_key[0]] = self._balance(used_key[0]) - int(value)
            self._balances[_key(payee)] = self._balance(_key(payee)) + int(value)
            tx_hash = "0x" + keccak(self.terms.asset.encode() + payer_bytes + nonce).hex()
            block = len(self.transfers) + 1
            self._receipts[tx_hash] = TransactionReceipt(status=1, block_number=block, tx_hash=tx_hash, logs=[{
                "address": self.terms.asset,
                "topics": [TRANSFER_TOPIC, "0x" + payer_bytes.rjust(32, b"\0").hex(), "0x" + payee_bytes.rjust(32, b"\0").hex()],
                "data": "0x" + int(value).to_bytes(32, "big").hex(),
            }])
            self.transfers.append(Transfer(tx_hash, to_checksum_address(payer_bytes), to_checksum_address(payee_bytes),
                                           int(value), "0x" + nonce.hex(), block))
            return tx_hash

    # -- the SDK's FacilitatorEvmSigner protocol -----------------------------------------------

    def get_addresses(self) -> list[str]:
        return [FACILITATOR_ADDRESS]

    def get_chain_id(self) -> int:
        return self.terms.chain_id

    def get_code(self, address: str) -> bytes:
        return _TOKEN_CODE if _key(address) == _key(self.terms.asset) else b""

    def get_balance(self, address: str, token_address: str) -> int:
        return self.balance_of(address) if _key(token_address) == _key(self.terms.asset) else 0

    def read_contract(self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any) -> Any:
        if _key(address) != _key(self.terms.asset):
            raise RuntimeError(f"the in-memory chain holds one contract, {self.terms.asset}; no {function_name} at {address}")
        if function_name == "transferWithAuthorization":  # eth_call: a simulation, nothing changes
            return self._transfer_with_authorization(args, commit=False)
        if function_name == "authorizationState":
            return self.authorization_used(args[0], args[1])
        if function_name == "balanceOf":
            return self.balance_of(args[0])
        if function_name == "name":
            return self.terms.token_name
        if function_name == "version":
            return self.terms.token_version
        raise RuntimeError(f"the in-memory token has no function {function_name}")

    def write_contract(self, address: str, abi: list[dict[str, Any]], function_name: str, *args: Any,
                       data_suffix: Optional[str] = None) -> str:
        if _key(address) != _key(self.terms.asset) or function_name != "transferWithAuthorization":
            raise RuntimeError(f"the in-memory chain only runs transferWithAuthorization on {self.terms.asset}")
        return self._transfer_with_authorization(args, commit=True)  # type: ignore[return-value]

    def send_transaction(self, to: str, data: bytes) -> str:
        raise RuntimeError("the in-memory chain deploys no contracts (no smart wallets)")

    def wait_for_transaction_receipt(self, tx_hash: str) -> TransactionReceipt:
        with self._lock:
            receipt = self._receipts.get(tx_hash)
        if receipt is None:
            raise RuntimeError(f"no transaction {tx_hash} on the in-memory chain")
        return receipt

    def verify_typed_data(self, address: str, domain: Any, types: Any, primary_type: str, message: dict[str, Any],
                          signature: bytes) -> bool:
        from x402.mechanisms.evm.verify import verify_typed_data_strict

        return verify_typed_data_strict(self, address, domain, types, primary_type, message, signature)


def _key(address: Any) -> str:
    if isinstance(address, bytes):
        address = "0x" + address.hex()
    if not isinstance(address, str) or len(address) != 42 or not address.startswith("0x"):
        raise InvalidArgumentError("address", address, "must be an EVM address: 0x and 40 hex digits")
    return address.lower()


def _nonce_hex(nonce: bytes | str) -> str:
    return ("0x" + nonce.hex()) if isinstance(nonce, bytes) else nonce.lower()


def _signature_of(rest: tuple) -> bytes:
    """The 65-byte signature of a call: ``(v, r, s)`` or ``(signature,)``."""
    if len(rest) == 3:
        v, r, s = rest
        return bytes(r) + bytes(s) + bytes([int(v)])
    if len(rest) == 1 and isinstance(rest[0], (bytes, bytearray)):
        return bytes(rest[0])
    raise Revert("invalid signature")
