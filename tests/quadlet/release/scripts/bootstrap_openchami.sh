#!/bin/bash
# Stand-in for the Release RPM's %post bootstrap: the podman secrets the units name, and the
# system's names taken from the host name (the real one also sets its URLs and acme.sh units).
set -u
for secret in postgres_password bss_postgres_password smd_postgres_password \
    hydra_postgres_password hydra_system_secret hydra_dsn postgres_multiple_databases; do
    if ! podman secret inspect "$secret" >/dev/null 2>&1; then
        openssl rand -hex 16 | podman secret create "$secret" - >/dev/null
    fi
done
fqdn="$(hostname)"
env_file=/etc/openchami/configs/openchami.env
sed -i -e "s/^SYSTEM_NAME=.*/SYSTEM_NAME=$(hostname -s)/" -e "s/^SYSTEM_DOMAIN=.*/SYSTEM_DOMAIN=$(hostname -d)/" \
    -e "s/^SYSTEM_URL=.*/SYSTEM_URL=${fqdn}/" "$env_file"
unit_dir="${OPENCHAMI_UNIT_DIR:-/etc/containers/systemd}"
sed -i "s|-d .* \\\\|-d ${fqdn} \\\\|" "$unit_dir/acme-deploy.container" "$unit_dir/acme-register.container"
sed -i -e "s/^ContainerName=.*/ContainerName=${fqdn}/" -e "s/^HostName=.*/HostName=${fqdn}/" \
    "$unit_dir/acme-register.container"
