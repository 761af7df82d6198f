"""The ``cert-sidecar`` command line: parsing, dispatch, and the one place errors become exits.

Exit codes (CONTRACT.md, "Commands"): 0 success; 1 the CA, HAProxy or the disk failed
(``OperationError``, ``ca_client.errors.AcmeError``) or an unexpected error; 2 a usage or
configuration error (argparse, ``ConfigError``), found before any network I/O; 130 interrupted.
Every failure is one line on stderr; a traceback only with ``--log-level debug``. A command's
start-up checks (``preflight.STARTUP_CHECKS``) run here, once, before the command is imported.

Start-up time matters for the one-shot commands, so this module imports only the standard
library, ``sidecar.config`` and ``sidecar.preflight``; the command implementations (httpx,
cryptography, structlog) are imported when a command runs, and ``check-config`` never imports
them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NoReturn

from sidecar import __version__, preflight
from sidecar.config import (
    Settings,
    add_setting_arguments,
    describe,
    load_settings,
    locate_running_sidecar,
)
from sidecar.domains import validate_certificate_name
from sidecar.errors import ConfigError, SidecarError, one_line
from sidecar.outcome import REVOCATION_REASONS, canonical_reason

__all__ = ["PROG", "REVOCATION_REASONS", "build_parser", "main"]

PROG: Final = "cert-sidecar"

# command -> (module, function); imported only when that command runs.
_COMMANDS: Final[Mapping[str, tuple[str, str]]] = MappingProxyType(
    {
        "run": ("sidecar.service", "cmd_run"),
        "issue": ("sidecar.oneshot", "cmd_issue"),
        "renew": ("sidecar.oneshot", "cmd_renew"),
        "revoke": ("sidecar.oneshot", "cmd_revoke"),
        "status": ("sidecar.status", "cmd_status"),
        "healthcheck": ("sidecar.health", "cmd_healthcheck"),
    }
)
# The settings a command's --help lists, where it uses only a few (by argparse dest); every
# settings flag is accepted by every command, so that one flag list serves them all.
_SHOWN_SETTINGS: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "status": frozenset(
            {
                "config",
                "domains",
                "certs_dir",
                "state_dir",
                "renew_at",
                "haproxy_sockets",
                "haproxy_certs_dir",
                "log_level",
            }
        ),
        "healthcheck": frozenset({"config", "health_listen", "state_dir"}),
    }
)
# What still answers from a running sidecar when the configuration does not load.
_ASK_THE_RUNNING_SIDECAR: Final = frozenset({"healthcheck", "status"})
_PRIVATE_KEY: Final = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*", re.DOTALL)
_EXIT_INTERRUPTED: Final = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is two short lines, not the usage of thirty flags."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\nTry '{self.prog} --help'.\n")


def _reason(text: str) -> str:
    name = canonical_reason(text)
    if name is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(REVOCATION_REASONS)}")
    return name


def _setting_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version")]


def _settings_parent(shown: frozenset[str] | None = None) -> _Parser:
    """The settings flags, for a command's parser; ``shown``: the only ones its help lists."""
    settings = _Parser(add_help=False)
    add_setting_arguments(settings)
    # argparse copies every attribute of a command's namespace over the top-level one, defaults
    # included: without SUPPRESS, a flag given before the command would be reset to None. With
    # it, a command sets only what was written after it (which then wins).
    for action in _setting_actions(settings):
        action.default = argparse.SUPPRESS
        if shown is not None and action.dest not in shown:
            action.help = argparse.SUPPRESS
    return settings


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Keeps HAProxy serving valid TLS certificates from an ACME CA (step-ca).",
        epilog="Every setting is also an environment variable and a config-file key; "
        f"see '{PROG} <command> --help'. Precedence: flag > environment > file > default. "
        "Settings flags go before or after the command; after it, they win.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    # The settings flags are accepted before the command too (`cert-sidecar --config FILE run`,
    # as with git or docker); each command's --help lists them, so here they are not shown.
    add_setting_arguments(parser)
    for action in _setting_actions(parser):
        action.help = argparse.SUPPRESS
    settings = _settings_parent()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        shown = _SHOWN_SETTINGS.get(name)
        # Parents share their actions: a command that shows fewer gets its own copy.
        parent = settings if shown is None else _settings_parent(shown)
        sub: argparse.ArgumentParser = commands.add_parser(
            name,
            parents=[parent],
            help=summary,
            description=summary,
            epilog=None
            if shown is None
            else f"Every other setting's flag is accepted too (see '{PROG} run --help'); "
            "these are the ones this command uses.",
        )
        return sub

    command(
        "run", "keep every certificate issued, renewed and loaded into HAProxy until SIGTERM/SIGINT"
    )
    issue = command(
        "issue",
        "obtain every certificate that is missing, invalid or due, write and deploy it, then exit",
    )
    issue.add_argument("--force", action="store_true", help="obtain all of them, due or not")
    renew = command("renew", "renew the certificates that are due, then exit")
    renew.add_argument("--force", action="store_true", help="renew all of them, due or not")
    renew.add_argument(
        "--dry-run",
        action="store_true",
        help="do the whole ACME exchange but write and deploy nothing",
    )
    status = command("status", "show each certificate: names, expiry, next renewal, last error")
    status.add_argument("--json", dest="as_json", action="store_true", help="JSON for machines")
    revoke = command("revoke", "revoke a certificate at the CA, then replace it (or remove it)")
    revoke.add_argument("name", metavar="NAME", help="the certificate's name")
    revoke.add_argument(
        "--reason",
        type=_reason,
        default=None,
        help="RFC 5280 reason: " + ", ".join(REVOCATION_REASONS),
    )
    revoke.add_argument(
        "--remove",
        action="store_true",
        help="delete its files and unload it from HAProxy instead of replacing it",
    )
    command("healthcheck", "exit 0 when the running sidecar reports ready (for HEALTHCHECK)")
    check = command("check-config", "validate the configuration and print the effective settings")
    check.add_argument(
        "--online",
        action="store_true",
        help="also fetch the CA's ACME directory, its TLS verified against the CA bundle; "
        "exit 1 with one line when that fails",
    )
    return parser


