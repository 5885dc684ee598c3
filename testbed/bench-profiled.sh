#!/usr/bin/env bash
# Deploy time of a profiled pull (the image's hot profile is in the
# registry: bases to disk, hot files to pmem at pull time) against a LASS
# pull of the same image, interleaved, on the emulated testbed.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)

usage() {
    cat <<'EOF'
Usage:
  bench-profiled.sh [--rate 100mbit|1gbit] [--reps N] [--name NAME]
  bench-profiled.sh --help

Builds nvtier (release) and a 5-layer test image (busybox, 64M, 16M, 8M,
4M of incompressible data), records one cold start of it (reads busybox,
/data/layer1.txt, /data/layer3.bin and /data/layer4.bin) and pushes the
profile to the testbed's registry. Then, REPS times (default 5), with a
new store and dropped caches before each pull, in alternating order:
  lass      nvtier pull with profiles_from_registry = false
  profiled  nvtier pull with the registry profile
Each pull runs in the testbed's throttled cgroup (emulated HDD) with the
registry behind RATE (default 100mbit). Deploy time: LASS = layers stored;
profiled = hot data and metadata layers on pmem as well (`tiered_done_ms`).
Also reported: the time after the last byte, and the pmem used.

Results: testbed/results/profiled-pull-RATE.{json,md}. Must run as root.
EOF
}

