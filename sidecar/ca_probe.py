"""Is the configured ACME directory there? One GET, trusted through the CA bundle only.

A wrong directory URL (``.../acme/acmee/directory``, a 404) used to go unnoticed until the
first order, which with 24-hour certificates is about 16 hours after start: the deployed
certificate was not due, and the one request that did reach the CA (renewal information)
read the 404 as "this CA has no ARI". `run` now fetches the directory when it starts (once the
CA bundle is there) and after each reload (`sidecar.service` calls `check_reachable`); the
one-shot commands fetch it before their pass; ``check-config --online`` does only that.

Every failure is one line that names the setting as the user wrote it
(``CERT_SIDECAR_DIRECTORY``, ``--directory``, ``acme.directory in FILE``) and the URL, because
the CA's own words ("notFound: resource not found (HTTP 404)") name neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ca_client.client import AcmeClient
from ca_client.errors import AcmeError
from ca_client.keys import KeyType, generate_private_key
from ca_client.models import Directory
from sidecar.config import Settings
from sidecar.errors import OperationError, SidecarError, error_text
from sidecar.logs import get_logger
from sidecar.metrics import Metrics
from sidecar.trust import build_ssl_context

__all__ = ["PROBE_TIMEOUT", "DirectoryUnusable", "check_reachable", "describe_directory", "fetch"]

log = get_logger("sidecar.ca_probe")

# One small GET; a CA that cannot answer it in this long will not serve an order either.
PROBE_TIMEOUT = 15.0


class DirectoryUnusable(OperationError):
    """The ACME directory could not be fetched; ``str()`` names the setting and the URL."""

    def __init__(self, setting: str, url: str, reason: str) -> None:
        super().__init__(f"{setting}: the ACME directory {url} {reason}")
        self.setting = setting
        self.url = url
        self.reason = reason


def _hint(error: BaseException) -> str:
    """What to check, where the CA's words do not say it."""
    status = getattr(error, "status", None)
    if status == 404:
        return (
            "; check the path: step-ca serves /acme/<provisioner name>/directory "
            "(e.g. /acme/acme/directory)"
        )
    return ""


async def fetch(
    settings: Settings,
    *,
    timeout: float = PROBE_TIMEOUT,  # noqa: ASYNC109
    client_options: Mapping[str, Any] | None = None,
) -> Directory:
    """The CA's directory (RFC 8555 §7.1.1), or `DirectoryUnusable`.

    The key only signs nothing here (a directory GET is unauthenticated); the client needs one.
    """
    setting, url = settings.label("directory"), settings.acme.directory
    try:
        context = build_ssl_context(
            settings.acme.ca_bundle, system_trust=settings.acme.system_trust
        )
    except (SidecarError, OSError, ValueError) as error:
        raise DirectoryUnusable(setting, url, f"was not asked: {error_text(error)}") from None
    options: dict[str, Any] = {"timeout": timeout, "max_connections": 1, **(client_options or {})}
    client = AcmeClient(url, generate_private_key(KeyType.EC_P256), ssl_context=context, **options)
    try:
        async with client:
            return await client.directory()
    except AcmeError as error:
        reason = f"could not be fetched: {error_text(error)}{_hint(error)}"
        raise DirectoryUnusable(setting, url, reason) from None


def describe_directory(directory: Directory) -> str:
    """``check-config --online``'s report: what the CA says about itself."""
    lines = [
        f"# ACME directory {directory.url}: reachable, TLS verified",
        f"new_order = {directory.new_order}",
        f"renewal_info = {directory.renewal_info or '(none: the CA has no ARI)'}",
        f"terms_of_service = {directory.terms_of_service or '(none)'}",
        f"external_account_required = {'true' if directory.external_account_required else 'false'}",
    ]
    if directory.profiles:
        lines.append(f"profiles = {', '.join(directory.profiles)}")
    return "\n".join(lines) + "\n"


async def check_reachable(
    settings: Settings, metrics: Metrics, *, client_options: Mapping[str, Any] | None = None
) -> bool:
    """`run`'s look at the directory (start, reload): a failure sets ``ca_reachable`` to 0 and
    logs a warning naming the setting and the URL; a success sets it to 1."""
    if not settings.acme.ca_bundle.is_file():
        return False  # the bundle watch says it is waiting; the probe runs once it is there
    try:
        await fetch(settings, client_options=client_options)
    except DirectoryUnusable as error:
        metrics.set_ca_reachable(False, str(error))
        log.warning(
            "ca_directory_unusable",
            setting=error.setting,
            url=error.url,
            error=error.reason,
        )
        return False
    metrics.set_ca_reachable(True)
    log.info("ca_directory_ok", url=settings.acme.directory)
    return True
