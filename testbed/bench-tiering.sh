#!/usr/bin/env bash
# Hot-file tiering benchmark: cold start of real Debian images
# (testbed/corpus: a language runtime, a web server, a database, a distro
# shell by default) under four placements, each in its own store on the same
# emulated tiers (tmpfs "pmem", throttled loop-device "HDD"):
#   disk   every layer on the HDD             (pull --placement disk)
#   pmem   every layer on pmem                (pull --placement pmem)
#   lass   LASS only                          (pull, static_placement off)
#   hot    LASS + static classification, one profiling run (`nvtier trace`),
#          `nvtier migrate`; then one miss-mode trace whose disk reads are
#          promoted by a second migrate (closing the profiling loop)
# Every rep drops the caches and runs `nvtier run --json IMAGE -- CMD` (with
# --ready-port for servers) inside the HDD's blkio cgroup; the systems are
# interleaved. Cold start = mount + command until exit/ready. Disk-tier
# reads during each cold start come from the blkio cgroup's counters for the
# loop device. pmem bytes = `nvtier status` pmem_used_bytes (checked
# against du of the store's pmem directory).
# Results: testbed/results/tiering.{json,md}.
#
#   sudo bash testbed/bench-tiering.sh [--reps 5] [--images python,nginx,redis,debian]
#                                      [--rate 1gbit] [--name tierb] [--no-wait]
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source testbed/lib.sh

REPS=5
IMAGES=python,nginx,redis,debian
RATE=1gbit
NAME=tierb
WAIT=1
while (($#)); do
    case $1 in
        --reps) REPS=${2:?--reps needs a value}; shift 2 ;;
        --images) IMAGES=${2:?--images needs a value}; shift 2 ;;
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --name) NAME=${2:?--name needs a value}; shift 2 ;;
        --no-wait) WAIT=0; shift ;;
        -h | --help) sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "--reps must be a positive integer"
validate_name "$NAME"
need_root
need_cmd jq du

NVTIER=$ROOT/target/release/nvtier
B=/var/tmp/nvtier-bench/$NAME
SYSTEMS=(disk pmem lass hot)
RESULTS=$ROOT/testbed/results
mkdir -p "$RESULTS"

info "building nvtier (release)"
cargo build --release --locked -p nvtier-driver -p nvtier-testbed
[[ -x $NVTIER ]] || die "no $NVTIER after the build"

info "building the corpus images ($IMAGES)"
bash testbed/corpus/build.sh --only "$IMAGES"
CORPUS=$(bash testbed/corpus/build.sh --list --json --only "$IMAGES")

if ((WAIT)); then
    for _ in $(seq 1 120); do
        pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null || break
        sleep 5
    done
fi

