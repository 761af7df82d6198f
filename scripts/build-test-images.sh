#!/usr/bin/env bash
# Every image the compose and quadlet tests run, built ahead of them: scripts/test starts this in
# the background once step-ca and .venv exist, while the fast tiers and the integration tests
# run (about 5 minutes of image builds on a fresh machine that used to come first, in the
# compose tests' first fixture).
#
#   bash scripts/build-test-images.sh
#
# It holds $CACHE_DIR/.lock-build-test-images throughout; the compose tests' image fixture
# (tests/compose/conftest.py) takes the same lock before it builds, so it waits for this run
# instead of building beside it, then finds every layer cached. A failure here fails nothing
# by itself: the fixture then builds again, in the foreground, and reports what failed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/compose/env.sh
source "$here/compose/env.sh"
exec 7>"$CACHE_DIR/.lock-build-test-images"
flock 7
started=$SECONDS
# Every child gets `7>&-`: a descriptor of the lock left open in a process that outlives this
# script holds the lock for as long as it runs. stack.sh starts `podman system service` in the
# background when none is running (as on a fresh machine), and that service holding the lock
# made the compose fixture wait for good (seen in a CI run).
bash "$here/compose/build-images.sh" 7>&-
# compose.yaml's own images (cert-sidecar, the step-ca wrapper), as the compose fixture builds them.
STACK_ENGINE=podman bash "$here/compose/stack.sh" build >/dev/null 7>&-
bash "$here/quadlet/build-images.sh" >/dev/null 7>&-
echo "build-test-images: done in $((SECONDS - started)) s"
