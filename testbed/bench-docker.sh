#!/usr/bin/env bash
# Docker 26 deployment: `docker pull` with containerd's overlayfs snapshotter
# vs nvtier (remote-snapshot pull with LASS), both on the same emulated HDD
# (containerd's root is on the HDD tier), containerd 1.7 + dockerd 26 from
# testbed/engines.sh. Every pull is of a fresh image (its own seed), after
# dropping caches. Prints one line per pull and the medians. Not a test.
#
#   testbed/bench-docker.sh [--rate 1gbit|100mbit] [--reps 3] [--layers busybox,8M,4M,30M,2M,1M]
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source testbed/lib.sh

RATE=1gbit
REPS=3
LAYERS=busybox,8M,4M,30M,2M,1M
while (($#)); do
    case $1 in
        --rate) RATE=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --layers) LAYERS=$2; shift 2 ;;
        -h | --help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
need_root

N=bdock
R=/run/nvtier-bench-docker
bash testbed/install-deps.sh
cargo build --release -p nvtier-driver -p nvtier-testbed
eval "$(bash testbed/engines.sh fetch)"
NVTIER=$ROOT/target/release/nvtier
export PATH=$ENGINES_BIN:$PATH

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 3
    pkill -f -- "$R/" 2>/dev/null || true
    sleep 1
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
cat >"$R/nvtier.toml" <<EOF
state_dir = "$V/state"
pmem_dir = "$PMEM_DIR"
disk_dir = "$DISK_DIR"
pmem_budget = "768M"
insecure_registries = ["$REGISTRY"]
snapshotter_socket = "$R/nvtier.sock"
docker_plugin_socket = ""
containerd_root = "$V/containerd"
EOF
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
NVTIER_LOG=warn setsid bash testbed/tiers.sh exec "$N" -- "$NVTIER" --config "$R/nvtier.toml" serve >"$R/nvtier.log" 2>&1 &
PIDS+=($!)
setsid bash testbed/tiers.sh exec "$N" -- containerd --config "$R/containerd.toml" >"$R/containerd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do [[ -S $R/ctd.sock && -S $R/nvtier.sock ]] && break; sleep 0.5; done

SAMPLES=$R/samples.jsonl
: >"$SAMPLES"
for drv in overlayfs nvtier; do
    printf '{"features": {"containerd-snapshotter": true}, "storage-driver": "%s"}\n' "$drv" >"$R/daemon.json"
    setsid bash testbed/tiers.sh exec "$N" -- dockerd --config-file "$R/daemon.json" \
        --data-root "$V/docker-$drv" --exec-root "$R/dx" -H "unix://$R/docker.sock" \
        --pidfile "$R/docker.pid" --containerd "$R/ctd.sock" \
        --iptables=false --ip6tables=false --bridge=none \
        --insecure-registry "$REGISTRY" >"$R/dockerd-$drv.log" 2>&1 &
    dpid=$!
    for _ in $(seq 60); do docker -H "unix://$R/docker.sock" version >/dev/null 2>&1 && break; sleep 0.5; done
    for rep in $(seq "$REPS"); do
        seed=$((rep + (${#drv} * 1000)))
        tag=bd$seed
        bash testbed/build-image.sh --out /var/tmp/nvtier-bench-images/oci --tag "$tag" \
            --layers "$LAYERS" --seed "$seed" >/dev/null 2>&1
        bash testbed/push-image.sh "/var/tmp/nvtier-bench-images/oci:$tag" "$REGISTRY/bench/$tag:v1" >/dev/null 2>&1
        bash testbed/tiers.sh drop-caches >/dev/null 2>&1
        s=$(date +%s%N)
        docker -H "unix://$R/docker.sock" pull -q "$REGISTRY/bench/$tag:v1" >/dev/null
        e=$(date +%s%N)
        sync
        e2=$(date +%s%N)
        pull_ms=$(((e - s) / 1000000))
        durable_ms=$(((e2 - s) / 1000000))
        printf '%-9s rate=%s rep=%s pull_ms=%s pull+sync_ms=%s\n' "$drv" "$RATE" "$rep" "$pull_ms" "$durable_ms"
        jq -nc --arg d "$drv" --argjson rep "$rep" --argjson p "$pull_ms" --argjson ps "$durable_ms" \
            '{driver: $d, rep: $rep, pull_ms: $p, pull_sync_ms: $ps}' >>"$SAMPLES"
    done
    docker -H "unix://$R/docker.sock" run --rm --network none "$REGISTRY/bench/$tag:v1" true
    kill "$dpid" 2>/dev/null || true
    wait "$dpid" 2>/dev/null || true
    for _ in $(seq 40); do pgrep -f -- "--config-file $R/daemon.json" >/dev/null || break; sleep 0.5; done
done

target/release/nvbench report-docker --samples "$SAMPLES" --layers "$LAYERS" --rate "$RATE"
"$NVTIER" --config "$R/nvtier.toml" layers
