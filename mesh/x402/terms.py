"""What a payee asks for: the chain, the token, who is paid, and the quote for a price.

:class:`PaymentTerms` fixes everything of an x402 "exact" EVM quote but the amount: the
network (CAIP-2, e.g. ``eip155:84532``, Base Sepolia), the token contract (by default the
network's USDC, as the SDK's default assets name it, with its EIP-712 domain name and
version), the ``pay_to`` address and how long a signed payment may stay valid. tollmesh's
money is integer micro-USD and USDC has 6 decimals, so a price in micros *is* its amount in
atomic USDC units; tokens of other decimals are refused.

>>> terms = PaymentTerms(pay_to="0x2222222222222222222222222222222222222222")
>>> terms.chain_id, terms.token_name, terms.token_version
(84532, 'USDC', '2')
>>> quote = terms.requirements(1_000)
>>> quote.amount, quote.asset, quote.pay_to, quote.extra
('1000', '0x036CbD53842c5426634e7929541eC2318f3dCF7e', '0x2222222222222222222222222222222222222222', {'name': 'USDC', 'version': '2'})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from mesh.core.errors import ConfigError, InvalidArgumentError
from mesh.core.money import check_micros
from mesh.x402.sdk import require_sdk

DEFAULT_NETWORK = "eip155:84532"  # Base Sepolia: a test chain, test USDC
USD_DECIMALS = 6  # micro-USD, the unit of tollmesh's money and of USDC
DEFAULT_MAX_TIMEOUT_S = 300


def checksum_address(field_name: str, value: Any) -> str:
    """``value`` as an EIP-55 checksummed address, or InvalidArgumentError naming ``field_name``."""
    require_sdk()
    from eth_utils import is_address, to_checksum_address

    if not isinstance(value, str) or not value.startswith("0x") or not is_address(value):
        raise InvalidArgumentError(field_name, value, "must be an EVM address: 0x and 40 hex digits")
    return to_checksum_address(value)


@dataclass(frozen=True)
class PaymentTerms:
    """The fixed part of every quote a payee makes (see the module doc)."""

    pay_to: str
    network: str = DEFAULT_NETWORK
    asset: Optional[str] = None  # the token contract; None: the network's default USD token (USDC)
    token_name: Optional[str] = None  # EIP-712 domain name; None: the default token's
    token_version: Optional[str] = None  # EIP-712 domain version; None: the default token's
    max_timeout_s: int = DEFAULT_MAX_TIMEOUT_S
    chain_id: int = field(init=False)

    def __post_init__(self) -> None:
        require_sdk()
        from x402.mechanisms.evm.default_assets import find_default_asset, get_default_asset
        from x402.mechanisms.evm.utils import get_evm_chain_id

        try:
            chain_id = get_evm_chain_id(self.network)
        except ValueError as exc:
            raise InvalidArgumentError("network", self.network, f"is no EVM network the SDK knows ({exc})") from None
        object.__setattr__(self, "chain_id", chain_id)
        object.__setattr__(self, "pay_to", checksum_address("pay_to", self.pay_to))
        if isinstance(self.max_timeout_s, bool) or not isinstance(self.max_timeout_s, int) or not 1 <= self.max_timeout_s <= 86_400:
            raise InvalidArgumentError("max_timeout_s", self.max_timeout_s, "must be an int of seconds, 1 to 86400")
        if self.asset is None:
            try:
                info: dict[str, Any] = dict(get_default_asset(self.network))
            except ValueError as exc:
                raise ConfigError(f"network {self.network!r} has no default USD token: give asset= ({exc})") from None
        else:
            asset = checksum_address("asset", self.asset)
            found = find_default_asset(asset, self.network)
            info = dict(found) if found is not None else {"asset": asset, "decimals": USD_DECIMALS}
        if info.get("decimals") != USD_DECIMALS:
            raise ConfigError(f"token {info['asset']} has {info.get('decimals')} decimals: tollmesh prices are "
                              f"micro-USD, so only a {USD_DECIMALS}-decimal USD token (USDC) can be quoted")
        if info.get("asset_transfer_method"):
            raise ConfigError(f"token {info['asset']} is paid by {info['asset_transfer_method']}, not EIP-3009: "
                              "tollmesh verifies EIP-3009 TransferWithAuthorization only")
        object.__setattr__(self, "asset", checksum_address("asset", info["asset"]))
        for name in ("token_name", "token_version"):
            given = getattr(self, name)
            value = given if given is not None else info.get(name.removeprefix("token_"))
            if not isinstance(value, str) or not value:
                raise ConfigError(f"token {self.asset}: give its EIP-712 domain {name}= (the SDK does not know it)")
            object.__setattr__(self, name, value)

    def requirements(self, amount_micros: int) -> Any:
        """The SDK's ``PaymentRequirements`` for a price of ``amount_micros`` (atomic USDC units)."""
        from x402.schemas import PaymentRequirements

        check_micros(amount_micros, field="amount_micros")
        return PaymentRequirements(
            scheme="exact", network=self.network, asset=self.asset, amount=str(amount_micros), pay_to=self.pay_to,
            max_timeout_seconds=self.max_timeout_s, extra={"name": self.token_name, "version": self.token_version},
        )

    def payment_required(self, amount_micros: int, *, url: str, description: str = "", error: Optional[str] = None) -> Any:
        """The SDK's ``PaymentRequired`` (a 402's quote) for ``amount_micros`` at ``url``."""
        from x402.schemas import PaymentRequired, ResourceInfo

        resource = ResourceInfo(url=url, description=description or None, mime_type="application/json")
        return PaymentRequired(x402_version=2, error=error, resource=resource, accepts=[self.requirements(amount_micros)])
