"""The compose stack, for real: compose.yaml under podman + docker-compose 1.29 on local stand-in
images (issue 4 section 3; the same images on a real Docker Engine: test_docker.py). The tests
run in file order against one stack:

1. infrastructure: every shared volume has the owner and mode its writer needs, step-ca
   serves ACME with its root in the step-root-ca volume, the
   certificate names resolve to cert-sidecar on the acme network, HAProxy runs and its runtime
   socket is usable by cert-sidecar's user;
2. end to end: every name is served through HAProxy's published port with a certificate that
   verifies against that root; `renew --force` inside the container changes the served serials
   without restarts; 60-second certificates renew on their own; restarting cert-sidecar or
   step-ca loses nothing and re-issues nothing; `down -v` leaves nothing behind.

Needs root, podman, docker-compose, debootstrap (scripts/install-deps.sh) and the step-ca
binary (scripts/build-step-ca.sh, run on demand); under CI=true a missing one fails the tests.
First run about 2 minutes of image builds,
then cached; the checks take a few minutes because they watch real 60-second certificates.
Run: .venv/bin/python -m pytest -m compose tests/compose -s
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from tests.compose.stack import (
    REPO_ROOT,
    VOLUME_RULES,
    ComposeStack,
    Served,
    free_port,
    require,
    wait_for,
)

pytestmark = pytest.mark.compose

# tests/compose/compose.test.yaml: two certificates, the second with two names.
CERTIFICATES = {
    "demo.openchami.cluster": ("demo.openchami.cluster",),
    "api.openchami.cluster": ("api.openchami.cluster", "auth.openchami.cluster"),
}
NAMES = tuple(name for names in CERTIFICATES.values() for name in names)
LIFETIME = "60s"
LIFETIME_DELTA = timedelta(seconds=60)
STEP_CA_BACKDATE = timedelta(minutes=1)  # step-ca's default `backdate`
RENEW_AT = 0.66  # cert-sidecar's default renew_at (CONTRACT.md)
URGENT_FRACTION = 1 / 20  # the most the renewal jitter moves a renewal earlier (policy.py)
CLOCK_TOLERANCE = timedelta(seconds=1)  # certificate times have whole seconds
PROJECT = "cert-sidecar-test"

# Deadlines bound hangs only. Issuance and renewal of a 60-second certificate: renewal is due
# after 2/3 of its (backdated, 2-minute) validity, so 4 minutes covers any jitter.
FIRST_CERT_DEADLINE = 240.0
RENEWAL_DEADLINE = 240.0


@pytest.fixture(scope="module")
def stack(stand_in_images: dict[str, str]) -> Iterator[ComposeStack]:
    env = {
        "COMPOSE_FILES": "compose.yaml:tests/compose/compose.test.yaml",
        "STEP_CA_CERT_LIFETIME": LIFETIME,
    }
    https_port = free_port()
    env["HAPROXY_HTTPS_PORT"] = f"127.0.0.1:{https_port}"
    env["HAPROXY_HTTP_PORT"] = f"127.0.0.1:{free_port()}"
    stack = ComposeStack(PROJECT, env, https_port, engine="podman")

    # A previous run that died half-way must not leave its volumes to this one.
    stack.force_down()
    try:
        # stack.sh runs the healthcheck loop after `up` and stops it (and the podman API
        # service, once no container is left) after `down`.
        stack.up_started = time.monotonic()
        stack.compose("up", "-d")
        yield stack
    finally:
        # Always: a failed assertion is as much worth reading about as a leftover container.
        save_logs(stack)
        stack.force_down()


# -- helpers ----------------------------------------------------------------------------------


def save_logs(stack: ComposeStack) -> None:
    """Keep the stack's logs for a person to read after the run (the stack itself is gone)."""
    logs = stack.compose("logs", "--no-color", "--timestamps", check=False)
    log_file = REPO_ROOT / ".cache" / "compose" / "last-test-stack.log"
    log_file.write_text(logs.stdout + logs.stderr)
    print(f"\ncompose logs of the test stack: {log_file}")


