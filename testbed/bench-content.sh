#!/usr/bin/env bash
# Content-store parity cost: `docker pull` time through nvtier with
# content_store_blobs = true vs false, on dockerd 26 + containerd 1.7
# (testbed/engines.sh), containerd's root on the emulated HDD. The two
# settings are interleaved (the order rotates every round); nvtier serve
# restarts with the other setting between pulls, and every pull is of a
# fresh image (its own seed), after dropping caches. A pull with the
# writes on is followed by a wait until `docker images` lists the image
# (the writes are done), outside the measured time. Prints one line per
# pull, the medians and the ratio; writes the samples to
# testbed/results/content-store.json. Not a test. Uses the debug build.
#
#   testbed/bench-content.sh [--rate 1gbit|100mbit] [--reps 5] [--layers busybox,8M,4M,30M,2M,1M]
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source testbed/lib.sh

RATE=1gbit
REPS=5
LAYERS=busybox,8M,4M,30M,2M,1M
while (($#)); do
    case $1 in
        --rate) RATE=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --layers) LAYERS=$2; shift 2 ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
need_root
need_cmd jq docker

N=bcont
R=/run/nvtier-bench-content
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build -p nvtier-driver
eval "$(bash testbed/engines.sh fetch)"
NVTIER=$TARGET/debug/nvtier
export PATH=$ENGINES_BIN:$PATH
DOCKER=(docker -H "unix://$R/docker.sock")

# Process groups this script started (each daemon runs under setsid).
NV_PID=
CTD_PID=
DOCKERD_PID=
stop_group() {
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM -- "-$pid" 2>/dev/null || return 0
    for i in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}
