#!/usr/bin/env python3
"""A stand-in OpenCHAMI service: exits 0 when its host name says it is a one-shot, else answers
every HTTP request with 200 and its host name, on the ports OpenCHAMI's HAProxy routes to.

Arguments (the real images' commands, e.g. `serve -c ...`) are ignored.
"""

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The release tree's one-shot units, by host name. Not by suffix: cloud-init-server's host name
# is "cloud-init", a long-running service.
ONE_SHOTS = frozenset({"smd-init", "bss-init", "hydra-migrate", "hydra-gen-jwks"})
# opaal-idp, opaal, configurator, hydra (public), cloud-init, bss, smd, postgres.
PORTS = (3332, 3333, 3334, 4444, 27777, 27778, 27779, 5432)
NAME = socket.gethostname()


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"stub {NAME}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> int:
    if NAME in ONE_SHOTS:
        print(f"stub {NAME}: one-shot, done", flush=True)
        return 0
    servers = []
    for port in PORTS:
        try:
            servers.append(ThreadingHTTPServer(("0.0.0.0", port), Answer))  # noqa: S104 (a backend)
        except OSError as error:  # a port another stub on the host network holds
            print(f"stub {NAME}: port {port}: {error}", file=sys.stderr, flush=True)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"stub {NAME}: serving on {len(servers)} ports", flush=True)
    if servers:
        servers[0].serve_forever()
    else:
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
