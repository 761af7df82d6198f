"""`Settings` is nested by TOML table, and the nesting is the OPTIONS table's, key for key.

Each part (`settings.acme`, `.files`, `.renewal`, `.haproxy`, `.service`) holds exactly the
keys its table has in the file, so `settings.haproxy.certs_dir` is `haproxy.certs_dir`: a part
with a key of another table, or a key spelled differently from the file, fails here.
"""

from __future__ import annotations

import argparse
import dataclasses

from sidecar.config import OPTIONS, Settings, load_settings
from sidecar.config.model import WORK_FIELDS
from sidecar.config.options import TABLES

# Kept beside the parsed values, for messages; not a setting of their own.
_NOT_KEYS = {"haproxy": {"socket_texts"}}
# The option names the key's file; the part holds the key itself (never printed).
_RENAMED = {("acme", "eab_hmac_key_file"): "eab_hmac_key"}


def test_each_part_holds_exactly_its_tables_keys() -> None:
    parts = {field.name: field.type for field in dataclasses.fields(Settings)}
    assert set(TABLES) <= set(parts)
    settings = load_settings(argparse.Namespace(domains=["a.example"]), {})
    for table in TABLES:
        part = getattr(settings, table)
        held = {field.name for field in dataclasses.fields(part)} - _NOT_KEYS.get(table, set())
        wanted = {
            _RENAMED.get((option.table, option.key), option.key)
            for option in OPTIONS
            if option.table == table
        }
        assert held == wanted, table


def test_every_work_field_is_found_in_its_table() -> None:
    settings = load_settings(
        argparse.Namespace(domains=["a.example"], haproxy_sockets=["unix:/run/h.sock"]), {}
    )
    assert settings.value("haproxy_sockets") is settings.haproxy.sockets
    assert settings.value("haproxy_certs_dir") == settings.haproxy.certs_dir
    assert settings.value("certs_dir") == settings.files.certs_dir
    assert settings.value("hook_env") == settings.service.hook_env
    assert settings.value("renew_at") == settings.renewal.renew_at
    assert settings.value("eab_hmac_key") is settings.acme.eab_hmac_key
    assert settings.value("certificates") == settings.certificates
    for name in WORK_FIELDS:
        settings.value(name)  # each resolves; a misspelled field raises KeyError