RATE=100mbit REPS=5 NAME=bprof
while (($#)); do
    case $1 in
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --reps) REPS=${2:?--reps needs a value}; shift 2 ;;
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"
validate_name "$NAME"
need_root

cd "$ROOT"
bash testbed/install-deps.sh >&2
cargo build --release -p nvtier-driver >&2
NV=$ROOT/target/release/nvtier
need_cmd jq

SPEC=busybox,64M,16M,8M,4M
READS='cat /bin/busybox /data/layer1.txt /data/layer3.bin /data/layer4.bin >/dev/null'
IMAGES=/var/tmp/nvtier-bench-images/oci
WORK=/var/tmp/nvtier-bench/$NAME
RESULTS=$ROOT/testbed/results
mkdir -p "$WORK" "$RESULTS" "$IMAGES"

cleanup() {
    bash testbed/registry.sh down "$NAME" >/dev/null 2>&1 || true
    bash testbed/tiers.sh down "$NAME" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

eval "$(bash testbed/tiers.sh up "$NAME" --pmem-size 2G --hdd-size 8G)"
eval "$(bash testbed/registry.sh up "$NAME" --rate "$RATE")"
: "${PMEM_DIR:?}" "${DISK_DIR:?}" "${REGISTRY:?}"

bash testbed/build-image.sh --out "$IMAGES" --tag bprof --layers "$SPEC" >/dev/null
IMG=$REGISTRY/bench/bprof:v1
bash testbed/push-image.sh "$IMAGES:bprof" "$IMG" >/dev/null

STATE=$WORK/state PMEM=$PMEM_DIR/nvtier DISK=$DISK_DIR/nvtier
write_config() { # FILE EXTRA
    printf 'state_dir = "%s"\npmem_dir = "%s"\ndisk_dir = "%s"\npmem_budget = "2G"\ninsecure_registries = ["%s"]\ndocker_config = ""\ncontainerd_config = ""\nsnapshotter_socket = ""\ndocker_plugin_socket = ""\n%s' \
        "$STATE" "$PMEM" "$DISK" "$REGISTRY" "$2" >"$1"
}
write_config "$WORK/lass.toml" $'profiles_from_registry = false\n'
write_config "$WORK/profiled.toml" ''
fresh_store() {
    rm -rf "$STATE" "$PMEM" "$DISK"
    mkdir -p "$STATE" "$PMEM" "$DISK"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
nv() { # CONFIG ARGS...
    local cfg=$1
    shift
    NVTIER_CONFIG=$cfg NO_PROXY=${REGISTRY%:*} bash testbed/tiers.sh exec "$NAME" -- "$NV" "$@"
}

# Record and push the profile (as another node would).
fresh_store
nv "$WORK/lass.toml" pull --json "$IMG" >/dev/null
nv "$WORK/lass.toml" trace "$IMG" -- /bin/sh -c "$READS" >/dev/null
nv "$WORK/lass.toml" profile push --json "$IMG" >"$WORK/push.json"
info "profile pushed: $(jq -c '{method, files, bytes, artifact_digest}' "$WORK/push.json")"

SAMPLES=$WORK/samples.jsonl
: >"$SAMPLES"
for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2)); then order=(lass profiled); else order=(profiled lass); fi
    for mode in "${order[@]}"; do
        fresh_store
        drop_caches
        out=$(nv "$WORK/$mode.toml" pull --json "$IMG")
        used=$(nv "$WORK/$mode.toml" status --json | jq '.pmem_used_bytes')
        jq -c --arg mode "$mode" --argjson rep "$rep" --argjson used "$used" '{
            mode: $mode, rep: $rep,
            download_done_ms, stored_done_ms,
            deploy_ms: (if $mode == "profiled" then .profile.tiered_done_ms else .stored_done_ms end),
            tiered: (.profile.tiered // false),
            hot_bytes: (.profile.hot_bytes // 0),
            pmem_used_bytes: $used,
            disk_layers: ([.layers[] | select(.tier == "disk")] | length)
        }' <<<"$out" | tee -a "$SAMPLES" >&2
        nv "$WORK/$mode.toml" sync >/dev/null
    done
done

DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
MACHINE="$(nproc)-CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -r)"
jq -s --arg date "$DATE" --arg machine "$MACHINE" --arg rate "$RATE" --arg spec "$SPEC" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor]
                     else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def stats(m): map(select(.mode == m)) as $s | {
      deploy_ms: ($s | map(.deploy_ms) | median),
      download_done_ms: ($s | map(.download_done_ms) | median),
      after_last_byte_ms: ($s | map(.deploy_ms - .download_done_ms) | median),
      pmem_used_bytes: ($s | map(.pmem_used_bytes) | median),
      tiered: ($s | all(.tiered))};
  { date: $date, machine: $machine, rate: $rate, image: $spec, reps: (length / 2),
    lass: stats("lass"), profiled: stats("profiled"),
    samples: . }
  | .ratio_deploy = (.profiled.deploy_ms / .lass.deploy_ms)
  | .ratio_pmem = (.profiled.pmem_used_bytes / .lass.pmem_used_bytes)' \
    "$SAMPLES" >"$RESULTS/profiled-pull-$RATE.json"

jq -r '
  def f: . * 10 | round / 10;
  def mib: . / 1048576 | f;
  "# Profiled pull vs LASS pull (\(.rate))\n",
  "\(.date), \(.machine). Image \(.image) (5 layers), \(.reps) interleaved reps, medians;",
  "new store and dropped caches before each pull; emulated HDD (throttled cgroup), tmpfs pmem.\n",
  "| pull | deploy ms | downloads done ms | after last byte ms | pmem used MiB |",
  "|---|--:|--:|--:|--:|",
  "| LASS | \(.lass.deploy_ms | f) | \(.lass.download_done_ms | f) | \(.lass.after_last_byte_ms | f) | \(.lass.pmem_used_bytes | mib) |",
  "| profiled | \(.profiled.deploy_ms | f) | \(.profiled.download_done_ms | f) | \(.profiled.after_last_byte_ms | f) | \(.profiled.pmem_used_bytes | mib) |",
  "\nprofiled / LASS: deploy \(.ratio_deploy * 1000 | round / 1000)x, pmem \(.ratio_pmem * 1000 | round / 1000)x.",
  "Profiled deploy ends when the hot data and metadata layers are on pmem (tiered from the first start)."' \
    "$RESULTS/profiled-pull-$RATE.json" | tee "$RESULTS/profiled-pull-$RATE.md"
