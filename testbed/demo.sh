#!/usr/bin/env bash
# The nvtier demo: emulated pmem + HDD tiers, a real registry behind a
# 100 Mbit/s emulated link, a LASS pull of a multi-layer image, its
# placement and timeline, a cold start, hot-file tiering (trace + migrate).
#
#   sudo bash testbed/demo.sh [--rate 100mbit|1gbit] [--keep]
#
# --keep leaves the testbed up (tear down with: bash testbed/demo.sh --down).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

NAME=demo
RATE=100mbit
KEEP=0
while (($#)); do
    case $1 in
        --rate) RATE=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --down)
            bash testbed/registry.sh down "$NAME"
            bash testbed/tiers.sh down "$NAME"
            exit 0 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "demo.sh: needs root: sudo bash testbed/demo.sh" >&2; exit 1; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "installing dependencies and building nvtier (release)"
bash testbed/install-deps.sh
cargo build --release --locked -p nvtier-driver
NVTIER=$PWD/target/release/nvtier

teardown() {
    if ((KEEP == 0)); then
        bash testbed/registry.sh down "$NAME" >/dev/null 2>&1 || true
        bash testbed/tiers.sh down "$NAME" >/dev/null 2>&1 || true
        rm -rf /var/tmp/nvtier-demo
    fi
}
trap teardown EXIT

step "emulated tiers: pmem = tmpfs, HDD = ext4 on a direct-io loop device (150 IOPS, 150 MiB/s)"
bash testbed/tiers.sh up "$NAME" --pmem-size 1G --hdd-size 4G
eval "$(bash testbed/tiers.sh env "$NAME")"

step "registry (Debian docker-registry) in its own network namespace at $RATE"
bash testbed/registry.sh up "$NAME" --rate "$RATE"
eval "$(bash testbed/registry.sh env "$NAME")"

step "building a 6-layer image (busybox + 8M, 4M, 30M, 2M, 1M) and pushing it"
bash testbed/build-image.sh --out /var/tmp/nvtier-demo-images/oci --tag demo --layers busybox,8M,4M,30M,2M,1M
bash testbed/push-image.sh /var/tmp/nvtier-demo-images/oci:demo "$REGISTRY/demo:latest"

mkdir -p /var/tmp/nvtier-demo/state
export NVTIER_CONFIG=/var/tmp/nvtier-demo/config.toml
cat >"$NVTIER_CONFIG" <<CFG
state_dir = "/var/tmp/nvtier-demo/state"
pmem_dir = "$PMEM_DIR"
disk_dir = "$DISK_DIR"
pmem_budget = "512M"
max_concurrent_downloads = 3
insecure_registries = ["$REGISTRY"]
CFG
echo "config: $NVTIER_CONFIG"; cat "$NVTIER_CONFIG"

step "nvtier pull (LASS): the last-downloading layer and everything above it go to pmem"
bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" pull "$REGISTRY/demo:latest"

step "nvtier layers demo"
"$NVTIER" layers demo

step "nvtier status"
"$NVTIER" status

step "cold start: drop caches, mount, run a command in the image, unmount"
bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches demo -- /bin/sh -c 'cat /data/layer3.txt; sha256sum /data/layer5.bin'

step "hot-file tiering: profile one cold start with the eBPF tracer, then migrate"
bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" trace demo -- /bin/sh -c 'cat /data/layer3.txt; sha256sum /data/layer5.bin'
"$NVTIER" migrate demo --dry-run
"$NVTIER" migrate demo
echo "every layer base is on disk now; pmem holds the metadata layer and the hot files:"
"$NVTIER" layers demo
"$NVTIER" status
bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches demo -- /bin/sh -c 'cat /data/layer3.txt; sha256sum /data/layer5.bin'

step "the same image as the two baselines: all-disk ('Docker') and all-pmem ('NVM-Docker')"
for p in disk pmem lass; do
    "$NVTIER" rm demo >/dev/null
    sync; echo 3 >/proc/sys/vm/drop_caches
    bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" pull --json --placement "$p" "$REGISTRY/demo:latest" |
        jq -r --arg p "$p" '"placement \($p): deploy \(.stored_done_ms|floor) ms, stored \((.stored_done_ms - .download_done_ms)|floor) ms after the last byte, pmem \(.pmem_bytes/1048576|floor) MiB, LDL = layer \(.ldl_index)"'
done
if ((KEEP)); then
    echo; echo "testbed kept: export NVTIER_CONFIG=$NVTIER_CONFIG; tear down with: sudo bash testbed/demo.sh --down"
fi
