#!/usr/bin/env bash
# A real Docker Engine (Debian's docker.io dockerd) on paths of its own, for the compose tests
# and for trying the stack on Docker where no engine runs. It touches no host firewall rules
# (--iptables=false --ip-masq=false: published ports go through docker-proxy on 127.0.0.1, and
# containers on one network reach each other directly) and no other Docker's socket or data.
#
#   scripts/compose/docker-engine.sh start        # idempotent; prints the DOCKER_HOST to use
#   scripts/compose/docker-engine.sh status       # exit 0 when the engine answers
#   scripts/compose/docker-engine.sh stop         # stops the engine this script started
#   scripts/compose/docker-engine.sh stop-if-idle # ... only when no container exists on it
#   scripts/compose/docker-engine.sh load IMAGE...  # podman image -> engine, skipped when the
#                                                   # engine has it with the same image ID
#   scripts/compose/docker-engine.sh load-local   # load the stand-in images of build-images.sh
#
# dockerd starts its own containerd (under the exec root); nothing else needs to run first.
# The image store (DOCKER_ENGINE_DATA, default /var/lib/cert-sidecar-docker) survives `stop`,
# so loaded images stay for the next start. Several users on one machine share one engine:
# `start` under a lock, `stop-if-idle` for test clean-up that must not end someone else's run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# env.sh points DOCKER_HOST at podman's API unless it is set; this script has its own socket.
saved_docker_host="${DOCKER_HOST-}"
# shellcheck source=scripts/compose/env.sh
source "$here/env.sh"
if [[ -n "$saved_docker_host" ]]; then export DOCKER_HOST="$saved_docker_host"; else unset DOCKER_HOST; fi

name="${DOCKER_ENGINE_NAME:-cert-sidecar-docker}"
data_root="${DOCKER_ENGINE_DATA:-/var/lib/$name}"
exec_root="/run/$name"
socket="/run/$name.sock"
pidfile="/run/$name.pid"
lockfile="/run/$name.lock"
logfile="$CACHE_DIR/$name.log"
engine_host="unix://$socket"
# Debian's client matches the engine (20.10); any docker CLI that negotiates the API works.
docker_cli="${DOCKER_CLI:-$(command -v /usr/bin/docker || command -v docker || true)}"

answers() {
    # /_ping is the Docker API's liveness endpoint. (python3 rather than curl: one dependency
    # fewer on a fresh machine.)
    python3 - "$socket" <<'PING' >/dev/null 2>&1
import socket, sys
with socket.socket(socket.AF_UNIX) as api:
    api.settimeout(2)
    api.connect(sys.argv[1])
    api.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
    sys.exit(0 if api.recv(64).split(b" ")[1:2] == [b"200"] else 1)
PING
}

our_pid() {
    # The pid in our pidfile, only if it is still a dockerd on our data root (pids are reused).
    local pid
    pid="$(cat "$pidfile" 2>/dev/null)" || return 1
    [[ -n "$pid" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "dockerd .*--data-root $data_root " \
        || return 1
    echo "$pid"
}

docker_() {
    if [[ -z "$docker_cli" ]]; then
        echo "docker-engine: no docker CLI (apt-get install docker.io)" >&2
        return 127
    fi
    "$docker_cli" -H "$engine_host" "$@"
}

start() {
    if answers; then
        echo "$engine_host"
        return 0
    fi
    if ! command -v dockerd >/dev/null; then
        echo "docker-engine: dockerd is not installed (bash scripts/install-deps.sh)" >&2
        return 127
    fi
    if [[ "$(id -u)" != 0 ]]; then
        echo "docker-engine: dockerd runs as root here; run this as root" >&2
        return 1
    fi
    (
        # One starter at a time: a second caller waits, then finds the engine answering.
        flock -w 120 9 || { echo "docker-engine: $lockfile is held" >&2; exit 1; }
        if answers; then exit 0; fi
        if pid="$(our_pid)"; then
            # Still starting (or stuck): give it the same deadline as a fresh start below.
            :
        else
            mkdir -p "$data_root" "$exec_root"
            rm -f "$socket" "$pidfile"
            echo "--- $(date -u +%FT%TZ) start" >>"$logfile"
            # setsid: the engine outlives this shell and the test process that asked for it.
            setsid dockerd --iptables=false --ip-masq=false \
                --data-root "$data_root" --exec-root "$exec_root" \
                -H "$engine_host" --pidfile "$pidfile" \
                >>"$logfile" 2>&1 </dev/null 9>&- &
        fi
        for _ in $(seq 1 600); do
            if answers; then exit 0; fi
            sleep 0.1
        done
        echo "docker-engine: the engine did not answer on $socket within 60 s; see $logfile" >&2
        tail -20 "$logfile" >&2 || true
        exit 1
    ) 9>"$lockfile"
    echo "$engine_host"
}

alive() {
    # A process that exited but was not reaped yet (a zombie: the sandbox's init may never reap
    # a detached one) still answers kill -0; it is gone all the same.
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z ]]
}

stop() {
    local pid
    if pid="$(our_pid)"; then
        # dockerd stops its containers (their stop timeouts) and its containerd, then exits.
        kill "$pid"
        for _ in $(seq 1 600); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "docker-engine: dockerd $pid did not stop within 60 s" >&2
            return 1
        fi
    fi
    rm -f "$pidfile"
}

stop_if_idle() {
    answers || return 0
    local containers
    containers="$(docker_ ps -a -q)"
    if [[ -n "$containers" ]]; then
        echo "docker-engine: left running, $(wc -l <<<"$containers") container(s) exist" >&2
        return 0
    fi
    stop
}

image_id() {
    # Both report the config digest, the image ID, as sha256:<hex> (podman: bare hex).
    local id
    id="$("$@" 2>/dev/null)" || return 0
    echo "sha256:${id#sha256:}"
}

load() {
    answers || { echo "docker-engine: the engine is not running (start it first)" >&2; return 1; }
    local image missing=()
    for image in "$@"; do
        local want have
        want="$(image_id podman image inspect --format '{{.Id}}' "$image")"
        if [[ "$want" == "sha256:" || -z "$want" ]]; then
            echo "docker-engine: podman has no image $image" >&2
            return 1
        fi
        have="$(image_id docker_ image inspect --format '{{.Id}}' "$image")"
        if [[ "$have" != "$want" ]]; then
            missing+=("$image")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    echo "docker-engine: loading ${missing[*]}" >&2
    # One multi-image archive: layers the images share cross once.
    podman save --format docker-archive --multi-image-archive "${missing[@]}" \
        | docker_ load --quiet >&2
    for image in "${missing[@]}"; do
        local want have
        want="$(image_id podman image inspect --format '{{.Id}}' "$image")"
        have="$(image_id docker_ image inspect --format '{{.Id}}' "$image")"
        if [[ "$have" != "$want" ]]; then
            echo "docker-engine: $image has ID $have on the engine, $want in podman" >&2
            return 1
        fi
    done
}

case "${1:-start}" in
    start) start ;;
    status) answers ;;
    stop) stop ;;
    stop-if-idle) stop_if_idle ;;
    load) shift; load "$@" ;;
    load-local) load "$PYTHON_BASE_TAG" "$HAPROXY_TEST_IMAGE" "$STEP_CA_TEST_IMAGE" ;;
    host) echo "$engine_host" ;;
    *) echo "usage: $0 start|status|stop|stop-if-idle|load IMAGE...|load-local|host" >&2; exit 2 ;;
esac
