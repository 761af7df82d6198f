"""An in-process stand-in for HAProxy 2.6's runtime API (stats socket and master CLI).

For the fast tiers, which run no real peer: the real HAProxy is driven by tests/integration.
It models what sidecar.haproxy relies on: the certificate stores, the one global ``set ssl
cert`` transaction (with 2.6's trap: ``set`` for B while A's transaction is open updates A's),
crt-lists, ``level admin`` versus ``user``, and the master CLI (``@1`` routing, ``show proc``,
``reload``). The answer texts were copied from Debian's HAProxy 2.6.12 (one session per
command, non-interactive), blank line included.

``answers`` injects faults a real HAProxy gives only by chance: a command (``@1`` removed) that
starts with a key takes the next entry of its list: a text is sent instead of running the
command, None runs it as usual.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

__all__ = ["FakeHAProxy", "StoredCert", "hex_serial", "serve"]

UNKNOWN = (
    "Unknown command, but maybe one of the following ones is a better match:\n"
    "  help [<command>]                        : list matching or all commands\n\n"
)


def hex_serial(serial: int) -> str:
    """The serial as HAProxy prints it: the DER INTEGER's content bytes, upper-case hex."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big").hex().upper()


@dataclass
class StoredCert:
    """One certificate store: empty after ``new ssl cert``, else the PEM it was loaded with."""

    payload: str | None = None

    def fields(self) -> list[tuple[str, str]]:
        if self.payload is None:
            return []
        cert = x509.load_pem_x509_certificate(self.payload.encode())
        try:
            san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
            names = ", ".join(f"DNS:{n}" for n in san.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = ""
        return [
            ("Serial", hex_serial(cert.serial_number)),
            ("notBefore", _asn1_time(cert.not_valid_before_utc)),
            ("notAfter", _asn1_time(cert.not_valid_after_utc)),
            ("Subject Alternative Name", names),
            ("Algorithm", "EC256"),
            ("SHA1 FingerPrint", "00" * 20),
            ("Subject", cert.subject.rfc4514_string()),
            ("Issuer", cert.issuer.rfc4514_string()),
        ]


def _asn1_time(moment: dt.datetime) -> str:
    # OpenSSL's ASN1_TIME_print: the day padded with a space ("Jan  1 00:00:00 2000 GMT").
    return f"{moment:%b} {moment.day:2d} {moment:%H:%M:%S %Y} GMT"


@dataclass
class FakeHAProxy:
    """The state of one HAProxy process and the conversations it had."""

    certs: dict[str, StoredCert] = field(default_factory=dict)
    crt_lists: dict[str, list[str]] = field(default_factory=dict)
    admin: bool = True
    master: bool = False
    reloads: int = 0
    failed_reloads: int = 0
    worker_pid: int = 101
    fail_reloads: bool = False
    transaction: tuple[str, str] | None = None
    answers: dict[str, list[str | None]] = field(default_factory=dict)
    received: list[str] = field(default_factory=list)  # every command as sent (payload too)

    def load(self, name: str, payload: str, crt_list: str) -> None:
        """A certificate HAProxy loaded from its configuration at start-up."""
        self.certs[name] = StoredCert(payload.rstrip("\n"))
        self.crt_lists.setdefault(crt_list, []).append(name)

    def status(self, name: str) -> str:
        if self.certs[name].payload is None:
            return "Empty"
        used = any(name in names for names in self.crt_lists.values())
        return "Used" if used else "Unused"

    def serial(self, name: str) -> str | None:
        return dict(self.certs[name].fields()).get("Serial")

    @property
    def commands(self) -> list[str]:
        """The first line of every command received, without the ``@1`` routing prefix."""
        return [c.split("\n", 1)[0].removeprefix("@1 ") for c in self.received]

    # -- the conversation

    def answer(self, data: str) -> str | None:
        """HAProxy's answer to one session's input; None: close without answering."""
        self.received.append(data)
        line, _, rest = data.partition("\n")
        for key, texts in self.answers.items():
            if line.removeprefix("@1 ").startswith(key) and texts:
                text = texts.pop(0)
                if text is not None:
                    return text
                break
        if self.master:
            if line.startswith("@"):
                target, _, line = line.partition(" ")
                if target != "@1":
                    return f"Can't find the target PID matching the prefix '{target}'\n"
                return self._worker(line, rest)
            return self._master(line)
        return self._worker(line, rest)

    def _master(self, line: str) -> str | None:
        if line == "show proc":
            return (
                "#<PID>          <type>          <reloads>       <uptime>        <version>\n"
                f"1               master          {self.reloads} [failed: {self.failed_reloads}]"
                "   0d00h00m08s     2.6.12\n"
                "# workers\n"
                f"{self.worker_pid}             worker          0               0d00h00m08s"
                "     2.6.12\n"
                "# programs\n\n"
            )
        if line == "reload":
            self.reloads += 1
            if self.fail_reloads:
                self.failed_reloads += 1
            else:
                self.worker_pid += 1
            return None  # 2.6 closes the CLI while it re-executes itself
        return UNKNOWN

    def _worker(self, line: str, rest: str) -> str:
        words = line.split()
        verb = " ".join(words[:3])
        args = words[3:]
        if (
            verb
            in {
                "new ssl cert",
                "set ssl cert",
                "commit ssl cert",
                "abort ssl cert",
                "del ssl cert",
                "add ssl crt-list",
                "del ssl crt-list",
            }
            and not self.admin
        ):
            return "Permission denied\n\n"
        if verb == "show ssl cert":
            return self._show(args[0] if args else None)
        if verb == "show ssl crt-list":
            return "".join(f"{name}\n" for name in self.crt_lists) + "\n"
        if verb == "new ssl cert":
            name = args[0]
            if name in self.certs:
                return f"Certificate '{name}' already exists!\n\n"
            self.certs[name] = StoredCert()
            return f"New empty certificate store '{name}'!\n\n"
        if verb == "set ssl cert" and args[1:] == ["<<"]:
            return self._set(args[0], rest.removesuffix("\n\n"))
        if verb == "commit ssl cert":
            return self._commit(args[0])
        if verb == "abort ssl cert":
            if self.transaction is None:
                return "No ongoing transaction!\n\n"
            if self.transaction[0] != args[0]:
                return (
                    f"The ongoing transaction is about '{self.transaction[0]}' but you are trying"
                    f" to abort a transaction for '{args[0]}'\nCan't abort {args[0]}!\n\n"
                )
            self.transaction = None
            return f"Transaction aborted for certificate '{args[0]}'!\n\n"
        if verb == "add ssl crt-list":
            crt_list, name = args
            if crt_list not in self.crt_lists:
                return f"Can't edit the crt-list: crt-list '{crt_list}' does not exist!\n\n"
            self.crt_lists[crt_list].append(name)
            return f"Inserting certificate '{name}' in crt-list '{crt_list}'.\nSuccess!\n\n"
        if verb == "del ssl crt-list":
            crt_list, name = args
            if name not in self.crt_lists.get(crt_list, []):
                return (
                    f"Can't delete the entry: certificate '{name}' can't be found in crt-list"
                    f" '{crt_list}'!\n\n"
                )
            self.crt_lists[crt_list].remove(name)
            return f"Entry '{name}' deleted in crtlist '{crt_list}'!\n\n"
        if verb == "del ssl cert":
            name = args[0]
            if name not in self.certs:
                return f"Can't remove the certificate: certificate '{name}' doesn't exist!\n\n\n"
            if self.status(name) == "Used":
                return (
                    f"Can't remove the certificate: certificate '{name}' in use, can't be"
                    " deleted!\n\n\n"
                )
            del self.certs[name]
            return f"Certificate '{name}' deleted!\n\n"
        return UNKNOWN

    def _show(self, name: str | None) -> str:
        if name is None:
            text = ""
            if self.transaction is not None:
                text += f"# transaction\n*{self.transaction[0]}\n"
            text += "# filename\n" + "".join(f"{n}\n" for n in self.certs)
            return text + "\n"
        not_found = "Can't display the certificate: Not found or the certificate is a bundle!\n\n"
        if name.startswith("*"):
            if self.transaction is None or self.transaction[0] != name[1:]:
                return not_found
            lines = [("Filename", name), ("Status", "Unused")]
            lines += StoredCert(self.transaction[1]).fields()
        elif name in self.certs:
            lines = [("Filename", name), ("Status", self.status(name))]
            lines += self.certs[name].fields()
        else:
            return not_found
        lines.append(("OCSP Response Key", ""))
        return "".join(f"{key}: {value}\n" for key, value in lines) + "\n"

    def _set(self, name: str, payload: str) -> str:
        if self.transaction is not None and self.transaction[0] != name:
            # 2.6: the open transaction (another file's) takes this payload.
            self.transaction = (self.transaction[0], payload)
            return f"Transaction updated for certificate {self.transaction[0]}!\n\n"
        if name not in self.certs:
            return (
                "Can't replace a certificate which is not referenced by the configuration!\n"
                f"Can't update {name}!\n\n"
            )
        try:
            StoredCert(payload).fields()
        except ValueError:
            return (
                f"unable to load certificate from file '{name}'.\nCan't load the payload\n"
                f"Can't update {name}!\n\n"
            )
        created = self.transaction is None
        self.transaction = (name, payload)
        return f"Transaction {'created' if created else 'updated'} for certificate {name}!\n\n"

    def _commit(self, name: str) -> str:
        if self.transaction is None:
            return f"No ongoing transaction! !\nCan't commit {name}!\n\n"
        if self.transaction[0] != name:
            return (
                f"The ongoing transaction is about '{self.transaction[0]}' but you are trying to"
                f" set '{name}'\nCan't commit {name}!\n\n"
            )
        self.certs[name] = StoredCert(self.transaction[1])
        self.transaction = None
        return f"Committing {name}\nSuccess!\n\n"


@asynccontextmanager
async def serve(fake: FakeHAProxy, path: Path | None = None) -> AsyncIterator[str]:
    """Serve ``fake`` on a unix socket at ``path`` (else TCP on 127.0.0.1); yields its address
    as ``--haproxy-socket`` takes it."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await reader.read()  # the client half-closes after its command
            answer = fake.answer(data.decode())
            if answer is not None:
                # surrogateescape: a test can send bytes that are not UTF-8 ("\udcff" is 0xFF)
                writer.write(answer.encode("utf-8", "surrogateescape"))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    if path is not None:
        server = await asyncio.start_unix_server(session, str(path))
        address = f"unix:{path}"
    else:
        server = await asyncio.start_server(session, "127.0.0.1", 0)
        address = f"tcp:127.0.0.1:{server.sockets[0].getsockname()[1]}"
    prefix = "master:" if fake.master else ""
    try:
        yield prefix + address
    finally:
        server.close()
        await server.wait_closed()
