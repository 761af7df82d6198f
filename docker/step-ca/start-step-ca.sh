#!/bin/bash
# cert-sidecar's wrapper around the smallstep/step-ca image, run as the container's command
# (after the image's own entrypoint has done its `step ca init` from DOCKER_STEPCA_INIT_*):
#
# 1. sets the ACME provisioner's certificate lifetime claims from STEP_CA_CERT_LIFETIME (and
#    optional STEP_CA_CERT_MIN_LIFETIME / STEP_CA_CERT_MAX_LIFETIME), on every start, so a
#    changed value takes effect with a restart;
# 2. publishes the root certificate into the step-root-ca volume mounted at /root_ca, which is
#    where cert-sidecar (and any other client in the stack) reads its only trust anchor; the
#    upstream image keeps it in $STEPPATH/certs/ and writes no other volume by itself;
# 3. execs step-ca exactly as the upstream image's default command does.
set -euo pipefail

steppath="${STEPPATH:-/home/step}"
config="${CONFIGPATH:-$steppath/config/ca.json}"
password_file="${PWDPATH:-$steppath/secrets/password}"
provisioner="${STEP_CA_ACME_PROVISIONER:-acme}"
root_dir="${STEP_CA_ROOT_DIR:-/root_ca}"

if [[ ! -f "$config" ]]; then
    echo "start-step-ca: $config does not exist; set DOCKER_STEPCA_INIT_NAME and" \
        "DOCKER_STEPCA_INIT_DNS_NAMES (and DOCKER_STEPCA_INIT_ACME=true)" >&2
    exit 1
fi

if [[ -n "${STEP_CA_CERT_LIFETIME:-}" ]]; then
    # The minimum must not exceed the default and the maximum must not be below it, or
    # step-ca refuses the configuration; both follow the lifetime unless given.
    step ca provisioner update "$provisioner" \
        --ca-config "$config" \
        --x509-min-dur "${STEP_CA_CERT_MIN_LIFETIME:-30s}" \
        --x509-default-dur "$STEP_CA_CERT_LIFETIME" \
        --x509-max-dur "${STEP_CA_CERT_MAX_LIFETIME:-$STEP_CA_CERT_LIFETIME}"
fi

if [[ -d "$root_dir" && ! -w "$root_dir" ]]; then
    # One line that says what to do, rather than mktemp's error in a restart loop.
    echo "start-step-ca: $root_dir is not writable by uid $(id -u)" \
        "(owner $(stat -c '%u:%g, mode %a' "$root_dir")): the step-root-ca volume was set up" \
        "by another image; remove it (docker compose down, docker volume rm <project>_step-root-ca)" \
        "or chown it to $(id -u):$(id -g) (docker/README.md, \"Shared volumes\")" >&2
    exit 1
fi

if [[ -d "$root_dir" ]]; then
    # Temp file + rename in the same directory: readers (cert-sidecar watches this file) never
    # see a partial certificate.
    tmp="$(mktemp "$root_dir/.root_ca.crt.XXXXXX")"
    cp "$steppath/certs/root_ca.crt" "$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$root_dir/root_ca.crt"
    echo "start-step-ca: root certificate published at $root_dir/root_ca.crt"
else
    echo "start-step-ca: $root_dir is not mounted; the root stays in $steppath/certs/" >&2
fi

exec /usr/local/bin/step-ca --password-file "$password_file" "$config"
