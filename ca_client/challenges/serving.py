"""The parts of the challenge responders that another small server on the network can share.

The http-01 responder and the sidecar's health server both read HTTP from strangers; one strict
request-head parser and one set of connection limits means one set of rules to harden and test.
This module is their public face; the implementations stay in the private modules beside it.
"""

from __future__ import annotations

from ca_client.challenges._http import (
    HeadNotRead,
    HttpRequest,
    HttpRequestError,
    parse_request_head,
    read_request_head,
)
from ca_client.challenges._limits import ConnectionLimits, Slot
from ca_client.challenges._listen import dual_stack_socket, normalize_host
from ca_client.challenges._listen import reset as reset_connection

__all__ = [
    "ConnectionLimits",
    "HeadNotRead",
    "HttpRequest",
    "HttpRequestError",
    "Slot",
    "dual_stack_socket",
    "normalize_host",
    "parse_request_head",
    "read_request_head",
    "reset_connection",
]
