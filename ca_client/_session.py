"""What every resource module of the client shares: one CA, one account key, one connection.

:class:`AcmeClient <ca_client.client.AcmeClient>` is a thin face over the modules beside this
one, one per RFC 8555 resource (``_account``, ``_order``, ``_authorization``, ``_challenge``,
``_certificate``, ``_ari``). They are plain functions that take a :class:`Session` as their
first argument rather than mixins of one big class: each module's dependencies show in its
signatures and imports, mypy checks them without self-type protocols, and the state lives in
one visible place instead of in attributes one mixin sets and another assumes.

The session holds the directory (RFC 8555 §7.1.1), the account this key is known by (with the
lock and the registration details needed to register again), the clock and sleep used for
every deadline, and the polling loop every "wait until the status moves" shares.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ca_client.errors import ACMETimeout, MalformedResponse, NotACME
from ca_client.keys import PrivateKey
from ca_client.models import Account, Directory, ExternalAccountBinding
from ca_client.retry import clamp_to_deadline, next_poll_delay, poll_delays
from ca_client.transport import AcmeTransport, Clock, Sleep

# The private modules log as the client they are part of, as httpx's private modules log as
# "httpx": the logger name users filter on (and the sidecar's JSON shows) stays public.
logger = logging.getLogger("ca_client.client")

T = TypeVar("T")


@dataclass(frozen=True)
class Registration:
    """What the account was registered with, to register again after a CA database reset."""

    contact: tuple[str, ...] = ()
    eab: ExternalAccountBinding | None = None
    terms_agreed: bool = True


@dataclass(eq=False)
class Session:
    """The state one :class:`~ca_client.client.AcmeClient` shares among its resource modules."""

    directory_url: str
    account_key: PrivateKey = field(repr=False)  # a key has no business in a repr or a log
    thumbprint: str
    transport: AcmeTransport
    timeout: float
    clock: Clock
    sleep: Sleep
    cached_directory: Directory | None = None
    directory_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    account: Account | None = None
    account_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    registration: Registration = field(default_factory=Registration)

    def deadline(self, deadline: float | None) -> float:
        """``deadline``, or one request timeout from now for single operations."""
        return deadline if deadline is not None else self.clock() + self.timeout

    async def directory(self, deadline: float | None = None) -> Directory:
        """The CA's directory (RFC 8555 §7.1.1), fetched once per client: it names every other
        URL, and fetching it per request would double the round trips."""
        if self.cached_directory is not None:
            return self.cached_directory
        async with self.directory_lock:
            if self.cached_directory is None:
                response = await self.transport.get(
                    self.directory_url, deadline=self.deadline(deadline)
                )
                try:
                    directory = Directory.from_json(response.json(), url=self.directory_url)
                except MalformedResponse as exc:
                    raise NotACME(
                        f"{self.directory_url} is not an ACME directory ({exc})",
                        url=self.directory_url,
                        status=response.status,
                    ) from exc
                # Where the transport gets a nonce when its pool is empty (§7.2).
                self.transport.new_nonce_url = directory.new_nonce
                self.cached_directory = directory
            return self.cached_directory

    async def poll(
        self,
        fetch: Callable[[], Awaitable[tuple[T, float | None]]],
        done: Callable[[T], bool],
        *,
        deadline: float,
        what: str,
        url: str,
        status_of: Callable[[T], str],
    ) -> T:
        """Fetch until ``done``: 20 ms first, doubling to a cap; the CA's Retry-After wins
        (RFC 8555 §7.5.1, §7.4); never sleeps past ``deadline``."""
        schedule = poll_delays()
        while True:
            value, retry_after = await fetch()
            if done(value):
                return value
            delay = next_poll_delay(next(schedule), retry_after)
            now = self.clock()
            if now >= deadline:
                raise ACMETimeout(
                    f"{what} still {status_of(value)} when the deadline passed: {url}", url=url
                )
            await self.sleep(clamp_to_deadline(delay, now, deadline))
            if self.clock() >= deadline:
                raise ACMETimeout(
                    f"{what} still {status_of(value)} when the deadline passed: {url}", url=url
                )
