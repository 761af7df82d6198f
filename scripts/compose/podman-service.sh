#!/usr/bin/env bash
# Start (or check) `podman system service`, which serves the Docker API that docker-compose
# 1.29 and the docker CLI talk to; there is no Docker engine on these machines.
#
#   scripts/compose/podman-service.sh start   # idempotent; prints the DOCKER_HOST to use
#   scripts/compose/podman-service.sh stop    # stops the service this script started
#   scripts/compose/podman-service.sh status  # exit 0 when the API answers
#
# The service's pid is kept beside its socket so `stop` ends exactly that process.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$here/env.sh"

socket="${DOCKER_HOST#unix://}"
pidfile="$PODMAN_SOCKET_DIR/podman-service.pid"
logfile="$CACHE_DIR/podman-service.log"

api_answers() {
    # /_ping is the Docker API's liveness endpoint; podman serves it too. (python3 rather than
    # curl: one dependency fewer on a fresh machine.)
    python3 - "$socket" <<'PING' >/dev/null 2>&1
import socket, sys
with socket.socket(socket.AF_UNIX) as api:
    api.settimeout(2)
    api.connect(sys.argv[1])
    api.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
    sys.exit(0 if api.recv(64).split(b" ")[1:2] == [b"200"] else 1)
PING
}

start() {
    if api_answers; then
        echo "$DOCKER_HOST"
        return 0
    fi
    mkdir -p "$PODMAN_SOCKET_DIR"
    rm -f "$socket"
    # --time=0: never exit for idleness; the test suite may pause between compose commands.
    setsid podman system service --time=0 "unix://$socket" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 100); do
        if api_answers; then
            echo "$DOCKER_HOST"
            return 0
        fi
        sleep 0.1
    done
    echo "podman-service: the API did not answer on $socket; see $logfile" >&2
    tail -20 "$logfile" >&2 || true
    return 1
}

alive() {
    # A process that exited but was not reaped yet (a zombie: the sandbox's init may never reap
    # a detached one) still answers kill -0; it is gone all the same.
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

stop() {
    if [[ -s "$pidfile" ]]; then
        pid="$(cat "$pidfile")"
        # Only our own service: check the command line before signalling the pid.
        if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'podman system service'; then
            kill "$pid"
            # It finishes open API requests first; wait so a following start finds it gone.
            for _ in $(seq 1 100); do
                alive "$pid" || break
                sleep 0.1
            done
        fi
        rm -f "$pidfile"
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) api_answers ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
