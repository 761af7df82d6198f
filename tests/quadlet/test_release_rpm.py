"""cert-sidecar where OpenCHAMI runs now: the Release RPM's podman quadlets under systemd.

One host, booted once, goes through what an operator does, in order (each test builds on the
state the one before left):

1. install cert-sidecar with docs/openchami-rpm.md's commands on a fresh RPM install, then
   start HAProxy: the time from `systemctl start haproxy.service` to a verified certificate
   for SYSTEM_URL;
2. a renewal is hot-loaded: HAProxy's container and PID stay the same;
3. `systemctl restart cert-sidecar` and a step-ca restart are both survived;
4. a hung sidecar (its process stopped) is restarted by systemd's watchdog;
5. `openchami-certificate-update update NEW` plus a restart re-issues for the new name;
6. uninstall gives the acme.sh path back exactly as it was;
7. installing over that running acme.sh install migrates it with one HAProxy restart.

Times are measured and printed (bench/RESULTS.md keeps them); no check depends on the
machine's speed: deadlines only bound a hang.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from tests.compose.readme import readme_block
from tests.quadlet.conftest import LOG_DIR
from tests.quadlet.host import FQDN, SRC, Host, Served, wait_for

# Files the RPM owns and cert-sidecar's install touches; compared before install and after
# uninstall.
SNAPSHOT = (
    "for d in /etc/containers/systemd /usr/share/containers/systemd /etc/systemd/system"
    " /etc/openchami/configs; do [ -d $d ] && find $d -mindepth 1 -printf '%p %y %m %l\\n'; done"
    " | grep -v '90-quadlet-test.conf' | sort;"
    " find /etc/containers/systemd /usr/share/containers/systemd /etc/openchami/configs -type f"
    " ! -name '90-quadlet-test.conf' -exec sha256sum {} + 2>/dev/null | sort"
)
NEW_FQDN = "new.openchami.cluster"
RENEWAL_DEADLINE = 300  # 60 s certificates renew within about 40 s; this only bounds a hang

facts: dict[str, object] = {}


def run_readme(host: Host, block: str, *, check: bool = True) -> str:
    """A marked block of the documentation, as written, from the checkout's root inside the host."""
    script = readme_block(block)
    result = host.sh(f"cd {SRC} && set -e\n{script}", check=check, timeout=900)
    return result.stdout + result.stderr


def served(host: Host, name: str = FQDN) -> Served | None:
    return host.served(name)


def new_serial(host: Host, old: str, name: str = FQDN) -> Served | None:
    now = host.served(name)
    return now if now is not None and now.serial != old else None


def record(line: str) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / "timings.txt").open("a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")
    print(line)


