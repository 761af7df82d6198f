"""ACME Renewal Information (RFC 9773): the CA's suggested renewal window for a certificate.

RFC 9773 §4.1: "To request the suggested renewal information for a certificate, the client
sends a GET request to a path under the server's renewalInfo URL." A plain, unauthenticated
GET, not POST-as-GET: the information is not confidential and the CA may serve it from a cache.
The certificate identifier that makes up the path is computed in :mod:`ca_client.renewal_info`
(pure); the ``replaces`` field of a new order (§5) is sent by ``_order``.
"""

from __future__ import annotations

from cryptography import x509

from ca_client._session import Session
from ca_client.errors import AcmeError
from ca_client.models import RenewalInfo
from ca_client.renewal_info import certificate_id, renewal_info_url


async def renewal_info(
    session: Session, cert: x509.Certificate | bytes | str, *, deadline: float | None
) -> RenewalInfo | None:
    """The CA's suggested renewal window, or None when the directory has no renewalInfo."""
    deadline = session.deadline(deadline)
    directory = await session.directory(deadline)
    if directory.renewal_info is None:
        return None
    try:
        cert_id = certificate_id(cert)
    except ValueError as exc:
        raise AcmeError(f"no renewal info possible: {exc}") from exc
    url = renewal_info_url(directory.renewal_info, cert_id)
    response = await session.transport.get(url, deadline=deadline)
    return RenewalInfo.from_json(response.json(), url=url, retry_after=response.retry_after)
