"""RFC 8555 resources modelled as immutable values."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identifier:
    """An ACME identifier (RFC 8555 §7.1.4): ``dns`` names, and ``ip`` addresses (RFC 8738)."""

    type: str
    value: str

    @classmethod
    def dns(cls, name: str) -> Identifier:
        return cls("dns", name)

    @classmethod
    def ip(cls, address: str) -> Identifier:
        return cls("ip", str(ipaddress.ip_address(address)))

    @classmethod
    def from_string(cls, value: str) -> Identifier:
        """An IP literal becomes an ``ip`` identifier, anything else a ``dns`` one."""
        try:
            return cls.ip(value)
        except ValueError:
            return cls.dns(value)