class TestReleaseRpm:
    def test_1_install_on_a_fresh_rpm_then_haproxy_serves_a_verified_certificate(
        self, host: Host
    ) -> None:
        facts["snapshot"] = host.sh(SNAPSHOT).stdout
        # --dry-run names every file it would write and changes nothing.
        dry = run_readme(host, "quadlet-dry-run")
        for path in (
            "/etc/containers/systemd/cert-sidecar.container",
            "/etc/containers/systemd/cert-sidecar-prepare.container",
            "/etc/containers/systemd/cert-sidecar-state.volume",
            "/etc/containers/systemd/cert-sidecar-run.volume",
            "/etc/containers/systemd/haproxy.container.d/50-cert-sidecar.conf",
            "/etc/containers/systemd/acme-deploy.container.d/50-cert-sidecar.conf",
            "/etc/openchami/configs/haproxy.cfg",
            "/etc/containers/systemd/acme-register.container.d/50-cert-sidecar.conf",
            "/etc/systemd/system/openchami-cert-renewal.timer.d/50-cert-sidecar.conf",
        ):
            assert path in dry, f"--dry-run does not name {path}:\n{dry}"
        assert host.sh(SNAPSHOT).stdout == facts["snapshot"], "--dry-run changed files"

        out = run_readme(host, "quadlet-install")
        assert "installed" in out
        again = run_readme(host, "quadlet-install")
        assert "write:" not in again and "restart" not in again.replace("restarts", ""), (
            f"a second install changed something:\n{again}"
        )
        cfg = host.sh("cat /etc/openchami/configs/haproxy.cfg").stdout
        assert cfg.count("/var/lib/haproxy-run/admin.sock") == 1
        assert (
            host.sh(
                "test -f /etc/openchami/configs/haproxy.cfg.before-cert-sidecar", check=False
            ).returncode
            == 0
        )

        # HAProxy's backends first: it refuses to start while a server name does not resolve,
        # and the RPM's haproxy.container orders itself after opaal without pulling it in.
        host.sh(
            "systemctl start opaal.service smd.service bss.service cloud-init-server.service",
            timeout=600,
        )
        start = time.monotonic()
        host.sh("systemctl start haproxy.service", timeout=600)
        wait_for(
            "HAProxy to serve a verified certificate",
            lambda: _served_fresh(host),
            deadline_s=300,
            interval_s=0.2,
        )
        elapsed = time.monotonic() - start
        record(
            "quadlet first certificate: systemctl start haproxy.service -> verified on :8443"
            f" in {elapsed:.1f} s"
        )
        facts["first"] = elapsed

        # HAProxy started only once cert-sidecar had said READY=1 (Type=notify).
        sidecar = host.show("cert-sidecar.service", "ActiveEnterTimestampMonotonic", "Type")
        haproxy = host.show("haproxy.service", "InactiveExitTimestampMonotonic")
        assert sidecar["Type"] == "notify"
        assert int(sidecar["ActiveEnterTimestampMonotonic"]) > 0
        assert int(haproxy["InactiveExitTimestampMonotonic"]) >= int(
            sidecar["ActiveEnterTimestampMonotonic"]
        ), "HAProxy started before cert-sidecar was ready"
        # The PEM as HAProxy's group reads it, owned by cert-sidecar's user.
        assert host.volume_file("haproxy-certs", f"{FQDN}.pem") == "640 10001:65532"
        assert host.volume_file("haproxy-certs", ".") == "2750 10001:65532"
        # `systemctl status` shows what is served; the journal reads as text, not JSON.
        wait_for(
            "systemctl status to name the certificate",
            lambda: (
                True
                if FQDN in host.show("cert-sidecar.service", "StatusText")["StatusText"]
                else None
            ),
            deadline_s=120,
        )
        check = run_readme(host, "quadlet-check")
        assert "active (running)" in check and FQDN in check, check
        journal = host.journal("cert-sidecar.service")
        lines = [line for line in journal.splitlines() if line.strip()]
        assert lines, "cert-sidecar logged nothing to the journal"
        assert not any(line.lstrip().startswith("{") for line in lines), "JSON lines in the journal"

    def test_2_a_renewal_is_hot_loaded_without_restarting_haproxy(self, host: Host) -> None:
        before = _served_fresh(host)
        assert before is not None
        container, pid = host.container_id("haproxy"), host.container_pid("haproxy")
        after = wait_for(
            "a renewed certificate",
            lambda: new_serial(host, before.serial),
            deadline_s=RENEWAL_DEADLINE,
        )
        assert (host.container_id("haproxy"), host.container_pid("haproxy")) == (container, pid)
        status = host.show("cert-sidecar.service", "StatusText")["StatusText"]
        assert after.serial.lstrip("0") in status.upper().replace(":", ""), status

    def test_3_restarts_of_cert_sidecar_and_step_ca_are_survived(self, host: Host) -> None:
        haproxy_pid = host.container_pid("haproxy")
        host.sh("systemctl restart cert-sidecar.service", timeout=300)
        assert host.active("cert-sidecar.service") and host.active("haproxy.service")
        assert host.container_pid("haproxy") == haproxy_pid, (
            "restarting cert-sidecar restarted HAProxy"
        )
        current = host.served()
        assert current is not None
        wait_for(
            "a renewal after restarting cert-sidecar",
            lambda: new_serial(host, current.serial),
            deadline_s=RENEWAL_DEADLINE,
        )

        sidecar_pid = host.container_pid("cert-sidecar")
        host.sh("systemctl restart step-ca.service", timeout=300)
        assert host.container_pid("cert-sidecar") == sidecar_pid, (
            "a step-ca restart restarted cert-sidecar"
        )
        current = host.served()
        assert current is not None
        wait_for(
            "a renewal after restarting step-ca",
            lambda: new_serial(host, current.serial),
            deadline_s=RENEWAL_DEADLINE,
        )
        assert host.container_pid("haproxy") == haproxy_pid

    def test_4_a_hung_sidecar_is_restarted_by_the_watchdog(self, host: Host) -> None:
        restarts = int(host.show("cert-sidecar.service", "NRestarts")["NRestarts"])
        pid = host.container_pid("cert-sidecar")
        since = host.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        # SIGSTOP: the process and its event loop stop, as a hang would; nothing else is told.
        host.sh(f"kill -STOP {pid}")
        wait_for(
            "systemd's watchdog to restart cert-sidecar",
            lambda: (
                True
                if int(host.show("cert-sidecar.service", "NRestarts")["NRestarts"]) > restarts
                else None
            ),
            deadline_s=180,
        )
        assert (
            "watchdog"
            in host.sh(
                f"journalctl --no-pager -u cert-sidecar.service --since {shlex.quote(since)}"
            ).stdout.lower()
        )
        wait_for(
            "cert-sidecar active again",
            lambda: True if host.active("cert-sidecar.service") else None,
            deadline_s=180,
        )
        current = host.served()
        assert current is not None
        wait_for(
            "a renewal after the watchdog restart",
            lambda: new_serial(host, current.serial),
            deadline_s=RENEWAL_DEADLINE,
        )

    def test_5_an_fqdn_change_re_issues_for_the_new_name(self, host: Host) -> None:
        haproxy_pid = host.container_pid("haproxy")
        host.sh("cp -p /etc/openchami/configs/openchami.env /run/quadlet-test/openchami.env")
        host.sh(
            f"openchami-certificate-update update {NEW_FQDN}"
            " && systemctl restart cert-sidecar.service"
        )
        got = wait_for(
            f"a verified certificate for {NEW_FQDN}",
            lambda: host.served(NEW_FQDN),
            deadline_s=RENEWAL_DEADLINE,
        )
        assert got.serial
        assert host.container_pid("haproxy") == haproxy_pid
        # And back, so the acme.sh path below issues for the host's own name again. The script
        # rewrites more lines than it read (URLs lose their trailing slash): the file is put back
        # as it was, so that the uninstall below is compared with the state before the install.
        host.sh(f"openchami-certificate-update update {FQDN}")
        host.sh(
            "cp /run/quadlet-test/openchami.env /etc/openchami/configs/openchami.env"
            " && systemctl restart cert-sidecar.service"
        )
        wait_for(
            f"a certificate for {FQDN} again",
            lambda: _served_fresh(host),
            deadline_s=RENEWAL_DEADLINE,
        )

    def test_6_uninstall_gives_the_acme_sh_path_back_as_it_was(self, host: Host) -> None:
        run_readme(host, "quadlet-uninstall")
        after = host.sh(SNAPSHOT).stdout
        assert after == facts["snapshot"], _diff(str(facts["snapshot"]), after)
        assert not host.active("cert-sidecar.service")
        assert host.active("acme-deploy.service") and host.active("haproxy.service")
        # acme.sh's certificate, in acme.sh's file: root's, 0600.
        wait_for("HAProxy to serve acme.sh's certificate", host.served, deadline_s=300)
        assert host.volume_file("haproxy-certs", f"{FQDN}.pem") == "600 0:0"
        assert (
            "/var/lib/haproxy-run"
            not in host.sh("podman inspect --format '{{.Mounts}}' haproxy").stdout
        )

    def test_7_install_over_a_running_acme_sh_install_restarts_haproxy_once(
        self, host: Host
    ) -> None:
        # A fresh certificate from acme.sh, the RPM's way (its daily renewal unit, run by hand).
        host.sh("systemctl start openchami-cert-renewal.service", timeout=600)
        acme = wait_for("acme.sh's renewed certificate", host.served, deadline_s=120)
        host.sh(
            "rm -f /run/quadlet-test/poll.log; nohup python3 -c "
            + shlex.quote(_POLLER)
            + f" {FQDN} > /run/quadlet-test/poll.log 2>&1 & echo $! > /run/quadlet-test/poll.pid"
        )
        time.sleep(2)
        since = host.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        run_readme(host, "quadlet-install")
        time.sleep(3)
        host.sh("kill $(cat /run/quadlet-test/poll.pid)")
        starts = host.sh(
            f"journalctl --no-pager -o cat -u haproxy.service --since {shlex.quote(since)}"
            " | grep -c '^Started' || true"
        ).stdout.strip()
        assert starts == "1", f"HAProxy was started {starts} times by the migration"
        outage = _longest_outage(host.sh("cat /run/quadlet-test/poll.log").stdout)
        record(
            "quadlet migration from acme.sh: longest interruption on :8443"
            f" {outage:.1f} s (one HAProxy restart)"
        )
        assert host.volume_file("haproxy-certs", f"{FQDN}.pem") == "640 10001:65532"
        # cert-sidecar took acme.sh's still-valid certificate over, then renews it itself.
        wait_for(
            "cert-sidecar's own certificate",
            lambda: new_serial(host, acme.serial),
            deadline_s=RENEWAL_DEADLINE,
        )


