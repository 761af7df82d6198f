#!/usr/bin/env bash
# Install the Debian 12 packages the test suite needs (the real peers and their tooling).
#
# Idempotent: when every package is already installed it exits in well under a second, without
# touching apt. Otherwise it runs `apt-get update` once and installs only what is missing.
# Must run as root (or with sudo available); CI runs it as root on a fresh machine.
#
# Facts: installing golang-go + golang-github-smallstep-certificates-dev (which pulls every Go
# dependency of step-ca as a -dev package) takes about 50 s (the podman group: not measured).
# lego and certbot are not here on purpose: only bench/ uses them
# (scripts/install-bench-deps.sh).
set -euo pipefail

# One list, so the owners of other test tiers can add what they need. Keep it sorted by purpose.
TEST_PACKAGES=(
    # Python: Debian's python3 is 3.11; venv needs the separate -venv package.
    python3 python3-venv python3-pip
    # step-ca from source (scripts/build-step-ca.sh). cgo (DataDog/zstd) needs a C compiler
    # and the zstd headers; the -dev package depends on them, listed here to be explicit.
    golang-go golang-github-smallstep-certificates-dev gcc libc6-dev libzstd-dev
    # Pebble + pebble-challtestsrv, HAProxy 2.6.
    pebble haproxy
    # The compose tests: podman serving the Docker API to docker-compose 1.29; runc because
    # crun fails on this sandbox's cgroup mode; netavark + aardvark-dns (and the CNI dnsname
    # plugin) give service-name DNS on podman networks; debootstrap builds the local base image.
    # docker.io: a real Docker Engine (dockerd), started on its own socket by the compose tests,
    # because Docker's volume copy-up rules differ from podman's (TEST-PEERS.md).
    docker.io
    # promtool checks the Prometheus alerting rules in docker/prometheus/.
    prometheus
    podman docker-compose runc uidmap slirp4netns fuse-overlayfs netavark aardvark-dns
    containernetworking-plugins golang-github-containernetworking-plugin-dnsname debootstrap
    # setpriv/runuser, to run a case as an unprivileged user (root ignores file modes).
    util-linux
    ca-certificates
    # curl: the README's first-run commands fetch through HAProxy with it (test_readme.py).
    curl
)

missing=()
for package in "${TEST_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "${package}" 2>/dev/null || true)"
    if [[ "${status}" != "installed" ]]; then
        missing+=("${package}")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all ${#TEST_PACKAGES[@]} packages present"
    exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    else
        echo "install-deps: missing packages and not root (no sudo): ${missing[*]}" >&2
        exit 1
    fi
fi

# No stdin in CI: never let apt or debconf prompt.
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q "${missing[@]}" </dev/null
echo "install-deps: done"
