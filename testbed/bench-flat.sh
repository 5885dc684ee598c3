#!/usr/bin/env bash
# Cold start over the flattened metadata layer:
# `nvtier run --drop-caches` vs `nvtier run --drop-caches --flat` (directory
# tree from a metadata layer on pmem, file data from data-only layers) for
# the Debian python image placed all-disk and by LASS, on the throttled HDD.
#
#   sudo bash testbed/bench-flat.sh [--reps 8] [--name flbench]
# Results: testbed/results/flat.md
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
REPS=8
NAME=flbench
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --name) NAME=$2; shift 2 ;;
        -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "bench-flat.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "bench-flat.sh: needs root" >&2; exit 1; }
bash testbed/install-deps.sh
cargo build --release --locked -p nvtier-driver -p nvtier-testbed
NVTIER=$PWD/target/release/nvtier
# shellcheck source-path=SCRIPTDIR source=bench-common.sh
source testbed/bench-common.sh
build_python_image
bench_testbed_up "$NAME" 1gbit
RES=$STATE/samples.jsonl
: >"$RES"
run() { # placement mode [samples file]
    local flag=()
    [[ $2 == flat ]] && flag=(--flat)
    bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches --json "${flag[@]}" "$REF" -- python3 /app/main.py 2>/dev/null |
        jq -c --arg p "$1" --arg m "$2" '{kind: "run", placement: $p, mode: $m, ms: .elapsed_ms, exit: .exit_code}' >>"${3:-$RES}"
}
for placement in disk lass; do
    "$NVTIER" rm "$REF" >/dev/null 2>&1 || true
    "$NVTIER" pull --placement "$placement" "$REF" >/dev/null
    "$NVTIER" status --json | jq -c --arg p "$placement" '{kind: "pmem", placement: $p, pmem_layer_bytes: .pmem_used_bytes}' >>"$RES"
    run "$placement" flat /dev/null # builds the metadata layer; not recorded
    # Allocated bytes (the stubs are sparse; `du -sb` would show file sizes).
    jq -nc --arg p "$placement" --argjson b "$(du -s --block-size=1 "$PMEM_DIR/meta" | cut -f1)" \
        '{kind: "pmem", placement: $p, meta_bytes: $b}' >>"$RES"
    for i in $(seq "$REPS"); do
        if ((i % 2)); then run "$placement" plain; run "$placement" flat; else run "$placement" flat; run "$placement" plain; fi
    done
done
target/release/nvbench report-flat --samples "$RES" --reps "$REPS" --out-md testbed/results/flat.md
