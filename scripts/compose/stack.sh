#!/usr/bin/env bash
# docker-compose against podman, on the local stand-in images:
#
#   scripts/compose/stack.sh build            # the step-ca wrapper and cert-sidecar images
#   scripts/compose/stack.sh up -d
#   scripts/compose/stack.sh exec cert-sidecar cert-sidecar status
#   scripts/compose/stack.sh down -v
#
# It starts the podman API service when needed, points compose.yaml's image variables at the
# images from build-images.sh and passes every argument to docker-compose. Extra compose files:
# COMPOSE_FILES="compose.yaml:tests/compose/compose.test.yaml" (paths relative to the repo).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$here/env.sh"
local_image_env
bash "$here/podman-service.sh" start >/dev/null

files=()
IFS=: read -r -a names <<<"${COMPOSE_FILES:-compose.yaml}"
for name in "${names[@]}"; do
    files+=(-f "$REPO_ROOT/$name")
done
export COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-cert-sidecar}"
cd "$REPO_ROOT"
exec docker-compose --project-directory "$REPO_ROOT" "${files[@]}" "$@"
