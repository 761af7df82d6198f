"""Challenge solvers: http-01 and tls-alpn-01 responders, and dns-01 through a hook."""

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
