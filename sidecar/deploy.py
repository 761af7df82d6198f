"""Getting a freshly written PEM served by HAProxy, and proving it.

The caller has already written ``<certs_dir>/<name>.pem`` atomically, so whatever happens here a
later HAProxy start or reload loads the right file. ``Deployer.deploy`` then:

1. loads it into the running HAProxy according to ``--reload``:

   - ``runtime-api``: on every socket, the hot-update transaction (``sidecar.haproxy``), then
     ``show ssl cert`` must report the new serial; a failed socket is retried a few times,
     and if it still fails the configured ``--reload-command`` or ``--reload-signal`` is the
     fallback (reported in ``DeployResult.fallback``);
   - ``master-reload``: ``reload`` on each master CLI socket;
   - ``signal``: the signal (SIGUSR2 by default: the master-worker reload) to the pid file's pid;
   - ``command``: the reload command (argv, no shell) with a timeout;
   - ``none``: nothing;

   after a reload of any kind, configured sockets are polled until they report the new serial;

2. with ``--verify-address``, makes a TLS handshake per name (as SNI) and compares the served
   leaf's serial with the new one. The chain is deliberately not verified there: trust was
   checked when the certificate was issued, the verify address is often an IP or a service
   name the certificate does not carry, a placeholder is self-signed, and after a CA rotation a
   correct deploy would otherwise look like a failure. The question asked is only "is this
   exact certificate what clients get now";

3. runs ``--deploy-hook`` after a successful deploy, with ``CERT_NAME``, ``CERT_PEM``,
   ``CERT_SERIAL``, ``CERT_NOT_AFTER`` (and ``CERT_DOMAINS``). A failing hook is reported but
   never undoes the deploy. The hook and the reload command get the environment of
   :func:`ca_client.childenv.child_environment`, never the sidecar's own (it holds the EAB key).

Nothing raises for a failed deploy: ``DeployResult`` (`sidecar.deploy_result`, re-exported
here) carries the mode, each socket's outcome, the fallback, the verification and the hook, so
the service can log and count them. Outside a deploy, `Deployer.ask_served` is the one place
that asks HAProxy what it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import math
import os
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from ca_client.childenv import child_environment
from ca_client.retry import poll_delays
from sidecar.config import (
    RELOAD_MODES,
    ReloadMode,
    Settings,
    default_reload_mode,
    parse_host_port,
    parse_signal,
    split_command,
)
from sidecar.deploy_result import (
    DeployResult,
    FallbackKind,
    HookOutcome,
    NameCheck,
    SocketOutcome,
    VerifyOutcome,
)
from sidecar.errors import error_text
from sidecar.haproxy import (
    HAProxyAddress,
    HAProxyError,
    HAProxyRuntime,
    HAProxyUnreachable,
    InvalidPayload,
    check_payload,
    normalize_serial,
    parse_haproxy_address,
)

__all__ = [
    "RELOAD_MODES",
    "DeployConfig",
    "DeployResult",
    "Deployer",
    "FallbackKind",
    "HookOutcome",
    "NameCheck",
    "ServedAnswer",
    "SocketOutcome",
    "VerifyOutcome",
    "deployer_from_settings",
    "fetch_served_certificate",
    "sni_for",
]

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class DeployConfig:
    """How to deploy; mirrors the ``[haproxy]`` settings plus the timeouts.

    ``reload=None`` picks the contract's default: ``runtime-api`` with sockets, else ``none``.
    The fields are typed values: ``sidecar.config`` parses what the user wrote, once
    (``deployer_from_settings``); ``build`` is the shorthand for tests and benchmarks.
    """

    sockets: tuple[HAProxyAddress, ...] = ()
    certs_dir: Path = Path("/etc/haproxy/certs")
    haproxy_certs_dir: Path | None = None
    reload: ReloadMode | None = None
    reload_command: tuple[str, ...] | None = None
    reload_signal: signal.Signals | None = None
    reload_pid_file: Path | None = None
    verify_address: tuple[str, int] | None = None
    deploy_hook: tuple[str, ...] | None = None
    # Variables the operator chose to pass to the hook and the reload command, beyond the
    # allow-list of ca_client.childenv (a provider token, a proxy).
    hook_env: tuple[str, ...] = ()
    socket_timeout: float = 5.0
    attempts: int = 3  # runtime-API attempts per socket, and handshakes per name
    retry_delay: float = 0.2  # first delay between attempts; doubles
    settle_timeout: float = 20.0  # after a reload: how long the new worker may take to serve
    command_timeout: float = 60.0
    hook_timeout: float = 60.0
    handshake_timeout: float = 5.0

    @classmethod
    def build(
        cls,
        *,
        sockets: Iterable[HAProxyAddress | str] = (),
        reload_command: Sequence[str] | str | None = None,
        deploy_hook: Sequence[str] | str | None = None,
        reload_signal: signal.Signals | str | int | None = None,
        verify_address: tuple[str, int] | str | None = None,
        **other: Any,
    ) -> DeployConfig:
        """Like the constructor, but accepting the spellings a user would write, parsed by the
        same functions as the settings (``sidecar.config``, ``sidecar.haproxy``)."""
        return cls(
            sockets=tuple(
                s if isinstance(s, HAProxyAddress) else parse_haproxy_address(s) for s in sockets
            ),
            reload_command=_argv(reload_command),
            deploy_hook=_argv(deploy_hook),
            reload_signal=(
                reload_signal
                if reload_signal is None or isinstance(reload_signal, signal.Signals)
                else parse_signal(reload_signal)
            ),
            verify_address=(
                parse_host_port(verify_address)
                if isinstance(verify_address, str)
                else verify_address
            ),
            **other,
        )

    @property
    def mode(self) -> ReloadMode:
        mode = self.reload or default_reload_mode(bool(self.sockets))
        if mode not in RELOAD_MODES:
            raise ValueError(f"unknown reload mode {mode!r}: one of {', '.join(RELOAD_MODES)}")
        return mode


def _argv(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        argv = split_command(value) if value.strip() else ()
    else:
        argv = tuple(value)
    if not argv:
        raise ValueError("empty command")
    return argv


def deployer_from_settings(settings: Settings) -> Deployer:
    """The process's Deployer: every field is already parsed and checked by ``load_settings``."""
    return Deployer(
        DeployConfig(
            sockets=settings.haproxy.sockets,
            certs_dir=settings.files.certs_dir,
            haproxy_certs_dir=settings.haproxy.certs_dir,
            reload=settings.haproxy.reload,
            reload_command=settings.haproxy.reload_command,
            reload_signal=settings.haproxy.reload_signal,
            reload_pid_file=settings.haproxy.reload_pid_file,
            verify_address=settings.haproxy.verify_address,
            deploy_hook=settings.haproxy.deploy_hook,
            hook_env=settings.service.hook_env,
        )
    )


