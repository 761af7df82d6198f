"""Which bad setting ``load_settings`` reports first when several are bad.

The user fixes one setting per run, so the order is part of what they see: it follows the
sections (CA, ACME, files, HAProxy, service, certificates). This pins it, so that splitting or
reordering the parsers cannot change it unnoticed.
"""

from __future__ import annotations

from sidecar.cli import build_parser
from sidecar.config import load_settings
from sidecar.errors import ConfigError

P = "CERT_SIDECAR_"

# Every setting given a value its parser refuses, in the order they are reported.
BAD = {
    "DIRECTORY": "not a url",
    "SYSTEM_TRUST": "maybe",
    "EMAIL": "no-at-sign",
    "EAB_KID": "kid",  # without the HMAC key
    "KEY_TYPE": "rsa1",
    "CHALLENGE": "smoke-01",
    "HTTP_LISTEN": "nope",
    "TLS_ALPN_LISTEN": "nope",
    "DNS_HOOK": '"',
    "PEM_MODE": "999",
    "PEM_GROUP": "no-such-group-xyz",
    "RENEW_AT": "2",
    "HAPROXY_SOCKETS": "::bad::",
    "HAPROXY_CERTS_DIR": "relative",
    "RELOAD": "sideways",
    "RELOAD_COMMAND": '"',
    "RELOAD_SIGNAL": "SIGNOPE",
    "VERIFY_ADDRESS": "nope",
    "DEPLOY_HOOK": '"',
    "HOOK_ENV": "1BAD",
    "HEALTH_LISTEN": "nope",
    "PLACEHOLDER": "maybe",
    "LOG_FORMAT": "xml",
    "LOG_LEVEL": "loud",
    "DOMAINS": "bad domain!",
}


def test_the_first_bad_setting_is_reported_in_section_order() -> None:
    environ = {P + key: value for key, value in BAD.items()}
    args = build_parser().parse_args(["check-config"])
    reported: list[str] = []
    # Fix (drop) each reported setting and load again, as a user would.
    while True:
        try:
            load_settings(args, environ)
        except ConfigError as exc:
            reported.append(exc.setting)
            if exc.setting not in environ:
                break
            del environ[exc.setting]
        else:
            break
    assert reported == [P + key for key in BAD] + ["--domain"]
