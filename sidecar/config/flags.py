"""The command-line flags, one per row of `OPTIONS`, grouped like the TOML tables."""

from __future__ import annotations

import argparse

from sidecar.config.options import DEFAULT_HELP, DEFAULTS, ENV_CONFIG, ENV_DOMAINS, OPTIONS, TABLES


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every setting's flag, grouped like the TOML tables; none has an argparse default.

    Defaults are applied by ``load_settings`` (so a flag left out can fall back to the
    environment and the file); the help shows them from ``DEFAULTS``.
    """
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help=f"TOML config file (env {ENV_CONFIG})",
    )
    titles = {
        "acme": "ACME",
        "files": "files",
        "renewal": "renewal",
        "haproxy": "HAProxy",
        "service": "service",
    }
    groups = {table: parser.add_argument_group(titles[table] + " settings") for table in TABLES}
    groups["acme"].add_argument(
        "--domain",
        dest="domains",
        action="append",
        metavar="NAMES",
        default=None,
        help=f"one certificate, its names comma-separated; repeatable (env {ENV_DOMAINS},"
        " certificates separated by ';')",
    )
    for option in OPTIONS:
        default = DEFAULT_HELP.get(option.field, DEFAULTS[option.field])
        shown = "" if default in (None, (), False) else f"; default {default}"
        text = f"{option.help} (env {option.envs[0]}, file {option.toml}{shown})"
        text = text.replace("%", "%%")
        group = groups[option.table]
        if option.kind == "bool":
            group.add_argument(
                option.flag,
                dest=option.field,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=text,
            )
        elif option.kind == "list":
            group.add_argument(
                option.flag,
                dest=option.field,
                action="append",
                metavar=option.metavar,
                default=None,
                help=text,
            )
        else:
            group.add_argument(
                option.flag,
                dest=option.field,
                metavar=option.metavar,
                default=None,
                help=text,
            )