cleanup() {
    stop_group "$DOCKERD_PID"
    stop_group "$CTD_PID"
    stop_group "$NV_PID"
    local m
    for m in $(findmnt -rn -o TARGET | grep -E "^($R|/run/nvtier-testbed/$N)" | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    bash testbed/registry.sh down "$N" >/dev/null 2>&1 || true
    bash testbed/tiers.sh down "$N" >/dev/null 2>&1 || true
    rm -rf "$R"
}
trap cleanup EXIT

eval "$(NVT_QUIET=1 bash testbed/tiers.sh up "$N" --pmem-size 1G --hdd-size 6G)"
eval "$(NVT_QUIET=1 bash testbed/registry.sh up "$N" --rate "$RATE")"
V=$DISK_DIR/bench
rm -rf "$R"
mkdir -p "$R" "$V/state"
for mode in on off; do
    blobs=true
    [[ $mode == on ]] || blobs=false
    cat >"$R/nvtier-$mode.toml" <<EOF
state_dir = "$V/state"
pmem_dir = "$PMEM_DIR"
disk_dir = "$DISK_DIR"
pmem_budget = "768M"
insecure_registries = ["$REGISTRY"]
snapshotter_socket = "$R/nvtier.sock"
docker_plugin_socket = ""
containerd_root = "$V/containerd"
containerd_socket = "$R/ctd.sock"
content_store_blobs = $blobs
EOF
done
cat >"$R/containerd.toml" <<EOF
version = 2
root = "$V/containerd"
state = "$R/ctd-state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$R/ctd.sock"
[proxy_plugins]
  [proxy_plugins.nvtier]
    type = "snapshot"
    address = "$R/nvtier.sock"
EOF

start_nvtier() {
    stop_group "$NV_PID"
    rm -f "$R/nvtier.sock"
    NVTIER_LOG=info,h2=warn setsid bash testbed/tiers.sh exec "$N" -- \
        "$NVTIER" --config "$R/nvtier-$1.toml" serve >>"$R/nvtier.log" 2>&1 &
    NV_PID=$!
    for _ in $(seq 60); do [[ -S $R/nvtier.sock ]] && break; sleep 0.5; done
    # containerd reconnects to the proxy after its gRPC back-off.
    for _ in $(seq 60); do
        ctr -a "$R/ctd.sock" snapshots --snapshotter nvtier ls >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "containerd did not reconnect to nvtier"
}

setsid bash testbed/tiers.sh exec "$N" -- containerd --config "$R/containerd.toml" >"$R/containerd.log" 2>&1 &
CTD_PID=$!
for _ in $(seq 60); do [[ -S $R/ctd.sock ]] && break; sleep 0.5; done
start_nvtier on
printf '{"features": {"containerd-snapshotter": true}, "storage-driver": "nvtier"}\n' >"$R/daemon.json"
setsid bash testbed/tiers.sh exec "$N" -- dockerd --config-file "$R/daemon.json" \
    --data-root "$V/docker" --exec-root "$R/dx" -H "unix://$R/docker.sock" \
    --pidfile "$R/docker.pid" --containerd "$R/ctd.sock" \
    --iptables=false --ip6tables=false --bridge=none \
    --insecure-registry "$REGISTRY" >"$R/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 60); do "${DOCKER[@]}" version >/dev/null 2>&1 && break; sleep 0.5; done

SAMPLES=$R/samples.jsonl
: >"$SAMPLES"
for rep in $(seq "$REPS"); do
    if ((rep % 2)); then order=(on off); else order=(off on); fi
    for mode in "${order[@]}"; do
        start_nvtier "$mode"
        seed=$((rep * 10 + ${#mode}))
        tag=bc$seed
        ref=$REGISTRY/bench/$tag:v1
        bash testbed/build-image.sh --out /var/tmp/nvtier-bench-images/oci --tag "$tag" \
            --layers "$LAYERS" --seed "$seed" >/dev/null 2>&1
        bash testbed/push-image.sh "/var/tmp/nvtier-bench-images/oci:$tag" "$ref" >/dev/null 2>&1
        bash testbed/tiers.sh drop-caches >/dev/null 2>&1
        s=$(date +%s%N)
        "${DOCKER[@]}" pull -q "$ref" >/dev/null
        e=$(date +%s%N)
        pull_ms=$(((e - s) / 1000000))
        listed_ms=null
        if [[ $mode == on ]]; then
            for _ in $(seq 600); do
                "${DOCKER[@]}" images --format '{{.Repository}}:{{.Tag}}' | grep -qxF "$ref" && break
                sleep 0.1
            done
            "${DOCKER[@]}" images --format '{{.Repository}}:{{.Tag}}' | grep -qxF "$ref" ||
                die "docker images does not list $ref with content_store_blobs = true"
            listed_ms=$((($(date +%s%N) - s) / 1000000))
        fi
        printf 'content_store_blobs=%-3s rate=%s rep=%s pull_ms=%s listed_ms=%s\n' \
            "$mode" "$RATE" "$rep" "$pull_ms" "$listed_ms"
        jq -nc --arg m "$mode" --argjson rep "$rep" --argjson p "$pull_ms" --argjson l "$listed_ms" \
            '{content_store_blobs: $m, rep: $rep, pull_ms: $p, listed_ms: $l}' >>"$SAMPLES"
        "${DOCKER[@]}" rmi "$ref" >/dev/null
    done
done

mkdir -p testbed/results
jq -s --arg rate "$RATE" --arg layers "$LAYERS" '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    {rate: $rate, layers: $layers, samples: .,
     median_pull_ms_on: ([.[] | select(.content_store_blobs == "on") | .pull_ms] | median),
     median_pull_ms_off: ([.[] | select(.content_store_blobs == "off") | .pull_ms] | median),
     median_listed_ms_on: ([.[] | select(.content_store_blobs == "on") | .listed_ms] | median)}
    | .ratio_on_over_off = (.median_pull_ms_on / .median_pull_ms_off)' \
    "$SAMPLES" >testbed/results/content-store.json
jq -r '"median docker pull: on \(.median_pull_ms_on) ms, off \(.median_pull_ms_off) ms, ratio \(.ratio_on_over_off); listed after \(.median_listed_ms_on) ms (on)"' \
    testbed/results/content-store.json
grep -c "content store: image blobs handed to containerd" "$R/nvtier.log" || true
grep "content store:" "$R/nvtier.log" | grep -v "handed to containerd" | head -5 || true
