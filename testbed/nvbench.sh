#!/usr/bin/env bash
# NVBench: HelloBench-style pull -> store -> cold start -> ready on
# the real-image corpus, for four storage systems on the same engine
# (dockerd 26 with the containerd image store, containerd 1.7, runc):
#   docker  containerd's stock overlayfs snapshotter, all on the emulated HDD
#   nvm     the same with containerd's and dockerd's roots on emulated pmem
#   lass    nvtier (`nvtier serve` proxy snapshotter; dockerd makes nvtier
#           pull the image itself, placing layers by LASS); no static
#           placement, no hot files
#   hot     nvtier with LASS + static placement, then one ordinary
#           `docker run`, which `nvtier serve` records by itself and
#           migrates after: hot files on pmem, layer bases on disk, tiered
#           mounts
# For nvtier the engine's metadata (containerd root, dockerd data-root,
# nvtier state) and containers' writable layers live on pmem; image layers
# go where nvtier puts them.
#
# Every (rate, image): REPS deploys per system (`docker pull`, image removed
# before each, caches dropped), pmem bytes, the hot system's profiling and
# migration, then REPS cold starts per system (caches dropped; the container
# gets the HDD throttle rules through `docker run --device-*`; time from
# `docker run` to ready: exit with the expected output, or 127.0.0.1:PORT
# accepting a connection). Systems are interleaved, order rotated each rep.
# Samples go to OUT/samples.jsonl; `nvbench report` writes OUT/results.json,
# OUT/nvbench.md and OUT/plots/.
#
#   sudo bash testbed/nvbench.sh [--quick] [--reps N] [--rates 100mbit,1gbit]
#                                [--only a,b] [--out DIR] [--name NAME]
#                                [--resume] [--max-minutes M]
#                                [--no-wait] [--check]
#
#   --quick   the quick subset of the corpus (python, nginx, redis, debian);
#             results in testbed/results/nvbench-quick (default
#             testbed/results/nvbench)
#   --reps N  repetitions of every measurement (default 5)
#   --rates   registry link rates, comma-separated (default 100mbit,1gbit)
#   --only    only these corpus images
#   --resume  keep OUT/samples.jsonl and measure only the (rate, image)
#             cells it does not have yet (a cell cut short is measured
#             again); the report covers every cell in the file
#   --max-minutes M  start no new cell after M minutes (then report; run
#             again with --resume to go on). The full run measures for about 5.5 h.
#   --check   exit 1 unless every honesty check passed and every sample is ok
#   --no-wait do not wait for the machine to be quiet first
#
# Honesty checks (recorded as `check` samples): a second cold start without
# dropping the caches is faster (the drop really empties the page cache);
# the container's blkio cgroup carries the HDD rules and counts its reads;
# nvtier's reported pmem bytes agree with `du` of its pmem directory.
# Installs what it needs (apt packages, trixie engines, corpus images,
# release builds). Everything it starts is torn down on exit.
# shellcheck disable=SC2016 # jq programs (via emit) use $vars of jq
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source testbed/lib.sh

QUICK=0 REPS=5 RATES=100mbit,1gbit ONLY='' OUT='' NAME=nvb WAIT=1 CHECK=0 RESUME=0 MAXMIN=0
while (($#)); do
    case $1 in
        --quick) QUICK=1; shift ;;
        --reps) REPS=${2:?--reps needs a value}; shift 2 ;;
        --rates) RATES=${2:?--rates needs a value}; shift 2 ;;
        --only) ONLY=${2:?--only needs NAME,...}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        --no-wait) WAIT=0; shift ;;
        --check) CHECK=1; shift ;;
        --resume) RESUME=1; shift ;;
        --max-minutes) MAXMIN=${2:?--max-minutes needs a value}; shift 2 ;;
        -h | --help) sed -n '2,53p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"
[[ $MAXMIN =~ ^[0-9]+$ ]] || die "--max-minutes must be a whole number of minutes"
validate_name "$NAME"
IFS=, read -r -a RATE_LIST <<<"$RATES"
for r in "${RATE_LIST[@]}"; do
    [[ $r =~ ^[0-9]+(kbit|mbit|gbit)$ ]] || die "bad rate '$r' in --rates (e.g. 100mbit,1gbit)"
done
if [[ -z $OUT ]]; then
    OUT=testbed/results/nvbench
    ((QUICK)) && OUT=testbed/results/nvbench-quick
fi
need_root
T_START=$(date +%s)

