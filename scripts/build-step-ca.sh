#!/usr/bin/env bash
# Build step-ca 0.19 from Debian's Go source into .cache/step-ca/bin/step-ca.
#
# Debian 12 ships step-ca only as Go source (golang-github-smallstep-certificates-dev, plus
# every dependency as golang-*-dev packages under /usr/share/gocode) and no cmd/step-ca main
# package, so we supply a tiny main and build it in GOPATH mode against that tree. No network
# is needed: GO111MODULE=off makes go resolve imports from GOPATH only.
#
# Facts measured on a 2-core Debian 12 machine: the build takes 35 s on an idle machine and
# ~85 s while other test suites run (go's build cache in .cache/step-ca/gocache then makes a
# rebuild a few seconds); the binary is ~25 MB and needs only libc and libzstd. cgo prints a
# harmless "ZSTD_getDecompressedSize is deprecated" warning. step-ca starts (healthy /health)
# in ~0.05 s. urfave/cli v1 stops parsing flags at the first positional argument, so flags such
# as --resolver must come before the ca.json path.
# Skips entirely when the binary exists and is newer than this script (the main.go lives here,
# so editing this script is what triggers a rebuild).
#
# Usage: bash scripts/build-step-ca.sh        (from anywhere; paths are relative to the repo)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${repo_root}/.cache/step-ca"
binary="${cache_dir}/bin/step-ca"
script_path="${repo_root}/scripts/build-step-ca.sh"

up_to_date() { [[ -x "${binary}" && "${binary}" -nt "${script_path}" ]]; }

if up_to_date; then
    echo "step-ca: up to date (${binary})"
    exit 0
fi

# Several engineers (or test runs) may share this tree: one build at a time, and whoever waited
# for the lock finds the binary already built.
mkdir -p "${cache_dir}"
exec 9>"${cache_dir}/build.lock"
flock 9
if up_to_date; then
    echo "step-ca: built by a concurrent run (${binary})"
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "step-ca: 'go' not found; run scripts/install-deps.sh first" >&2
    exit 1
fi
if [[ ! -d /usr/share/gocode/src/github.com/smallstep/certificates/commands ]]; then
    echo "step-ca: Go source missing; run scripts/install-deps.sh" \
        "(package golang-github-smallstep-certificates-dev)" >&2
    exit 1
fi

# The main package must sit inside a GOPATH src tree for a GOPATH-mode build.
main_dir="${cache_dir}/gopath/src/cert-sidecar.test/step-ca"
mkdir -p "${main_dir}" "${cache_dir}/bin" "${cache_dir}/gocache"

# Mirrors upstream's cmd/step-ca/main.go, minus its build-info plumbing: the "start the CA"
# command (commands.AppCommand) is the app's default action and flags, and importing the
# commands package registers its extra subcommands (export, onboard) with cli-utils.
cat > "${main_dir}/main.go" <<'EOF'
package main

import (
	"fmt"
	"os"

	"github.com/smallstep/certificates/commands"
	"github.com/urfave/cli"
	"go.step.sm/cli-utils/command"
	"go.step.sm/cli-utils/step"
)

func main() {
	step.Set("Smallstep CA", "0.19.0-debian", "cert-sidecar test build")
	app := cli.NewApp()
	app.Name = "step-ca"
	app.HelpName = "step-ca"
	app.Version = step.Version()
	app.Usage = "an online certificate authority (test build for cert-sidecar)"
	app.UsageText = commands.AppCommand.UsageText
	app.Flags = append(append([]cli.Flag{}, commands.AppCommand.Flags...), cli.HelpFlag)
	app.Commands = command.Retrieve()
	app.Action = commands.AppCommand.Action
	app.HideHelp = true
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
EOF

echo "step-ca: building (about a minute the first time)..."
start=${SECONDS}
# Build into a temp name and rename, so an interrupted build never leaves a binary that the
# freshness check above would take for a good one.
(
    cd "${main_dir}"
    GO111MODULE=off \
    GOPATH="${cache_dir}/gopath:/usr/share/gocode" \
    GOCACHE="${cache_dir}/gocache" \
    CGO_ENABLED=1 \
        go build -o "${binary}.tmp" .
)
mv -f "${binary}.tmp" "${binary}"

# Smoke check: the binary runs and prints its version.
"${binary}" --version
echo "step-ca: built ${binary} in $((SECONDS - start)) s"
