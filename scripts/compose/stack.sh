#!/usr/bin/env bash
# docker-compose on the local stand-in images (scripts/compose/build-images.sh), under podman's
# Docker API (default) or the Docker Engine of docker-engine.sh (STACK_ENGINE=docker):
#
#   scripts/compose/stack.sh up -d --build      # the default stack (compose.yaml)
#   scripts/compose/stack.sh ps
#   scripts/compose/stack.sh exec -T cert-sidecar cert-sidecar status
#   scripts/compose/stack.sh down -v            # and, under podman, stop what `up` started
#
# Every argument goes to docker-compose. Around it, under podman: starts the API service when
# needed; after `up`, `start` or `restart` runs the healthcheck loop for the project (podman has
# no systemd timer here, so nothing else would run the healthchecks); after `down` stops that
# loop, and the API service too once podman has no container left. Under Docker: starts the
# engine when needed and loads the stand-in base images into it (skipped when present). After
# `down`, either engine: removes cert-sidecar's untagged build stage.
#
# Compose files: compose.yaml, plus compose.override.yaml when it exists (as `docker compose`
# does by itself), or COMPOSE_FILES="compose.yaml:tests/compose/compose.test.yaml" (paths
# relative to the repository, or absolute). Project: COMPOSE_PROJECT_NAME, default cert-sidecar.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$here/env.sh"
local_image_env

engine="${STACK_ENGINE:-podman}"
case "$engine" in
    podman)
        bash "$here/podman-service.sh" start >/dev/null
        ;;
    docker)
        DOCKER_HOST="$(bash "$here/docker-engine.sh" start)"
        export DOCKER_HOST
        bash "$here/docker-engine.sh" load-local
        ;;
    *)
        echo "stack.sh: STACK_ENGINE must be podman or docker, not $engine" >&2
        exit 2
        ;;
esac

if [[ -n "${COMPOSE_FILES:-}" ]]; then
    IFS=: read -r -a names <<<"$COMPOSE_FILES"
else
    names=(compose.yaml)
    if [[ -f "$REPO_ROOT/compose.override.yaml" ]]; then
        names+=(compose.override.yaml)
    fi
fi
files=()
for name in "${names[@]}"; do
    if [[ "$name" == /* ]]; then files+=(-f "$name"); else files+=(-f "$REPO_ROOT/$name"); fi
done
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-cert-sidecar}"
cd "$REPO_ROOT"

loop_pidfile="$PODMAN_SOCKET_DIR/healthcheck-$COMPOSE_PROJECT_NAME.pid"

loop_running() {
    local pid
    pid="$(cat "$loop_pidfile" 2>/dev/null)" || return 1
    [[ -n "$pid" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null \
        | grep -q "healthcheck-loop.sh $COMPOSE_PROJECT_NAME "
}

start_loop() {
    loop_running && return 0
    mkdir -p "$PODMAN_SOCKET_DIR"
    setsid bash "$here/healthcheck-loop.sh" "$COMPOSE_PROJECT_NAME" 2 \
        >/dev/null 2>&1 </dev/null &
    echo $! >"$loop_pidfile"
}

stop_loop() {
    if loop_running; then
        kill "$(cat "$loop_pidfile")" 2>/dev/null || true
    fi
    rm -f "$loop_pidfile"
}

# The compose command (first argument that is not an option of docker-compose itself).
command=""
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) command="$arg"; break ;;
    esac
done

status=0
docker-compose --project-directory "$REPO_ROOT" "${files[@]}" "$@" || status=$?

# `up --build` with the classic builder keeps cert-sidecar's build stage as an untagged image
# (about 280 MB, labelled by the Dockerfile): `down` removes it with the rest.
if [[ "$command" == down ]]; then
    "$engine" image prune --force --filter label=cert-sidecar.stage=build >/dev/null 2>&1 || true
fi

if [[ "$engine" == podman ]]; then
    case "$command" in
        up | start | restart)
            if [[ " $* " != *" --no-start "* ]]; then start_loop; fi
            ;;
        down)
            stop_loop
            if [[ -z "$(podman ps -a -q)" ]]; then
                bash "$here/podman-service.sh" stop
            fi
            ;;
    esac
fi
exit "$status"