def _command_kwargs(args: argparse.Namespace) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args.command == "issue":
        return (), {"force": args.force}
    if args.command == "renew":
        return (), {"force": args.force, "dry_run": args.dry_run}
    if args.command == "revoke":
        return (args.name,), {"reason": args.reason, "remove": args.remove}
    if args.command == "status":
        return (), {"as_json": args.as_json}
    return (), {}


def _dispatch(args: argparse.Namespace, environ: Mapping[str, str], state: dict[str, Any]) -> int:
    try:
        settings: Settings = load_settings(
            args, environ, require_certificates=args.command != "healthcheck"
        )
    except ConfigError as error:
        if args.command in _ASK_THE_RUNNING_SIDECAR:
            return _ask_running_sidecar(args, environ, error)
        raise
    state["settings"] = settings
    if args.command == "revoke":
        try:
            validate_certificate_name(args.name)
        except ValueError as exc:
            raise ConfigError("NAME", str(exc)) from None
    # What each command checks before it starts is preflight.STARTUP_CHECKS; the commands
    # themselves check nothing again.
    preflight.run_startup_checks(args.command, settings)
    if args.command == "check-config":
        # Nothing here logs, so structlog is not even imported: check-config stays fast.
        sys.stdout.write(describe(settings))
        if args.online:
            return _check_online(settings)
        return 0

    if args.command != "healthcheck":
        # healthcheck runs every few seconds in the container and logs nothing: keep it light.
        from sidecar.logs import configure_logging

        configure_logging(settings.service.log_format, settings.service.log_level)
    module_name, function_name = _COMMANDS[args.command]
    function = getattr(importlib.import_module(module_name), function_name)
    positional, keywords = _command_kwargs(args)
    if args.command == "run":
        # The service re-reads the settings, same flags and environment, when the config file
        # changes (issue 3, "Configuration reload"); a bad new file raises ConfigError there.
        keywords["reload_settings"] = lambda: load_settings(args, environ)
    # healthcheck needs only where the running sidecar listens: the [service] part has it, as
    # locate_running_sidecar's answer does when the file does not load.
    subject = settings.service if args.command == "healthcheck" else settings
    result = function(subject, *positional, **keywords)
    import asyncio

    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    return int(result)


