"""Does ``sniffio`` earn its place? CPU per httpx request with and without it importable.

httpcore's ``current_async_library()`` does ``import sniffio`` each time it is called (several
times per request); when sniffio is not installed the import fails, and a failed import is not
cached: every call searches ``sys.path`` again. anyio 4 no longer depends on sniffio, so with
current releases nothing installs it unless we declare it.

Method: a local keep-alive HTTP/1.1 server on 127.0.0.1 and an ``httpx.AsyncClient`` shaped
like the sidecar's (4 pooled connections, 16 requests in flight), N GET requests, in a fresh
interpreter per run. "absent" installs a meta-path finder that, for ``sniffio`` only, does the
same full ``sys.path`` search a missing module costs and then fails; "present" imports it as
installed. Runs alternate; the median CPU time per request of each is printed.

    .venv/bin/python bench/sniffio_cost.py [--requests 3000] [--runs 5]

Measured 2026-12-02 on the shared 2-core machine (load average ~13 from parallel test runs;
httpx 0.29.0, httpcore 1.0.9, anyio 4.16, Python 3.11.7), 3,000 requests x 5 runs each:

    sniffio present: median 2729 us CPU per request  (2894, 2698, 2695, 2729, 3719)
    sniffio absent : median 4912 us CPU per request  (4903, 4912, 4711, 5010, 5938)
    without sniffio: +2183 us per request (+80 %)

Every "absent" run was slower than every "present" run. The absolute figures are inflated by
the load; the gap is why ``sniffio`` stays a declared dependency although nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import asyncio, importlib.machinery, json, sys, time

if sys.argv[1] == "absent":
    class _NotInstalled:
        # Cost of a module that is not installed: a full search of sys.path, then failure.
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "sniffio":
                return None
            importlib.machinery.PathFinder.find_spec("sniffio_is_not_installed")
            raise ModuleNotFoundError("No module named 'sniffio'", name="sniffio")
    sys.meta_path.insert(0, _NotInstalled)
    sys.modules.pop("sniffio", None)

import httpx

BODY = b'{"ok": true}'
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
          + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)

async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ANSWER)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()

async def main(count):
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        await client.get(f"http://127.0.0.1:{port}/")  # warm up
        gate = asyncio.Semaphore(16)
        async def one():
            async with gate:
                (await client.get(f"http://127.0.0.1:{port}/")).raise_for_status()
        cpu = time.process_time()
        await asyncio.gather(*(one() for _ in range(count)))
        cpu = time.process_time() - cpu
    server.close()
    print(json.dumps({"cpu_per_request_us": cpu / count * 1e6,
                      "sniffio_loaded": "sniffio" in sys.modules,
                      "sys_path_entries": len(sys.path)}))

asyncio.run(main(int(sys.argv[2])))
"""


def run(mode: str, requests: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(requests)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"present": [], "absent": []}
    for _ in range(args.runs):
        for mode in ("present", "absent"):
            result = run(mode, args.requests)
            assert bool(result["sniffio_loaded"]) == (mode == "present"), result
            samples[mode].append(result["cpu_per_request_us"])
    for mode, values in samples.items():
        print(
            f"sniffio {mode:7}: median {statistics.median(values):7.1f} us CPU per request"
            f"  (runs: {', '.join(f'{v:.0f}' for v in values)})"
        )
    present, absent = (statistics.median(samples[m]) for m in ("present", "absent"))
    print(f"without sniffio: {absent - present:+.1f} us per request ({absent / present - 1:+.1%})")


if __name__ == "__main__":
    main()
