#!/usr/bin/env bash
# Install an OpenCHAMI/release tree into the quadlet test's host the way openchami.spec's
# %install and %post do, with one difference the test chooses: the quadlet units go into
# UNIT_DIR, /etc/containers/systemd (the RPM up to v0.1) or /usr/share/containers/systemd (v0.2,
# site changes in drop-ins under /etc). Runs inside the host, as root.
#
#   install-release.sh RELEASE_DIR UNIT_DIR
set -euo pipefail
release="$1"
unit_dir="$2"

mkdir -p /etc/openchami/configs /etc/openchami/pg-init "$unit_dir" /etc/systemd/system \
    /usr/libexec/openchami /etc/profile.d
cp -r "$release"/systemd/configs/* /etc/openchami/configs/
cp -r "$release"/systemd/containers/* "$release"/systemd/volumes/* "$release"/systemd/networks/* "$unit_dir"/
cp -r "$release"/systemd/targets/* "$release"/systemd/system/* /etc/systemd/system/
install -m 0755 "$release/scripts/openchami-certificate-update" /usr/bin/
install -m 0755 "$release/scripts/bootstrap_openchami.sh" /usr/libexec/openchami/
if [[ -f "$release/scripts/openchami_profile.sh" ]]; then
    cp "$release/scripts/openchami_profile.sh" /etc/profile.d/openchami.sh
fi
if [[ -f "$release/scripts/multi-psql-db.sh" ]]; then
    cp "$release/scripts/multi-psql-db.sh" /etc/openchami/pg-init/
fi
chmod 644 /etc/openchami/configs/*
chmod 600 /etc/openchami/configs/openchami.env

# %post: reload, then bootstrap (secrets, names from the host name). The real bootstrap edits
# the acme.sh units in /etc/containers/systemd only; with UNIT_DIR elsewhere those edits fail
# quietly, as they would on such an RPM, and the units keep the default name, which is this
# host's name.
# rpm reports a failing %post as a warning and goes on; so does this.
systemctl daemon-reload
/usr/libexec/openchami/bootstrap_openchami.sh || echo "install-release: bootstrap exited $? (a %post warning)"
systemctl daemon-reload
