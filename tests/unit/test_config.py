"""Settings: precedence, parsing and every validation rule of sidecar.config."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import os
import signal
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest

from ca_client.keys import KeyType
from sidecar.cli import build_parser
from sidecar.config import (
    DEFAULTS,
    OPTIONS,
    Settings,
    describe,
    load_settings,
    parse_bool,
    parse_host_port,
    parse_pem_mode,
    resolve_group,
)
from sidecar.errors import ConfigError
from sidecar.haproxy import HAProxyAddress

DOMAIN = ["--domain", "a.example"]


def parse(flags: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["check-config", *flags])


def load(
    flags: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> Settings:
    flags = list(flags or [])
    if toml is not None:
        assert tmp_path is not None
        path = tmp_path / "sidecar.toml"
        path.write_text(toml)
        flags += ["--config", str(path)]
    return load_settings(parse(flags), dict(env or {}))


def error(
    flags: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    toml: str | None = None,
    tmp_path: Path | None = None,
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(flags, env, toml, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


# --- defaults and precedence ---------------------------------------------------------------


def test_defaults_come_from_the_one_table() -> None:
    settings = load(DOMAIN)
    assert (
        settings.acme.directory
        == DEFAULTS["directory"]
        == "https://step-ca:9000/acme/acme/directory"
    )
    assert settings.acme.ca_bundle == Path("/root_ca/root_ca.crt")
    assert settings.acme.system_trust is False
    assert settings.acme.email is None
    assert settings.acme.eab_kid is None and settings.acme.eab_hmac_key is None
    assert settings.acme.key_type is KeyType.EC_P256
    assert settings.acme.challenge == "http-01"
    assert settings.acme.http_listen == ("0.0.0.0", 80)
    assert settings.acme.tls_alpn_listen == ("0.0.0.0", 443)
    assert settings.acme.dns_hook is None
    assert settings.files.certs_dir == Path("/etc/haproxy/certs")
    assert settings.files.state_dir == Path("/var/lib/cert-sidecar")
    assert settings.files.pem_mode == 0o640
    assert settings.files.pem_group is None
    assert settings.renewal.renew_at == 0.66
    assert settings.haproxy.sockets == ()
    assert settings.haproxy.certs_dir == settings.files.certs_dir
    assert settings.haproxy.reload == "none"
    assert settings.haproxy.reload_command is None
    assert settings.haproxy.reload_signal is None
    assert settings.haproxy.reload_pid_file is None
    assert settings.haproxy.verify_address is None
    assert settings.haproxy.deploy_hook is None
    assert settings.service.health_listen == ("127.0.0.1", 9102)
    assert settings.service.placeholder is None
    assert settings.service.log_format == "json"  # pytest's stderr is not a terminal
    assert settings.service.log_level == "info"
    assert settings.config_file is None
    assert [(c.name, c.domains) for c in settings.certificates] == [("a.example", ("a.example",))]


def test_every_option_has_a_default_and_a_distinct_spelling() -> None:
    assert {o.field for o in OPTIONS} == set(DEFAULTS)
    flags = [o.flag for o in OPTIONS]
    envs = [e for o in OPTIONS for e in o.envs]
    tomls = [o.toml for o in OPTIONS]
    assert len(set(flags)) == len(flags)
    assert len(set(envs)) == len(envs)
    assert len(set(tomls)) == len(tomls)


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    toml = "[renewal]\nrenew_at = 0.5\n"
    assert load(DOMAIN).renewal.renew_at == 0.66
    assert load(DOMAIN, toml=toml, tmp_path=tmp_path).renewal.renew_at == 0.5
    env = {"CERT_SIDECAR_RENEW_AT": "0.4"}
    assert load(DOMAIN, env, toml, tmp_path).renewal.renew_at == 0.4
    assert load([*DOMAIN, "--renew-at", "0.3"], env, toml, tmp_path).renewal.renew_at == 0.3


def test_precedence_holds_for_every_simple_option(tmp_path: Path) -> None:
    # One setting at a time, with a distinct valid value in each layer.
    cases = {
        "email": ("f@file.example", "e@env.example", "x@flag.example"),
        "key_type": ("rsa-2048", "ec-p384", "rsa-3072"),
        "http_listen": ("127.0.0.1:8001", "127.0.0.1:8002", "127.0.0.1:8003"),
        "log_level": ("warning", "error", "debug"),
        "pem_mode": ("0600", "0640", "0440"),
    }
    for name, (in_file, in_env, in_flag) in cases.items():
        option = next(o for o in OPTIONS if o.field == name)
        toml = f'[{option.table}]\n{option.key} = "{in_file}"\n'
        env = {option.envs[0]: in_env}
        flags = [*DOMAIN, option.flag, in_flag]
        only_file = load(DOMAIN, {}, toml, tmp_path).value(name)
        only_env = load(DOMAIN, env).value(name)
        only_flag = load(flags).value(name)
        assert len({str(v) for v in (only_file, only_env, only_flag)}) == 3, name
        assert load(DOMAIN, env, toml, tmp_path).value(name) == only_env, name
        assert load(flags, env, toml, tmp_path).value(name) == only_flag, name
        assert load(flags, {}, toml, tmp_path).value(name) == only_flag, name


def test_config_file_from_env_and_flag_wins(tmp_path: Path) -> None:
    one = tmp_path / "one.toml"
    two = tmp_path / "two.toml"
    one.write_text('[acme]\nemail = "one@a.example"\n')
    two.write_text('[acme]\nemail = "two@a.example"\n')
    env = {"CERT_SIDECAR_CONFIG": str(one)}
    assert load(DOMAIN, env).acme.email == "one@a.example"
    assert load([*DOMAIN, "--config", str(two)], env).acme.email == "two@a.example"
    assert load([*DOMAIN, "--config", str(two)], env).config_file == two


def test_empty_environment_variables_count_as_unset() -> None:
    settings = load(DOMAIN, {"CERT_SIDECAR_EMAIL": "", "CERT_SIDECAR_RENEW_AT": ""})
    assert settings.acme.email is None
    assert settings.renewal.renew_at == 0.66


def test_a_misspelt_cert_sidecar_variable_is_named() -> None:
    exc = error(DOMAIN, {"CERT_SIDECAR_DOMIANS": "a.example"})
    assert exc.setting == "CERT_SIDECAR_DOMIANS"
    assert "did you mean CERT_SIDECAR_DOMAINS?" in exc.message
    exc = error(DOMAIN, {"CERT_SIDECAR_RENEWAT": "0.5"})
    assert "CERT_SIDECAR_RENEW_AT" in exc.message
    # Variables of test harnesses and scripts, and other programs', are left alone.
    load(
        DOMAIN,
        {
            "HOME": "/root",
            "CERT_SIDECARX": "1",
            "CERT_SIDECAR_LEASE_DIR": "/tmp/x",
            "CERT_SIDECAR_HOSTS_FILE": "/etc/hosts",
        },
    )


# --- certificates ---------------------------------------------------------------------------


def test_repeated_domain_flags_are_certificates() -> None:
    settings = load(
        [
            "--domain",
            "a.example,B.example",
            "--domain",
            "*.c.example",
            "--challenge",
            "dns-01",
            "--dns-hook",
            "true",
        ]
    )
    assert [(c.name, c.domains) for c in settings.certificates] == [
        ("a.example", ("a.example", "b.example")),
        ("_wildcard.c.example", ("*.c.example",)),
    ]


def test_env_domains_split_certificates_on_semicolon_and_names_on_comma() -> None:
    settings = load([], {"CERT_SIDECAR_DOMAINS": " a.example , b.example ; c.example"})
    assert [c.domains for c in settings.certificates] == [
        ("a.example", "b.example"),
        ("c.example",),
    ]


def test_flags_or_env_replace_the_file_certificates(tmp_path: Path) -> None:
    toml = '[[certificates]]\ndomains = ["file.example"]\n'
    assert load([], {}, toml, tmp_path).certificates[0].name == "file.example"
    env = {"CERT_SIDECAR_DOMAINS": "env.example"}
    assert [c.name for c in load([], env, toml, tmp_path).certificates] == ["env.example"]
    flags = ["--domain", "flag.example"]
    assert [c.name for c in load(flags, env, toml, tmp_path).certificates] == ["flag.example"]


def test_file_certificates_with_names_and_overrides(tmp_path: Path) -> None:
    toml = """