def _ask_running_sidecar(
    args: argparse.Namespace, environ: Mapping[str, str], error: ConfigError
) -> int:
    """``healthcheck`` and ``status`` when the configuration does not load: a running sidecar
    keeps its last good settings (a bad file saved into the watched config), so ask it rather
    than report a healthy sidecar as broken. ``error`` is raised when there is none to ask."""
    try:
        where = locate_running_sidecar(args, environ)
    except ConfigError:
        raise error from None
    import asyncio

    if args.command == "healthcheck":
        from sidecar.health import cmd_healthcheck

        # Quiet as always when healthy; the file's problem is for check-config and the logs.
        code = asyncio.run(cmd_healthcheck(where))
        if code != 0:
            sys.stderr.write(f"healthcheck: also, the configuration does not load: {error}\n")
        return int(code)
    from sidecar.status import cmd_status_live

    return asyncio.run(cmd_status_live(where.state_dir, error, as_json=args.as_json))


def _check_online(settings: Settings) -> int:
    """``check-config --online``: the directory, fetched as `run` would (exit 1 if not)."""
    import asyncio

    from sidecar.ca_probe import describe_directory, fetch

    directory = asyncio.run(fetch(settings))
    sys.stdout.write("\n" + describe_directory(directory))
    return 0


def _debug_requested(
    args: argparse.Namespace, environ: Mapping[str, str], state: dict[str, Any]
) -> bool:
    settings = state.get("settings")
    if isinstance(settings, Settings):
        return settings.service.log_level == "debug"
    # The settings did not load; honour a debug request as written.
    level = getattr(args, "log_level", None) or environ.get("CERT_SIDECAR_LOG_LEVEL", "")
    return str(level).strip().lower() == "debug"


def _is_acme_error(exc: BaseException) -> bool:
    # ca_client.errors is looked up, not imported: if it was never imported, nothing raised
    # from it, and importing it here would cost start-up time for every command.
    module = sys.modules.get("ca_client.errors")
    acme_error = getattr(module, "AcmeError", None)
    return isinstance(acme_error, type) and isinstance(exc, acme_error)


def _say(message: str) -> None:
    message = _PRIVATE_KEY.sub("[redacted]", message)
    sys.stderr.write(f"{PROG}: error: {one_line(message)}\n")
    sys.stderr.flush()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _report(exc: BaseException, debug: bool) -> int:
    """The single mapping of exceptions to one-line messages and exit codes."""
    if isinstance(exc, BaseExceptionGroup):
        # A task group's failure: report the first real error, not "unhandled errors in a
        # TaskGroup"; an interrupt anywhere in it wins.
        leaves = _leaves(exc)
        interrupt = next((e for e in leaves if isinstance(e, KeyboardInterrupt)), None)
        if debug and interrupt is None:
            traceback.print_exception(exc, file=sys.stderr)
        return _report(interrupt or leaves[0], debug=False)
    if isinstance(exc, KeyboardInterrupt):
        sys.stderr.write(f"{PROG}: interrupted\n")
        return _EXIT_INTERRUPTED
    if isinstance(exc, ConfigError):
        _say(str(exc))
        return exc.exit_code
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, SidecarError):
        _say(str(exc) or type(exc).__name__)
        return exc.exit_code
    if _is_acme_error(exc):
        _say(str(exc) or type(exc).__name__)
        return 1
    detail = str(exc)
    _say(f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__)
    return 1


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    sys.stderr.write(f"{code}\n")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (2)
        return _exit_status(exc.code)
    environ = os.environ
    state: dict[str, Any] = {}
    try:
        return _dispatch(args, environ, state)
    except SystemExit as exc:
        return _exit_status(exc.code)
    except BaseException as exc:
        return _report(exc, _debug_requested(args, environ, state))