def served_all(stack: ComposeStack) -> dict[str, Served]:
    root = stack.root_pem()
    return {name: stack.served(name, root) for name in NAMES}


def serials(stack: ComposeStack) -> dict[str, int]:
    return {name: served.serial for name, served in served_all(stack).items()}


def restart_counts(stack: ComposeStack) -> dict[str, tuple[object, object]]:
    """(StartedAt, RestartCount) per service: any container restart changes it."""
    result = {}
    for service in ("step-ca", "cert-sidecar", "haproxy"):
        state = stack.state(service)
        result[service] = (state.get("StartedAt"), state.get("RestartCount"))
    return result


def _hex(serials: dict[str, int]) -> dict[str, str]:
    return {name: f"{serial:x}"[:8] for name, serial in serials.items()}


def wait_healthy(stack: ComposeStack, service: str, deadline_s: float = 120.0) -> None:
    wait_for(
        f"{service} to be healthy",
        lambda: True if stack.health(service) == "healthy" else None,
        deadline_s=deadline_s,
    )


def account_files(stack: ComposeStack) -> dict[str, str]:
    """The ACME account(s) in cert-sidecar's state volume, by relative path."""
    state = stack.volume_path("state")
    return {
        str(path.relative_to(state)): path.read_text()
        for path in sorted(state.glob("account/**/account.json"))
    }


def finalizations_since(stack: ComposeStack, since: datetime) -> int:
    """Orders finalized by step-ca since `since` (one per certificate issued), from its log."""
    logs = stack.podman("logs", "--since", since.isoformat(), stack.container("step-ca"))
    return sum(
        1
        for line in (logs.stdout + logs.stderr).splitlines()
        if "/finalize" in line and "status=200" in line
    )


@dataclass
class Watch:
    """What a period of polling saw: every served certificate per name, in order, and how many
    checks failed (handshake, verification or HTTP error)."""

    polls: int = 0
    failures: int = 0
    history: dict[str, list[x509.Certificate]] = field(
        default_factory=lambda: {name: [] for name in NAMES}
    )

    def new_serials(self, name: str, since: int) -> set[int]:
        return {cert.serial_number for cert in self.history[name]} - {since}


def watch_serving(
    stack: ComposeStack,
    until: float,
    *,
    renewals: int = 0,
    changed_from: dict[str, int] | None = None,
    watch: Watch | None = None,
) -> Watch:
    """Poll every name once a second until the monotonic time `until`, or earlier once every
    name has served `renewals` serials other than its `changed_from` entry."""
    watch = watch or Watch()
    root = stack.root_pem()
    while time.monotonic() < until:
        for name in NAMES:
            watch.polls += 1
            try:
                served = stack.served(name, root)
            except OSError as error:  # ssl.SSLError is an OSError
                watch.failures += 1
                if watch.failures <= 5:
                    print(f"serving check failed for {name}: {error!r}")
                continue
            if not served.status_line.endswith("200 OK"):
                watch.failures += 1
                if watch.failures <= 5:
                    print(f"bad response for {name}: {served.status_line}")
            seen = watch.history[name]
            if not seen or seen[-1].serial_number != served.serial:
                seen.append(served.certificate)
        if changed_from is not None and all(
            len(watch.new_serials(name, changed_from[name])) >= renewals for name in NAMES
        ):
            break
        time.sleep(1.0)
    return watch


def issued_at(cert: x509.Certificate) -> datetime:
    """When step-ca issued `cert`: it backdates notBefore, but notAfter is issuance plus the
    provisioner's default lifetime."""
    return cert.not_valid_after_utc - LIFETIME_DELTA


def early_reissues(history: dict[str, list[x509.Certificate]]) -> list[str]:
    """Consecutive certificates of a name issued before the first was due: renewal is due at
    renew_at of the lifetime, which the jitter moves earlier by at most 1/20 of it. Anything
    sooner is a re-issue that nothing asked for (a restart re-ordering, a retry storm)."""
    found = []
    for name, certs in history.items():
        for old, new in itertools.pairwise(certs):
            lifetime = old.not_valid_after_utc - old.not_valid_before_utc
            due = old.not_valid_before_utc + (RENEW_AT - URGENT_FRACTION) * lifetime
            if issued_at(new) < due - CLOCK_TOLERANCE:
                found.append(
                    f"{name}: serial {new.serial_number:x} issued at "
                    f"{issued_at(new):%H:%M:%S}, {old.serial_number:x} due {due:%H:%M:%S}"
                )
    return found


