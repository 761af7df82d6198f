#!/usr/bin/env bash
# Mutation testing of the modules that keep certificates safe, against the fast tiers
# (tests/unit and tests/protocol: no real peers). Results and survivors: docs/MUTATION.md.
#
#   bash scripts/mutation.sh [module ...]      # modules: storage policy manager inventory
#                                              # issuer outcome deploy haproxy renewal_loop
#                                              # deploy_result
#                                              # (default: all ten, one after the other)
#   MUTATION_CHILDREN=2 bash scripts/mutation.sh haproxy
#   MUTATION_RESUME=1 bash scripts/mutation.sh manager   # only what a stopped run left
#
# The tool is mutmut 3 (configured in [tool.mutmut] of pyproject.toml), installed into its own
# virtualenv .venv-mutation so it never changes the project's .venv. mutmut copies the sources
# into mutants/, runs the fast tiers once to learn which tests reach which function, then runs
# only those tests for each mutant, forked from a warm process.
#
# Each module is run on its own, so a long run gives partial results early. By default every
# mutant of each module named is run again: mutmut 3 re-runs all the mutants it is given by
# name or pattern, whatever results mutants/ holds. To go on where a stopped run left off
# (same source), MUTATION_RESUME=1 hands it only the mutants not run yet; after adding tests,
# MUTATION_RESUME=survivors runs those and the survivors again. (A function whose source
# changed loses its results when mutmut next copies the sources: run the module in full, or
# name that function's mutants, e.g. "sidecar.manager.xǁManagerǁdeploy__mutmut_*".) After
# each module the script prints the survivors and a line "mutation: MODULE mutants=N killed=K
# survived=S score=P%". Exit status: 0 when every run finished, whatever the score (the score is
# a figure to read, not a gate: not in CI, see docs/MUTATION.md for the time it takes).
#
# Parallelism: MUTATION_CHILDREN forked test processes (default 1: the machine is shared).
# Hangs: a mutant that breaks a lock can leave its tests asleep, waiting for something that
# never comes; mutmut's own limits stop it only after many times the tests' usual time. A
# watchdog stops (SIGXCPU, which mutmut counts as a timeout: the tests did not pass) any mutant
# process that used no CPU at all for MUTATION_IDLE_SECONDS (default 90), and says which.
# Time: a full run from an empty mutants/ took 18 min 45 s with MUTATION_CHILDREN=2 on the
# shared 2-core machine (the first module also records which test reaches which function).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

venv=.venv-mutation
mutmut_version=3.8.1
children="${MUTATION_CHILDREN:-1}"
idle_limit="${MUTATION_IDLE_SECONDS:-90}"
resume="" resume_survivors=""
case "${MUTATION_RESUME:-}" in
    "" | 0) ;;
    1) resume=1 ;;
    survivors) resume=1 resume_survivors=1 ;;
    *) echo "mutation: MUTATION_RESUME is 1 or survivors, not ${MUTATION_RESUME}" >&2; exit 2 ;;
esac
all_modules=(storage policy manager inventory issuer outcome deploy haproxy renewal_loop
    deploy_result)
modules=("$@")
[[ ${#modules[@]} -gt 0 ]] || modules=("${all_modules[@]}")
for module in "${modules[@]}"; do
    [[ " ${all_modules[*]} " == *" ${module} "* ]] \
        || { echo "mutation: unknown module ${module} (one of: ${all_modules[*]})" >&2; exit 2; }
done

# The venv holds the project's runtime and test dependencies, not the project itself: mutmut
# puts its mutated copy (mutants/) first on sys.path, and an installed cert-sidecar could
# shadow it. Reinstall only when pyproject.toml or the pinned mutmut version changed.
if [[ ! -x "${venv}/bin/python" ]]; then
    python3 -m venv "${venv}"
fi
stamp="${venv}/.installed"
wanted="$( (sha256sum pyproject.toml; echo "mutmut==${mutmut_version}") | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "${stamp}" 2>/dev/null)" != "${wanted}" ]]; then
    mapfile -t requirements < <("${venv}/bin/python" - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["test"]:
    print(requirement)
PY
    )
    "${venv}/bin/python" -m pip install -q --disable-pip-version-check \
        "mutmut==${mutmut_version}" "${requirements[@]}" </dev/null
    echo "${wanted}" > "${stamp}"
fi

# The watchdog: every 10 s, the CPU time of each mutant process mutmut forked (their titles
# read "mutmut: NAME"; the tests' own subprocesses are left alone). One whose CPU time has not
# moved for idle_limit seconds is asleep for good: a test that is working, or waiting a bounded
# time (a lock poll, a 0.2 s handshake), uses some CPU within that.
stop_idle_mutants() {
    local parent=$1 child title fields cpu key now
    local -A cpu_of=() since=()
    while kill -0 "${parent}" 2>/dev/null; do
        sleep 10
        now=$(date +%s)
        for child in $(pgrep -P "${parent}" || true); do
            title=$(tr '\0' ' ' <"/proc/${child}/cmdline" 2>/dev/null) || continue
            [[ ${title} == "mutmut: "* ]] || continue
            fields=$(cat "/proc/${child}/stat" 2>/dev/null) || continue
            read -r -a fields <<<"${fields##*) }"  # the fields after "(comm)", from the state
            # utime stime cutime cstime (fields 14-17), keyed with the start time (22): a pid
            # may be reused by the next mutant.
            cpu=$(( fields[11] + fields[12] + fields[13] + fields[14] ))
            key="${child}:${fields[19]}"
            if [[ "${cpu_of[${key}]:-}" != "${cpu}" ]]; then
                cpu_of[${key}]=${cpu}
                since[${key}]=${now}
            elif (( now - since[${key}] >= idle_limit )); then
                title=${title#mutmut: }
                echo "mutation: watchdog: ${title%% *} used no CPU for ${idle_limit} s: stopped"
                kill -XCPU "${child}" 2>/dev/null || true
                since[${key}]=${now}
            fi
        done
    done
}

started=$(date +%s)
for module in "${modules[@]}"; do
    echo "==> mutation: sidecar/${module}.py (children: ${children})"
    module_started=$(date +%s)
    # The names of a module's mutants start with its dotted path, e.g. sidecar.haproxy.x_parse…
    targets=("sidecar.${module}.*")
    if [[ -n ${resume} ]]; then
        mapfile -t left < <("${venv}/bin/python" scripts/mutation_summary.py --left \
            ${resume_survivors:+--survived} "sidecar.${module}")
        if [[ ${#left[@]} -gt 0 ]]; then
            targets=("${left[@]}")
            echo "mutation: resuming: ${#left[@]} mutants of sidecar/${module}.py"
        elif [[ -f mutants/sidecar/${module}.py.meta ]]; then
            echo "mutation: sidecar/${module}.py: nothing left to run"
            "${venv}/bin/python" scripts/mutation_summary.py "sidecar.${module}"
            continue
        fi
    fi
    "${venv}/bin/mutmut" run --max-children "${children}" "${targets[@]}" &
    mutmut_pid=$!
    stop_idle_mutants "${mutmut_pid}" &
    watchdog_pid=$!
    status=0
    wait "${mutmut_pid}" || status=$?
    kill "${watchdog_pid}" 2>/dev/null || true
    wait "${watchdog_pid}" 2>/dev/null || true
    [[ ${status} -eq 0 ]] || exit "${status}"
    echo "mutation: sidecar/${module}.py took $(( $(date +%s) - module_started )) s"
    "${venv}/bin/python" scripts/mutation_summary.py "sidecar.${module}"
done
echo "mutation: all done in $(( $(date +%s) - started )) s"
