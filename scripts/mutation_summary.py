"""Print a module's mutation results from mutmut's state in mutants/ (scripts/mutation.sh).

    .venv-mutation/bin/python scripts/mutation_summary.py sidecar.haproxy [...]
    .venv-mutation/bin/python scripts/mutation_summary.py --left [--survived] sidecar.haproxy

One line per module, "mutation: MODULE mutants=N killed=K survived=S ... score=P%", then the
names of the mutants that were not killed (show one with `.venv-mutation/bin/mutmut show NAME`).
``--left``: only the names of the module's mutants not run yet (or stopped midway), one per
line (what ``MUTATION_RESUME`` in scripts/mutation.sh hands to mutmut); with ``--survived``,
the survivors and those no test reached too, to run them again after adding tests. Nothing
when no results exist yet (the script then runs the whole module).
The score counts timeouts as killed (a mutant that hangs the tests is caught) and leaves out
nothing: a mutant no fast test reaches ("no tests") counts against it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def _meta(module: str) -> Path:
    return Path("mutants") / (module.replace(".", "/") + ".py.meta")


def _statuses(module: str) -> dict[str, str] | None:
    """Each mutant's status, by name; None when mutmut has no results for the module yet."""
    meta = _meta(module)
    if not meta.exists():
        return None
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in exit_codes.items()}


def summarize(module: str) -> None:
    statuses = _statuses(module)
    if statuses is None:
        print(f"mutation: {module}: no results in {_meta(module)}")
        return
    counts = Counter(statuses.values())
    total = len(statuses)
    caught = counts["killed"] + counts["timeout"]
    score = 100.0 * caught / total if total else 0.0
    others = ", ".join(
        f"{status.replace(' ', '_')}={count}"
        for status, count in sorted(counts.items())
        if status not in ("killed", "survived")
    )
    print(
        f"mutation: {module} mutants={total} killed={counts['killed']} "
        f"survived={counts['survived']}{' ' + others if others else ''} score={score:.1f}%"
    )
    for name, status in sorted(statuses.items()):
        if status not in ("killed", "timeout"):
            print(f"  {status}: {name}")


def left(module: str, *, survived: bool) -> None:
    # Not run, or stopped midway (interrupted, killed: "segfault", "suspicious").
    decided = {"killed", "timeout", "survived", "no tests", "skipped", "caught by type check"}
    if survived:
        decided -= {"survived", "no tests"}
    for name, status in sorted((_statuses(module) or {}).items()):
        if status not in decided:
            print(name)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments and arguments[0] == "--left":
        survived = len(arguments) > 1 and arguments[1] == "--survived"
        for module in arguments[2 if survived else 1 :]:
            left(module, survived=survived)
    else:
        for module in arguments:
            summarize(module)