def most_issuances(window: timedelta) -> int:
    """The most orders that on-schedule renewals can finalize in `window`, all certificates
    together: successive issuances of one certificate are at least
    (renew_at - 1/20) x validity - (validity - lifetime) apart."""
    validity = LIFETIME_DELTA + STEP_CA_BACKDATE
    spacing = (RENEW_AT - URGENT_FRACTION) * validity - STEP_CA_BACKDATE - CLOCK_TOLERANCE
    return len(CERTIFICATES) * (1 + int(window / spacing))


# -- 1. infrastructure ------------------------------------------------------------------------


def test_shared_volumes_belong_to_their_writers(stack: ComposeStack) -> None:
    wait_for(
        "step-ca's root in the step-root-ca volume",
        lambda: True if (stack.volume_path("step-root-ca") / "root_ca.crt").exists() else None,
        deadline_s=120,
    )
    assert stack.volume_owners() == VOLUME_RULES


def test_step_ca_serves_acme_with_its_root_in_the_volume(stack: ComposeStack) -> None:
    wait_healthy(stack, "step-ca")
    step_ca = stack.container("step-ca")
    own_root = stack.podman("exec", step_ca, "cat", "/home/step/certs/root_ca.crt").stdout
    assert stack.root_pem().decode() == own_root

    config = json.loads(stack.podman("exec", step_ca, "cat", "/home/step/config/ca.json").stdout)
    acme = [p for p in config["authority"]["provisioners"] if p["name"] == "acme"]
    assert acme and acme[0]["type"] == "ACME"
    assert acme[0]["claims"]["defaultTLSCertDuration"] == LIFETIME

    # From the acme network, as cert-sidecar's image and user, trusting only the volume's root.
    probe = stack.podman(
        "run",
        "--rm",
        "--network",
        f"{PROJECT}_acme",
        "-v",
        f"{PROJECT}_step-root-ca:/root_ca:ro",
        "--entrypoint",
        "python3",
        stack.sidecar_image,
        "-c",
        "import json, ssl, urllib.request;"
        "ctx = ssl.create_default_context(cafile='/root_ca/root_ca.crt');"
        "url = 'https://step-ca:9000/acme/acme/directory';"
        "print(json.dumps(json.load(urllib.request.urlopen(url, context=ctx))))",
    )
    directory = json.loads(probe.stdout)
    assert directory["newOrder"] == "https://step-ca:9000/acme/acme/new-order"


def test_names_resolve_to_the_sidecar_on_the_acme_network(stack: ComposeStack) -> None:
    """step-ca validates http-01 at http://<name>/: every name must reach cert-sidecar."""
    sidecar = json.loads(stack.podman("inspect", stack.container("cert-sidecar")).stdout)[0]
    sidecar_ip = sidecar["NetworkSettings"]["Networks"][f"{PROJECT}_acme"]["IPAddress"]
    assert sidecar_ip
    step_ca = stack.container("step-ca")
    for name in NAMES:
        resolved = stack.podman("exec", step_ca, "getent", "hosts", name).stdout.split()
        assert resolved and resolved[0] == sidecar_ip, (name, resolved, sidecar_ip)