def _served_fresh(host: Host) -> Served | None:
    got = host.served()
    if got is None:
        host.step_root()  # step-ca may have just published it
    return got


# Inside the host: one line per probe of :8443, "<monotonic seconds> ok|fail".
_POLLER = r"""
import socket, ssl, sys, time
context = ssl.create_default_context(cafile="/run/quadlet-test/root_ca.crt")
while True:
    try:
        with socket.create_connection(("127.0.0.1", 8443), timeout=1) as raw:
            with context.wrap_socket(raw, server_hostname=sys.argv[1]):
                state = "ok"
    except Exception:
        state = "fail"
    print(f"{time.monotonic():.2f} {state}", flush=True)
    time.sleep(0.1)
"""


def _longest_outage(log: str) -> float:
    longest, began = 0.0, None
    for line in log.splitlines():
        match = re.fullmatch(r"([\d.]+) (ok|fail)", line.strip())
        if not match:
            continue
        when, state = float(match[1]), match[2]
        if state == "fail" and began is None:
            began = when
        elif state == "ok" and began is not None:
            longest, began = max(longest, when - began), None
    assert began is None, "HAProxy was not serving at the end of the migration"
    return longest


def _diff(before: str, after: str) -> str:
    old, new = set(before.splitlines()), set(after.splitlines())
    return "uninstall left the files different:\n" + "\n".join(
        [f"- {line}" for line in sorted(old - new)] + [f"+ {line}" for line in sorted(new - old)]
    )


_ = (Path, pytest)
