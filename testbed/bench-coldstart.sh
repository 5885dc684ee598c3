#!/usr/bin/env bash
# Cold start through containerd + runc: the same image, three
# storage set-ups, each with its own private containerd 1.6 (bookworm):
#   Docker      stock overlayfs snapshotter, containerd root on the emulated HDD
#   NVM-Docker  stock overlayfs snapshotter, containerd root on emulated pmem
#   nvtier      `nvtier serve` proxy snapshotter (placement lass; disk tier
#               and nvtier's state on the HDD, pmem tier on the tmpfs)
# Image: Debian bookworm + python3 + /app/main.py (same as bench-trace.sh),
# pushed to a testbed registry. Each system pulls once (`ctr images pull`,
# timed), then every rep drops the caches and times
# `ctr run --rm python3 /app/main.py`, systems interleaved. Containers run in
# a per-run blkio cgroup under the testbed's cgroup that gets the HDD
# throttle rules (v1 rules are not inherited). Results:
# testbed/results/coldstart.{json,md}.
#
#   sudo bash testbed/bench-coldstart.sh [--reps 7] [--rate 1gbit] [--name cold]
#                                        [--no-wait] [--wait-max 1800] [--quiet 30]
#
# Before measuring it waits (up to --wait-max seconds) until no cargo/rustc,
# run-tests.sh or other benchmark has run for --quiet seconds. Everything (containerd,
# nvtier serve, shims, mounts, cgroups, testbed) is torn down on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source testbed/lib.sh

REPS=7
RATE=1gbit
NAME=cold
WAIT=1
WAIT_MAX=1800
QUIET=30
while (($#)); do
    case $1 in
        --reps) REPS=${2:?--reps needs a value}; shift 2 ;;
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        --no-wait) WAIT=0; shift ;;
        --wait-max) WAIT_MAX=${2:?--wait-max needs a value}; shift 2 ;;
        --quiet) QUIET=${2:?--quiet needs a value}; shift 2 ;;
        -h | --help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"
[[ $WAIT_MAX =~ ^[0-9]+$ ]] || die "--wait-max must be a number of seconds"
[[ $QUIET =~ ^[0-9]+$ ]] || die "--quiet must be a number of seconds"
validate_name "$NAME"
need_root
need_cmd containerd ctr runc jq findmnt du

T_START=$(date +%s)
B=/var/tmp/nvtier-bench/$NAME
NVTIER=$ROOT/target/release/nvtier
OCI=/var/tmp/nvtier-bench-images/debian # = PYTHON_OCI of bench-common.sh
SYSTEMS=(docker nvm nvtier)
declare -A SNAP=([docker]=overlayfs [nvm]=overlayfs [nvtier]=nvtier)
declare -A CTD_ROOT=()
declare -A PIDS=()

# --- build ------------------------------------------------------------------
info "building nvtier and nvbench (release)"
cargo build --release --locked -p nvtier-driver -p nvtier-testbed
[[ -x $NVTIER ]] || die "no $NVTIER after the build"
NVBENCH=$ROOT/target/release/nvbench

# --- wait until the machine is quiet -----------------------------------------
busy() {
    # By process name (a full-command-line match of "cargo" also hits
    # unrelated processes whose environment mentions ~/.cargo/bin).
    local p
    for p in cargo rustc cargo-nextest; do
        pgrep -x "$p" >/dev/null && return 0
    done
    pgrep -f '^(/usr/bin/)?bash ([^ ]*/)?(bench-trace|bench-pull|bench-docker|bench-docker-plugin|run-tests|demo)\.sh' >/dev/null && return 0
    return 1
}
if ((WAIT)); then
    waited=0 quiet=0
    while ((quiet < QUIET)); do
        if busy; then
            quiet=0
            ((waited % 60 == 0)) && info "another heavy job is running; waiting (${waited}s so far)"
        else
            quiet=$((quiet + 5))
        fi
        ((waited >= WAIT_MAX)) && die "still busy after ${WAIT_MAX}s; giving up (use --no-wait to measure anyway)"
        sleep 5
        waited=$((waited + 5))
    done
    info "machine quiet for ${QUIET}s (waited ${waited}s in all); starting"
fi

