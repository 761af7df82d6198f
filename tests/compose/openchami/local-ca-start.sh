#!/bin/bash
# Stand-in for the entrypoint of OpenCHAMI's local-ca image, on the local step-ca test image:
# as root, initialise the CA once from DOCKER_STEPCA_INIT_* and, at that moment only, copy the
# root and intermediate into /root_ca (the step-root-ca volume) with mode 0444, root-owned.
# STEP_CA_CERT_LIFETIME (test only) shortens the ACME provisioner's certificates so renewal
# happens within the test.
set -euo pipefail
config="${CONFIGPATH:-$STEPPATH/config/ca.json}"
if [[ ! -f "$config" ]]; then
    /entrypoint.sh true   # the test image's `step ca init` from DOCKER_STEPCA_INIT_*
    cp "$STEPPATH/certs/root_ca.crt" /root_ca/root_ca.crt
    cp "$STEPPATH/certs/intermediate_ca.crt" /root_ca/intermediate_ca.crt
    chmod 444 /root_ca/*.crt
fi
if [[ -n "${STEP_CA_CERT_LIFETIME:-}" ]]; then
    step ca provisioner update acme --ca-config "$config" --x509-min-dur 30s \
        --x509-default-dur "$STEP_CA_CERT_LIFETIME" --x509-max-dur "$STEP_CA_CERT_LIFETIME"
fi
exec /usr/local/bin/step-ca --password-file "$PWDPATH" "$config"
