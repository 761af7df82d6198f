#!/bin/bash
# Entrypoint of the local step-ca stand-in: the upstream smallstep/step-ca image's contract,
# rewritten for the stand-in. When there is no ca.json yet and DOCKER_STEPCA_INIT_NAME and
# DOCKER_STEPCA_INIT_DNS_NAMES are set, initialise the CA (DOCKER_STEPCA_INIT_ACME=true adds the
# ACME provisioner "acme"); then run the command (by default step-ca itself).
set -euo pipefail

STEPPATH="$(step path)"
export STEPPATH

if [[ ! -f "$STEPPATH/config/ca.json" ]]; then
    if [[ -z "${DOCKER_STEPCA_INIT_NAME:-}" || -z "${DOCKER_STEPCA_INIT_DNS_NAMES:-}" ]]; then
        echo "there is no ca.json config file; set DOCKER_STEPCA_INIT_NAME and" \
            "DOCKER_STEPCA_INIT_DNS_NAMES to initialise one" >&2
    else
        mkdir -p "$(dirname "$PWDPATH")"
        if [[ -f "${DOCKER_STEPCA_INIT_PASSWORD_FILE:-}" ]]; then
            cp "$DOCKER_STEPCA_INIT_PASSWORD_FILE" "$PWDPATH"
        elif [[ -n "${DOCKER_STEPCA_INIT_PASSWORD:-}" ]]; then
            printf '%s\n' "$DOCKER_STEPCA_INIT_PASSWORD" >"$PWDPATH"
        else
            # 32 random bytes as hex: the password never leaves this volume.
            python3 -c 'import secrets; print(secrets.token_hex(32))' >"$PWDPATH"
        fi
        chmod 600 "$PWDPATH"
        args=(
            --name "$DOCKER_STEPCA_INIT_NAME"
            --dns "$DOCKER_STEPCA_INIT_DNS_NAMES"
            --provisioner "${DOCKER_STEPCA_INIT_PROVISIONER_NAME:-admin}"
            --address "${DOCKER_STEPCA_INIT_ADDRESS:-:9000}"
            --password-file "$PWDPATH"
        )
        if [[ "${DOCKER_STEPCA_INIT_ACME:-}" == "true" ]]; then
            args+=(--acme)
        fi
        step ca init "${args[@]}"
    fi
fi

exec "$@"