# --- image -------------------------------------------------------------------
# shellcheck source-path=SCRIPTDIR source=bench-common.sh
source testbed/bench-common.sh
OCI=$PYTHON_OCI
build_python_image

# --- teardown ------------------------------------------------------------------
sock_of() { printf '%s/%s/ctd.sock' "$B" "$1"; }


cleanup() {
    local rc=$? s id pid m d
    trap - EXIT INT TERM
    set +e
    if ((rc != 0)); then
        warn "failed (exit $rc); last lines of the daemon logs:"
        for f in "$B"/*/*.log; do
            [[ -f $f ]] && { printf '==> %s <==\n' "$f" >&2; tail -15 "$f" >&2; }
        done
    fi
    for s in "${SYSTEMS[@]}"; do
        [[ -S $(sock_of "$s") ]] || continue
        for id in $(ctr -a "$(sock_of "$s")" -n bench tasks ls -q 2>/dev/null); do
            ctr -a "$(sock_of "$s")" -n bench tasks kill -s SIGKILL "$id" >/dev/null 2>&1
            sleep 0.3
            ctr -a "$(sock_of "$s")" -n bench tasks rm -f "$id" >/dev/null 2>&1
        done
    done
    for s in "${!PIDS[@]}"; do
        [[ $s == serve ]] || stop_pid "${PIDS[$s]}" 20
    done
    [[ -n ${PIDS[serve]-} ]] && stop_pid "${PIDS[serve]}" 20
    # Shims of our containerds (started by them, identified by our socket).
    for s in "${SYSTEMS[@]}"; do
        for pid in $(pgrep -f -- "-address $(sock_of "$s")" 2>/dev/null); do
            stop_pid "$pid" 5
        done
    done
    # Mounts containerd/nvtier left under our directories and the tiers
    # (not the tier mount points themselves: tiers.sh down does those).
    while read -r m; do
        case $m in
            "$B"/* | /run/nvtier-testbed/"$NAME"/pmem/* | /run/nvtier-testbed/"$NAME"/hdd/*)
                umount -l "$m" 2>/dev/null ;;
        esac
    done < <(findmnt -rn -o TARGET | sort -r)
    # Per-container cgroups (runc removes them; this is for failures) and the
    # parents runc created in the other v1 hierarchies.
    for d in /sys/fs/cgroup/*/nvtier-testbed-"$NAME"; do
        [[ -d $d ]] || continue
        find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null
        [[ $d == /sys/fs/cgroup/blkio/* ]] || rmdir "$d" 2>/dev/null
    done
    bash testbed/registry.sh down "$NAME" >/dev/null 2>&1
    bash testbed/tiers.sh down "$NAME" >/dev/null 2>&1
    rm -rf "$B"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tiers, registry, image --------------------------------------------------------
rm -rf "$B"
mkdir -p "$B"
eval "$(NVT_QUIET=1 bash testbed/tiers.sh up "$NAME" --pmem-size 2G --hdd-size 6G)"
eval "$(NVT_QUIET=1 bash testbed/registry.sh up "$NAME" --rate "$RATE")"
export NO_PROXY="${REGISTRY%%:*}${NO_PROXY:+,$NO_PROXY}"
export no_proxy=$NO_PROXY
REF=$REGISTRY/bench/python:latest
bash testbed/push-image.sh "$OCI:python" "$REF" >/dev/null
LOOP=$(basename "$LOOP_DEV")
CG_REL=/nvtier-testbed-$NAME # containers go in CG_REL/<system>-<id>
read -r IOPS_RULE <"$BLKIO_CGROUP/blkio.throttle.read_iops_device"
info "tiers: pmem $PMEM_DIR, hdd $DISK_DIR on $LOOP_DEV (read rule: $IOPS_RULE); registry $REGISTRY at $RATE"

CTD_ROOT[docker]=$DISK_DIR/ctd-docker
CTD_ROOT[nvm]=$PMEM_DIR/ctd-nvm
CTD_ROOT[nvtier]=$DISK_DIR/ctd-nvtier

# --- nvtier serve ----------------------------------------------------------------
mkdir -p "$B/nvtier" "$PMEM_DIR/nvtier" "$DISK_DIR/nvtier" "$DISK_DIR/nvtier-state"
NVCFG=$B/nvtier/nvtier.toml
cat >"$NVCFG" <<EOF
state_dir = "$DISK_DIR/nvtier-state"
pmem_dir = "$PMEM_DIR/nvtier"
disk_dir = "$DISK_DIR/nvtier"
pmem_budget = "1G"
placement = "lass"
insecure_registries = ["$REGISTRY"]
snapshotter_socket = "$B/nvtier/snap.sock"
docker_plugin_socket = ""
containerd_root = "${CTD_ROOT[nvtier]}"
EOF
export NVTIER_CONFIG=$NVCFG
NVTIER_LOG=warn setsid bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" serve >"$B/nvtier/serve.log" 2>&1 &
PIDS[serve]=$!

# --- containerds -------------------------------------------------------------------
for s in "${SYSTEMS[@]}"; do
    mkdir -p "$B/$s" "${CTD_ROOT[$s]}"
    {
        printf 'version = 2\nroot = "%s"\nstate = "%s"\n' "${CTD_ROOT[$s]}" "$B/$s/state"
        printf 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        printf '[grpc]\n  address = "%s"\n' "$(sock_of "$s")"
        if [[ $s == nvtier ]]; then
            printf '[proxy_plugins]\n  [proxy_plugins.nvtier]\n    type = "snapshot"\n    address = "%s"\n' "$B/nvtier/snap.sock"
        fi
    } >"$B/$s/containerd.toml"
done
for _ in $(seq 100); do [[ -S $B/nvtier/snap.sock ]] && break; sleep 0.2; done
[[ -S $B/nvtier/snap.sock ]] || die "nvtier serve did not create its socket"
for s in "${SYSTEMS[@]}"; do
    setsid bash testbed/tiers.sh exec "$NAME" -- containerd --config "$B/$s/containerd.toml" >"$B/$s/containerd.log" 2>&1 &
    PIDS[$s]=$!
done
cx() { local s=$1; shift; ctr -a "$(sock_of "$s")" -n bench "$@"; }
for s in "${SYSTEMS[@]}"; do
    for _ in $(seq 100); do cx "$s" version >/dev/null 2>&1 && break; sleep 0.2; done
    cx "$s" version >/dev/null 2>&1 || die "containerd for $s did not come up"
done
plugins=$(cx nvtier plugins ls 2>&1 || true)
grep -Eq 'io\.containerd\.snapshotter\.v1 +nvtier .* ok' <<<"$plugins" ||
    warn "containerd may not have loaded the nvtier proxy snapshotter: $(grep nvtier <<<"$plugins" || echo 'not listed')"

# --- helpers ------------------------------------------------------------------------
now_ns() { date +%s%N; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Reads of the loop device counted in a blkio cgroup file (0 if none).
cg_read() { awk -v mm="$LOOP_MAJMIN" '$1 == mm && $2 == "Read" {v = $3} END {print v + 0}' "$1" 2>/dev/null || echo 0; }
# Loop device counters, the reads of the testbed cgroup itself (containerd,
# shims, runc before it joins the container's cgroup; v1 counters are per
# cgroup, children not included) and of nvtier serve's own child cgroup.
SERVE_CG=/sys/fs/cgroup/blkio$CG_REL/nvtier-serve
io_snap() {
    local st
    read -r -a st <"/sys/block/$LOOP/stat"
    echo "${st[0]} $((st[2] * 512)) ${st[4]} $((st[6] * 512))" \
        "$(cg_read "$BLKIO_CGROUP/blkio.throttle.io_serviced") $(cg_read "$BLKIO_CGROUP/blkio.throttle.io_service_bytes")" \
        "$(cg_read "$SERVE_CG/blkio.throttle.io_serviced") $(cg_read "$SERVE_CG/blkio.throttle.io_service_bytes")"
}
io_json() { # io_json "BEFORE" "AFTER": the differences as a JSON object
    local -a a b
    read -r -a a <<<"$1"
    read -r -a b <<<"$2"
    printf '{"hdd_read_ios": %d, "hdd_read_bytes": %d, "hdd_write_ios": %d, "hdd_write_bytes": %d, "containerd_read_ios": %d, "containerd_read_bytes": %d, "serve_read_ios": %d, "serve_read_bytes": %d}\n' \
        $((b[0] - a[0])) $((b[1] - a[1])) $((b[2] - a[2])) $((b[3] - a[3])) $((b[4] - a[4])) $((b[5] - a[5])) $((b[6] - a[6])) $((b[7] - a[7]))
}
# Blkio cgroup for one container, with the testbed's throttle rules (cgroup
# v1 rules are per cgroup, not inherited). runc joins it and removes it.
make_cgroup() {
    local d=/sys/fs/cgroup/blkio$CG_REL/$1 f
    mkdir -p "$d"
    for f in read_iops_device read_bps_device write_iops_device write_bps_device; do
        echo "$LOOP_MAJMIN $(awk -v mm="$LOOP_MAJMIN" '$1 == mm {print $2}' "$BLKIO_CGROUP/blkio.throttle.$f")" \
            >"$d/blkio.throttle.$f"
    done
}
pmem_bytes() {
    case $1 in
        docker) echo 0 ;;
        nvm) du -sb "${CTD_ROOT[nvm]}" | cut -f1 ;;
        nvtier) "$NVTIER" status --json | jq .pmem_used_bytes ;;
    esac
}
SAMPLES=$B/samples.jsonl
: >"$SAMPLES"
# nvtier serve gets its own throttled child cgroup too, so that its HDD reads
# are told apart from containerd's.
make_cgroup nvtier-serve
echo "${PIDS[serve]}" >"$SERVE_CG/cgroup.procs"

# --- pulls ---------------------------------------------------------------------------
for s in "${SYSTEMS[@]}"; do
    drop_caches
    io0=$(io_snap)
    t0=$(now_ns)
    cx "$s" images pull --plain-http --snapshotter "${SNAP[$s]}" "$REF" >"$B/$s/pull.out" 2>&1 ||
        { cat "$B/$s/pull.out" >&2; die "pull for $s failed"; }
    t1=$(now_ns)
    sync
    t2=$(now_ns)
    io1=$(io_snap)
    jq -nc --arg sys "$s" --argjson ms "$(((t1 - t0) / 1000000))" --argjson sms "$(((t2 - t1) / 1000000))" \
        --argjson io "$(io_json "$io0" "$io1")" \
        '{kind: "pull", system: $sys, ms: $ms, sync_after_ms: $sms} + $io' >>"$SAMPLES"
    info "pull $s: $(((t1 - t0) / 1000000)) ms, then sync $(((t2 - t1) / 1000000)) ms"
done
for s in "${SYSTEMS[@]}"; do
    extra='{}'
    [[ $s == nvm ]] && extra=$(jq -nc --argjson snap "$(du -sb "${CTD_ROOT[nvm]}/io.containerd.snapshotter.v1.overlayfs" | cut -f1)" \
        --argjson content "$(du -sb "${CTD_ROOT[nvm]}/io.containerd.content.v1.content" | cut -f1)" \
        '{snapshots_bytes: $snap, content_bytes: $content}')
    [[ $s == nvtier ]] && extra=$("$NVTIER" layers --json | jq -c '{layers: [.[] | {tier, pmem_bytes, disk_bytes, files}]}')
    jq -nc --arg sys "$s" --argjson b "$(pmem_bytes "$s")" --argjson x "$extra" \
        '{kind: "pmem", when: "after_pull", system: $sys, bytes: $b} + $x' >>"$SAMPLES"
done

# One cold start per system (not timed; also the warm-up of each
# containerd) that shows from the host what the container's own blkio
# cgroup saw: the container stays alive 3 s after python3 exits, and its
# cgroup's read rule and serviced reads on the loop device are read then.
for s in "${SYSTEMS[@]}"; do
    id=verify
    d=/sys/fs/cgroup/blkio$CG_REL/$s-$id
    out=$B/$s/verify.out
    make_cgroup "$s-$id"
    drop_caches
    io0=$(io_snap)
    cx "$s" run --rm --cgroup "$CG_REL/$s-$id" --snapshotter "${SNAP[$s]}" "$REF" "$id" \
        sh -c 'python3 /app/main.py && grep blkio /proc/self/cgroup && sleep 3' >"$out" 2>&1 &
    pid=$!
    for ((k = 0; k < 1200; k++)); do
        grep -q ':blkio:' "$out" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    ios=$(cg_read "$d/blkio.throttle.io_serviced")
    bytes=$(cg_read "$d/blkio.throttle.io_service_bytes")
    rule=$(cat "$d/blkio.throttle.read_iops_device" 2>/dev/null || true)
    wait "$pid" || { cat "$out" >&2; die "verification run for $s failed"; }
    io1=$(io_snap)
    grep -qx ready "$out" || { cat "$out" >&2; die "verification run for $s did not print ready"; }
    cg=$(grep ':blkio:' "$out" | cut -d: -f3)
    info "verify $s: container in blkio cgroup $cg, rule '$rule', $ios reads ($bytes B) on $LOOP_DEV counted there"
    jq -nc --arg sys "$s" --arg rule "$rule" --arg cg "$cg" --argjson ios "$ios" --argjson bytes "$bytes" \
        --argjson io "$(io_json "$io0" "$io1")" \
        '{kind: "verify", system: $sys, container_cgroup: $cg, container_read_iops_rule: $rule,
          container_cgroup_loop_read_ios: $ios, container_cgroup_loop_read_bytes: $bytes} + $io' >>"$SAMPLES"
done

# Control: Docker with the container in a child cgroup of the testbed's
# cgroup that gets no rules of its own (as runc makes it): v1 rules are not
# inherited, so this shows what the per-container rules change.
drop_caches
io0=$(io_snap)
t0=$(now_ns)
out=$(cx docker run --rm --cgroup "$CG_REL/docker-ctl" --snapshotter overlayfs "$REF" ctl python3 /app/main.py 2>&1) || true
t1=$(now_ns)
io1=$(io_snap)
jq -nc --argjson ms "$(((t1 - t0) / 1000000))" --argjson io "$(io_json "$io0" "$io1")" \
    --argjson ok "$(grep -qx ready <<<"$out" && echo true || echo false)" \
    '{kind: "control_unthrottled_container", system: "docker", ms: $ms, ok: $ok} + $io' >>"$SAMPLES"

# --- cold starts, systems interleaved (rotated order per rep) -----------------------
for ((i = 1; i <= REPS; i++)); do
    order=()
    for ((k = 0; k < ${#SYSTEMS[@]}; k++)); do
        order+=("${SYSTEMS[$(((i - 1 + k) % ${#SYSTEMS[@]}))]}")
    done
    for s in "${order[@]}"; do
        id=c$i
        make_cgroup "$s-$id"
        drop_caches
        io0=$(io_snap)
        t0=$(now_ns)
        rc=0
        out=$(cx "$s" run --rm --cgroup "$CG_REL/$s-$id" --snapshotter "${SNAP[$s]}" "$REF" "$id" python3 /app/main.py 2>&1) || rc=$?
        t1=$(now_ns)
        io1=$(io_snap)
        ok=false
        [[ $rc -eq 0 ]] && grep -qx ready <<<"$out" && ok=true
        [[ $ok == true ]] || warn "rep $i $s: exit $rc, output: $out"
        bz=false note=''
        busy && bz=true note=' (another heavy job is running)'
        ms=$(((t1 - t0) / 1000000))
        io=$(io_json "$io0" "$io1")
        jq -nc --arg sys "$s" --argjson rep "$i" --argjson ms "$ms" --argjson io "$io" \
            --argjson rc "$rc" --argjson ok "$ok" --argjson busy "$bz" \
            '{kind: "coldstart", system: $sys, rep: $rep, ms: $ms, exit: $rc, ok: $ok, other_heavy_job: $busy} + $io' >>"$SAMPLES"
        info "rep $i $s: $ms ms, HDD read $(jq .hdd_read_bytes <<<"$io") B$note"
    done
done
for s in "${SYSTEMS[@]}"; do
    jq -nc --arg sys "$s" --argjson b "$(pmem_bytes "$s")" \
        '{kind: "pmem", when: "after_runs", system: $sys, bytes: $b}' >>"$SAMPLES"
done

# --- results ---------------------------------------------------------------------------------
mkdir -p testbed/results
"$NVBENCH" report-coldstart --samples "$SAMPLES" --reps "$REPS" --started "$T_START" --rate "$RATE" \
    --iops-rule "$IOPS_RULE" --bps-rule "$(cat "$BLKIO_CGROUP/blkio.throttle.read_bps_device")" \
    --out-json testbed/results/coldstart.json --out-md testbed/results/coldstart.md
info "done in $(($(date +%s) - T_START)) s"
