#!/usr/bin/env bash
# Build the local stand-in images the compose test runs on (no registry is reachable here):
#   $BASE_TAG            debootstrap bookworm (build-base.sh, cached tarball)
#   $PYTHON_BASE_TAG     + Debian's python3: the BASE_IMAGE for cert-sidecar's Dockerfile
#   $HAPROXY_TEST_IMAGE  Debian's HAProxy with the upstream haproxy image's interface
#   $STEP_CA_TEST_IMAGE  step-ca 0.19 (scripts/build-step-ca.sh) with the upstream image's
#                        interface, initialised without the step CLI
# and the wheels/ folder that cert-sidecar's Dockerfile installs from. The images of
# compose.yaml itself (the step-ca wrapper, cert-sidecar) are built by `stack.sh build`.
#
# Layer caching keeps reruns to seconds; nothing is rebuilt unless its inputs changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$here/env.sh"
images="$REPO_ROOT/docker/test-images"
log="$CACHE_DIR/build-images.log"
: >"$log"

build() {
    local tag="$1"
    shift
    echo "build-images: $tag" >&2
    if ! podman build --layers --tag "$tag" "$@" >>"$log" 2>&1; then
        tail -30 "$log" >&2
        return 1
    fi
}

bash "$here/build-base.sh"
build "$PYTHON_BASE_TAG" --build-arg "BASE_IMAGE=$BASE_TAG" "$images/python"
build "$HAPROXY_TEST_IMAGE" --build-arg "BASE_IMAGE=$BASE_TAG" "$images/haproxy"

# step-ca: the binary lives in .cache (built from Debian's Go source), so the build context is
# assembled there rather than inside the git tree.
step_ca_binary="$REPO_ROOT/.cache/step-ca/bin/step-ca"
if [[ ! -x "$step_ca_binary" ]]; then
    bash "$REPO_ROOT/scripts/build-step-ca.sh" >&2
fi
context="$CACHE_DIR/context/step-ca"
mkdir -p "$context/bin"
cp -p "$images/step-ca/Dockerfile" "$images/step-ca/entrypoint.sh" \
    "$images/step-ca/step_shim.py" "$context/"
cp -p "$step_ca_binary" "$context/bin/step-ca"
build "$STEP_CA_TEST_IMAGE" --build-arg "BASE_IMAGE=$PYTHON_BASE_TAG" "$context"

# Wheels for cert-sidecar and its dependencies, built on the host (PyPI's TLS is not trusted
# inside containers here) with a Python of the same version as the stand-in base's (3.11).
python="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
base_python="$(podman run --rm "$PYTHON_BASE_TAG" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')"
host_python="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$base_python" != "$host_python" ]]; then
    echo "build-images: host Python $host_python does not match the image's $base_python;" \
        "set PYTHON to a python$base_python" >&2
    exit 1
fi
wheels="$REPO_ROOT/wheels"
mkdir -p "$wheels"
deps_stamp="$wheels/.pyproject.sha256"
want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
rm -f "$wheels"/cert_sidecar-*.whl
if [[ "$(cat "$deps_stamp" 2>/dev/null)" == "$want" ]]; then
    # Dependencies unchanged: rebuild only the project's own wheel (seconds, no network).
    "$python" -m pip wheel --quiet --no-deps -w "$wheels" "$REPO_ROOT" >>"$log" 2>&1 || {
        tail -30 "$log" >&2
        exit 1
    }
else
    "$python" -m pip wheel --quiet -w "$wheels" "$REPO_ROOT" >>"$log" 2>&1 || {
        tail -30 "$log" >&2
        exit 1
    }
    echo "$want" >"$deps_stamp"
fi
echo "build-images: done" >&2