cleanup() {
    set +e
    for d in "$B"/*/mnt-*; do [[ -d $d ]] && umount -l "$d" 2>/dev/null; done
    bash testbed/registry.sh down "$NAME" >/dev/null 2>&1
    bash testbed/tiers.sh down "$NAME" >/dev/null 2>&1
    rm -rf "$B"
}
trap cleanup EXIT
cleanup
set -e
mkdir -p "$B"
bash testbed/tiers.sh up "$NAME" --pmem-size 6G --hdd-size 16G >/dev/null
bash testbed/registry.sh up "$NAME" --rate "$RATE" >/dev/null
eval "$(bash testbed/tiers.sh env "$NAME")"
eval "$(bash testbed/registry.sh env "$NAME")"

# The loop device's read counters in the HDD's blkio cgroup.
disk_reads() { # -> "BYTES IOS"
    local b i
    b=$(awk -v d="$LOOP_MAJMIN" '$1 == d && $2 == "Read" {print $3}' "$BLKIO_CGROUP/blkio.throttle.io_service_bytes")
    i=$(awk -v d="$LOOP_MAJMIN" '$1 == d && $2 == "Read" {print $3}' "$BLKIO_CGROUP/blkio.throttle.io_serviced")
    echo "${b:-0} ${i:-0}"
}

cfg() { # cfg SYS IMG -> config path
    echo "$B/$1-$2/config.toml"
}
nv() { # nv SYS IMG ARGS... (inside the HDD's blkio cgroup)
    local c
    c=$(cfg "$1" "$2")
    shift 2
    NVTIER_CONFIG=$c bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" "$@"
}

mapfile -t NAMES < <(jq -r '.[].name' <<<"$CORPUS")
((${#NAMES[@]})) || die "no images selected"
declare -A REF READY CMD
for img in "${NAMES[@]}"; do
    REF[$img]=$REGISTRY/corpus/$img:latest
    READY[$img]=$(jq -r --arg n "$img" '.[] | select(.name == $n) | .ready' <<<"$CORPUS")
    CMD[$img]=$(jq -c --arg n "$img" '.[] | select(.name == $n) | .cmd' <<<"$CORPUS")
    layout=$(jq -r --arg n "$img" '.[] | select(.name == $n) | .image' <<<"$CORPUS")
    info "pushing $layout"
    bash testbed/push-image.sh "$layout" "${REF[$img]}" >/dev/null
done

run_args() { # run_args IMG -> words for `nvtier run` after the image
    local r=${READY[$1]}
    if [[ $r == port:* ]]; then
        printf '%s\n' --ready-port "${r#port:}"
    fi
    printf '%s\n' --
    jq -r '.[]' <<<"${CMD[$1]}"
}

# --- deploy every (system, image) into its own store -------------------------
PULLS=$B/pulls.jsonl
: >"$PULLS"
for sys in "${SYSTEMS[@]}"; do
    for img in "${NAMES[@]}"; do
        d=$B/$sys-$img
        mkdir -p "$d/state" "$PMEM_DIR/$sys-$img" "$DISK_DIR/$sys-$img"
        static=false
        [[ $sys == hot ]] && static=true
        cat >"$(cfg "$sys" "$img")" <<CFG
state_dir = "$d/state"
pmem_dir = "$PMEM_DIR/$sys-$img"
disk_dir = "$DISK_DIR/$sys-$img"
pmem_budget = "4G"
insecure_registries = ["$REGISTRY"]
static_placement = $static
migrate_rate = 0
CFG
        placement=lass
        [[ $sys == disk ]] && placement=disk
        [[ $sys == pmem ]] && placement=pmem
        info "pull $img for $sys ($placement)"
        nv "$sys" "$img" pull --json --placement "$placement" "${REF[$img]}" |
            jq -c --arg s "$sys" --arg i "$img" '{system: $s, image: $i, pull: .}' >>"$PULLS"
    done
done

# --- profile and migrate (system hot) ----------------------------------------
MIG=$B/migrate.jsonl
: >"$MIG"
for img in "${NAMES[@]}"; do
    mapfile -t args < <(run_args "$img")
    targs=("${args[@]}")
    [[ ${READY[$img]} == port:* ]] || targs=(--until-exit "${args[@]}")
    info "profiling $img"
    nv hot "$img" trace --json "${REF[$img]}" "${targs[@]}" >"$B/trace-$img.json"
    nv hot "$img" migrate --json "${REF[$img]}" |
        jq -c --arg i "$img" '{image: $i, step: "migrate", r: .}' >>"$MIG"
    # Close the loop: a miss-mode cold start; what it still read from disk
    # is now in the profile, and the next migrate promotes it.
    nv hot "$img" trace --json --misses "${REF[$img]}" "${targs[@]}" >"$B/misses-$img.json"
    nv hot "$img" migrate --json "${REF[$img]}" |
        jq -c --arg i "$img" --argjson m "$(jq -c '{misses, miss_bytes}' "$B/misses-$img.json")" \
            '{image: $i, step: "migrate-after-misses", misses: $m, r: .}' >>"$MIG"
done

# --- cold starts ---------------------------------------------------------------
RUNS=$B/runs.jsonl
: >"$RUNS"
for ((rep = 1; rep <= REPS; rep++)); do
    for img in "${NAMES[@]}"; do
        mapfile -t args < <(run_args "$img")
        for sys in "${SYSTEMS[@]}"; do
            bash testbed/tiers.sh drop-caches
            read -r b0 i0 < <(disk_reads)
            out=$(nv "$sys" "$img" run --json "${REF[$img]}" "${args[@]}" 2>/dev/null) ||
                die "$sys $img: nvtier run failed"
            read -r b1 i1 < <(disk_reads)
            jq -c --arg s "$sys" --arg i "$img" --argjson rep "$rep" \
                --argjson db $((b1 - b0)) --argjson di $((i1 - i0)) \
                '{system: $s, image: $i, rep: $rep, mount_ms, elapsed_ms, tiered,
                  disk_read_bytes: $db, disk_read_ios: $di}' \
                <<<"$out" >>"$RUNS"
            printf '  rep %d %-8s %-5s mount %s ms + run %s ms  disk reads %d B / %d IOs\n' "$rep" "$img" "$sys" \
                "$(jq -r .mount_ms <<<"$out")" "$(jq -r .elapsed_ms <<<"$out")" $((b1 - b0)) $((i1 - i0)) >&2
        done
    done
done

# --- pmem usage ----------------------------------------------------------------
USAGE=$B/usage.jsonl
: >"$USAGE"
for sys in "${SYSTEMS[@]}"; do
    for img in "${NAMES[@]}"; do
        st=$(NVTIER_CONFIG=$(cfg "$sys" "$img") "$NVTIER" status --json)
        file_bytes=$(NVTIER_CONFIG=$(cfg "$sys" "$img") "$NVTIER" layers --json "${REF[$img]}" | jq -c '[.[].file_bytes]')
        du_bytes=$(du -sB1 "$PMEM_DIR/$sys-$img" | cut -f1)
        jq -c --arg s "$sys" --arg i "$img" --argjson fb "$file_bytes" --argjson du "$du_bytes" \
            '{system: $s, image: $i, layer_file_bytes: $fb, pmem_used: .pmem_used_bytes,
              pmem_meta: .pmem_meta_bytes, pmem_hot: .pmem_hot_bytes, pmem_layers: .pmem_layer_bytes,
              du_pmem: $du}' <<<"$st" >>"$USAGE"
    done
done

# --- report --------------------------------------------------------------------
"$ROOT/target/release/nvbench" report-tiering --runs "$RUNS" --usage "$USAGE" --migrate "$MIG" \
    --reps "$REPS" --rate "$RATE" --out-dir "$RESULTS"
