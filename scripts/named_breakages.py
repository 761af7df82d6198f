#!/usr/bin/env python3
"""Break the product on purpose, one named way at a time, and show which tests catch it.

Issue 9 named deliberate breakages that the suite let through. Each is kept here as data: the
file, the text to replace and its replacement (a patch that must apply exactly once, so a
refactor that moves the code makes this script say so instead of testing nothing), and the
tests expected to catch it. For each breakage the script patches a copy of the working tree
in /tmp, runs those tests there, and restores the file; the table says which tests failed.

A tool for people, not part of CI: the integration tests among them need root and the real
peers (step-ca, HAProxy), as the suite does. Run it from the repository root:

    .venv/bin/python scripts/named_breakages.py            # every breakage
    .venv/bin/python scripts/named_breakages.py 3 7        # only these numbers
    .venv/bin/python scripts/named_breakages.py --list     # what would be applied

Results: "caught" (pytest failed, naming the tests), "MISSED" (every test passed with the
breakage in place), "error" (pytest could not run them: collection error, timeout), and
"no patch" (the search text is not in the file exactly once). Before any breakage, the same
tests run unpatched and must pass; otherwise nothing would mean anything and the script stops.
Exit status: 0 when every breakage was caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 1200.0  # seconds per pytest run; the integration tests here take well under a minute
# Left out of the copy: git metadata, environments and caches. `.cache` (the step-ca build)
# is linked, not copied.
IGNORED = (".git", ".venv", ".cache", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")


@dataclass(frozen=True)
class Breakage:
    number: int
    name: str
    file: str
    patches: tuple[tuple[str, str], ...]  # (search text, replacement), each found exactly once
    tests: tuple[str, ...]


STORAGE_ATOMIC = "tests/unit/test_storage_atomic.py"
MANAGER_SCHEDULE = "tests/protocol/test_manager_schedule.py"
SERVICE_SCHEDULE = "tests/protocol/test_service_schedule.py"
RUN_RECOVERY = "tests/integration/test_run_recovery.py"
PROTOCOL = "tests/protocol/test_ca_client_protocol.py"
ANSWER = " " * 8 + "answer = await respond_to_challenge(session, challenge, deadline=deadline)\n"

BREAKAGES: tuple[Breakage, ...] = (
    Breakage(
        1,
        "atomic write without the fsync of the temporary",
        "sidecar/storage.py",
        (
            (
                "            os.fsync(fd)\n        finally:\n            os.close(fd)\n",
                "            pass  # BREAKAGE\n        finally:\n            os.close(fd)\n",
            ),
        ),
        (
            f"{STORAGE_ATOMIC}::test_fsync_of_the_temporary_then_rename_then_fsync_of_the_directory",
            f"{STORAGE_ATOMIC}::test_every_state_file_goes_through_the_same_durable_write",
        ),
    ),
    Breakage(
        2,
        "atomic write without the fsync of the directory",
        "sidecar/storage.py",
        (
            (
                "    try:\n        _fsync_directory(path.parent)\n",
                "    try:\n        pass  # BREAKAGE\n",
            ),
        ),
        (
            f"{STORAGE_ATOMIC}::test_fsync_of_the_temporary_then_rename_then_fsync_of_the_directory",
            f"{STORAGE_ATOMIC}::test_every_state_file_goes_through_the_same_durable_write",
        ),
    ),
    Breakage(
        3,
        "the manager writes the PEM in place (truncate, right mode, no rename)",
        "sidecar/manager.py",
        (
            (
                "        storage.atomic_write(\n"
                "            self.pem_path(name), data, mode=self.files.mode, "
                "group=self.files.group\n"
                "        )\n",
                "        with open(self.pem_path(name), 'wb') as file:  # BREAKAGE\n"
                "            file.write(data)\n"
                "        os.chmod(self.pem_path(name), self.files.mode)\n",
            ),
        ),
        (f"{MANAGER_SCHEDULE}::test_a_renewal_replaces_the_pem_by_rename_never_in_place",),
    ),
    Breakage(
        4,
        "`run` does not clean leftover dot-files at start",
        "sidecar/service.py",
        (
            (
                "            clean_stale_temp_files(self.settings.files.certs_dir)\n",
                "            pass  # BREAKAGE\n",
            ),
        ),
        (f"{RUN_RECOVERY}::test_run_removes_leftover_temporaries_when_it_starts",),
    ),
    Breakage(
        5,
        "the hot update accepts whatever serial `show ssl cert` reports",
        "sidecar/deploy.py",
        (
            (
                'if update.serial == expected and update.status == "Used":',
                'if update.status == "Used":  # BREAKAGE',
            ),
        ),
        (
            "tests/unit/test_deploy_served_serial.py"
            "::test_an_update_still_reporting_the_old_serial_is_a_failure",
        ),
    ),
    Breakage(
        6,
        "the manager ignores --renew-at",
        "sidecar/inventory.py",
        (
            (
                "            renew_at=self.renew_at,\n",
                "            renew_at=policy.DEFAULT_RENEW_AT,  # BREAKAGE\n",
            ),
            (
                "policy.facts_renewal_time(facts, self.renew_at, window)",
                "policy.facts_renewal_time(facts, policy.DEFAULT_RENEW_AT, window)  # BREAKAGE",
            ),
        ),
        (f"{MANAGER_SCHEDULE}::test_renew_at_decides_when_a_valid_certificate_is_renewed",),
    ),
    Breakage(
        7,
        "the 1/100-of-lifetime check cadence dropped",
        "sidecar/service.py",
        (
            (
                "            when = min(when, now + policy.check_interval(lifetime))\n",
                "            pass  # BREAKAGE\n",
            ),
        ),
        (
            f"{SERVICE_SCHEDULE}::test_run_looks_at_a_certificate_every_hundredth_of_its_lifetime",
            f"{RUN_RECOVERY}::test_an_haproxy_restarted_after_serving_gets_the_certificate_back",
        ),
    ),
    Breakage(
        8,
        "the stored backoff (next_retry_at) ignored",
        "sidecar/manager.py",
        (
            (
                "and retry_at and now < retry_at:\n",
                "and retry_at and False:  # BREAKAGE\n",
            ),
        ),
        (f"{MANAGER_SCHEDULE}::test_the_stored_backoff_is_waited_out_even_across_a_restart",),
    ),
    Breakage(
        9,
        "permanent ACME errors retried like transient ones",
        "sidecar/manager.py",
        (
            (
                "            permanent=policy.is_permanent_problem("
                "ca.problem_type if ca else None),\n",
                "            permanent=False,  # BREAKAGE\n",
            ),
        ),
        (f"{MANAGER_SCHEDULE}::test_a_permanent_error_waits_the_longest_allowed",),
    ),
    Breakage(
        10,
        "the per-attempt limit (a quarter of the time left) not applied",
        "sidecar/manager.py",
        (
            (
                "            timeout=order_timeout(view, self.now()),\n",
                "            timeout=ORDER_TIMEOUT,  # BREAKAGE\n",
            ),
        ),
        (f"{MANAGER_SCHEDULE}::test_one_attempt_may_use_only_a_quarter_of_the_time_left",),
    ),
    Breakage(
        11,
        "`revoke` never contacts the CA",
        "sidecar/issuer.py",
        (
            (
                "            await client.revoke(leaf_der, reason=reason)\n",
                "            pass  # BREAKAGE\n",
            ),
        ),
        (
            f"{MANAGER_SCHEDULE}::test_revoke_revokes_the_old_serial_at_the_ca_then_replaces_it",
            f"{MANAGER_SCHEDULE}::test_revoke_remove_revokes_at_the_ca_then_deletes",
            "tests/integration/test_revoke_stepca.py::test_revoke_revokes_the_old_serial_at_the_ca",
        ),
    ),
    # What the kind fake CA let through: these tests do not look at the solver's calls, only
    # the fake CA's validation can see the proof missing or withdrawn.
    Breakage(
        12,
        "the client answers a challenge without presenting the proof",
        "ca_client/_authorization.py",
        (
            (
                "    await solver.present(identifier, token, key_auth)\n",
                "    pass  # BREAKAGE\n",
            ),
        ),
        (
            f"{PROTOCOL}::test_bad_nonce_is_retried_transparently",
            f"{PROTOCOL}::test_step_ca_style_flow_takes_the_fewest_requests",
            "tests/protocol/test_manager_ari.py",
        ),
    ),
    Breakage(
        13,
        "the client cleans up right after answering, before the CA validated",
        "ca_client/_authorization.py",
        (
            (
                ANSWER,
                ANSWER + " " * 8 + "await solver.cleanup(identifier, token, key_auth)  # BROKEN\n",
            ),
        ),
        (
            f"{PROTOCOL}::test_poll_retry_after_is_honoured",
            f"{PROTOCOL}::test_bad_nonce_is_retried_transparently",
        ),
    ),
)


@dataclass(frozen=True)
class RunResult:
    code: int
    failed: tuple[str, ...]
    tail: str


def copy_tree(destination: Path) -> Path:
    """The working tree (uncommitted changes included) without caches; `.cache` linked."""
    tree = destination / REPO.name
    shutil.copytree(REPO, tree, symlinks=True, ignore=shutil.ignore_patterns(*IGNORED))
    cache = REPO / ".cache"
    if cache.exists():
        (tree / ".cache").symlink_to(cache.resolve(), target_is_directory=True)
    return tree


def run_tests(tree: Path, tests: tuple[str, ...]) -> RunResult:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    try:
        completed = subprocess.run(
            command,
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return RunResult(-1, (), f"timed out after {TIMEOUT:g} s")
    output = completed.stdout + completed.stderr
    failed = []
    for line in output.splitlines():
        if line.startswith("FAILED "):
            node = line.removeprefix("FAILED ").split(" - ", 1)[0].strip()
            failed.append(node)
    return RunResult(completed.returncode, tuple(failed), "\n".join(output.splitlines()[-15:]))


def short(node: str) -> str:
    """``path::test[param]`` as ``file::test``, for the table."""
    path, _, test = node.partition("::")
    return f"{Path(path).name}::{test.split('[', 1)[0]}" if test else Path(path).name


def apply(tree: Path, breakage: Breakage) -> str | None:
    """Patch the copy; the original text, or None when a search text is not there once."""
    path = tree / breakage.file
    original = path.read_text()
    text = original
    for search, replacement in breakage.patches:
        if text.count(search) != 1:
            return None
        text = text.replace(search, replacement)
    path.write_text(text)
    return original


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("numbers", nargs="*", type=int, help="only these breakages")
    parser.add_argument("--list", action="store_true", help="list the breakages and exit")
    args = parser.parse_args(argv)
    chosen = [b for b in BREAKAGES if not args.numbers or b.number in args.numbers]
    if args.list:
        for breakage in chosen:
            print(f"{breakage.number:>2}. {breakage.name} ({breakage.file})")
            for test in breakage.tests:
                print(f"      {test}")
        return 0

    rows: list[tuple[int, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="named-breakages-") as scratch:
        tree = copy_tree(Path(scratch))
        everything = tuple(dict.fromkeys(t for b in chosen for t in b.tests))
        print(f"baseline: {len(everything)} test selections, unpatched ...", flush=True)
        baseline = run_tests(tree, everything)
        if baseline.code != 0:
            print("the tests fail without any breakage; fix that first:\n" + baseline.tail)
            return 2
        for breakage in chosen:
            print(f"{breakage.number}. {breakage.name} ...", flush=True)
            original = apply(tree, breakage)
            if original is None:
                rows.append((breakage.number, breakage.name, "-", "no patch"))
                continue
            try:
                result = run_tests(tree, breakage.tests)
            finally:
                (tree / breakage.file).write_text(original)
            caught_by = ", ".join(dict.fromkeys(short(node) for node in result.failed)) or "-"
            if result.code == 1 and result.failed:
                verdict = "caught"
            elif result.code == 0:
                verdict = "MISSED"
            else:
                verdict = f"error (pytest exit {result.code})"
                print(result.tail)
            rows.append((breakage.number, breakage.name, caught_by, verdict))

    print()
    print("| # | breakage | caught by | result |")
    print("|---|---|---|---|")
    for number, name, caught_by, verdict in rows:
        print(f"| {number} | {name} | {caught_by} | {verdict} |")
    return 0 if all(verdict == "caught" for *_, verdict in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