@dataclass(frozen=True, slots=True)
class ServedAnswer:
    """What the sockets said they serve for one certificate (`Deployer.ask_served`).

    ``serial``: the answer of every socket that answered, when they agree and have it loaded;
    else None. ``sockets``: each socket asked, as (address, answered). ``errors``: why the
    others did not answer, in the order asked.
    """

    serial: str | None
    sockets: tuple[tuple[str, bool], ...] = ()
    errors: tuple[HAProxyError, ...] = ()

    @property
    def answered(self) -> bool:
        """At least one socket answered."""
        return any(answered for _, answered in self.sockets)


# --------------------------------------------------------------------------- verification


def sni_for(name: str) -> str | None:
    """The SNI to ask for ``name``; None for an IP address (RFC 6066 §3: no literal IPs).

    A wildcard is asked for with a fixed left label, which it covers.
    """
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        return None
    if name.startswith("*."):
        return "cert-sidecar-verify." + name[2:]
    return name


async def fetch_served_certificate(
    host: str, port: int, sni: str | None, *, time_limit: float = 5.0
) -> x509.Certificate:
    """The leaf a TLS server presents for ``sni``, without judging its chain (see above)."""
    # A bare client context: create_default_context() would load the system store (tens of
    # milliseconds) only for us to switch verification off.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(time_limit):
        _, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=sni or None
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
    if not der:
        raise ssl.SSLError("the server presented no certificate")
    return x509.load_der_x509_certificate(der)


