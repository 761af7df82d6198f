#!/usr/bin/env bash
# Install cert-sidecar with every runtime dependency at its declared floor
# (constraints/floors.txt) in a throwaway virtualenv, then run the fast tests (tests/unit and
# tests/protocol). A floor that cannot work fails here instead of on a user's machine.
#
#   bash scripts/check-floors.sh [pytest args...]
#
# Also fails when a pin in constraints/floors.txt and the ">=" in pyproject.toml disagree, so
# the two cannot drift apart. The venv lives in a temporary directory removed on exit.
#
# Time on the shared 2-core machine, measured under load (load average ~13): 4 min 54 s (pip
# about 2.5 min, 863 tests 150 s). On a quieter machine the same tests took 56 s and the install
# about a minute, so expect about 2 min. Needs the package index (PyPI) for the old pins.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

python3 - <<'PY'
import re, sys, tomllib
declared = {}
for spec in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    match = re.match(r"([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", spec)
    if not match:
        sys.exit(f"check-floors: {spec!r} in pyproject.toml has no '>=' floor")
    declared[match.group(1).lower()] = match.group(2)
pinned = {}
for line in open("constraints/floors.txt"):
    line = line.split("#", 1)[0].strip()
    if line:
        name, _, version = line.partition("==")
        pinned[name.strip().lower()] = version.strip()
if declared != pinned:
    sys.exit(f"check-floors: pyproject.toml floors {declared} != constraints/floors.txt {pinned}")
PY

venv="$(mktemp -d /tmp/cert-sidecar-floors.XXXXXX)"
trap 'rm -rf "${venv}"' EXIT
# mktemp -d makes it 0700: tests/unit/test_preflight.py runs cert-sidecar from this venv as an
# unprivileged user, who must be able to read the installed packages.
chmod 0755 "${venv}"
python3 -m venv "${venv}"
# pip.conf's local indexes may be absent; their "is ignored" warnings are noise here.
"${venv}/bin/pip" install -q --disable-pip-version-check -c constraints/floors.txt -e '.[test]' \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
echo "check-floors: installed"
"${venv}/bin/pip" list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(cryptography|httpx|h11|watchfiles|apscheduler|structlog) '
cd "${repo_root}"
"${venv}/bin/python" -m pytest -q -p no:cacheprovider tests/unit tests/protocol "$@"
