"""Connection accounting for servers that anyone on the network can reach.

The responders listen on :80 and :443 of every address, and no client may keep the CA out. A
single global cap that refuses newcomers does exactly that: 520 half-sent requests from one
address kept every validation out for as long as the attacker reconnected. So a newcomer is
always let in, and when there is no room an older connection is closed. Which one matters:

- Closing the oldest connection of the *busiest source* (the policy before this one) picks the
  CA's validator as soon as an attacker spreads over many sources, one connection each (an IPv6
  /48 is 65,536 /64 sources): a validator checking three names at once is then the busiest, and
  three attacker connections closed all three validator connections.
- So the victim is chosen by **lack of progress**, not by source. A connection is *idle* until
  it has sent a whole request (an HTTP request head, a TLS ClientHello; the server calls
  `answering`), and idle again once its answer has been written (`answered`: what is left is
  closing). The connection idle the longest goes first. A connection being answered is closed
  only when every slot is being answered, and then the one answered the longest (a validator's
  answer takes one round trip; a slot held longer is a stalled client). Refusing the newcomer
  instead would let a client that stalls mid-answer (a ClientHello for a presented name, then
  nothing) hold every slot for the whole handshake deadline.

  A validator sends its request as soon as it connects, so it is idle for one round trip and
  then protected; to close it an attacker must open ``total`` connections within that round
  trip, and even then only a validator that has not yet sent its request is at risk.
- A **source** is an IPv4 address, or an IPv6 /64: one host is usually given a whole /64, and
  counting its addresses one by one would hand it 2**64 sources. A source that already holds
  ``per_source`` connections and opens another loses one of its own, chosen the same way.

Closing is the caller's ``close`` callback (a reset: ``_listen.reset``), so the connection's
own handler sees end-of-stream and finishes normally; its slot is freed at once, here, so the
newcomer fits immediately.

Pure bookkeeping, no I/O and no clock (the order of events is the only time it needs): the
servers (`Http01Responder`, `TlsAlpn01Responder`, and the sidecar's health server) call `admit`
on accept, `answering` and `answered` as the request progresses, and `release` when the
handler ends.
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
    """One admitted connection. ``evicted`` turns true when it was closed to make room.

    ``since`` orders the slots by their last step of progress (accept, whole request, answer
    written); ``is_answering`` is true between a whole request and its written answer.
    """

    __slots__ = ("_close", "evicted", "is_answering", "since", "source")

    def __init__(self, source: str, since: int, close: Callable[[], None]) -> None:
        self.source = source
        self.since = since
        self.is_answering = False
        self.evicted = False
        self._close = close


class ConnectionLimits:
    """At most ``total`` connections, at most ``per_source`` from one source, newcomers first;
    the connection idle the longest makes room (see the module docstring)."""

    def __init__(self, *, total: int, per_source: int) -> None:
        if total < 1 or per_source < 1:
            raise ValueError("connection limits must be at least 1")
        self.total = total
        self.per_source = min(per_source, total)
        self.evictions = 0
        self._clock = itertools.count()
        # Every slot by source, and by state in order of `since` (dicts keep insertion order,
        # and a slot that makes progress is moved to the end).
        self._by_source: dict[str, dict[Slot, None]] = {}
        self._idle: dict[Slot, None] = {}
        self._answering: dict[Slot, None] = {}

    def __len__(self) -> int:
        return len(self._idle) + len(self._answering)

    def count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def admit(self, peer: object, close: Callable[[], None]) -> Slot:
        """Account for a new connection from ``peer``, closing an older one if need be."""
        source = source_of(peer)
        if self.count(source) >= self.per_source:
            self._evict(self._stalest(self._by_source[source]))
        elif len(self) >= self.total:
            self._evict(next(iter(self._idle or self._answering)))
        slot = Slot(source, next(self._clock), close)
        self._by_source.setdefault(source, {})[slot] = None
        self._idle[slot] = None
        return slot

    def answering(self, slot: Slot) -> None:
        """The whole request is in: from now on the connection is closed only as a last resort."""
        if slot in self._idle:  # else released or evicted already: nothing to move
            del self._idle[slot]
            self._progress(slot, self._answering, answering=True)

    def answered(self, slot: Slot) -> None:
        """The answer is written; only closing is left, so the slot may make room again."""
        if slot in self._answering:
            del self._answering[slot]
            self._progress(slot, self._idle, answering=False)

    def release(self, slot: Slot) -> None:
        """The connection ended; safe to call twice and after an eviction."""
        slots = self._by_source.get(slot.source)
        if slots is None or slot not in slots:
            return
        del slots[slot]
        if not slots:
            del self._by_source[slot.source]
        self._idle.pop(slot, None)
        self._answering.pop(slot, None)

    def _progress(self, slot: Slot, into: dict[Slot, None], *, answering: bool) -> None:
        slot.since = next(self._clock)
        slot.is_answering = answering
        into[slot] = None

    @staticmethod
    def _stalest(slots: dict[Slot, None]) -> Slot:
        """Of one source's slots (at most ``per_source``): the idle one idle the longest, else
        the one answered the longest."""
        return min(slots, key=lambda slot: (slot.is_answering, slot.since))

    def _evict(self, victim: Slot) -> None:
        self.release(victim)
        victim.evicted = True
        self.evictions += 1
        victim._close()
