#!/usr/bin/env bash
# Install the other ACME clients bench/ compares against (not needed by the test suite).
#
# Facts: lego 4.9 (Debian `lego`) did new-account + http-01 + issuance against the local
# step-ca in ~0.14 s wall; certbot 2.1 in ~4.1 s. Idempotent like scripts/install-deps.sh.
set -euo pipefail

BENCH_PACKAGES=(lego certbot)

missing=()
for package in "${BENCH_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "${package}" 2>/dev/null || true)"
    [[ "${status}" == "installed" ]] || missing+=("${package}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-bench-deps: all present"
    exit 0
fi

sudo_cmd=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "install-bench-deps: not root and no sudo; missing ${missing[*]}" >&2
        exit 1
    }
    sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -q
"${sudo_cmd[@]}" apt-get install -y -q "${missing[@]}" </dev/null
echo "install-bench-deps: done"
