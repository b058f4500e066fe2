#!/usr/bin/env bash
# Runs every test: formatting and vet, unit and end-to-end tests with the
# race detector, and a short seed run of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt needed on:" $unformatted >&2
  exit 1
fi
go vet ./...

# Unit tests beside the code, and black-box end-to-end tests in test/
# (they build the binary and drive it with swaks against loopback DNS and
# SMTP receivers).
go test -race -count=1 -timeout 20m ./...

# Fuzz targets: a short run each, so CI exercises the seed corpus and a
# little more.
fuzztime=${FUZZTIME:-10s}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz $pkg $f ($fuzztime)"
    log="${TMPDIR:-/tmp}/postern-fuzz-$f.log"
    if ! go test -run='^$' -fuzz="^${f}\$" -fuzztime="$fuzztime" -fuzzminimizetime=3s "$pkg" >"$log" 2>&1; then
      # The fuzzing engine itself sometimes stops at the time limit with
      # "context deadline exceeded" and no failing input: not a finding.
      if grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written to' "$log"; then
        echo "  (fuzz engine stopped at its deadline without a finding; ignored)"
      else
        cat "$log"
        exit 1
      fi
    fi
  done
done
# Shipped configs, alert rules, dashboard, live /metrics (needs promtool).
./test/ops/check.sh
echo "all tests passed"