[acme]
key_type = "rsa-2048"
dns_hook = "true"

[[certificates]]
name = "demo"
domains = ["demo.openchami.cluster", "api.openchami.cluster"]

[[certificates]]
domains = ["*.openchami.cluster"]
key_type = "ec-p384"
challenge = "dns-01"
"""
    first, second = load([], {}, toml, tmp_path).certificates
    assert first.name == "demo"
    assert first.domains == ("demo.openchami.cluster", "api.openchami.cluster")
    assert first.key_type is KeyType.RSA_2048 and first.challenge == "http-01"
    assert second.name == "_wildcard.openchami.cluster"
    assert second.key_type is KeyType.EC_P384 and second.challenge == "dns-01"


def test_ip_and_idn_identifiers_are_normalised() -> None:
    settings = load(["--domain", "127.0.0.1,2001:DB8::1,Bücher.example."])
    spec = settings.certificates[0]
    assert spec.domains == ("127.0.0.1", "2001:db8::1", "xn--bcher-kva.example")
    assert spec.name == "127.0.0.1"


@pytest.mark.parametrize(
    ("flags", "env", "setting", "fragment"),
    [
        ([], {}, "--domain", "no certificates"),
        (["--domain", ""], {}, "--domain", "at least one name"),
        (["--domain", "a.example,,b.example"], {}, "--domain", "empty name"),
        (
            [],
            {"CERT_SIDECAR_DOMAINS": "a.example;;b.example"},
            "CERT_SIDECAR_DOMAINS",
            "at least one name",
        ),
        (["--domain", "a..example"], {}, "--domain", "empty label"),
        (["--domain", "a.example,A.example"], {}, "--domain", "listed twice"),
        (
            ["--domain", "a.example", "--domain", "a.example,b.example"],
            {},
            "--domain",
            "used twice",
        ),
        (["--domain", "*.a.example"], {}, "--domain", "only dns-01"),
        (["--domain", "*.a.example", "--challenge", "tls-alpn-01"], {}, "--domain", "only dns-01"),
        (
            ["--domain", "127.0.0.1", "--challenge", "dns-01", "--dns-hook", "true"],
            {},
            "--domain",
            "dns-01 cannot",
        ),
        (["--domain", "a.example", "--challenge", "dns-01"], {}, "--challenge", "needs a hook"),
        (
            [],
            {"CERT_SIDECAR_DOMAINS": "a.example", "CERT_SIDECAR_CHALLENGE": "dns-01"},
            "CERT_SIDECAR_CHALLENGE",
            "needs a hook",
        ),
        (["--domain", "a.example", "--challenge", "dns-02"], {}, "--challenge", "not one of"),
        (["--domain", "a.example", "--key-type", "ec-p521"], {}, "--key-type", "not one of"),
        (
            [],
            {"CERT_SIDECAR_DOMAINS": "a.example", "CERT_SIDECAR_KEY_TYPE": "dsa"},
            "CERT_SIDECAR_KEY_TYPE",
            "not one of",
        ),
    ],
)
def test_certificate_errors_name_the_setting(
    flags: list[str], env: dict[str, str], setting: str, fragment: str
) -> None:
    exc = error(flags, env)
    assert exc.setting == setting
    assert fragment in exc.message


def test_ip_identifiers_work_with_http01_and_tlsalpn01() -> None:
    for challenge in ("http-01", "tls-alpn-01"):
        spec = load(["--domain", "127.0.0.1", "--challenge", challenge]).certificates[0]
        assert spec.challenge == challenge


@pytest.mark.parametrize(
    ("toml", "setting", "fragment"),
    [
        ('[[certificates]]\nname = "x"\n', "[[certificates]] #1 domains", "list of names"),
        ("[[certificates]]\ndomains = []\n", "[[certificates]] #1 domains", "at least one"),
        ('[[certificates]]\ndomains = "a.example"\n', "[[certificates]] #1 domains", "list"),
        (
            '[[certificates]]\ndomains = ["a.example"]\nkeytype = "rsa-2048"\n',
            "[[certificates]] #1 keytype",
            "unknown key",
        ),
        (
            '[[certificates]]\ndomains = ["a.example"]\nname = "a/b"\n',
            "[[certificates]] #1 name",
            "letters, digits",
        ),
        (
            '[[certificates]]\ndomains = ["a.example"]\nname = 3\n',
            "[[certificates]] #1 name",
            "string",
        ),
        (
            '[[certificates]]\ndomains = ["a.example"]\n'
            '[[certificates]]\ndomains = ["*.b.example"]\n',
            "[[certificates]] #2 domains",
            "only dns-01",
        ),
        (
            '[[certificates]]\ndomains = ["a.example"]\nchallenge = "dns-01"\n',
            "[[certificates]] #1 challenge",
            "needs a hook",
        ),
        (
            '[[certificates]]\ndomains = ["a.example"]\nkey_type = "rsa-1024"\n',
            "[[certificates]] #1 key_type",
            "not one of",
        ),
        (
            '[[certificates]]\nname = "same"\ndomains = ["a.example"]\n'
            '[[certificates]]\nname = "same"\ndomains = ["b.example"]\n',
            "[[certificates]] #2 domains",
            "used twice",
        ),
        ('certificates = "a.example"\n', "certificates", "array of tables"),
    ],
)
def test_file_certificate_errors(tmp_path: Path, toml: str, setting: str, fragment: str) -> None:
    exc = error([], {}, toml, tmp_path)
    assert exc.setting.startswith(setting)
    assert exc.setting.endswith(f"in {tmp_path / 'sidecar.toml'}")
    assert fragment in exc.message


# --- the config file itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "setting", "fragment"),
    [
        ("[acme\n", "--config", "not valid TOML"),
        ("[acme]\nfoo = 1\n", "acme.foo", "unknown key 'foo' in [acme]"),
        ("[acmee]\ndirectory = 'x'\n", "acmee", "unknown table"),
        ("directory = 'https://x.example/'\n", "directory", "unknown table or key"),
        ("acme = 1\n", "acme", "must be a table"),
        ("[files]\ncerts_dir = 5\n", "files.certs_dir", "must be a string"),
        ("[renewal]\nrenew_at = true\n", "renewal.renew_at", "must be a number"),
        ("[acme]\nsystem_trust = 'yes'\n", "acme.system_trust", "true or false"),
        ("[files]\npem_mode = 1.5\n", "files.pem_mode", "octal mode"),
        ("[haproxy]\nsockets = 'unix:/x'\n", "haproxy.sockets", "list"),
        ("[haproxy]\ncerts_dir = 'relative/dir'\n", "haproxy.certs_dir", "absolute"),
        ("[service]\nlog_level = 'verbose'\n", "service.log_level", "not one of"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, toml: str, setting: str, fragment: str) -> None:
    exc = error(DOMAIN, {}, toml, tmp_path)
    assert exc.setting.startswith(setting)
    assert fragment in exc.message


def test_a_missing_or_unreadable_config_file(tmp_path: Path) -> None:
    exc = error([*DOMAIN, "--config", str(tmp_path / "nope.toml")])
    assert exc.setting == "--config" and "does not exist" in exc.message
    exc = error(DOMAIN, {"CERT_SIDECAR_CONFIG": str(tmp_path)})
    assert exc.setting == "CERT_SIDECAR_CONFIG" and "is a directory" in exc.message
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[acme]")
    assert "UTF-8" in error([*DOMAIN, "--config", str(binary)]).message


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    toml = '[acme]\nca_bundle = "root.pem"\n[files]\ncerts_dir = "../certs"\n'
    settings = load(DOMAIN, {}, toml, tmp_path)
    assert settings.acme.ca_bundle == tmp_path / "root.pem"
    assert settings.files.certs_dir == tmp_path.parent / "certs"
    assert settings.haproxy.certs_dir == tmp_path.parent / "certs"


def test_every_table_and_key_of_the_contract_example_is_accepted(tmp_path: Path) -> None:
    toml = """
