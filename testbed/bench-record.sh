#!/usr/bin/env bash
# What the daemon's recording of a container cold start costs that start.
# One `nvtier serve` (every layer on pmem, no hot-file tiering, so the
# placement never changes between reps) under a private containerd 1.6; the
# Debian python3 image (bench-common.sh). Every rep drops the caches and
# times `ctr run --rm python3 /app/main.py` twice, in rotating order:
#   recorded    the image's profile was deleted first: serve records this start
#   unrecorded  the profile is fresh: serve's eBPF watcher sees the new root
#               and ignores it (the cost every start pays with recording on)
# Results: testbed/results/record-overhead.{json,md} (medians and the ratio).
#
#   sudo bash testbed/bench-record.sh [--reps 15] [--name rec]
#
# Everything (containerd, nvtier serve, shims, mounts, testbed) is torn down
# on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source testbed/lib.sh

REPS=15
NAME=rec
while (($#)); do
    case $1 in
        --reps) REPS=${2:?--reps needs a value}; shift 2 ;;
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"
validate_name "$NAME"
need_root
need_cmd containerd ctr runc jq

info "building nvtier (release)"
cargo build --release --locked -p nvtier-driver
NVTIER=$ROOT/target/release/nvtier

# shellcheck source-path=SCRIPTDIR source=bench-common.sh
source testbed/bench-common.sh
build_python_image

B=/var/tmp/nvtier-bench/$NAME-ctd
SOCK=$B/ctd.sock
SERVE_PID=
CTD_PID=
cleanup() {
    local rc=$? id pid m
    trap - EXIT INT TERM
    set +e
    if ((rc != 0)) && [[ -f $B/serve.log ]]; then
        warn "failed (exit $rc); last lines of the serve log:"
        tail -20 "$B/serve.log" >&2
    fi
    for id in $(ctr -a "$SOCK" -n bench tasks ls -q 2>/dev/null); do
        ctr -a "$SOCK" -n bench tasks kill -s SIGKILL "$id" >/dev/null 2>&1
        sleep 0.3
        ctr -a "$SOCK" -n bench tasks rm -f "$id" >/dev/null 2>&1
    done
    [[ -n $CTD_PID ]] && stop_pid "$CTD_PID" 20
    [[ -n $SERVE_PID ]] && stop_pid "$SERVE_PID" 20
    for pid in $(pgrep -f -- "-address $SOCK" 2>/dev/null); do stop_pid "$pid" 5; done
    while read -r m; do
        case $m in "$B"/* | "$PMEM_DIR"/* | "$DISK_DIR"/*) umount -l "$m" 2>/dev/null ;; esac
    done < <(findmnt -rn -o TARGET | sort -r)
    rm -rf "$B"
    bench_testbed_down
    exit "$rc"
}

bench_testbed_up "$NAME" 1gbit
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$B"
mkdir -p "$B"
cat >>"$NVTIER_CONFIG" <<EOF
placement = "pmem"
tiering = false
record_quiet_ms = 1000
snapshotter_socket = "$B/snap.sock"
docker_plugin_socket = ""
containerd_root = "$B/root"
containerd_socket = "$SOCK"
EOF
NVTIER_LOG=info setsid "$NVTIER" serve >"$B/serve.log" 2>&1 &
SERVE_PID=$!
{
    printf 'version = 2\nroot = "%s"\nstate = "%s"\n' "$B/root" "$B/state"
    printf 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
    printf '[grpc]\n  address = "%s"\n' "$SOCK"
    printf '[proxy_plugins]\n  [proxy_plugins.nvtier]\n    type = "snapshot"\n    address = "%s"\n' "$B/snap.sock"
} >"$B/containerd.toml"
for _ in $(seq 100); do [[ -S $B/snap.sock ]] && break; sleep 0.2; done
[[ -S $B/snap.sock ]] || die "nvtier serve did not create its socket"
for _ in $(seq 50); do grep -q "recording container cold starts" "$B/serve.log" && break; sleep 0.2; done
grep -q "recording container cold starts" "$B/serve.log" ||
    die "nvtier serve does not record container starts here: $(grep -i record "$B/serve.log" || true)"
setsid containerd --config "$B/containerd.toml" >"$B/containerd.log" 2>&1 &
CTD_PID=$!
cx() { ctr -a "$SOCK" -n bench "$@"; }
for _ in $(seq 100); do cx version >/dev/null 2>&1 && break; sleep 0.2; done
cx images pull --plain-http --snapshotter nvtier "$REF" >/dev/null

now_ns() { date +%s%N; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
runs() { "$NVTIER" profile list --json | jq --arg i "$IMAGE" '[.[] | select(.image == $i) | .runs][0] // 0'; }
wait_recorded() { # until the profile has more runs than $1
    local k
    for ((k = 0; k < 150; k++)); do
        (($(runs) > $1)) && return 0
        sleep 0.2
    done
    die "the recording did not finish"
}
SAMPLES=$B/samples.jsonl
: >"$SAMPLES"
start() { # start VARIANT ID: one timed cold start
    local t0 t1 out
    drop_caches
    t0=$(now_ns)
    out=$(cx run --rm --snapshotter nvtier "$REF" "$2" python3 /app/main.py)
    t1=$(now_ns)
    [[ $out == ready ]] || die "$1 start printed '$out'"
    jq -nc --arg v "$1" --argjson ms "$(((t1 - t0) / 1000))" --argjson rep "${rep:-0}" \
        '{variant: $v, rep: $rep, us: $ms}' >>"$SAMPLES"
    echo $(((t1 - t0) / 1000000))
}
variant() { # variant NAME ID
    local before
    if [[ $1 == recorded ]]; then
        rm -f "$STATE"/state/profiles/*.json
        before=$(runs)
        ms=$(start recorded "$2")
        wait_recorded "$before"
    else
        ms=$(start unrecorded "$2")
    fi
    info "rep $rep $1: $ms ms"
}
# Warm-up: the first start is recorded, which makes nvtier's record of the
# image containerd unpacked, and its profile.
cx run --rm --snapshotter nvtier "$REF" warm python3 /app/main.py >/dev/null
IMAGE=
for ((k = 0; k < 150; k++)); do
    IMAGE=$("$NVTIER" images --json | jq -r '.[0].name // empty')
    [[ -n $IMAGE ]] && break
    sleep 0.2
done
[[ -n $IMAGE ]] || die "the daemon made no record of the image containerd unpacked (was the start recorded?)"
wait_recorded 0
for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2)); then
        variant recorded "r$rep"
        variant unrecorded "u$rep"
    else
        variant unrecorded "u$rep"
        variant recorded "r$rep"
    fi
done
recorded_n=$(grep -c 'recorded a container cold start' "$B/serve.log" || true)
# Events (accesses) each recording took in, from the serve log.
EVENTS=$(sed 's/\x1b\[[0-9;]*m//g' "$B/serve.log" | grep 'recorded a container cold start' |
    sed -n 's/.* events=\([0-9]*\).*/\1/p' | jq -sc .)
skipped=$(grep -c 'container start not recorded' "$B/serve.log" || true)

mkdir -p testbed/results
MACHINE="$(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}') ($(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB) · Linux $(uname -r)"
jq -s --arg date "$(date -u +%FT%TZ)" --arg machine "$MACHINE" --argjson reps "$REPS" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    --argjson recorded_logged "$recorded_n" --argjson events "${EVENTS:-[]}" '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    {date: $date, machine: $machine, reps: $reps, load: $load, recordings_logged: $recorded_logged,
     events_per_recording_median: ($events | median),
     samples: .,
     recorded_median_ms: ([.[] | select(.variant == "recorded") | .us] | median / 1000),
     unrecorded_median_ms: ([.[] | select(.variant == "unrecorded") | .us] | median / 1000),
     paired_ratio_median: ([group_by(.rep)[] | select(length == 2 and .[0].rep > 0)
        | (map(select(.variant == "recorded"))[0].us / map(select(.variant == "unrecorded"))[0].us)] | median)}
    | .ratio = (.recorded_median_ms / .unrecorded_median_ms)' "$SAMPLES" >testbed/results/record-overhead.json
jq -r '"# Recording overhead\n\n\(.date) · \(.machine) · \(.reps) reps, variants interleaved in rotating order, caches dropped before each start; `ctr run --rm python3 /app/main.py` (containerd 1.6, nvtier serve, every layer on pmem, no hot-file tiering); medians.\n\n| start | median ms | min ms | max ms |\n|---|--:|--:|--:|\n" +
    ([ "recorded", "unrecorded" ] as $vs | [ $vs[] as $v | [.samples[] | select(.variant == $v) | .us / 1000] as $x |
      "| \($v) | \(.[($v + "_median_ms")] // "" | tostring | .[0:7]) | \($x | min | tostring | .[0:7]) | \($x | max | tostring | .[0:7]) |" ] | join("\n")) +
    "\n\nrecorded / unrecorded: **\(.ratio | tostring | .[0:5])×** (ratio of the medians); median of the per-rep ratios: **\(.paired_ratio_median | tostring | .[0:5])×**. Recordings the daemon logged: \(.recordings_logged) (the warm-up and one per recorded rep), \(.events_per_recording_median) events each (median). Load average at the end: \(.load).\n"' \
    testbed/results/record-overhead.json >testbed/results/record-overhead.md
cat testbed/results/record-overhead.md
info "skipped starts logged at info: $skipped"
