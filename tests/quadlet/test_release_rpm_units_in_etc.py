"""The same install where the Release RPM keeps its units in /etc/containers/systemd (before
v0.2.0), the directory cert-sidecar's own files and drop-ins go to: HAProxy starts after
cert-sidecar and serves a verified certificate, acme.sh's units are skipped, and uninstall
leaves the files as they were. The full sequence runs in test_release_rpm.py (/usr/share)."""

from __future__ import annotations

from tests.quadlet.host import FQDN, Host, wait_for
from tests.quadlet.test_release_rpm import SNAPSHOT, _diff, run_readme


def test_install_serve_and_uninstall_with_the_units_in_etc(host_units_in_etc: Host) -> None:
    host = host_units_in_etc
    assert host.sh("test -f /etc/containers/systemd/haproxy.container", check=False).returncode == 0
    before = host.sh(SNAPSHOT).stdout
    run_readme(host, "quadlet-install")
    generated = host.sh("/usr/libexec/podman/quadlet -dryrun 2>/dev/null").stdout
    haproxy = generated.split("---haproxy.service---", 1)[1].split("\n---", 1)[0]
    assert "After=cert-sidecar.service" in haproxy
    assert "cert-sidecar-run:/var/lib/haproxy-run:z" in haproxy
    host.sh(
        "systemctl start opaal.service smd.service bss.service cloud-init-server.service",
        timeout=600,
    )
    host.sh("systemctl start haproxy.service", timeout=600)
    wait_for(
        "a verified certificate",
        lambda: host.served() if host.step_root() else None,
        deadline_s=300,
        interval_s=0.5,
    )
    assert (
        "start condition unmet"
        in host.sh("systemctl status acme-deploy.service --no-pager", check=False).stdout
    )
    assert host.volume_file("haproxy-certs", f"{FQDN}.pem") == "640 10001:65532"
    run_readme(host, "quadlet-uninstall")
    after = host.sh(SNAPSHOT).stdout
    assert after == before, _diff(before, after)
