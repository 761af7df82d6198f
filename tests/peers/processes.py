"""Running the real peers as child processes: start, wait until ready, always stop.

Shared by the step-ca and Pebble fixtures (and free for the HAProxy one). Each child:
- writes stdout and stderr to one log file that failure messages quote the end of;
- gets ``PR_SET_PDEATHSIG=SIGKILL`` so that even a pytest killed with SIGKILL leaves no peer
  holding ports on this shared machine (fixtures run on pytest's main thread, which lives as long
  as the session; the signal fires when the *thread* that forked exits);
- is stopped with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "PeerProcess",
    "PeerStartError",
    "free_port",
    "free_udp_and_tcp_port",
    "http_get",
    "peer_environment",
]

_PR_SET_PDEATHSIG = 1
# Generous on purpose: readiness is polled, so a fast machine never waits this long, and a
# loaded 2-core machine running several suites must not fail a start.
DEFAULT_START_TIMEOUT = 90.0


class PeerStartError(RuntimeError):
    """A peer did not become ready; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that is free right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_udp_and_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP (a DNS server listens on both)."""
    for _ in range(50):
        port = free_port(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((host, port))
            except OSError:
                continue
            return port
    raise PeerStartError("no port free for both TCP and UDP")


_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def peer_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus proxy settings, plus ``extra``.

    Go's HTTP client honours HTTP_PROXY for names that are not literally loopback, so a step-ca
    or Pebble inheriting a proxy would send its http-01 validation of ``hN.cert-sidecar.test``
    to the proxy instead of to the test's responder.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARIABLES}
    env.update(extra or {})
    return env


def http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> bytes:
    """GET without proxies (the peers are on loopback; an http_proxy variable must not matter)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    with opener.open(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class PeerProcess:
    """One peer daemon. ``start()`` may be called again after ``stop()`` (same argv, same log)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else peer_environment()
        self.cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running():
            raise PeerStartError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
            )

    def wait_ready(
        self,
        ready: Callable[[], bool],
        what: str,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        """Poll ``ready()`` until true; fail early, with the log, if the process exits."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if not self.running():
                code = self._process.returncode if self._process is not None else None
                raise PeerStartError(
                    f"{self.name} exited (status {code}) before {what}:\n{self.log_tail()}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise PeerStartError(
                    f"{self.name} not ready ({what}) within {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; idempotent."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, limit: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return "(no log)"
        return data[-limit:].decode("utf-8", errors="replace")
