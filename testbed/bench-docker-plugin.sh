#!/usr/bin/env bash
# Docker pull time with the nvtier graph driver plugin vs Docker's built-in
# overlay2, both on the emulated HDD (dockerd and the plugin run in the
# testbed's blkio cgroup), the registry behind an emulated link.
# Prints one line per pull and, for nvtier, the per-layer placement, then the
# median pull times (`nvbench report-docker-plugin`).
#
#   testbed/bench-docker-plugin.sh [--reps 3] [--rate 1gbit] [--layers busybox,8M,4M,30M,2M,1M]
#
# Needs root, dockerd (Debian docker.io; another one with NVTIER_TEST_DOCKERD),
# and release builds of nvtier and nvbench (built if missing). Tears everything down.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
TB=$ROOT/testbed

REPS=3 RATE=1gbit LAYERS=busybox,8M,4M,30M,2M,1M
while (($#)); do
    case $1 in
        --reps) REPS=${2:?}; shift 2 ;;
        --rate) RATE=${2:?}; shift 2 ;;
        --layers) LAYERS=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
need_root
DOCKERD=${NVTIER_TEST_DOCKERD:-/usr/sbin/dockerd}
need_cmd docker jq "$DOCKERD"
NVTIER=$ROOT/target/release/nvtier
NVBENCH=$ROOT/target/release/nvbench
[[ -x $NVTIER && -x $NVBENCH ]] || (cd "$ROOT" && cargo build --release -p nvtier-driver -p nvtier-testbed)

NAME=dkb$$
NAME=${NAME:0:12}
BASE=/var/tmp/nvtier-dkbench-$NAME
EXEC=/run/nvt-dkb-$NAME
DPID='' PLUGIN_PID=''

cleanup() {
    set +e
    [[ -n $DPID ]] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
    [[ -n $PLUGIN_PID ]] && kill "$PLUGIN_PID" 2>/dev/null && wait "$PLUGIN_PID" 2>/dev/null
    rm -f "/etc/docker/plugins/nvtier-$NAME.spec"
    findmnt -rn -o TARGET | grep -E "^($BASE|$EXEC|$NVT_RUN_ROOT/$NAME/hdd/)" | sort -r |
        xargs -r -n1 umount -l
    bash "$TB/registry.sh" down "$NAME" >/dev/null 2>&1
    bash "$TB/tiers.sh" down "$NAME" >/dev/null 2>&1
    rm -rf "$BASE" "$EXEC"
}
trap cleanup EXIT

eval "$(bash "$TB/tiers.sh" up "$NAME" --pmem-size 1G --hdd-size 4G --iops 150 --bps 150M 2>/dev/null)"
eval "$(bash "$TB/registry.sh" up "$NAME" --rate "$RATE" 2>/dev/null)"
: "${PMEM_DIR:?}" "${DISK_DIR:?}" "${REGISTRY:?}"
mkdir -p "$BASE/state"
cat >"$BASE/config.toml" <<EOF
state_dir = "$BASE/state"
pmem_dir = "$PMEM_DIR"
disk_dir = "$DISK_DIR"
pmem_budget = "512M"
EOF
echo '{}' >"$BASE/daemon.json"
OCI=/var/tmp/nvtier-test-images/oci
bash "$TB/build-image.sh" --out "$OCI" --tag dkbench --layers "$LAYERS" >/dev/null
REF=$REGISTRY/bench/dkbench:v1
bash "$TB/push-image.sh" "$OCI:dkbench" "$REF" >/dev/null

run_case() {
    local drv=$1 api=$BASE/$1.sock rep t0 t1
    bash "$TB/tiers.sh" exec "$NAME" -- "$DOCKERD" --experimental -s "$drv" \
        --config-file "$BASE/daemon.json" --data-root "$DISK_DIR/docker-$drv" \
        --exec-root "$EXEC" -H "unix://$api" --pidfile "$BASE/$drv.pid" \
        --iptables=false --ip6tables=false --bridge=none \
        --insecure-registry "$REGISTRY" >"$BASE/$drv.log" 2>&1 &
    DPID=$!
    for _ in $(seq 150); do
        docker -H "unix://$api" info >/dev/null 2>&1 && break
        sleep 0.2
    done
    for rep in $(seq "$REPS"); do
        bash "$TB/tiers.sh" drop-caches >/dev/null 2>&1 || sync
        t0=$(date +%s%N)
        docker -H "unix://$api" pull -q "$REF" >/dev/null
        t1=$(date +%s%N)
        layers=null
        if [[ $drv != overlay2 ]]; then
            layers=$(NVTIER_CONFIG=$BASE/config.toml "$NVTIER" layers --json)
        fi
        jq -nc --arg d "${drv%%-*}" --argjson rep "$rep" --argjson ns "$((t1 - t0))" --argjson l "$layers" \
            '{driver: $d, rep: $rep, pull_ns: $ns, layers: $l}' >>"$SAMPLES"
        info "${drv%%-*} rep $rep: pulled"
        docker -H "unix://$api" rmi -f "$REF" >/dev/null
    done
    kill "$DPID"
    wait "$DPID" 2>/dev/null || true
    DPID=''
}

bash "$TB/tiers.sh" exec "$NAME" -- env NVTIER_CONFIG="$BASE/config.toml" NVTIER_LOG=info \
    "$NVTIER" docker-plugin --socket "$BASE/plugin.sock" 2>"$BASE/plugin.log" &
PLUGIN_PID=$!
for _ in $(seq 100); do
    [[ -S $BASE/plugin.sock ]] && break
    sleep 0.1
done
mkdir -p /etc/docker/plugins
echo "unix://$BASE/plugin.sock" >"/etc/docker/plugins/nvtier-$NAME.spec"
info "$(basename "$DOCKERD") $("$DOCKERD" --version), image $LAYERS, link $RATE, $REPS reps"
SAMPLES=$BASE/samples.jsonl
: >"$SAMPLES"
run_case "nvtier-$NAME"
run_case overlay2
"$NVBENCH" report-docker-plugin --samples "$SAMPLES"