def test_haproxy_runs_and_its_socket_is_usable_by_the_sidecar_user(stack: ComposeStack) -> None:
    wait_for(
        "HAProxy running",
        lambda: True if stack.state("haproxy").get("Running") else None,
        deadline_s=60,
    )
    # Its compose healthcheck asks the running process (test_docker.py shows it can fail).
    wait_healthy(stack, "haproxy")
    probe = stack.podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{PROJECT}_haproxy-run:/var/lib/haproxy-run",
        "-v",
        f"{PROJECT}_haproxy-certs:/etc/haproxy/certs",
        "--entrypoint",
        "python3",
        stack.sidecar_image,
        "-c",
        "import os, socket;"
        "s = socket.socket(socket.AF_UNIX);"
        "s.connect('/var/lib/haproxy-run/admin.sock');"
        "s.sendall(b'show info\\n');"
        "print(s.recv(65536).decode().splitlines()[0]);"
        "probe = '/etc/haproxy/certs/.probe'; open(probe, 'w').close(); os.unlink(probe);"
        "print(os.getuid(), os.getgid())",
    )
    first_line, ids = probe.stdout.splitlines()[:2]
    assert first_line == "Name: HAProxy", probe.stdout
    assert ids == "10001 99"  # cert-sidecar's user, in HAProxy's group
    assert stack.state("haproxy").get("RestartCount") == 0


# -- 2. end to end ----------------------------------------------------------------------------


def test_first_valid_certificate_for_every_name(stack: ComposeStack) -> None:
    def all_valid() -> dict[str, Served] | None:
        served = served_all(stack)
        return served if all(s.status_line.endswith("200 OK") for s in served.values()) else None

    served = wait_for(
        "a valid certificate for every name", all_valid, deadline_s=FIRST_CERT_DEADLINE
    )
    elapsed = time.monotonic() - stack.up_started
    print(f"\ntime from `up` to the first valid certificate for every name: {elapsed:.1f} s")
    for name, result in served.items():
        assert f"cert-sidecar demo: {name}" in result.body
    # The two names of one certificate are served by the same certificate.
    assert served["api.openchami.cluster"].serial == served["auth.openchami.cluster"].serial
    assert served["demo.openchami.cluster"].serial != served["api.openchami.cluster"].serial
    stack.serving = True


@pytest.fixture
def serving(stack: ComposeStack) -> ComposeStack:
    """The stack, once it has served valid certificates: the later end-to-end checks build on
    that, and would only wait out their deadlines without it."""
    require(stack.serving, "no valid certificate was served (test_first_valid_certificate_...)")
    return stack


def test_renew_force_serves_new_serials_without_restarts(serving: ComposeStack) -> None:
    stack = serving
    before = serials(stack)
    containers = restart_counts(stack)
    stack.compose("exec", "-T", "cert-sidecar", "cert-sidecar", "renew", "--force", timeout=180)
    # renew hands the work to the running sidecar and returns once it is deployed.
    after = serials(stack)
    print(f"\nrenew --force: {_hex(before)} -> {_hex(after)}")
    assert all(after[name] != before[name] for name in NAMES), (before, after)
    assert restart_counts(stack) == containers


def test_short_lived_certificates_renew_on_their_own(serving: ComposeStack) -> None:
    stack = serving
    before = serials(stack)
    containers = restart_counts(stack)
    # Two renewals of each: the stack keeps renewing, not just once.
    watch = watch_serving(
        stack, time.monotonic() + RENEWAL_DEADLINE, renewals=2, changed_from=before
    )
    print(
        f"\nautomatic renewals seen: { {n: len(watch.new_serials(n, before[n])) for n in NAMES} }"
        f" in {watch.polls} checks, {watch.failures} failed"
    )
    assert all(len(watch.new_serials(name, before[name])) >= 2 for name in NAMES), watch.history
    assert watch.failures == 0, f"{watch.failures} of {watch.polls} checks failed"
    assert early_reissues(watch.history) == []
    assert restart_counts(stack) == containers


