# Shared settings for the podman-based compose scripts; source it, do not run it.
# Every value can be overridden from the environment.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export REPO_ROOT="$repo_root"
export CACHE_DIR="${CACHE_DIR:-$repo_root/.cache/compose}"
mkdir -p "$CACHE_DIR"

# Podman's own settings, written once: podman reads the file CONTAINERS_CONF names.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$CACHE_DIR/containers.conf}"
if [[ ! -s "$CONTAINERS_CONF" ]]; then
    # runc: crun fails on this sandbox's cgroup hybrid mode. ulimits: podman's defaults exceed
    # the sandbox's hard limits and the process lacks CAP_SYS_RESOURCE to raise them.
    # cgroupfs + file events: there is no systemd here.
    cat >"$CONTAINERS_CONF.tmp" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
fi
# The Docker-API socket that `podman system service` serves; docker-compose talks to it.
# Kept under /run, not the work tree: a unix socket path must stay under 108 bytes.
export PODMAN_SOCKET_DIR="${PODMAN_SOCKET_DIR:-/run/cert-sidecar-compose}"
export DOCKER_HOST="${DOCKER_HOST:-unix://$PODMAN_SOCKET_DIR/podman.sock}"
# docker-compose 1.29 would otherwise try BuildKit features podman's API does not have.
export DOCKER_BUILDKIT=0
export COMPOSE_DOCKER_CLI_BUILD=0

export BASE_TAG="${BASE_TAG:-localhost/cert-sidecar-test/bookworm:latest}"
export PYTHON_BASE_TAG="${PYTHON_BASE_TAG:-localhost/cert-sidecar-test/bookworm-python:latest}"
export STEP_CA_TEST_IMAGE="${STEP_CA_TEST_IMAGE:-localhost/cert-sidecar-test/step-ca:latest}"
export HAPROXY_TEST_IMAGE="${HAPROXY_TEST_IMAGE:-localhost/cert-sidecar-test/haproxy:latest}"
export CERT_SIDECAR_TEST_IMAGE="${CERT_SIDECAR_TEST_IMAGE:-localhost/cert-sidecar:test}"
export STEP_CA_WRAPPED_TEST_IMAGE="${STEP_CA_WRAPPED_TEST_IMAGE:-localhost/cert-sidecar-test/step-ca-wrapped:test}"

# cert-sidecar's offline build context (sources + wheels for the stand-in's Python), made by
# build-images.sh. One per checkout: several checkouts may share this cache.
checkout_id="$(printf '%s' "$repo_root" | sha256sum | cut -c1-12)"
export CERT_SIDECAR_TEST_CONTEXT="${CERT_SIDECAR_TEST_CONTEXT:-$CACHE_DIR/context/cert-sidecar-$checkout_id}"

# The Docker Engine of scripts/compose/docker-engine.sh (its socket, when it runs).
export DOCKER_ENGINE_HOST="${DOCKER_ENGINE_HOST:-unix:///run/${DOCKER_ENGINE_NAME:-cert-sidecar-docker}.sock}"

# The stand-in base images, the ones the compose file's builds start from (loaded into the
# Docker Engine by `docker-engine.sh load-local`).
local_base_image_env() {
    export STEP_CA_IMAGE="$STEP_CA_TEST_IMAGE"
    export HAPROXY_IMAGE="$HAPROXY_TEST_IMAGE"
    export CERT_SIDECAR_BASE_IMAGE="$PYTHON_BASE_TAG"
    export CERT_SIDECAR_BUILD_CONTEXT="$CERT_SIDECAR_TEST_CONTEXT"
}

# The compose file's image variables, pointed at the local stand-ins (see build-images.sh), and
# the images it builds renamed so they cannot be mistaken for (or replace) the default ones.
# Only stack.sh exports these into docker-compose's environment.
local_image_env() {
    local_base_image_env
    export CERT_SIDECAR_IMAGE="$CERT_SIDECAR_TEST_IMAGE"
    export STEP_CA_WRAPPED_IMAGE="$STEP_CA_WRAPPED_TEST_IMAGE"
}
