"""Connection accounting for servers that anyone on the network can reach.

The responders listen on :80 and :443 of every address, and one client must not be able to keep
the CA out. A single global cap that refuses newcomers does exactly that: 520 half-sent requests
from one address kept every validation out for as long as the attacker reconnected. So:

- A **source** is an IPv4 address, or an IPv6 /64: one host is usually given a whole /64, and
  counting its addresses one by one would hand it 2**64 sources.
- A source that already holds ``per_source`` connections and opens another loses its oldest.
- When all ``total`` slots are taken, a newcomer is still let in: the oldest connection of the
  heaviest source (most connections; on a tie, the one holding the oldest connection) is closed
  to make room. A source with few connections, such as a CA's validator, is the last to lose one.

Closing is the caller's ``close`` callback (aborting the transport), so the connection's own
handler sees end-of-stream and finishes normally; its slot is freed at once, here, so the
newcomer fits immediately.

Pure bookkeeping, no I/O: the servers (`Http01Responder`, `TlsAlpn01Responder`, and the
sidecar's health server) call `admit` on accept and `release` when the handler ends.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable

__all__ = ["ConnectionLimits", "Slot", "source_of"]


def source_of(peer: object) -> str:
    """The accounting key for a peer address as ``getpeername()`` returns it.

    IPv4 (and IPv4-mapped IPv6, as a dual-stack socket reports IPv4 clients) by address; other
    IPv6 by /64; anything else (a UNIX socket, an unknown form) shares one key.
    """
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    if not isinstance(host, str):
        return "?"
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Slot:
    """One admitted connection. ``evicted`` turns true when it was closed to make room."""

    __slots__ = ("_close", "evicted", "sequence", "source")

    def __init__(self, source: str, sequence: int, close: Callable[[], None]) -> None:
        self.source = source
        self.sequence = sequence
        self.evicted = False
        self._close = close


class ConnectionLimits:
    """At most ``total`` connections, at most ``per_source`` from one source, newcomers first."""

    def __init__(self, *, total: int, per_source: int) -> None:
        if total < 1 or per_source < 1:
            raise ValueError("connection limits must be at least 1")
        self.total = total
        self.per_source = min(per_source, total)
        self.evictions = 0
        self._sequence = itertools.count()
        # Per source, its slots oldest first (dicts keep insertion order).
        self._by_source: dict[str, dict[Slot, None]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def admit(self, peer: object, close: Callable[[], None]) -> Slot:
        """Account for a new connection from ``peer``, closing an older one if need be."""
        source = source_of(peer)
        if self.count(source) >= self.per_source:
            self._evict(source)
        elif self._count >= self.total:
            self._evict(self._heaviest())
        slot = Slot(source, next(self._sequence), close)
        self._by_source.setdefault(source, {})[slot] = None
        self._count += 1
        return slot

    def release(self, slot: Slot) -> None:
        """The connection ended; safe to call twice and after an eviction."""
        slots = self._by_source.get(slot.source)
        if slots is None or slot not in slots:
            return
        del slots[slot]
        self._count -= 1
        if not slots:
            del self._by_source[slot.source]

    def _heaviest(self) -> str:
        # O(number of sources), at most ``total``: a few microseconds per accept when full.
        def weight(source: str) -> tuple[int, int]:
            slots = self._by_source[source]
            return len(slots), -next(iter(slots)).sequence

        return max(self._by_source, key=weight)

    def _evict(self, source: str) -> None:
        oldest = next(iter(self._by_source[source]))
        self.release(oldest)
        oldest.evicted = True
        self.evictions += 1
        oldest._close()
