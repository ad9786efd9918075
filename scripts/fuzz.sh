#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 60s), one
# at a time, and stops at the first failure (its input is saved under the
# package's testdata/fuzz/ for `go test` to replay). `make test` runs only
# the seed corpora, as ordinary tests.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-60s}"
mapfile -t targets < <(grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do
  dir=$(dirname "$f")
  grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed "s#^func #${dir} #"
done)
echo "fuzz: ${#targets[@]} targets, ${fuzztime} each"
for t in "${targets[@]}"; do
  read -r dir name <<<"$t"
  echo "== ${dir} ${name}"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$dir" 2>&1 | tail -3
done
