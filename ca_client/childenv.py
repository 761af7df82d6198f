"""The environment of every child process: what a hook needs to run, never a secret.

Hooks (the dns-01 hook, the sidecar's deploy hook and reload command) are other people's
programs, often shell scripts that log their whole environment when debugging. The process that
runs them holds secrets in its environment (the EAB HMAC key, provider tokens meant for
something else), so a child never inherits it wholesale: it gets an allow-list of the variables
programs need to run and behave (``PATH``, ``HOME``, the locale, the time zone, the temporary
directory, the user), the variables documented for that kind of child (``extra``), and the
names its operator explicitly chose to pass (``passthrough``). Everything else stays behind.

The variables a service manager gives the sidecar itself (systemd's ``NOTIFY_SOCKET``, the
watchdog's, socket activation's) never reach a child, even when an operator names them: a
hook that inherited ``NOTIFY_SOCKET`` would speak for the sidecar (``READY=1``, ``STOPPING=1``)
to a unit with ``NotifyAccess=all``.

An allow-list rather than a deny-list because the secrets a container holds are not all known
here: a name like ``DB_URL`` may carry a password, and a deny-list of "secret-looking" names
would miss it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["BASE_NAMES", "SUPERVISOR_NAMES", "child_environment", "is_base_name"]

#: Variables every child gets when the parent has them: what a program needs to find other
#: programs (PATH), its files (HOME, TMPDIR), and to print text and times (LANG, LC_*, TZ).
BASE_NAMES: Final = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "HOSTNAME",
    }
)
_BASE_PREFIXES: Final = ("LC_",)

#: What systemd (or podman's ``Notify=true``) addresses to the sidecar's own process: never a
#: child's, whatever ``passthrough`` says.
SUPERVISOR_NAMES: Final = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)


def is_base_name(name: str) -> bool:
    """True for a variable every child gets (see :data:`BASE_NAMES`)."""
    return name in BASE_NAMES or name.startswith(_BASE_PREFIXES)


def child_environment(
    extra: Mapping[str, str] | None = None,
    *,
    passthrough: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a child: the allow-list and ``passthrough`` from ``environ`` (the
    process's environment by default), then ``extra`` (the child's documented variables),
    which wins over both; never one of :data:`SUPERVISOR_NAMES`."""
    source = os.environ if environ is None else environ
    chosen = set(passthrough) - SUPERVISOR_NAMES
    env = {name: value for name, value in source.items() if is_base_name(name) or name in chosen}
    if extra:
        env.update(extra)
    return env
