# Shared settings for the quadlet test scripts; source it, do not run it.
quadlet_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$quadlet_root/scripts/compose/env.sh"
export QUADLET_CACHE="${QUADLET_CACHE:-$quadlet_root/.cache/quadlet}"
mkdir -p "$QUADLET_CACHE"
export QUADLET_HOST_IMAGE="${QUADLET_HOST_IMAGE:-localhost/cert-sidecar-test/trixie-systemd:latest}"
# cert-sidecar's image for OpenCHAMI: HAProxy's group is Chainguard's 65532.
export CERT_SIDECAR_OPENCHAMI_IMAGE="${CERT_SIDECAR_OPENCHAMI_IMAGE:-localhost/cert-sidecar:openchami}"
