"""Where each raw value comes from: flag > environment variable > config file > default.

`Sources.get` answers with a `Raw` whose label is the spelling the user wrote, so every later
error names it. Also here: the TOML file (unknown tables and keys refused, relative paths
resolved against the file), the certificate list as written, the check for a misspelt
``CERT_SIDECAR_*`` variable, and `salvage` for a file that does not load as a whole.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sidecar.config.options import (
    CERT_KEYS,
    DEFAULTS,
    ENV_CONFIG,
    ENV_DOMAINS,
    ENV_PREFIX,
    KNOWN_ENV,
    OPTION_BY_FIELD,
    TABLES,
    TOML_KEYS,
    Option,
)
from sidecar.config.parsers import Raw, split_list
from sidecar.errors import ConfigError


class Sources:
    """Looks a setting up in flag > env > file > default order."""

    def __init__(
        self,
        args: argparse.Namespace,
        environ: Mapping[str, str],
        file_values: Mapping[str, Raw],
    ) -> None:
        self._args = args
        self._environ = environ
        self._file = file_values
        self.labels: dict[str, str] = {}

    def env(self, name: str) -> str | None:
        # An empty variable counts as unset: compose files pass "${X:-}" for optional ones.
        value = self._environ.get(name)
        return value if value else None

    def flag(self, dest: str) -> Any:
        return getattr(self._args, dest, None)

    def get(self, name: str) -> Raw:
        option = OPTION_BY_FIELD[name]
        raw = self._lookup(option)
        if raw.source != "default":
            self.labels[name] = raw.label
        return raw

    def _lookup(self, option: Option) -> Raw:
        value = self.flag(option.field)
        if value is not None:
            return Raw(value, option.flag, "flag")
        for env in option.envs:
            text = self.env(env)
            if text is not None:
                if option.kind == "list":
                    return Raw(split_list(text), env, "env")
                return Raw(text, env, "env")
        if option.field in self._file:
            return self._file[option.field]
        return Raw(DEFAULTS[option.field], f"{option.flag} (default)", "default")


@dataclass(frozen=True, slots=True)
class FileConfig:
    path: Path
    values: dict[str, Raw]
    certificates: list[tuple[int, dict[str, object]]] | None


def config_path(sources: Sources) -> tuple[Path, str] | None:
    flag = sources.flag("config")
    if flag is not None:
        return Path(os.path.abspath(flag)), "--config"
    env = sources.env(ENV_CONFIG)
    if env is not None:
        return Path(os.path.abspath(env)), ENV_CONFIG
    return None


def read_config_file(path: Path, label: str) -> FileConfig:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(label, f"{path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(label, f"{path} is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(label, f"cannot read {path}: {exc.strerror}") from None
    import tomllib  # only when there is a file: most containers configure by environment

    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(label, f"{path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(label, f"{path} is not valid TOML: {exc}") from None
    where = f" in {path}"
    values: dict[str, Raw] = {}
    certificates: list[tuple[int, dict[str, object]]] | None = None
    for table, content in document.items():
        if table == "certificates":
            if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
                raise ConfigError(
                    "certificates" + where, "must be an array of tables: [[certificates]]"
                )
            certificates = list(enumerate(content, start=1))
            continue
        if table not in TOML_KEYS:
            raise ConfigError(
                table + where,
                f"unknown table or key {table!r} (known: {', '.join(TABLES)}, certificates)",
            )
        if not isinstance(content, dict):
            raise ConfigError(table + where, f"must be a table: [{table}]")
        for key, value in content.items():
            option = TOML_KEYS[table].get(key)
            if option is None:
                raise ConfigError(
                    f"{table}.{key}{where}",
                    f"unknown key {key!r} in [{table}] (known: {', '.join(TOML_KEYS[table])})",
                )
            values[option.field] = Raw(value, f"{option.toml}{where}", "file", path.parent)
    return FileConfig(path, values, certificates)


@dataclass(frozen=True, slots=True)
class CertInput:
    names: list[str]
    label: str
    name: str | None = None
    key_type: Raw | None = None
    challenge: Raw | None = None


def certificate_inputs(sources: Sources, file: FileConfig | None) -> list[CertInput]:
    """Flags, else the environment, else the file: flags/env replace the file's list."""
    flags = sources.flag("domains")
    if flags is not None:
        return [CertInput(split_list(value), "--domain") for value in flags]
    env = sources.env(ENV_DOMAINS)
    if env is not None:
        return [CertInput(split_list(part), ENV_DOMAINS) for part in env.split(";")]
    if file is None or file.certificates is None:
        return []
    inputs = []
    for index, table in file.certificates:
        prefix = f"[[certificates]] #{index}"
        where = f" in {file.path}"
        for key in table:
            if key not in CERT_KEYS:
                raise ConfigError(
                    f"{prefix} {key}{where}",
                    f"unknown key {key!r} (known: {', '.join(CERT_KEYS)})",
                )
        names = table.get("domains")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{prefix} domains{where}", "must be a list of names")
        name = table.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{prefix} name{where}", "must be a string")
        key_type, challenge = (
            Raw(table[key], f"{prefix} {key}{where}", "file") if key in table else None
            for key in ("key_type", "challenge")
        )
        inputs.append(CertInput(list(names), f"{prefix} domains{where}", name, key_type, challenge))
    return inputs


def check_unknown_env(environ: Mapping[str, str]) -> None:
    """Refuse a variable that looks like a misspelt setting (CERT_SIDECAR_DOMIANS=...).

    Other unknown CERT_SIDECAR_* variables are left alone: test harnesses and scripts use the
    prefix for their own settings, and refusing them would break those set-ups.
    """
    known = sorted(name.removeprefix(ENV_PREFIX) for name in KNOWN_ENV)
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in KNOWN_ENV:
            continue
        import difflib  # only when an unknown variable is present

        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), known, n=1, cutoff=0.8)
        if close:
            raise ConfigError(name, f"unknown setting; did you mean {ENV_PREFIX}{close[0]}?")


def load_sources(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[Sources, FileConfig | None]:
    """Flags, environment and (once its path is known from those two) the config file."""
    sources = Sources(args, environ, {})
    located = config_path(sources)
    file = read_config_file(*located) if located else None
    if file is not None:
        sources = Sources(args, environ, file.values)
    return sources, file


SALVAGED: Final = ("health_listen", "state_dir")
_TABLE_LINE: Final = re.compile(r"\s*\[\s*([A-Za-z_]+)\s*\]\s*(#.*)?")


def salvage(path: Path) -> dict[str, Raw]:
    """``SALVAGED`` from a config file that does not load as a whole (see above)."""
    import tomllib

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    try:
        document: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        # Line by line: each `key = value` line under its [table] header is TOML of its own.
        document, table = {}, None
        for line in text.splitlines():
            header = _TABLE_LINE.fullmatch(line)
            if header:
                table = header.group(1)
                continue
            if table is None:
                continue
            try:
                document.setdefault(table, {}).update(tomllib.loads(line))
            except tomllib.TOMLDecodeError:
                continue
    values = {}
    for name in SALVAGED:
        option = OPTION_BY_FIELD[name]
        table_values = document.get(option.table)
        if isinstance(table_values, dict) and option.key in table_values:
            values[name] = Raw(
                table_values[option.key], f"{option.toml} in {path}", "file", path.parent
            )
    return values
