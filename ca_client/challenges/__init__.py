"""Challenge solvers: http-01 and tls-alpn-01 responders, and dns-01 through a hook.

The names are imported on first use, so that a process that needs one responder does not pay
for the others (start-up time counts for the one-shot commands).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ca_client.challenges.base import (
        ChallengeSetupError,
        ChallengeSolver,
        DnsHookError,
        ResponderBindError,
        dns01_record_name,
        dns01_txt_value,
        key_authorization,
        tls_alpn01_digest,
    )
    from ca_client.challenges.dns01 import Dns01HookSolver
    from ca_client.challenges.http01 import Http01Responder
    from ca_client.challenges.tlsalpn01 import TlsAlpn01Responder

_EXPORTS: dict[str, str] = {
    **{
        name: "ca_client.challenges.base"
        for name in (
            "ChallengeSetupError",
            "ChallengeSolver",
            "DnsHookError",
            "ResponderBindError",
            "dns01_record_name",
            "dns01_txt_value",
            "key_authorization",
            "tls_alpn01_digest",
        )
    },
    "Dns01HookSolver": "ca_client.challenges.dns01",
    "Http01Responder": "ca_client.challenges.http01",
    "TlsAlpn01Responder": "ca_client.challenges.tlsalpn01",
}

__all__ = [
    "ChallengeSetupError",
    "ChallengeSolver",
    "Dns01HookSolver",
    "DnsHookError",
    "Http01Responder",
    "ResponderBindError",
    "TlsAlpn01Responder",
    "dns01_record_name",
    "dns01_txt_value",
    "key_authorization",
    "tls_alpn01_digest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