# --- install and build ---------------------------------------------------------
info "dependencies"
bash testbed/install-deps.sh >/dev/null
need_cmd jq python3 findmnt du skopeo
eval "$(bash testbed/engines.sh fetch 2>/dev/null)"
[[ -x ${ENGINES_BIN:-}/dockerd ]] || die "testbed/engines.sh did not provide dockerd 26"
export PATH=$ENGINES_BIN:$PATH
info "corpus images"
corpus_args=()
((QUICK)) && corpus_args+=(--quick)
[[ -n $ONLY ]] && corpus_args+=(--only "$ONLY")
bash testbed/corpus/build.sh "${corpus_args[@]}" >/dev/null
IMAGES_JSON=$(bash testbed/corpus/build.sh "${corpus_args[@]}" --list --json)
mapfile -t IMAGES < <(jq -r '.[].name' <<<"$IMAGES_JSON")
((${#IMAGES[@]})) || die "no images selected"
info "building nvtier and nvbench (release)"
cargo build --release --locked -p nvtier-driver -p nvtier-testbed 2>&1 | tail -1
NVTIER=$ROOT/target/release/nvtier
NVBENCH=$ROOT/target/release/nvbench

# --- wait until the machine is quiet -------------------------------------------------
busy() {
    local p
    for p in cargo rustc; do pgrep -x "$p" >/dev/null && return 0; done
    pgrep -f '^(/usr/bin/)?bash ([^ ]*/)?(bench-[a-z-]+|run-tests|demo)\.sh' >/dev/null && return 0
    return 1
}
if ((WAIT)); then
    waited=0 quiet=0
    while ((quiet < 20)); do
        if busy; then quiet=0; else quiet=$((quiet + 5)); fi
        ((waited % 60 == 0 && quiet == 0)) && info "another heavy job is running; waiting (${waited}s)"
        ((waited >= 1800)) && die "still busy after 30 min; use --no-wait to measure anyway"
        sleep 5
        waited=$((waited + 5))
    done
fi

# --- teardown ---------------------------------------------------------------------
B=/var/tmp/nvtier-bench/$NAME
R=/run/nvtier-bench/$NAME # sockets and exec roots (short paths)
SYSTEMS=(docker nvm lass hot)
declare -A PIDS=()
cleanup() {
    local rc=$? s k m pid
    trap - EXIT INT TERM
    set +e
    if ((rc != 0)); then
        warn "failed (exit $rc); last lines of the daemon logs:"
        for f in "$B"/*/*.log; do
            [[ -f $f ]] && { printf '==> %s <==\n' "$f" >&2; tail -8 "$f" >&2; }
        done
    fi
    for s in "${SYSTEMS[@]}"; do
        [[ -S $R/$s/docker.sock ]] || continue
        for k in $(docker -H "unix://$R/$s/docker.sock" ps -aq 2>/dev/null); do
            docker -H "unix://$R/$s/docker.sock" rm -f "$k" >/dev/null 2>&1
        done
    done
    [[ -n ${PIDS[sampler]-} ]] && stop_pid "${PIDS[sampler]}" 2
    for k in "${!PIDS[@]}"; do [[ $k == dockerd-* ]] && stop_pid "${PIDS[$k]}" 20; done
    for k in "${!PIDS[@]}"; do [[ $k == containerd-* ]] && stop_pid "${PIDS[$k]}" 20; done
    for k in "${!PIDS[@]}"; do [[ $k == serve-* ]] && stop_pid "${PIDS[$k]}" 20; done
    for s in "${SYSTEMS[@]}"; do
        for pid in $(pgrep -f -- "-address $R/$s/containerd.sock" 2>/dev/null); do stop_pid "$pid" 5; done
    done
    while read -r m; do
        case $m in
            "$B"/* | "$R"/* | /run/nvtier-testbed/"$NAME"/pmem/* | /run/nvtier-testbed/"$NAME"/hdd/*) umount -l "$m" 2>/dev/null ;;
        esac
    done < <(findmnt -rn -o TARGET | sort -r)
    for d in /sys/fs/cgroup/*/nvtier-bench-"$NAME"; do
        [[ -d $d ]] && find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
        [[ -d $d ]] && rmdir "$d" 2>/dev/null
    done
    bash testbed/registry.sh down "$NAME" >/dev/null 2>&1
    bash testbed/tiers.sh down "$NAME" >/dev/null 2>&1
    # The daemons' logs outlive the run (the next run replaces them).
    rm -rf "$B.logs"
    mkdir -p "$B.logs"
    for f in "$B"/*/*.log; do [[ -f $f ]] && cp "$f" "$B.logs/$(basename "$(dirname "$f")")-$(basename "$f")"; done
    rm -rf "$B" "$R"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tiers, registry, images --------------------------------------------------------
rm -rf "$B" "$R"
mkdir -p "$B" "$R" "$OUT"
eval "$(NVT_QUIET=1 bash testbed/tiers.sh up "$NAME" --pmem-size 8G --hdd-size 24G)"
eval "$(NVT_QUIET=1 bash testbed/registry.sh up "$NAME" --rate "${RATE_LIST[0]}")"
export NO_PROXY="${REGISTRY%%:*}${NO_PROXY:+,$NO_PROXY}"
export no_proxy=$NO_PROXY
LOOP=$(basename "$LOOP_DEV")
rule() { awk -v mm="$LOOP_MAJMIN" '$1 == mm {print $2}' "$BLKIO_CGROUP/blkio.throttle.$1"; }
IOPS_R=$(rule read_iops_device) BPS_R=$(rule read_bps_device)
IOPS_W=$(rule write_iops_device) BPS_W=$(rule write_bps_device)
THROTTLE=(--device-read-iops "$LOOP_DEV:$IOPS_R" --device-read-bps "$LOOP_DEV:$BPS_R")
[[ -n $IOPS_W ]] && THROTTLE+=(--device-write-iops "$LOOP_DEV:$IOPS_W")
[[ -n $BPS_W ]] && THROTTLE+=(--device-write-bps "$LOOP_DEV:$BPS_W")
VETH=nvh-$NAME
((${#NAME} == 12)) && VETH=nvh$NAME
info "tiers: pmem $PMEM_DIR (tmpfs), HDD $DISK_DIR on $LOOP_DEV (read $IOPS_R IOPS, $BPS_R B/s); registry $REGISTRY"
OCI=$(jq -r '.[0].layout' <<<"$IMAGES_JSON")
for img in "${IMAGES[@]}"; do
    bash testbed/push-image.sh "$OCI:$img" "$REGISTRY/corpus/$img:latest" >/dev/null
done

# --- engines ---------------------------------------------------------------------------
SAMPLES=$OUT/samples.jsonl
PREV_META='{}'
if ((RESUME)) && [[ -s $SAMPLES ]]; then
    # Keep the checks and every finished cell; drop the samples of a cell
    # cut short (it is measured again). The old meta line stays until the
    # new one, covering every run, is written at the end, so a run killed
    # before then leaves the file reportable.
    PREV_META=$(jq -sc '[.[] | select(.kind == "meta")] | last // {}' "$SAMPLES") ||
        die "--resume: $SAMPLES is not valid JSON lines; move it away to start afresh"
    prev_reps=$(jq -r '.reps // empty' <<<"$PREV_META")
    [[ -z $prev_reps || $prev_reps == "$REPS" ]] ||
        die "--resume: $SAMPLES was measured with --reps $prev_reps; pass --reps $prev_reps (or move it away)"
    jq -c -s '[.[] | select(.kind == "cell") | "\(.rate) \(.image)"] as $done
        | .[] | select(.kind == "check" or .kind == "cell" or .kind == "meta"
                       or ("\(.rate) \(.image)" as $k | any($done[]; . == $k)))' \
        "$SAMPLES" >"$SAMPLES.tmp"
    mv "$SAMPLES.tmp" "$SAMPLES"
    info "resuming: $(jq -s '[.[] | select(.kind == "cell")] | length' "$SAMPLES") cells already measured in $SAMPLES"
else
    : >"$SAMPLES"
fi
emit() { jq -nc "$@" >>"$SAMPLES"; }
cell_done() { jq -e -s --arg r "$1" --arg i "$2" 'any(.[]; .kind == "cell" and .rate == $r and .image == $i)' "$SAMPLES" >/dev/null; }
for s in "${SYSTEMS[@]}"; do
    case $s in
        docker) P=$DISK_DIR/$s ;;
        *) P=$PMEM_DIR/$s ;;
    esac
    mkdir -p "$B/$s" "$R/$s" "$P/containerd" "$P/docker" "$DISK_DIR/$s"
    {
        printf 'version = 2\nroot = "%s"\nstate = "%s"\n' "$P/containerd" "$R/$s/ctd-state"
        printf 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s"\n' "$R/$s/containerd.sock"
        if [[ $s == lass || $s == hot ]]; then
            printf '[proxy_plugins]\n  [proxy_plugins.nvtier]\n    type = "snapshot"\n    address = "%s"\n' "$R/$s/snap.sock"
        fi
    } >"$B/$s/containerd.toml"
    driver=overlayfs
    if [[ $s == lass || $s == hot ]]; then
        driver=nvtier
        static=false
        [[ $s == hot ]] && static=true
        # Only the hot system records container starts (and migrates
        # after each recording); lass stays LASS alone.
        record=false migrate_every=0
        [[ $s == hot ]] && record=true migrate_every=3600
        mkdir -p "$P/nvtier" "$P/nvtier-state" "$DISK_DIR/$s/nvtier"
        cat >"$B/$s/nvtier.toml" <<EOF
state_dir = "$P/nvtier-state"
pmem_dir = "$P/nvtier"
disk_dir = "$DISK_DIR/$s/nvtier"
pmem_budget = "6G"
placement = "lass"
static_placement = $static
tiering = true
upper_tier = "pmem"
migrate_interval_s = $migrate_every
migrate_rate = 0
record_starts = $record
containerd_socket = "$R/$s/containerd.sock"
insecure_registries = ["$REGISTRY"]
snapshotter_socket = "$R/$s/snap.sock"
docker_plugin_socket = ""
containerd_root = "$P/containerd"
EOF
        NVTIER_CONFIG=$B/$s/nvtier.toml NVTIER_LOG=${NVTIER_LOG:-info} setsid bash testbed/tiers.sh exec "$NAME" -- \
            "$NVTIER" serve >"$B/$s/serve.log" 2>&1 &
        PIDS[serve-$s]=$!
        for _ in $(seq 100); do [[ -S $R/$s/snap.sock ]] && break; sleep 0.2; done
        [[ -S $R/$s/snap.sock ]] || die "nvtier serve ($s) did not create its socket"
    fi
    printf '{"features": {"containerd-snapshotter": true}, "storage-driver": "%s"}\n' "$driver" >"$B/$s/daemon.json"
    setsid bash testbed/tiers.sh exec "$NAME" -- containerd --config "$B/$s/containerd.toml" \
        >"$B/$s/containerd.log" 2>&1 &
    PIDS[containerd-$s]=$!
    for _ in $(seq 100); do [[ -S $R/$s/containerd.sock ]] && break; sleep 0.2; done
    # dockerd stays in the root blkio cgroup: inside a child v1 blkio cgroup
    # dockerd 26 silently drops `docker run --device-read-*` limits (the
    # container's HostConfig shows none). Its own reads (container configs)
    # are therefore not throttled; containerd, nvtier and containers are.
    setsid dockerd --config-file "$B/$s/daemon.json" \
        --data-root "$P/docker" --exec-root "$R/$s/dx" --pidfile "$R/$s/docker.pid" \
        -H "unix://$R/$s/docker.sock" --containerd "$R/$s/containerd.sock" \
        --iptables=false --ip6tables=false --bridge=none --insecure-registry "$REGISTRY" \
        --cgroup-parent "/nvtier-bench-$NAME" >"$B/$s/dockerd.log" 2>&1 &
    PIDS[dockerd-$s]=$!
done
dk() { local s=$1; shift; docker -H "unix://$R/$s/docker.sock" "$@"; }
# Containers are created with bookworm's docker CLI (20.10): trixie's CLI
# 26.1.5 sends `--device-read-iops/bps` and `--device-write-*` as empty
# lists (docker/cli#5321, fixed upstream in 26.1 after 26.1.5), so the
# containers would run unthrottled. The daemon is dockerd 26 either way.
RUN_CLI=/usr/bin/docker
[[ -x $RUN_CLI ]] || die "$RUN_CLI (bookworm's docker.io) is missing; run testbed/install-deps.sh"
dkrun() { local s=$1; shift; "$RUN_CLI" -H "unix://$R/$s/docker.sock" "$@"; }
cx() { local s=$1; shift; ctr -a "$R/$s/containerd.sock" -n moby "$@"; }
nv() { local s=$1; shift; NVTIER_CONFIG=$B/$s/nvtier.toml NVTIER_LOG=error "$NVTIER" "$@"; }
for s in "${SYSTEMS[@]}"; do
    for _ in $(seq 150); do dk "$s" version >/dev/null 2>&1 && break; sleep 0.2; done
    drv=$(dk "$s" info --format '{{.Driver}}' 2>/dev/null) || die "dockerd for $s did not come up"
    info "engine $s: dockerd $(dk "$s" version --format '{{.Server.Version}}'), storage $drv"
done
ENGINE="dockerd $(dk docker version --format '{{.Server.Version}}') (containerd image store) + containerd $(containerd --version | awk '{print $3}') + runc $(runc --version | awk 'NR == 1 {print $3}')"

# Last byte from the registry: a sampler appends (time, rx_bytes) of the
# host side of the registry's veth whenever the counter changes.
NETSTAT=$B/net.last
python3 - "/sys/class/net/$VETH/statistics/rx_bytes" "$NETSTAT" <<'PY' &
import os, sys, time
src, dst = sys.argv[1], sys.argv[2]
last = None
while True:
    with open(src) as f:
        v = int(f.read())
    if v != last:
        last = v
        with open(dst, "a") as f:
            f.write(f"{time.time_ns()} {v}\n")
    time.sleep(0.002)
PY
PIDS[sampler]=$!

# --- helpers ------------------------------------------------------------------------------
now_ns() { date +%s%N; }
ms_between() { echo $((($2 - $1) / 1000000)); }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# unthrottled_sync: sync with the root cgroup's HDD write rules lifted, then
# put them back (tiers.sh down clears them too if we are killed in between).
unthrottled_sync() {
    local f=/sys/fs/cgroup/blkio/blkio.throttle
    echo "$LOOP_MAJMIN 0" >"$f.write_iops_device"
    echo "$LOOP_MAJMIN 0" >"$f.write_bps_device"
    sync
    [[ -n $IOPS_W ]] && echo "$LOOP_MAJMIN $IOPS_W" >"$f.write_iops_device"
    [[ -n $BPS_W ]] && echo "$LOOP_MAJMIN $BPS_W" >"$f.write_bps_device"
    return 0
}
# A line in the kernel trace (if tracefs is there), so block-layer traces
# taken alongside a run can be cut per cold start.
tmark() { { echo "nvbench: $*" >/sys/kernel/tracing/trace_marker; } 2>/dev/null || true; }
io_snap() { local st; read -r -a st <"/sys/block/$LOOP/stat"; echo "${st[0]} $((st[2] * 512)) ${st[4]} $((st[6] * 512))"; }
io_json() {
    local -a a b
    read -r -a a <<<"$1"
    read -r -a b <<<"$2"
    printf '{"disk_read_ios": %d, "disk_read_bytes": %d, "disk_write_ios": %d, "disk_write_bytes": %d}' \
        $((b[0] - a[0])) $((b[1] - a[1])) $((b[2] - a[2])) $((b[3] - a[3]))
}
alloc() { du -s --block-size=1 "$1" 2>/dev/null | cut -f1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pmem_of() { # pmem_of SYSTEM: "reported du" bytes
    local s=$1
    case $s in
        docker) echo "0 0" ;; # nothing of Docker is on pmem
        nvm) local b; b=$(alloc "$PMEM_DIR/nvm"); echo "$b $b" ;;
        *) echo "$(nv "$s" status --json | jq .pmem_used_bytes) $(alloc "$PMEM_DIR/$s")" ;;
    esac
}
ref_of() { echo "$REGISTRY/corpus/$1:latest"; }
img_field() { jq -r --arg n "$1" ".[] | select(.name == \$n) | $2" <<<"$IMAGES_JSON"; }

purge() { # purge SYSTEM IMAGE: the image and everything containerd/nvtier keep of it
    local s=$1 ref k
    ref=$(ref_of "$2")
    for k in $(dk "$s" ps -aq); do dk "$s" rm -f "$k" >/dev/null 2>&1 || true; done
    dk "$s" rmi -f "$ref" >/dev/null 2>&1 || true
    for k in $(cx "$s" images ls -q 2>/dev/null); do cx "$s" images rm --sync "$k" >/dev/null 2>&1 || true; done
    for k in $(cx "$s" content ls -q 2>/dev/null); do cx "$s" content rm "$k" >/dev/null 2>&1 || true; done
    if [[ $s == lass || $s == hot ]]; then
        nv "$s" rm "$ref" >/dev/null 2>&1 || true
        nv "$s" gc >/dev/null 2>&1 || true
    fi
    local snap=overlayfs
    [[ $s == lass || $s == hot ]] && snap=nvtier
    for _ in $(seq 100); do
        [[ -z $(cx "$s" snapshots --snapshotter "$snap" ls 2>/dev/null | tail -n +2) ]] && return 0
        sleep 0.2
    done
    warn "$s: snapshots left after removing $ref: $(cx "$s" snapshots --snapshotter "$snap" ls | tail -n +2 | wc -l)"
}

deploy() { # deploy SYSTEM IMAGE REP RATE
    local s=$1 img=$2 rep=$3 rate=$4 ref t0 t1 t2 rc=0 lb=0 lbb=0 sad=null
    ref=$(ref_of "$img")
    purge "$s" "$img"
    drop_caches
    : >"$NETSTAT"
    t0=$(now_ns)
    dk "$s" pull -q "$ref" >"$B/$s/pull.out" 2>&1 || rc=$?
    t1=$(now_ns)
    local sy=null
    if [[ $s != nvm ]] && ((rep > 1)); then
        # Not a measured figure: Docker's pull leaves ~50 MiB of dirty pages
        # that take 45-60 s to write back through the HDD throttle, and so
        # does nvtier's for layers it put on the disk tier (published before
        # their write-back). They only have to be on disk before the next
        # measurement. Rep 1 keeps the throttled sync and records it; later
        # reps flush with the root write rule lifted (sync_ms null), which
        # saves ~3 min per cell.
        unthrottled_sync
    else
        sync
        sy=x
    fi
    # nvtier drops the blobs it kept for those layers once they are on disk
    # (`nvtier serve` every 2 s; `nvtier sync` now, so the pmem figures
    # below never count them).
    if [[ $s == lass || $s == hot ]]; then nv "$s" sync >/dev/null 2>&1 || true; fi
    t2=$(now_ns)
    [[ $sy == x ]] && sy=$(ms_between "$t1" "$t2")
    # The last byte: the first moment in [t0, t1] the counter came within
    # 4 KiB of its final value in that window (stray packets ignored).
    read -r lb lbb < <("$NVBENCH" last-byte --netstat "$NETSTAT" --t0 "$t0" --t1 "$t1")
    if ((lb > t0 && lb <= t1)); then sad=$(ms_between "$lb" "$t1"); fi
    local ok=false
    ((rc == 0)) && ok=true
    ((rc == 0)) || emit --arg r "$rate" --arg s "$s" --arg i "$img" --arg m "$(tail -c 400 "$B/$s/pull.out")" \
        '{kind: "error", rate: $r, system: $s, image: $i, stage: "deploy", message: $m}'
    emit --arg r "$rate" --arg s "$s" --arg i "$img" --argjson rep "$rep" --argjson ok "$ok" \
        --argjson d "$(ms_between "$t0" "$t1")" --argjson lb "$( ((lb > t0)) && ms_between "$t0" "$lb" || echo null)" \
        --argjson sad "$sad" --argjson sy "$sy" --argjson nb "$lbb" \
        '{kind: "deploy", rate: $r, system: $s, image: $i, rep: $rep, ok: $ok, deploy_ms: $d,
          last_byte_ms: $lb, store_after_download_ms: $sad, sync_ms: $sy, net_bytes: $nb}'
    info "  deploy $s rep $rep: $(ms_between "$t0" "$t1") ms (last byte at $( ((lb > t0)) && ms_between "$t0" "$lb" || echo '?') ms, $((lbb / 1048576)) MiB), sync $(ms_between "$t1" "$t2") ms$([[ $sy == null ]] && echo ' (unthrottled)')"
}

# cold SYSTEM IMAGE REP RATE [warm]: one cold start to ready; prints the ms
# (or FAIL) and appends a coldstart sample unless "warm"/"probe".
cold() {
    local s=$1 img=$2 rep=$3 rate=$4 mode=${5:-cold} ref ready t0 t1 io0 io1 rc=0 ok=false out cid port i
    ref=$(ref_of "$img")
    ready=$(img_field "$img" .ready)
    [[ $mode == warm ]] || drop_caches
    io0=$(io_snap)
    tmark "cold $s $img rep $rep begin"
    out=$B/$s/run.out
    t0=$(now_ns)
    if [[ $ready == port:* ]]; then
        port=${ready#port:}
        cid=$(dkrun "$s" run -d --network host "${THROTTLE[@]}" "$ref" 2>"$out") || rc=$?
        if ((rc == 0)); then
            for ((i = 0; i < 12000; i++)); do
                port_open "$port" && { ok=true; break; }
                if ((i % 50 == 49)) && [[ $(dk "$s" inspect -f '{{.State.Running}}' "$cid" 2>/dev/null) != true ]]; then
                    break
                fi
                sleep 0.01
            done
        fi
        t1=$(now_ns)
        tmark "cold $s $img rep $rep ready"
        [[ -n ${cid:-} ]] && { dk "$s" logs "$cid" >>"$out" 2>&1 || true; dk "$s" rm -f "$cid" >/dev/null 2>&1 || true; }
        for ((i = 0; i < 200; i++)); do port_open "$port" || break; sleep 0.05; done
    else
        timeout 600 "$RUN_CLI" -H "unix://$R/$s/docker.sock" run --rm --network host "${THROTTLE[@]}" "$ref" >"$out" 2>&1 || rc=$?
        t1=$(now_ns)
        [[ $rc -eq 0 ]] && grep -qF -- "${ready#exit:}" "$out" && ok=true
    fi
    io1=$(io_snap)
    tmark "cold $s $img rep $rep end"
    local ms
    ms=$(ms_between "$t0" "$t1")
    if [[ $mode == cold ]]; then
        [[ $ok == true ]] || emit --arg r "$rate" --arg s "$s" --arg i "$img" --arg m "exit $rc: $(tail -c 400 "$out")" \
            '{kind: "error", rate: $r, system: $s, image: $i, stage: "coldstart", message: $m}'
        emit --arg r "$rate" --arg s "$s" --arg i "$img" --argjson rep "$rep" --argjson ok "$ok" --argjson ms "$ms" \
            --argjson io "$(io_json "$io0" "$io1")" \
            '{kind: "coldstart", rate: $r, system: $s, image: $i, rep: $rep, ok: $ok, ms: $ms} + $io'
    fi
    [[ $ok == true ]] && echo "$ms" || echo FAIL
}

profile_and_migrate() { # the hot system: one ordinary cold start, recorded by the daemon
    local img=$1 rate=$2 ref ready port cid="" i row st t0 rc=0
    ref=$(ref_of "$img")
    ready=$(img_field "$img" .ready)
    # A profile from an earlier rate would make this start "fresh" and
    # unrecorded: start from none, as on a new node.
    rm -f "$PMEM_DIR/hot/nvtier-state/profiles/"*.json
    drop_caches
    t0=$(now_ns)
    if [[ $ready == port:* ]]; then
        port=${ready#port:}
        cid=$(dkrun hot run -d --network host "${THROTTLE[@]}" "$ref" 2>"$B/hot/profile.err") || rc=$?
        for ((i = 0; rc == 0 && i < 12000; i++)); do
            port_open "$port" && break
            sleep 0.01
        done
    else
        timeout 600 "$RUN_CLI" -H "unix://$R/hot/docker.sock" run --rm --network host "${THROTTLE[@]}" "$ref" \
            >"$B/hot/profile.out" 2>"$B/hot/profile.err" || rc=$?
    fi
    # The daemon ends the recording (exit or quiet period), then migrates.
    row=null
    for ((i = 0; i < 1200; i++)); do
        st=$(nv hot status --json 2>/dev/null || echo '{}')
        row=$(nv hot profile list --json 2>/dev/null | jq -c --arg r "$ref" '[.[] | select(.profiled and ((.image == $r) or (.image | endswith($r))))][0]')
        if [[ $row != null ]] && jq -e '(.recordings // [1] | length) == 0 and (.migrations_pending // [1] | length) == 0' <<<"$st" >/dev/null; then
            break
        fi
        sleep 0.5
    done
    [[ -n $cid ]] && dk hot rm -f "$cid" >/dev/null 2>&1
    if [[ $row == null ]]; then
        emit --arg r "$rate" --arg i "$img" --arg m "exit $rc; no recording: $(tail -c 300 "$B/hot/profile.err"); $(grep -i record "$B/hot/serve.log" | tail -3)" \
            '{kind: "error", rate: $r, system: "hot", image: $i, stage: "profile", message: $m}'
        return 0
    fi
    emit --arg r "$rate" --arg i "$img" --argjson t "$row" --argjson ms "$(ms_between "$t0" "$(now_ns)")" \
        --argjson ib "$(nv hot images --json | jq --arg r "$ref" '[.[] | select((.name == $r) or (.name | endswith($r))) | .pmem_bytes + .disk_bytes][0] // 0')" \
        '{kind: "startup_read", rate: $r, image: $i, hot_files: $t.files, hot_bytes: $t.bytes,
          image_bytes: $ib, tracer: $t.tracer, trace_ms: $ms, recorded_by: "daemon"}'
    info "  recorded by the daemon: $(jq -r '"\(.files) files, \(.bytes) B"' <<<"$row"); pmem $(nv hot status --json | jq .pmem_used_bytes) B after its migration"
}

emit_pmem() { # emit_pmem SYSTEM IMAGE RATE WHEN
    local b d
    read -r b d < <(pmem_of "$1")
    emit --arg r "$3" --arg s "$1" --arg i "$2" --arg w "$4" --argjson b "$b" --argjson d "$d" \
        '{kind: "pmem", rate: $r, system: $s, image: $i, when: $w, bytes: $b, du_bytes: $d}'
}

check() { # check NAME OK DETAIL
    emit --arg n "$1" --argjson ok "$2" --arg d "$3" '{kind: "check", name: $n, ok: $ok, detail: $d}'
    if [[ $2 == true ]]; then info "check $1: ok ($3)"; else warn "check $1: FAILED ($3)"; fi
}

# --- honesty checks (first image, first rate) -------------------------------------------------
honesty() {
    local img=$1 rate=$2 ref a b c cid cg d rule reads
    ref=$(ref_of "$img")
    # 1. Dropping the caches makes a cold start: the same start again
    #    without the drop is measurably faster.
    a=$(cold docker "$img" 0 "$rate" probe)
    b=$(cold docker "$img" 0 "$rate" warm)
    c=$(cold docker "$img" 0 "$rate" probe)
    if [[ $a != FAIL && $b != FAIL && $c != FAIL ]] && ((b * 10 < a * 9 && b * 10 < c * 9)); then
        check caches_dropped true "Docker, $img: dropped $a ms, not dropped $b ms, dropped again $c ms"
    else
        check caches_dropped false "Docker, $img: dropped $a ms, not dropped $b ms, dropped again $c ms (want not-dropped < 90% of both)"
    fi
    # 2. The container's own blkio cgroup carries the HDD rules and counts
    #    its reads of the loop device.
    drop_caches
    cid=$(dkrun docker run -d --network host "${THROTTLE[@]}" --entrypoint sh "$ref" \
        -c 'cat /usr/bin/* /usr/lib/x86_64-linux-gnu/*.so* >/dev/null 2>&1; sleep 30' 2>"$B/docker/check.err") || cid=''
    sleep 3
    d=''
    if [[ -n $cid ]]; then
        cg=$(awk -F: '$2 == "blkio" {print $3}' "/proc/$(dk docker inspect -f '{{.State.Pid}}' "$cid")/cgroup" 2>/dev/null || true)
        d=/sys/fs/cgroup/blkio$cg
    fi
    rule=$(awk -v mm="$LOOP_MAJMIN" '$1 == mm {print $2}' "$d/blkio.throttle.read_iops_device" 2>/dev/null || true)
    reads=$(awk -v mm="$LOOP_MAJMIN" '$1 == mm && $2 == "Read" {v = $3} END {print v + 0}' "$d/blkio.throttle.io_serviced" 2>/dev/null || echo 0)
    local hc
    hc=$(dk docker inspect -f '{{json .HostConfig.BlkioDeviceReadIOps}}' "$cid" 2>&1 || true)
    [[ -n $cid ]] && dk docker rm -f "$cid" >/dev/null 2>&1
    if [[ -n $cg && $rule == "$IOPS_R" && $reads -gt 0 ]]; then
        check throttle_on_container_cgroup true "container blkio cgroup $cg: read rule $rule IOPS on $LOOP_MAJMIN, $reads reads counted there"
    else
        check throttle_on_container_cgroup false "container blkio cgroup '${cg:-?}' read rule '${rule:-none}' (want $IOPS_R; docker: $hc), $reads reads counted; docker run said: $(tr '\n' ' ' <"$B/docker/check.err")"
    fi
}

pmem_check() { # pmem_check SYSTEM IMAGE: nvtier's figure vs du of its pmem_dir
    # nvtier charges each metadata-layer inode 256 B on top of the
    # allocated bytes (tmpfs's du does not show inode memory).
    local s=$1 img=$2 rep du inodes hi
    rep=$(nv "$s" status --json | jq .pmem_used_bytes)
    du=$(alloc "$PMEM_DIR/$s/nvtier")
    inodes=$( (find "$PMEM_DIR/$s/nvtier/meta" 2>/dev/null || true) | wc -l)
    hi=$((du + 256 * inodes))
    # Within 10 %, or within 64 KiB (the tier's own directories: with the
    # streamed LASS rule a pull can leave nothing on pmem).
    local diff=$((rep > du ? rep - du : du - rep))
    if { ((rep > 0)) && ((rep * 100 >= du * 90 && rep * 100 <= hi * 110)); } || ((diff <= 65536)); then
        check "pmem_matches_du_$s" true "$img: nvtier status $rep B; du of its pmem dir $du B (+ 256 B x $inodes metadata inodes = $hi B)"
    else
        check "pmem_matches_du_$s" false "$img: nvtier status $rep B; du of its pmem dir $du B (+ 256 B x $inodes metadata inodes = $hi B); want du x 0.9 <= status <= that x 1.1, or within 64 KiB"
    fi
}

if [[ -n ${NVBENCH_PAUSE:-} ]]; then # debugging: poke at the engines
    declare -p THROTTLE REGISTRY LOOP_DEV >"$B/env"
    info "paused for $NVBENCH_PAUSE s (env in $B/env)"
    sleep "$NVBENCH_PAUSE"
fi

# --- the benchmark --------------------------------------------------------------------------------
first=1
jq -e -s 'any(.[]; .kind == "check" and .name == "caches_dropped")' "$SAMPLES" >/dev/null && first=0
STOPPED=0
for rate in "${RATE_LIST[@]}"; do
    rate_set=0
    for img in "${IMAGES[@]}"; do
        if cell_done "$rate" "$img"; then
            info "== $rate: $img already measured (--resume)"
            continue
        fi
        if ((MAXMIN)) && (($(date +%s) - T_START >= MAXMIN * 60)); then
            warn "--max-minutes $MAXMIN reached; stopping before $rate: $img (run again with --resume to go on)"
            STOPPED=1
            break 2
        fi
        ((rate_set)) || { bash testbed/registry.sh rate "$NAME" "$rate" >/dev/null; rate_set=1; }
        info "== $rate: $img ($(img_field "$img" .category))"
        for ((rep = 1; rep <= REPS; rep++)); do
            for ((k = 0; k < ${#SYSTEMS[@]}; k++)); do
                deploy "${SYSTEMS[$(((rep - 1 + k) % ${#SYSTEMS[@]}))]}" "$img" "$rep" "$rate"
            done
        done
        for s in "${SYSTEMS[@]}"; do emit_pmem "$s" "$img" "$rate" after_deploy; done
        pmem_check lass "$img"
        # The checks run once, on python when it is selected (it reads
        # the most at start-up), else on the first image.
        if ((first)) && [[ $img == python || ! " ${IMAGES[*]} " =~ " python " ]]; then
            honesty "$img" "$rate"
            first=0
        fi
        profile_and_migrate "$img" "$rate"
        emit_pmem hot "$img" "$rate" after_migration
        pmem_check hot "$img"
        for ((rep = 1; rep <= REPS; rep++)); do
            line=''
            for ((k = 0; k < ${#SYSTEMS[@]}; k++)); do
                s=${SYSTEMS[$(((rep - 1 + k) % ${#SYSTEMS[@]}))]}
                line+=" $s $(cold "$s" "$img" "$rep" "$rate")"
            done
            info "  cold start rep $rep (ms):$line"
        done
        for s in "${SYSTEMS[@]}"; do purge "$s" "$img"; done
        emit --arg r "$rate" --arg i "$img" --argjson reps "$REPS" --arg d "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
            '{kind: "cell", rate: $r, image: $i, reps: $reps, date: $d}'
    done
done

# --- results -----------------------------------------------------------------------------------------
# Layer count and compressed bytes come from each image's OCI manifest.
MANIFESTS=$B/manifests.jsonl
: >"$MANIFESTS"
for img in "${IMAGES[@]}"; do
    skopeo inspect --raw "oci:$OCI:$img" | jq -c --arg n "$img" '{name: $n, manifest: .}' >>"$MANIFESTS"
done
printf '%s\n' "$IMAGES_JSON" >"$B/images.json"
# A resumed run's meta covers every run into this file: images and rates
# of earlier runs are kept, run times add up, `started` is the first run's.
meta_args=()
((QUICK)) && meta_args+=(--quick)
"$NVBENCH" meta --samples "$SAMPLES" --images "$B/images.json" --manifests "$MANIFESTS" "${meta_args[@]}" \
    --reps "$REPS" --rates "$(IFS=,; echo "${RATE_LIST[*]}")" \
    --engine "$ENGINE" --iops "$IOPS_R" --bps "$BPS_R" --run-seconds "$(($(date +%s) - T_START))"
if "$NVBENCH" report --help >/dev/null 2>&1; then
    "$NVBENCH" report --samples "$SAMPLES" --out-dir "$OUT"
else
    warn "this nvbench has no report command; samples are in $SAMPLES"
fi
info "done in $(($(date +%s) - T_START)) s; results in $OUT"
((STOPPED)) && warn "stopped early (--max-minutes): run the same command with --resume to measure the remaining cells"
if ((CHECK)); then
    "$NVBENCH" check-samples --samples "$SAMPLES" >/dev/null || die "--check failed"
    info "--check: every check and sample ok"
fi
