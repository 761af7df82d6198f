#!/usr/bin/env bash
# Stand-in for the timer that runs container healthchecks: podman schedules them with systemd,
# which these machines do not have, so without this loop a container stays "starting" for ever
# (and `depends_on: condition: service_healthy` would wait for ever).
#
#   scripts/compose/healthcheck-loop.sh [PROJECT] [INTERVAL_SECONDS]
#
# Runs `podman healthcheck run` on each running container of the compose project (default
# $COMPOSE_PROJECT_NAME or cert-sidecar) every INTERVAL seconds (default 2) until killed.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$here/env.sh"
project="${1:-${COMPOSE_PROJECT_NAME:-cert-sidecar}}"
interval="${2:-2}"

trap 'exit 0' TERM INT
while true; do
    for id in $(podman ps --quiet --filter "label=com.docker.compose.project=$project"); do
        # Exit status 1 means "unhealthy" and is recorded in the container's state; a
        # container without a healthcheck just reports an error. Neither stops the loop.
        podman healthcheck run "$id" >/dev/null 2>&1 || true
    done
    sleep "$interval" &
    wait $!
done