@dataclass(slots=True)
class _Job:
    """One deploy as it goes: what is expected, and what has happened so far."""

    expected: str
    path: str
    names: tuple[str, ...]
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    sockets: list[SocketOutcome] = field(default_factory=list)
    fallback: FallbackKind | None = None
    fallback_ok: bool | None = None
    verification: VerifyOutcome | None = None

    def record_sockets(self, outcomes: Sequence[SocketOutcome]) -> bool:
        """Note the failed sockets' errors; True when every one succeeded."""
        self.errors += [f"{s.address}: {s.error}" for s in outcomes if not s.ok]
        return all(s.ok for s in outcomes)


# --------------------------------------------------------------------------- the deployer


class Deployer:
    """Deploys certificates as ``config`` says. One instance serves the whole process."""

    def __init__(
        self,
        config: DeployConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.mode = config.mode
        self._sleep = sleep
        self._clock = clock
        self.runtimes = tuple(
            HAProxyRuntime(a, timeout=config.socket_timeout) for a in config.sockets
        )

    # -- paths

    @property
    def crt_list(self) -> str:
        """The directory as HAProxy loaded it: what ``add ssl crt-list`` takes."""
        return str(self.config.haproxy_certs_dir or self.config.certs_dir)

    def haproxy_path(self, name_or_path: str | Path) -> str:
        """HAProxy's file name for a certificate name (str) or a PEM path (Path)."""
        if isinstance(name_or_path, Path):
            try:
                relative = name_or_path.relative_to(self.config.certs_dir)
            except ValueError:
                relative = Path(name_or_path.name)
        else:
            relative = Path(f"{name_or_path}.pem")
        return str(Path(self.crt_list) / relative)

    # -- queries

    async def ask_served(self, name_or_path: str | Path) -> ServedAnswer:
        """Ask every socket what it serves for a certificate (``show ssl cert``).

        The only place that asks HAProxy this outside a deploy: `deployed_serial` and the
        manager's check of what is served (which reports each socket's answer, for
        cert_sidecar_haproxy_up) both go through here. Never raises for a socket that does not
        answer: see `ServedAnswer`.
        """
        path = self.haproxy_path(name_or_path)
        sockets: list[tuple[str, bool]] = []
        answers: list[str | None] = []
        errors: list[HAProxyError] = []
        for runtime in self.runtimes:
            try:
                info = await runtime.show_ssl_cert(path)
            except HAProxyError as error:
                errors.append(error)
                sockets.append((str(runtime.address), False))
                continue
            sockets.append((str(runtime.address), True))
            answers.append(info.serial if info is not None and info.loaded else None)
        # One answer for all: a caller comparing it with the file redeploys on None.
        serial = answers[0] if len(set(answers)) == 1 else None
        return ServedAnswer(serial, tuple(sockets), tuple(errors))

    async def deployed_serial(self, name_or_path: str | Path) -> str | None:
        """The serial HAProxy serves for a certificate (``show ssl cert``), upper-case hex.

        A certificate name (str) or its PEM path (Path). With several sockets: their common
        answer, or None when any reachable one lacks it or they disagree (so that a caller
        comparing with the file redeploys). Raises the first HAProxyError if none answers.
        """
        if not self.runtimes:
            return None
        answer = await self.ask_served(name_or_path)
        if not answer.answered:
            raise answer.errors[0]
        return answer.serial

    async def remove(self, name_or_path: str | Path) -> list[str]:
        """Unload a certificate from every socket (``revoke --remove``). Returns the addresses
        it was removed from; raises the first HAProxyError after trying them all."""
        path = self.haproxy_path(name_or_path)
        removed: list[str] = []
        first_error: HAProxyError | None = None
        for runtime in self.runtimes:
            try:
                if await runtime.remove_certificate(path, self.crt_list):
                    removed.append(str(runtime.address))
            except HAProxyError as error:
                first_error = first_error or error
        if first_error is not None:
            raise first_error
        return removed

    # -- deploy

    async def deploy(
        self,
        name: str,
        pem_path: Path,
        pem: bytes,
        serial_hex: str,
        *,
        not_after: dt.datetime,
        names: Sequence[str] = (),
    ) -> DeployResult:
        """Load the PEM (already written at ``pem_path``) into HAProxy, check it, run the hook.

        Never raises for a failed deploy: see ``DeployResult``. ``serial_hex`` in any hex
        spelling; ``names`` are the certificate's DNS names (SNI for ``--verify-address``).
        """
        started = self._clock()
        job = _Job(normalize_serial(serial_hex), self.haproxy_path(pem_path), tuple(names))
        if self.mode == "runtime-api":
            await self._deploy_hot(job, pem)
        else:
            await self._deploy_by_reload(job)
        hook: HookOutcome | None = None
        if job.ok and self.config.deploy_hook:
            hook = await _run_hook(
                self.config, name, pem_path, serial=job.expected, not_after=not_after, names=names
            )
            if not hook.ok:
                job.errors.append(f"deploy hook: {hook.error}")
        return DeployResult(
            name=name,
            serial=job.expected,
            mode=self.mode,
            ok=job.ok,
            sockets=tuple(job.sockets),
            fallback=job.fallback,
            fallback_ok=job.fallback_ok,
            verification=job.verification,
            hook=hook,
            errors=tuple(job.errors),
            duration=self._clock() - started,
        )

    async def _deploy_hot(self, job: _Job, pem: bytes) -> None:
        """``runtime-api``: update every socket, check, and reload instead when that failed."""
        try:
            check_payload(pem)
        except InvalidPayload as exc:
            # Not sendable over the CLI; a reload still loads the file from disk.
            job.sockets = [
                SocketOutcome(str(r.address), False, "failed", error=str(exc))
                for r in self.runtimes
            ]
        else:
            # One socket after the other: two addresses may reach the same process (a stats
            # socket and its master CLI), and its one transaction slot would make concurrent
            # updates collide. Each update takes a few milliseconds.
            job.sockets = [
                await self._hot_update(r, job.path, pem, job.expected) for r in self.runtimes
            ]
        job.ok = job.record_sockets(job.sockets)
        await self._check_served(job, settle=False)
        if not job.ok and (fallback := _fallback_kind(self.config)) is not None:
            job.fallback = fallback
            await self._fallback_reload(job, fallback)

    async def _fallback_reload(self, job: _Job, fallback: FallbackKind) -> None:
        """After a failed hot update: reload, then confirm on the sockets that answered."""
        reload_error = await self._reload(fallback)
        if reload_error is not None:
            job.errors.append(f"fallback {fallback}: {reload_error}")
            job.fallback_ok = False
            return
        # The reloaded HAProxy read the PEM from disk: confirm on the sockets that answered
        # before. One that was unreachable cannot confirm anything; it stays reported as failed
        # but does not veto a reload that worked.
        reachable = [r for r, s in zip(self.runtimes, job.sockets, strict=True) if s.reachable]
        confirmed = list(
            await asyncio.gather(*(self._confirm(r, job.path, job.expected) for r in reachable))
        )
        by_address = {s.address: s for s in confirmed}
        job.sockets = [by_address.get(s.address, s) for s in job.sockets]
        job.ok = job.record_sockets(confirmed)
        await self._check_served(job, settle=True)
        job.fallback_ok = job.ok

    async def _deploy_by_reload(self, job: _Job) -> None:
        """Every mode but ``runtime-api``: reload (unless ``none``), confirm, check."""
        mode = self.mode
        reload_error = await self._reload(mode) if mode != "none" else None
        if reload_error is not None:
            job.errors.append(reload_error)
            job.ok = False
            return
        if mode != "none":
            job.sockets = await self._confirm_all(job.path, job.expected)
        job.ok = job.record_sockets(job.sockets)
        await self._check_served(job, settle=mode != "none")

    async def _check_served(self, job: _Job, *, settle: bool) -> None:
        """With ``--verify-address``, and only while all went well: what a handshake gets."""
        if job.ok and self.config.verify_address:
            job.verification = await self._verify(job.names, job.expected, settle=settle)
            job.ok = job.verification.ok
            if not job.ok:
                job.errors.append(_verify_error(job.verification))

    # -- runtime API

    async def _hot_update(
        self, runtime: HAProxyRuntime, path: str, pem: bytes, expected: str
    ) -> SocketOutcome:
        address = str(runtime.address)
        error = "not tried"
        reachable = True
        delays = poll_delays(self.config.retry_delay, 2, math.inf)
        attempts = max(1, self.config.attempts)
        for attempt in range(1, attempts + 1):
            try:
                update = await runtime.update_certificate(path, pem, crt_list=self.crt_list)
            except HAProxyError as exc:
                error = exc.message
                reachable = not isinstance(exc, HAProxyUnreachable)
            else:
                reachable = True
                if update.serial == expected and update.status == "Used":
                    action = "added" if update.added_to_crt_list else "updated"
                    return SocketOutcome(address, True, action, update.serial, attempt)
                error = f"show ssl cert reports serial {update.serial} ({update.status})"
            if attempt < attempts:
                await self._sleep(next(delays))
        return SocketOutcome(address, False, "failed", None, attempts, error, reachable)

    async def _confirm_all(self, path: str, expected: str) -> list[SocketOutcome]:
        return list(
            await asyncio.gather(*(self._confirm(r, path, expected) for r in self.runtimes))
        )

    async def _confirm(self, runtime: HAProxyRuntime, path: str, expected: str) -> SocketOutcome:
        """Poll a socket after a reload until it reports ``expected`` as loaded.

        The new worker takes a moment to bind the socket again; until then we see refusals
        or the old worker's answer.
        """
        address = str(runtime.address)
        deadline = self._clock() + self.config.settle_timeout
        delays = poll_delays(0.02, 2, 0.5)
        attempts = 0
        while True:
            attempts += 1
            try:
                info = await runtime.show_ssl_cert(path)
            except HAProxyError as exc:
                error = exc.message
                served = None
            else:
                served = info.serial if info is not None else None
                if info is not None and info.loaded and served == expected:
                    return SocketOutcome(address, True, "confirmed", served, attempts)
                error = f"serves serial {served}" if info else f"{path} is not loaded"
            if self._clock() >= deadline:
                return SocketOutcome(address, False, "failed", served, attempts, error)
            await self._sleep(next(delays))

    # -- reloads

    async def _reload(self, kind: ReloadMode) -> str | None:
        """Run a reload of ``kind``; None on success, else a one-line error."""
        if kind == "command":
            return await _reload_command(self.config)
        if kind == "signal":
            return _send_signal(self.config)
        if kind == "master-reload":
            masters = [r for r in self.runtimes if r.address.master]
            if not masters:
                return "master-reload needs a master:unix:/path socket"
            errors = []
            for runtime in masters:
                try:
                    await runtime.master_reload(deadline=self.config.settle_timeout)
                except HAProxyError as exc:
                    errors.append(str(exc))
            return "; ".join(errors) or None
        return f"unknown reload mode {kind!r}"

    # -- verification

    async def _verify(self, names: Sequence[str], expected: str, *, settle: bool) -> VerifyOutcome:
        """Handshake per name; retried a few times, or until ``settle_timeout`` after a
        reload (the new worker may still be starting)."""
        assert self.config.verify_address is not None
        host, port = self.config.verify_address
        checks: list[NameCheck] = []
        skipped: list[str] = []
        for name in names:
            sni = sni_for(name)
            if sni is None:
                skipped.append(name)
                continue
            checks.append(await self._verify_name(host, port, name, sni, expected, settle=settle))
        ok = all(c.ok for c in checks)
        return VerifyOutcome(f"{host}:{port}", ok, tuple(checks), tuple(skipped))

    async def _verify_name(
        self, host: str, port: int, name: str, sni: str, expected: str, *, settle: bool
    ) -> NameCheck:
        deadline = self._clock() + self.config.settle_timeout
        delays = poll_delays(self.config.retry_delay, 2, 1.0)
        attempts = max(1, self.config.attempts)
        attempt = 0
        while True:
            attempt += 1
            served: str | None = None
            try:
                cert = await fetch_served_certificate(
                    host, port, sni, time_limit=self.config.handshake_timeout
                )
            except (OSError, ssl.SSLError, TimeoutError, ValueError) as exc:
                error = f"handshake failed: {_describe(exc)}"
            else:
                served = normalize_serial(cert.serial_number)
                if served == expected:
                    return NameCheck(name, sni, True, served)
                error = f"serves serial {served}, expected {expected}"
            done = self._clock() >= deadline if settle else attempt >= attempts
            if done:
                return NameCheck(name, sni, False, served, error)
            await self._sleep(next(delays))


# --------------------------------------------------------------------------- reloads and the hook


def _fallback_kind(config: DeployConfig) -> FallbackKind | None:
    """The reload to fall back on when a hot update fails, if one is configured."""
    if config.reload_command:
        return "command"
    if config.reload_signal is not None and config.reload_pid_file is not None:
        return "signal"
    return None


async def _reload_command(config: DeployConfig) -> str | None:
    """Run ``--reload-command``; None on success, else a one-line error."""
    argv = config.reload_command
    if not argv:
        return "no reload command configured"
    env = child_environment(passthrough=config.hook_env)
    outcome = await _run(argv, env, config.command_timeout)
    return None if outcome.ok else f"reload command {argv[0]}: {outcome.error}"


def _send_signal(config: DeployConfig) -> str | None:
    """Signal the process in ``--reload-pid-file``; None on success, else a one-line error."""
    sig = config.reload_signal or signal.SIGUSR2
    pid_file = config.reload_pid_file
    if pid_file is None:
        return "no pid file configured"
    try:
        text = pid_file.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        return f"pid file {pid_file}: {exc.strerror or type(exc).__name__}"
    # HAProxy's pid file holds one pid per line (the master's first in master-worker mode).
    first = text.split()[0] if text.split() else ""
    if not first.isdigit() or int(first) <= 1:
        return f"pid file {pid_file}: no pid in it"
    pid = int(first)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return f"{sig.name} to pid {pid} (from {pid_file}): no such process"
    except PermissionError:
        return f"{sig.name} to pid {pid} (from {pid_file}): not permitted"
    return None


async def _run_hook(
    config: DeployConfig,
    name: str,
    pem_path: Path,
    *,
    serial: str,
    not_after: dt.datetime,
    names: Sequence[str],
) -> HookOutcome:
    """Run ``--deploy-hook`` with the certificate described in its environment."""
    assert config.deploy_hook is not None
    # Never dict(os.environ): that holds the EAB HMAC key (ca_client.childenv).
    env = child_environment(
        {
            "CERT_NAME": name,
            "CERT_PEM": str(pem_path),
            "CERT_SERIAL": serial,
            "CERT_NOT_AFTER": _iso_utc(not_after),
            "CERT_DOMAINS": ",".join(names),
        },
        passthrough=config.hook_env,
    )
    return await _run(config.deploy_hook, env, config.hook_timeout)


def _iso_utc(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(exc: BaseException) -> str:
    # asyncio.timeout raises a bare TimeoutError, whose text would be its type's name.
    return "timed out" if isinstance(exc, TimeoutError) else error_text(exc)


def _verify_error(verification: VerifyOutcome) -> str:
    bad = [f"{c.sni}: {c.error}" for c in verification.checks if not c.ok]
    return f"verify {verification.address}: " + "; ".join(bad)


async def _run(argv: Sequence[str], env: dict[str, str], time_limit: float) -> HookOutcome:
    """Run a command (no shell) with a timeout; the outcome carries one line of error.

    stdout is discarded; the last line of stderr goes into the error, cut short, since a hook's
    output is the only clue to why it failed.
    """
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,  # so a timeout kills the whole group, not only the shell
        )
    except OSError as exc:
        return HookOutcome(False, None, f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(time_limit):
            _, stderr = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        return HookOutcome(False, None, f"{argv[0]} timed out after {time_limit:g} s")
    if process.returncode != 0:
        lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
        detail = f": {lines[-1].strip()[:200]}" if lines else ""
        return HookOutcome(False, process.returncode, f"exit status {process.returncode}{detail}")
    return HookOutcome(True, 0, None)
