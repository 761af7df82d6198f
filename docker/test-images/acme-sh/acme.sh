#!/bin/sh
# The subset of acme.sh's command line that OpenCHAMI's acme-register and acme-deploy units use:
#   --issue  --ca-bundle F --server URL --home DIR -d DOMAIN --standalone --force
#   --deploy --ca-bundle F --server URL -d DOMAIN --home DIR --standalone --deploy-hook haproxy --force
set -eu
umask 077
mode="" bundle="" server="" home="/acme.sh" domain=""
while [ $# -gt 0 ]; do
    case "$1" in
        --issue) mode=issue ;;
        --deploy) mode=deploy ;;
        --ca-bundle) bundle="$2"; shift ;;
        --server) server="$2"; shift ;;
        --home) home="$2"; shift ;;
        -d) domain="$2"; shift ;;
        --deploy-hook) shift ;;
        --standalone | --force) ;;
        *) echo "acme.sh stand-in: ignoring $1" >&2 ;;
    esac
    shift
done
[ -n "$domain" ] || { echo "acme.sh stand-in: no -d DOMAIN" >&2; exit 1; }
store="$home/${domain}_ecc"
case "$mode" in
    issue)
        mkdir -p "$store" "$home/.state"
        exec cert-sidecar issue --force --no-placeholder --domain "$domain" \
            --directory "$server" --ca-bundle "$bundle" --certs-dir "$store" \
            --state-dir "$home/.state" --http-listen 0.0.0.0:80 --pem-mode 0600 --log-format console
        ;;
    deploy)
        target="${DEPLOY_HAPROXY_PEM_PATH:-/etc/haproxy}/$domain.pem"
        # As acme.sh's hook does: write through the existing file (cat >), so an existing
        # file keeps its owner and mode, and a new one gets root and 0600.
        cat "$store/$domain.pem" > "$target"
        echo "acme.sh stand-in: deployed $target"
        ;;
    *) echo "acme.sh stand-in: --issue or --deploy" >&2; exit 1 ;;
esac
