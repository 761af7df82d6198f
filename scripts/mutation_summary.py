"""Print a module's mutation results from mutmut's state in mutants/ (scripts/mutation.sh).

    .venv-mutation/bin/python scripts/mutation_summary.py sidecar.haproxy [...]

One line per module, "mutation: MODULE mutants=N killed=K survived=S ... score=P%", then the
names of the mutants that were not killed (show one with `.venv-mutation/bin/mutmut show NAME`).
The score counts timeouts as killed (a mutant that hangs the tests is caught) and leaves out
nothing: a mutant no fast test reaches ("no tests") counts against it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def summarize(module: str) -> None:
    meta = Path("mutants") / (module.replace(".", "/") + ".py.meta")
    if not meta.exists():
        print(f"mutation: {module}: no results in {meta}")
        return
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    statuses = {name: status_by_exit_code[code] for name, code in exit_codes.items()}
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


if __name__ == "__main__":
    for module in sys.argv[1:]:
        summarize(module)
