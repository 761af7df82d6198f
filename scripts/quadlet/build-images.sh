#!/usr/bin/env bash
# Build every image the quadlet test's host runs, on the test machine's podman, and save them to
# one archive for `podman load` inside the host (no registry is reachable here):
#   $CERT_SIDECAR_OPENCHAMI_IMAGE      cert-sidecar, HAProxy's group 65532 (what users build)
#   ghcr.io/openchami/local-ca:v0.2.6  step-ca 0.19 behind the compose stack's wrapper, which
#                                      publishes the root into /root_ca as OpenCHAMI's image does
#   cgr.dev/chainguard/haproxy         Debian's HAProxy as Chainguard's image (uid/gid 65532)
#   docker.io/neilpang/acme.sh:3.1.1   acme.sh's issue/deploy, for the migration (acme-sh/)
#   every other image the release tree names: one stub that answers HTTP (stub/)
#
#   scripts/quadlet/build-images.sh [RELEASE_DIR]   # prints the archive's path
#
# RELEASE_DIR (default: the stand-in tree) says which images to stub: every Image= of its units.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/quadlet/env.sh
source "$here/env.sh"
# One build at a time (scripts/test starts the host build early, in the background).
exec 9>"$QUADLET_CACHE/.lock-$(basename "$0")"
flock 9
release="${1:-$REPO_ROOT/tests/quadlet/release}"
images="$REPO_ROOT/docker/test-images"
log="$QUADLET_CACHE/build-images.log"
: >"$log"

build() {
    local tag="$1"
    shift
    echo "quadlet build-images: $tag" >&2
    podman build --layers --tag "$tag" "$@" >>"$log" 2>&1 || { tail -30 "$log" >&2; return 1; }
}

# The compose test's stand-ins and cert-sidecar's offline build context.
bash "$REPO_ROOT/scripts/compose/build-images.sh" >&2
build "$CERT_SIDECAR_OPENCHAMI_IMAGE" --build-arg "BASE_IMAGE=$PYTHON_BASE_TAG" \
    --build-arg HAPROXY_GID=65532 "$CERT_SIDECAR_TEST_CONTEXT"
build ghcr.io/openchami/local-ca:v0.2.6 --build-arg "STEP_CA_IMAGE=$STEP_CA_TEST_IMAGE" \
    "$REPO_ROOT/docker/step-ca"
build cgr.dev/chainguard/haproxy:latest --build-arg "HAPROXY_TEST_IMAGE=$HAPROXY_TEST_IMAGE" \
    "$images/chainguard-haproxy"
build docker.io/neilpang/acme.sh:3.1.1 \
    --build-arg "CERT_SIDECAR_IMAGE=$CERT_SIDECAR_OPENCHAMI_IMAGE" "$images/acme-sh"
build localhost/cert-sidecar-test/openchami-stub:latest --build-arg "BASE_IMAGE=$PYTHON_BASE_TAG" \
    "$images/stub"

# Every image the tree names that has no stand-in above gets the stub, under its real name.
# An image named without a tag is :latest, as podman reads it.
real=(ghcr.io/openchami/local-ca cgr.dev/chainguard/haproxy docker.io/neilpang/acme.sh)
mapfile -t named < <(cat "$release"/systemd/containers/*.container | sed -n 's/^Image=//p' | sort -u)
all=("$CERT_SIDECAR_OPENCHAMI_IMAGE" ghcr.io/openchami/local-ca:v0.2.6
    cgr.dev/chainguard/haproxy:latest docker.io/neilpang/acme.sh:3.1.1)
for name in "${named[@]}"; do
    [[ "$name" == *:* ]] || name="$name:latest"
    skip=false
    for prefix in "${real[@]}"; do
        [[ "$name" == "$prefix":* ]] && skip=true
    done
    $skip && continue
    podman tag localhost/cert-sidecar-test/openchami-stub:latest "$name"
    all+=("$name")
done

# One archive, rewritten only when an image changed (the IDs are the key).
key="$(for name in "${all[@]}"; do podman image inspect --format '{{.Id}}' "$name"; done | sha256sum | cut -c1-16)"
archive="$QUADLET_CACHE/images-$key.tar"
if [[ ! -s "$archive" ]]; then
    rm -f "$QUADLET_CACHE"/images-*.tar
    echo "quadlet build-images: saving ${#all[@]} images" >&2
    podman save --multi-image-archive --output "$archive.tmp" "${all[@]}" >>"$log" 2>&1 \
        || { tail -30 "$log" >&2; exit 1; }
    mv "$archive.tmp" "$archive"
fi
echo "$archive"
