#!/usr/bin/env bash
# Tracer benchmark: overhead of the eBPF tracer on a file-heavy
# cold start, and lost events at the highest open rate we can produce.
#
#   sudo bash testbed/bench-trace.sh [--reps 10] [--name trbench]
#
# Image: Debian bookworm minbase + python3 + /app/main.py importing a dozen
# stdlib packages (testbed/build-debian-image.sh). Each rep runs, in
# alternating order, `nvtier run --drop-caches` (baseline) and
# `nvtier trace --tracer ebpf` (traced) inside the HDD throttle cgroup, and
# compares the command's wall time. Results: testbed/results/trace.{json,md}.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

REPS=10
NAME=trbench
PLACEMENTS="lass pmem"
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --name) NAME=$2; shift 2 ;;
        --placements) PLACEMENTS=$2; shift 2 ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "bench-trace.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "bench-trace.sh: needs root" >&2; exit 1; }

t_start=$(date +%s)
bash testbed/install-deps.sh
cargo build --release --locked -p nvtier-driver -p nvtier-testbed
NVTIER=$PWD/target/release/nvtier
# shellcheck source-path=SCRIPTDIR source=bench-common.sh
source testbed/bench-common.sh
build_python_image
bench_testbed_up "$NAME" none

RES=$STATE/samples.jsonl
: >"$RES"
for placement in $PLACEMENTS; do
    "$NVTIER" rm "$REF" >/dev/null 2>&1 || true
    "$NVTIER" pull --json --placement "$placement" "$REF" >/dev/null
    # One warm-up of each, not recorded.
    bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches --json "$REF" -- python3 /app/main.py >/dev/null
    bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" trace --tracer ebpf --json "$REF" -- python3 /app/main.py >/dev/null
    for i in $(seq "$REPS"); do
        order="base traced"
        ((i % 2 == 0)) && order="traced base"
        for what in $order; do
            if [[ $what == base ]]; then
                out=$(bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches --json "$REF" -- python3 /app/main.py 2>/dev/null)
                jq -c --arg p "$placement" '{placement: $p, what: "base", ms: .elapsed_ms, exit: .exit_code, lost: 0, files: null}' <<<"$out" >>"$RES"
            else
                out=$(bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" trace --tracer ebpf --json "$REF" -- python3 /app/main.py 2>/dev/null)
                jq -c --arg p "$placement" '{placement: $p, what: "traced", ms: .elapsed_ms, exit: .exit_code, lost: .lost_events, files: .files, hot_share: .hot_share, tracer: .tracer}' <<<"$out" >>"$RES"
            fi
        done
    done
done

# Highest open rate: a tight open/close loop inside the container, traced.
bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" trace --tracer ebpf --warm --json "$REF" -- \
    python3 -c 'import os
for i in range(200000):
    os.close(os.open("/etc/hostname", os.O_RDONLY))' 2>/dev/null >"$STATE/storm.json"
bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --json "$REF" -- \
    python3 -c 'import os
for i in range(200000):
    os.close(os.open("/etc/hostname", os.O_RDONLY))' 2>/dev/null >"$STATE/storm-base.json"

target/release/nvbench report-trace --samples "$RES" --storm "$STATE/storm.json" \
    --storm-base "$STATE/storm-base.json" --reps "$REPS" --started "$t_start" \
    --out-json testbed/results/trace.json --out-md testbed/results/trace.md