def test_sidecar_restart_loses_nothing_and_reissues_nothing(serving: ComposeStack) -> None:
    stack = serving
    accounts = account_files(stack)
    assert accounts, "no ACME account in the state volume"
    since = datetime.now(UTC)
    watch = watch_serving(stack, time.monotonic())  # records what is served now
    stack.compose("restart", "cert-sidecar", timeout=120)
    # HAProxy goes on serving valid certificates while the sidecar is away and coming back;
    # then watch a while: the restart alone must not order certificates again.
    watch_serving(stack, time.monotonic() + 5, watch=watch)
    wait_healthy(stack, "cert-sidecar")
    watch_serving(stack, time.monotonic() + 30, watch=watch)
    assert watch.failures == 0, f"{watch.failures} of {watch.polls} checks failed"
    assert early_reissues(watch.history) == []
    window = datetime.now(UTC) - since
    issued = finalizations_since(stack, since)
    print(
        f"\ncert-sidecar restart: {issued} orders finalized in {window.total_seconds():.0f} s"
        f" (on-schedule bound {most_issuances(window)}), {watch.failures} of {watch.polls}"
        " checks failed"
    )
    assert issued <= most_issuances(window)
    assert account_files(stack) == accounts
    # Renewal resumes after the restart: every name is renewed once more, with no failed
    # check. (Under podman the restarted container gets a new address, and step-ca's first
    # validations may still go to the old one; this also lets that settle before the next
    # test restarts step-ca.)
    after_restart = serials(stack)
    watch = watch_serving(
        stack,
        time.monotonic() + RENEWAL_DEADLINE,
        renewals=1,
        changed_from=after_restart,
        watch=watch,
    )
    assert all(watch.new_serials(name, after_restart[name]) for name in NAMES), watch.history
    assert watch.failures == 0, f"{watch.failures} of {watch.polls} checks failed"


def test_step_ca_restart_is_survived(serving: ComposeStack) -> None:
    stack = serving
    accounts = account_files(stack)
    assert accounts, "no ACME account in the state volume"
    root = stack.root_pem()
    since = datetime.now(UTC)
    watch = watch_serving(stack, time.monotonic())
    stack.compose("restart", "step-ca", timeout=120)
    wait_healthy(stack, "step-ca")
    assert stack.root_pem() == root, "the root changed across a step-ca restart"
    # The sidecar goes on renewing with the same account against the restarted CA (its
    # database is in the step-ca volume).
    after_restart = serials(stack)
    watch = watch_serving(
        stack,
        time.monotonic() + RENEWAL_DEADLINE,
        renewals=1,
        changed_from=after_restart,
        watch=watch,
    )
    assert all(watch.new_serials(name, after_restart[name]) for name in NAMES), watch.history
    assert watch.failures == 0, f"{watch.failures} of {watch.polls} checks failed"
    assert early_reissues(watch.history) == []
    window = datetime.now(UTC) - since
    issued = finalizations_since(stack, since)
    print(
        f"\nstep-ca restart: {issued} orders finalized in {window.total_seconds():.0f} s"
        f" (on-schedule bound {most_issuances(window)}), {watch.failures} of {watch.polls}"
        " checks failed"
    )
    # At least the renewals just seen: also proves the log count sees finalizations at all.
    assert len(CERTIFICATES) <= issued <= most_issuances(window)
    assert account_files(stack) == accounts


def test_down_v_cleans_up(stack: ComposeStack) -> None:
    save_logs(stack)
    stack.compose("down", "-v", timeout=180)
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}


def test_haproxy_config_loads_with_an_empty_certs_dir(stack: ComposeStack) -> None:
    """HAProxy must be able to start before any certificate exists (docker/haproxy/haproxy.cfg
    on the HAProxy stand-in, empty certs and socket directories)."""
    result = stack.podman(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{REPO_ROOT / 'docker/haproxy/haproxy.cfg'}:/usr/local/etc/haproxy/haproxy.cfg:ro",
        "--tmpfs",
        "/etc/haproxy/certs",
        "--tmpfs",
        "/var/lib/haproxy-run",
        stack.env["HAPROXY_TEST_IMAGE"],
        "haproxy",
        "-c",
        "-f",
        "/usr/local/etc/haproxy/haproxy.cfg",
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_compose_file_is_valid_for_docker_compose_1_29(compose_tools: None) -> None:
    """`config` parses and interpolates the file the way docker-compose 1.29 does."""
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO_ROOT / "compose.yaml"), "config", "--quiet"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COMPOSE_PROJECT_NAME": "cert-sidecar-config-check"},
    )
    assert result.returncode == 0, result.stderr
    text = (REPO_ROOT / "compose.yaml").read_text()
    assert not any(line.startswith("name:") for line in text.splitlines())
