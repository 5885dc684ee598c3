#!/usr/bin/env bash
# The long run of the property tests: every `prop_` test of the driver with
# many cases (the suite runs a few hundred each). Prints, per property, the
# cases that passed and the time taken, then a summary.
#
#   sudo bash testbed/fuzz-long.sh [CASES]     # default 20000
#
# CASES goes to PROPTEST_CASES. The properties run one at a time (2 test
# threads would halve each one's speed). A failing property prints
# proptest's minimal failing input; keep it as a regular unit test.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "fuzz-long.sh: the extraction properties need root (device nodes, whiteouts, owners): sudo bash testbed/fuzz-long.sh" >&2
    exit 1
fi

cases=${1:-20000}
log=$(mktemp /tmp/nvtier-fuzz-long.XXXXXX.log)
echo "==> property tests, PROPTEST_CASES=$cases (log: $log)"
start=$(date +%s)
status=0
PROPTEST_CASES=$cases cargo test --locked -p nvtier-driver --lib prop_ -- \
    --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
echo "==> per property"
# (--nocapture may print a line after the test's name: match anywhere.)
grep -oE 'proptest [a-z_]+: .*' "$log" | sed 's/^proptest /  /' || true
echo "==> $(grep -E '^test result' "$log" | tail -1)"
echo "==> $(($(date +%s) - start)) s"
if [[ $status -ne 0 ]]; then
    echo "==> failures:"
    grep -E -A30 'minimal failing input|panicked at' "$log" | head -120
fi
exit "$status"
