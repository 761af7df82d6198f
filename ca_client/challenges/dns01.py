"""The dns-01 solver (RFC 8555 §8.4) through a user-supplied hook command.

RFC 8555 §8.4: the client "provisions a TXT resource record" named ``_acme-challenge.`` plus the
domain, whose value is ``base64url(SHA-256(keyAuthorization))``. DNS providers differ too much
for one built-in client, so the record is made by a hook, run without a shell as::

    COMMAND... present _acme-challenge.<name>. <txt value>
    COMMAND... cleanup _acme-challenge.<name>. <txt value>

``present`` must exit 0 within the timeout; a wildcard and its base name share one record name
with two values, so a hook must add a value rather than replace the record set.

The same facts are in the hook's environment, because about 1.7 % of TXT values begin with
``-`` (base64url's alphabet has it), which a hook that parses options takes for one:

* ``ACME_DNS_ACTION``: ``present`` or ``cleanup``;
* ``ACME_DNS_RECORD``: the record name, with its trailing dot;
* ``ACME_DNS_VALUE``: the TXT value;
* ``ACME_DNS_DOMAIN``: the identifier being validated (``*.a.example`` for a wildcard).

The rest of the hook's environment is :func:`ca_client.childenv.child_environment`'s: the
allow-list plus the names given as ``passthrough``, never the whole environment of this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence

from ca_client.challenges.base import (
    ChallengeSetupError,
    DnsHookError,
    dns01_record_name,
    dns01_txt_value,
)
from ca_client.childenv import child_environment
from ca_client.models import Identifier

logger = logging.getLogger(__name__)

_OUTPUT_TAIL_BYTES = 4096


def hook_argv(
    command: Sequence[str], action: str, identifier: Identifier, key_authorization: str
) -> list[str]:
    """The exact argument vector for ``action`` ("present" or "cleanup"): pure, for tests too."""
    return [
        *command,
        action,
        dns01_record_name(identifier),
        dns01_txt_value(key_authorization),
    ]


def hook_environment(
    action: str,
    identifier: Identifier,
    key_authorization: str,
    *,
    passthrough: Iterable[str] = (),
    environ: dict[str, str] | None = None,
) -> dict[str, str]:
    """The hook's environment for ``action``: pure given ``environ``, for tests too."""
    return child_environment(
        {
            "ACME_DNS_ACTION": action,
            "ACME_DNS_RECORD": dns01_record_name(identifier),
            "ACME_DNS_VALUE": dns01_txt_value(key_authorization),
            "ACME_DNS_DOMAIN": identifier.value,
        },
        passthrough=passthrough,
        environ=environ,
    )


def last_line(output: bytes) -> str:
    """The last non-blank line of a hook's output, for a one-line error message."""
    for line in reversed(output.decode("utf-8", "replace").splitlines()):
        if line.strip():
            return line.strip()[:300]
    return ""


class Dns01HookSolver:
    """Proves dns-01 by running ``command present|cleanup <record name> <value>``."""

    challenge_type = "dns-01"

    def __init__(
        self,
        command: Sequence[str],
        timeout: float = 60.0,
        *,
        propagation_delay: float = 0.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        passthrough: Iterable[str] = (),
    ) -> None:
        if not command:
            raise ValueError("dns-01 hook command is empty")
        self.command = tuple(command)
        #: variables passed to the hook beyond the allow-list (a DNS provider's token, say)
        self.passthrough = tuple(passthrough)
        self.timeout = timeout
        self.propagation_delay = propagation_delay
        self._sleep = sleep

    @property
    def hook_name(self) -> str:
        return self.command[0]

    async def present(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        argv = hook_argv(self.command, "present", identifier, key_authorization)
        env = hook_environment(
            "present", identifier, key_authorization, passthrough=self.passthrough
        )
        await self._run("present", argv, env)
        if self.propagation_delay > 0:
            # The hook returned once its DNS provider accepted the record; resolvers the CA
            # uses may need longer to see it.
            await self._sleep(self.propagation_delay)

    async def cleanup(self, identifier: Identifier, token: str, key_authorization: str) -> None:
        argv = hook_argv(self.command, "cleanup", identifier, key_authorization)
        env = hook_environment(
            "cleanup", identifier, key_authorization, passthrough=self.passthrough
        )
        try:
            await self._run("cleanup", argv, env)
        except ChallengeSetupError as exc:
            # A stale TXT record harms nothing but tidiness; the order's outcome stands.
            logger.warning("%s", exc)

    async def _run(self, action: str, argv: list[str], env: dict[str, str]) -> None:
        # Only the hook's name: the rest of a configured command may hold an API credential.
        logger.debug("running dns-01 hook %s %s %s", self.hook_name, action, argv[-2])
        loop = asyncio.get_running_loop()
        hook = _HookProtocol(loop)
        try:
            transport, _ = await loop.subprocess_exec(
                lambda: hook,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                # Its own process group, so a timeout can stop whatever the hook started too.
                start_new_session=True,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise DnsHookError(self.hook_name, action, f"cannot run it: {reason}") from exc

        try:
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(hook.exited)
            except TimeoutError:
                _kill_group(transport.get_pid())
                raise DnsHookError(
                    self.hook_name, action, f"did not finish within {self.timeout:g} s"
                ) from None
            except BaseException:
                _kill_group(transport.get_pid())  # cancelled: do not leave the hook running
                raise
            # Its output is complete once both pipes close, unless something the hook left
            # running in the background holds them: wait for that only briefly.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(hook.pipes_closed)
            returncode = transport.get_returncode()
        finally:
            transport.close()

        stdout, stderr = hook.output[1], hook.output[2]
        if stdout:
            logger.debug("dns-01 hook %s output: %s", action, last_line(stdout))
        if returncode != 0:
            detail = f"exit status {returncode}"
            if returncode is not None and returncode < 0:
                detail = f"killed by signal {-returncode}"
            message = last_line(stderr) or last_line(stdout)
            if message:
                detail += f": {message}"
            raise DnsHookError(self.hook_name, action, detail, returncode)


class _HookProtocol(asyncio.SubprocessProtocol):
    """Collects the tail of the hook's output and signals its exit.

    ``Process.wait()`` would also wait for the pipes to close, which a background process
    started by the hook can hold open indefinitely; the exit itself is what counts here.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.output: dict[int, bytes] = {1: b"", 2: b""}
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._open_pipes = {1, 2}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        # Hooks can be chatty; only the end matters for an error message.
        self.output[fd] = (self.output.get(fd, b"") + data)[-_OUTPUT_TAIL_BYTES:]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open_pipes.discard(fd)
        if not self._open_pipes and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