[acme]
directory = "https://step-ca:9000/acme/acme/directory"
ca_bundle = "/root_ca/root_ca.crt"
system_trust = false
email = "ops@openchami.cluster"
key_type = "ec-p256"
challenge = "http-01"
http_listen = "0.0.0.0:80"
tls_alpn_listen = "0.0.0.0:443"

[files]
certs_dir = "/etc/haproxy/certs"
state_dir = "/var/lib/cert-sidecar"
pem_mode = "0640"
pem_group = 0

[renewal]
renew_at = 0.66

[haproxy]
certs_dir = "/usr/local/etc/haproxy/certs"
reload = "command"
reload_command = "true --reload"
deploy_hook = "true"
verify_address = "127.0.0.1:443"

[service]
health_listen = "127.0.0.1:9102"
placeholder = false
log_format = "console"
log_level = "debug"

[[certificates]]
name = "demo.openchami.cluster"
domains = ["demo.openchami.cluster", "api.openchami.cluster"]
key_type = "ec-p256"
challenge = "http-01"
"""
    settings = load([], {}, toml, tmp_path)
    assert settings.haproxy.certs_dir == Path("/usr/local/etc/haproxy/certs")
    assert settings.haproxy.reload_command == ("true", "--reload")
    assert settings.haproxy.deploy_hook == ("true",)
    assert settings.haproxy.verify_address == ("127.0.0.1", 443)
    assert settings.service.placeholder is False
    assert settings.service.log_format == "console"
    assert settings.acme.email == "ops@openchami.cluster"
    assert settings.files.pem_group == 0


# --- individual value parsers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::]:80", ("::", 80)),
        ("[::1]:8443", ("::1", 8443)),
        ("localhost:65535", ("localhost", 65535)),
        ("h1.cert-sidecar.test:1", ("h1.cert-sidecar.test", 1)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("80", "HOST:PORT"),
        (":80", "HOST:PORT"),
        ("host", "HOST:PORT"),
        ("::1:80", "brackets"),
        ("[::1]80", "[IPv6]:PORT"),
        ("[nothost]:80", "not an IPv6"),
        ("host:0", "1 to 65535"),
        ("host:65536", "1 to 65535"),
        ("host:http", "1 to 65535"),
        ("host:-1", "1 to 65535"),
        ("ho st:80", "not a host"),
        ("host:٨٠", "1 to 65535"),
    ],
)
def test_bad_host_port(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_host_port(text)


def test_listen_errors_name_the_setting() -> None:
    exc = error([*DOMAIN, "--http-listen", "::1:80"])
    assert exc.setting == "--http-listen"
    exc = error(DOMAIN, {"CERT_SIDECAR_HEALTH_LISTEN": "localhost"})
    assert exc.setting == "CERT_SIDECAR_HEALTH_LISTEN"
    exc = error([*DOMAIN, "--verify-address", "x:99999"])
    assert exc.setting == "--verify-address"


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("0640", 0o640),
        ("640", 0o640),
        ("0o600", 0o600),
        ("0400", 0o400),
        ("0440", 0o440),
        (0o640, 0o640),
    ],
)
def test_pem_mode(value: str | int, mode: int) -> None:
    assert parse_pem_mode(value) == mode


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0644", "refused"),  # other read
        ("0660", "refused"),  # group write
        ("0740", "refused"),  # owner execute
        ("0650", "refused"),  # group execute
        ("0641", "refused"),
        ("0040", "owner must be able to read"),
        ("0200", "owner must be able to read"),
        ("4640", "0000 to 0777"),
        ("0o1640", "0000 to 0777"),
        ("0x1a0", "not an octal"),
        ("0648", "not an octal"),
        ("rw-r-----", "not an octal"),
        ("", "not an octal"),
        (640, "0000 to 0777"),  # a decimal 640 in TOML is 0o1200: refuse, do not guess
    ],
)
def test_bad_pem_mode(value: str | int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_pem_mode(value)


def test_pem_mode_setting_from_toml_octal_integer(tmp_path: Path) -> None:
    assert load(DOMAIN, {}, "[files]\npem_mode = 0o600\n", tmp_path).files.pem_mode == 0o600
    exc = error(DOMAIN, {"CERT_SIDECAR_PEM_MODE": "0666"})
    assert exc.setting == "CERT_SIDECAR_PEM_MODE" and "0666" in exc.message


def _lookup(name: str) -> int:
    return {"haproxy": 99, "ssl-cert": 110}[name]


def test_resolve_group_for_a_normal_user() -> None:
    groups = [1000, 99]
    assert resolve_group("haproxy", euid=1000, groups=groups, lookup=_lookup) == 99
    assert resolve_group("99", euid=1000, groups=groups, lookup=_lookup) == 99
    assert resolve_group(1000, euid=1000, groups=groups, lookup=_lookup) == 1000
    with pytest.raises(ValueError, match="not in group 'ssl-cert'"):
        resolve_group("ssl-cert", euid=1000, groups=groups, lookup=_lookup)
    with pytest.raises(ValueError, match="not in group '0'"):
        resolve_group(0, euid=1000, groups=groups, lookup=_lookup)
    with pytest.raises(ValueError, match="no group named 'wheel'"):
        resolve_group("wheel", euid=1000, groups=groups, lookup=_lookup)


def test_root_may_use_any_group_but_names_must_exist() -> None:
    assert resolve_group("ssl-cert", euid=0, groups=[0], lookup=_lookup) == 110
    assert resolve_group("4242", euid=0, groups=[0], lookup=_lookup) == 4242
    with pytest.raises(ValueError, match="no group"):
        resolve_group("nobody-here", euid=0, groups=[0], lookup=_lookup)


def test_pem_group_setting_uses_the_process_groups() -> None:
    own = os.getegid()
    assert load([*DOMAIN, "--pem-group", str(own)]).files.pem_group == own
    exc = error([*DOMAIN, "--pem-group", "no-such-group-here"])
    assert exc.setting == "--pem-group" and "no group named" in exc.message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("OFF", False),
    ],
)
def test_env_booleans(text: str, value: bool) -> None:
    assert parse_bool(text) is value
    settings = load(DOMAIN, {"CERT_SIDECAR_SYSTEM_TRUST": text, "CERT_SIDECAR_PLACEHOLDER": text})
    assert settings.acme.system_trust is value
    assert settings.service.placeholder is value


def test_bad_env_boolean_and_flag_forms() -> None:
    exc = error(DOMAIN, {"CERT_SIDECAR_SYSTEM_TRUST": "maybe"})
    assert exc.setting == "CERT_SIDECAR_SYSTEM_TRUST" and "not a boolean" in exc.message
    assert load([*DOMAIN, "--system-trust"]).acme.system_trust is True
    env = {"CERT_SIDECAR_PLACEHOLDER": "on"}
    assert load([*DOMAIN, "--no-placeholder"], env).service.placeholder is False


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "abc", "nan"])
def test_renew_at_must_be_strictly_between_0_and_1(value: str) -> None:
    exc = error([*DOMAIN, "--renew-at", value])
    assert exc.setting == "--renew-at"


@pytest.mark.parametrize(
    "url",
    [
        "http://step-ca:9000/acme/acme/directory",
        "step-ca:9000/directory",
        "https://",
        "ftp://x.example/",
        "https://x.example:99999/dir",
    ],
)
def test_directory_must_be_an_https_url(url: str) -> None:
    exc = error([*DOMAIN, "--directory", url])
    assert exc.setting == "--directory"


@pytest.mark.parametrize("address", ["nobody", "a@", "@a.example", "a b@c.example", "a@b..c"])
def test_bad_email(address: str) -> None:
    assert error([*DOMAIN, "--email", address]).setting == "--email"


def test_email_accepts_a_mailto_prefix() -> None:
    assert load([*DOMAIN, "--email", "mailto:ops@a.example"]).acme.email == "ops@a.example"


def test_log_settings() -> None:
    settings = load([*DOMAIN, "--log-format", "console", "--log-level", "DEBUG"])
    assert (settings.service.log_format, settings.service.log_level) == ("console", "debug")
    assert error([*DOMAIN, "--log-format", "xml"]).setting == "--log-format"


# --- commands: hooks and reload --------------------------------------------------------------


def test_dns_hook_is_split_like_a_shell(tmp_path: Path) -> None:
    hook = tmp_path / "my hook.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    settings = load(
        ["--domain", "a.example", "--challenge", "dns-01", "--dns-hook", f"'{hook}' --zone 'x y'"]
    )
    assert settings.acme.dns_hook == (str(hook), "--zone", "x y")


@pytest.mark.parametrize(
    ("hook", "fragment"),
    [
        ("'unterminated", "cannot split"),
        ("   ", "must not be empty"),
        ("/nonexistent/hook.sh present", "does not exist or is not executable"),
        ("no-such-program-xyz", "not found in PATH"),
    ],
)
def test_bad_hooks(hook: str, fragment: str) -> None:
    exc = error([*DOMAIN, "--dns-hook", hook])
    assert exc.setting == "--dns-hook" and fragment in exc.message
    exc = error(DOMAIN, {"CERT_SIDECAR_DEPLOY_HOOK": hook})
    assert exc.setting == "CERT_SIDECAR_DEPLOY_HOOK"


def test_a_hook_that_is_not_executable(tmp_path: Path) -> None:
    hook = tmp_path / "hook.sh"
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o644)
    exc = error([*DOMAIN, "--reload-command", str(hook)])
    assert exc.setting == "--reload-command" and "not executable" in exc.message


@pytest.mark.parametrize(
    ("flags", "setting", "fragment"),
    [
        (["--reload", "runtime-api"], "--reload", "needs --haproxy-socket"),
        (["--reload", "signal"], "--reload", "needs --reload-pid-file"),
        (["--reload", "command"], "--reload", "needs --reload-command"),
        (["--reload", "master-reload"], "--reload", "master CLI socket"),
        (["--reload", "restart"], "--reload", "not one of"),
        (["--reload-signal", "USR2"], "--reload-signal", "needs --reload-pid-file"),
        (
            ["--reload-signal", "SIGNOPE", "--reload-pid-file", "/run/h.pid"],
            "--reload-signal",
            "signal name",
        ),
    ],
)
def test_reload_requirements(flags: list[str], setting: str, fragment: str) -> None:
    exc = error([*DOMAIN, *flags])
    assert exc.setting == setting and fragment in exc.message


def test_signal_reload() -> None:
    settings = load([*DOMAIN, "--reload", "signal", "--reload-pid-file", "/run/haproxy.pid"])
    assert settings.haproxy.reload_signal is signal.SIGUSR2
    assert settings.haproxy.reload_pid_file == Path("/run/haproxy.pid")
    for spelling in ("HUP", "sighup", "SIGHUP", str(int(signal.SIGHUP))):
        settings = load(
            [
                *DOMAIN,
                "--reload",
                "signal",
                "--reload-pid-file",
                "/run/h.pid",
                "--reload-signal",
                spelling,
            ]
        )
        assert settings.haproxy.reload_signal is signal.SIGHUP


def test_command_reload() -> None:
    settings = load([*DOMAIN, "--reload", "command", "--reload-command", "true reload now"])
    assert settings.haproxy.reload == "command"
    assert settings.haproxy.reload_command == ("true", "reload", "now")


def test_haproxy_sockets_and_default_reload() -> None:
    settings = load(
        [
            *DOMAIN,
            "--haproxy-socket",
            "unix:/run/haproxy/admin.sock",
            "--haproxy-socket",
            "tcp:127.0.0.1:9999",
        ]
    )
    assert settings.haproxy.sockets == (
        HAProxyAddress("unix", path="/run/haproxy/admin.sock"),
        HAProxyAddress("tcp", host="127.0.0.1", port=9999),
    )
    assert settings.haproxy.reload == "runtime-api"
    assert settings.haproxy.socket_texts == ("unix:/run/haproxy/admin.sock", "tcp:127.0.0.1:9999")
    env = {"CERT_SIDECAR_HAPROXY_SOCKET": "master:unix:/run/m.sock, unix:/run/a.sock"}
    settings = load([*DOMAIN, "--reload", "master-reload"], env)
    assert settings.haproxy.reload == "master-reload" and len(settings.haproxy.sockets) == 2
    exc = error([*DOMAIN, "--haproxy-socket", "unix:/run/a.sock", "--reload", "master-reload"])
    assert exc.setting == "--reload" and "master CLI socket" in exc.message
    for bad in ("http://x", "unix:", "tcp:host", ""):
        exc = error([*DOMAIN, "--haproxy-socket", bad])
        assert exc.setting == "--haproxy-socket"
    exc = error([*DOMAIN, "--haproxy-socket", "unix:/a", "--haproxy-socket", "unix:/a"])
    assert "twice" in exc.message


# --- EAB ------------------------------------------------------------------------------------

EAB_KEY = base64.urlsafe_b64encode(b"\xfb\xff" * 16).rstrip(b"=").decode()


def test_eab_from_env_value_and_from_file(tmp_path: Path) -> None:
    env = {"CERT_SIDECAR_EAB_KID": "kid-1", "CERT_SIDECAR_EAB_HMAC_KEY": EAB_KEY}
    settings = load(DOMAIN, env)
    assert settings.acme.eab_kid == "kid-1" and settings.acme.eab_hmac_key == b"\xfb\xff" * 16
    key_file = tmp_path / "eab.key"
    key_file.write_text(EAB_KEY + "==\n")
    settings = load([*DOMAIN, "--eab-kid", "kid-2", "--eab-hmac-key-file", str(key_file)])
    assert settings.acme.eab_hmac_key == b"\xfb\xff" * 16
    toml = f'[acme]\neab_kid = "k"\neab_hmac_key_file = "{key_file.name}"\n'
    assert load(DOMAIN, {}, toml, tmp_path).acme.eab_hmac_key == b"\xfb\xff" * 16
    env_file = {"CERT_SIDECAR_EAB_KID": "k", "CERT_SIDECAR_EAB_HMAC_KEY_FILE": str(key_file)}
    assert load(DOMAIN, env_file).acme.eab_hmac_key == b"\xfb\xff" * 16


def test_eab_key_is_never_a_flag_value() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["check-config", "--eab-hmac-key", EAB_KEY])


@pytest.mark.parametrize(
    ("env", "setting", "fragment"),
    [
        ({"CERT_SIDECAR_EAB_KID": "k"}, "CERT_SIDECAR_EAB_KID", "needs the HMAC key"),
        ({"CERT_SIDECAR_EAB_HMAC_KEY": EAB_KEY}, "CERT_SIDECAR_EAB_HMAC_KEY", "needs the key id"),
        (
            {"CERT_SIDECAR_EAB_KID": "k", "CERT_SIDECAR_EAB_HMAC_KEY": EAB_KEY + "+/"},
            "CERT_SIDECAR_EAB_HMAC_KEY",
            "not base64url",
        ),
        (
            {"CERT_SIDECAR_EAB_KID": "k", "CERT_SIDECAR_EAB_HMAC_KEY": "a"},
            "CERT_SIDECAR_EAB_HMAC_KEY",
            "base64url",
        ),
        (
            {
                "CERT_SIDECAR_EAB_KID": "k",
                "CERT_SIDECAR_EAB_HMAC_KEY": EAB_KEY,
                "CERT_SIDECAR_EAB_HMAC_KEY_FILE": "/x",
            },
            "CERT_SIDECAR_EAB_HMAC_KEY",
            "not both",
        ),
        (
            {"CERT_SIDECAR_EAB_KID": "k", "CERT_SIDECAR_EAB_HMAC_KEY_FILE": "/nonexistent/eab"},
            "CERT_SIDECAR_EAB_HMAC_KEY_FILE",
            "does not exist",
        ),
    ],
)
def test_eab_errors_never_show_the_key(env: dict[str, str], setting: str, fragment: str) -> None:
    exc = error(DOMAIN, env)
    assert exc.setting == setting and fragment in exc.message
    assert EAB_KEY not in str(exc)


def test_settings_repr_hides_the_eab_key() -> None:
    env = {"CERT_SIDECAR_EAB_KID": "kid-1", "CERT_SIDECAR_EAB_HMAC_KEY": EAB_KEY}
    settings = load(DOMAIN, env)
    assert "eab_hmac_key" not in repr(settings)
    assert repr(b"\xfb\xff" * 16) not in repr(settings)


# --- describe -------------------------------------------------------------------------------


def test_describe_masks_secrets_and_round_trips(tmp_path: Path) -> None:
    env = {"CERT_SIDECAR_EAB_KID": "kid-1", "CERT_SIDECAR_EAB_HMAC_KEY": EAB_KEY}
    settings = load(
        [
            "--domain",
            "a.example,127.0.0.1",
            "--domain",
            "b.example",
            "--http-listen",
            "[::]:8080",
            "--pem-mode",
            "0600",
            "--reload",
            "signal",
            "--reload-pid-file",
            "/run/h.pid",
            "--deploy-hook",
            "true 'a b'",
            "--key-type",
            "rsa-2048",
        ],
        env,
    )
    text = describe(settings)
    assert "eab_hmac_key = ***" in text
    assert EAB_KEY not in text
    assert 'http_listen = "[::]:8080"' in text
    assert 'pem_mode = "0600"' in text
    # Command arguments may hold credentials: only the program is shown.
    assert "deploy_hook = \"true '***'\"" in text
    # The output is a config file: fed back (with the secret from the env), it gives the
    # same settings, but for the masked arguments.
    document = tomllib.loads(text)
    assert document["acme"]["key_type"] == "rsa-2048"
    again = load([], env, text, tmp_path)
    assert again.config_file == tmp_path / "sidecar.toml"
    assert again.haproxy.deploy_hook == ("true", "***")
    haproxy = dataclasses.replace(again.haproxy, deploy_hook=settings.haproxy.deploy_hook)
    unmasked = dataclasses.replace(again, config_file=None, haproxy=haproxy)
    assert unmasked == settings


def test_setting_labels_record_where_values_came_from(tmp_path: Path) -> None:
    toml = '[files]\ncerts_dir = "/c"\n'
    settings = load(
        [*DOMAIN, "--state-dir", "/s"], {"CERT_SIDECAR_CA_BUNDLE": "/b"}, toml, tmp_path
    )
    assert settings.label("state_dir") == "--state-dir"
    assert settings.label("ca_bundle") == "CERT_SIDECAR_CA_BUNDLE"
    assert settings.label("certs_dir").startswith("files.certs_dir in ")
    assert settings.label("renew_at") == "--renew-at (default)"


def test_settings_are_frozen() -> None:
    settings = load(DOMAIN)
    with pytest.raises(AttributeError):
        settings.renewal.renew_at = 0.5  # type: ignore[misc]
    assert stat.S_IMODE(settings.files.pem_mode) == 0o640
