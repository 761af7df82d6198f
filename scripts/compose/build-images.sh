#!/usr/bin/env bash
# Build the local stand-in images the compose test runs on (no registry is reachable here):
#   $BASE_TAG            debootstrap bookworm (build-base.sh, cached tarball)
#   $PYTHON_BASE_TAG     + Debian's python3: the BASE_IMAGE for cert-sidecar's Dockerfile
#   $HAPROXY_TEST_IMAGE  Debian's HAProxy with the upstream haproxy image's interface
#   $STEP_CA_TEST_IMAGE  step-ca 0.19 (scripts/build-step-ca.sh) with the upstream image's
#                        interface, initialised without the step CLI
# and cert-sidecar's offline build context (sources + wheels/). The images of
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

# cert-sidecar's offline build context (CERT_SIDECAR_TEST_CONTEXT): Dockerfile, sources and
# wheels/ for it and its dependencies, built on the host (PyPI's TLS is not trusted inside
# containers here) with a Python of the same version as the stand-in base's (3.11). Kept out of
# the work tree: wheels in the default build context would break a plain `docker compose up
# --build` on another Python (see Dockerfile).
# Any Python with pip does; by default the checkout's .venv, made here on a first run (it needs
# only pip: `pip wheel` builds the project in an isolated environment).
python="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
if [[ -z "${PYTHON:-}" && ! -x "$python" ]]; then
    echo "build-images: creating $REPO_ROOT/.venv (python3 -m venv)" >&2
    python3 -m venv "$REPO_ROOT/.venv"
fi
base_python="$(podman run --rm "$PYTHON_BASE_TAG" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')"
host_python="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$base_python" != "$host_python" ]]; then
    echo "build-images: host Python $host_python does not match the image's $base_python;" \
        "set PYTHON to a python$base_python" >&2
    exit 1
fi
# Dependency wheels: shared by every checkout using this cache, per Python version, rebuilt
# when pyproject.toml changes.
deps="$CACHE_DIR/wheels/py$host_python"
deps_stamp="$deps/.pyproject.sha256"
want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ "$(cat "$deps_stamp" 2>/dev/null)" != "$want" ]]; then
    rm -rf "$deps.tmp"
    mkdir -p "$deps.tmp"
    "$python" -m pip wheel --quiet -w "$deps.tmp" "$REPO_ROOT" >>"$log" 2>&1 || {
        tail -30 "$log" >&2
        exit 1
    }
    rm -f "$deps.tmp"/cert_sidecar-*.whl
    echo "$want" >"$deps.tmp/.pyproject.sha256"
    rm -rf "$deps"
    mv "$deps.tmp" "$deps"
fi
# The context itself belongs to this checkout (its sources) and is rebuilt each time; copies
# keep their modes and times, so unchanged files leave the image's layers cached.
context="$CERT_SIDECAR_TEST_CONTEXT"
rm -rf "$context.tmp"
mkdir -p "$context.tmp/wheels"
for item in Dockerfile pyproject.toml README.md LICENSE ca_client sidecar; do
    if [[ -e "$REPO_ROOT/$item" ]]; then
        cp -a "$REPO_ROOT/$item" "$context.tmp/"
    fi
done
find "$context.tmp" -name __pycache__ -prune -exec rm -rf {} +
cp -a "$deps"/*.whl "$context.tmp/wheels/"
# A reproducible wheel (fixed zip times, fixed file time): unchanged sources give a context
# identical to the last one, so the image build is a cache hit.
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --no-deps -w "$context.tmp/wheels" \
    "$context.tmp" >>"$log" 2>&1 || {
    tail -30 "$log" >&2
    exit 1
}
touch -d @315532800 "$context.tmp"/wheels/cert_sidecar-*.whl
rm -rf "$context.tmp/build" "$context.tmp"/*.egg-info
rm -rf "$context"
mv "$context.tmp" "$context"
# Earlier versions of this script left wheels/ in the work tree (the stamp file marks ours).
if [[ -f "$REPO_ROOT/wheels/.pyproject.sha256" ]]; then
    rm -rf "$REPO_ROOT/wheels"
fi
echo "build-images: done" >&2
