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
cargo build --release --locked -p nvtier-driver
NVTIER=$PWD/target/release/nvtier
# shellcheck source-path=SCRIPTDIR source=bench-common.sh
source testbed/bench-common.sh
build_python_image
bench_testbed_up "$NAME" 1gbit
RES=$STATE/samples.tsv
: >"$RES"
run() { # placement mode
    local flag=()
    [[ $2 == flat ]] && flag=(--flat)
    bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches --json "${flag[@]}" "$REF" -- python3 /app/main.py 2>/dev/null |
        jq -r --arg p "$1" --arg m "$2" '"\($p)\t\($m)\t\(.elapsed_ms)\t\(.exit_code)"' >>"$RES"
}
for placement in disk lass; do
    "$NVTIER" rm "$REF" >/dev/null 2>&1 || true
    "$NVTIER" pull --placement "$placement" "$REF" >/dev/null
    pmem_layers=$("$NVTIER" status --json | jq .pmem_used_bytes)
    echo "$placement pmem_layer_bytes $pmem_layers" >>"$STATE/pmem.txt"
    run "$placement" flat >/dev/null # builds the metadata layer
    sed -i "/^$placement\t/d" "$RES"
    # Allocated bytes (the stubs are sparse; `du -sb` would show file sizes).
    meta_bytes=$(du -s --block-size=1 "$PMEM_DIR/meta" | cut -f1)
    echo "$placement meta_bytes $meta_bytes" >>"$STATE/pmem.txt"
    for i in $(seq "$REPS"); do
        if ((i % 2)); then run "$placement" plain; run "$placement" flat; else run "$placement" flat; run "$placement" plain; fi
    done
done
mkdir -p testbed/results
python3 - "$RES" "$STATE/pmem.txt" "$REPS" <<'PY'
import sys, statistics, datetime, platform, os
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
pm = {}
for l in open(sys.argv[2]):
    p, k, v = l.split()
    pm[(p, k)] = int(v)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
md = ["# Cold start over the flattened metadata layer", "",
      f"**{date}** · {cpu} ({os.cpu_count()} CPUs, Linux {platform.release()}) · {sys.argv[3]} reps per case, alternating",
      "", "Debian bookworm + python3 image (3 layers), `python3 /app/main.py` importing a dozen stdlib packages; caches dropped; HDD tier throttled (150 IOPS, 150 MiB/s); `nvtier run` probe. *plain* = overlay of the layer directories; *flat* = metadata layer on pmem over data-only layers. Medians (min–max) of the command's wall time.", "",
      "| placement | pmem layer bytes | plain ms | flat ms | flat / plain | metadata layer bytes allocated on pmem |", "|---|--:|--:|--:|--:|--:|"]
for p in dict.fromkeys(r[0] for r in rows):
    a = [float(r[2]) for r in rows if r[0] == p and r[1] == "plain" and r[3] == "0"]
    b = [float(r[2]) for r in rows if r[0] == p and r[1] == "flat" and r[3] == "0"]
    if not a or not b:
        continue
    ma, mb = statistics.median(a), statistics.median(b)
    md.append(f"| {p} | {pm.get((p,'pmem_layer_bytes'),0)/2**20:.1f} MiB | {ma:.0f} ({min(a):.0f}–{max(a):.0f}) | {mb:.0f} ({min(b):.0f}–{max(b):.0f}) | {mb/ma:.2f} | {pm.get((p,'meta_bytes'),0)/2**20:.1f} MiB |")
open("testbed/results/flat.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
