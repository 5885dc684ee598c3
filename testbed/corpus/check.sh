#!/usr/bin/env bash
# Run every built corpus image once per run in a minimal container and time
# how long it takes to become ready.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=corpus-lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/corpus-lib.sh"

usage() {
    cat <<EOF
Usage:
  check.sh [--quick] [--only NAME,...] [--out DIR] [--runs N] [--timeout S] [--json]
  check.sh --help

For each (selected) image of the corpus layout (default $CORPUS_OUT_DEFAULT,
built by build.sh): umoci unpack it into a temporary bundle, then run its
command (process.args/env/cwd of the bundle's config.json, i.e. the image's
Cmd, Env and WorkingDir) 1 + N times in a minimal container and wait for
its readiness rule:
  exit[:TEXT]  the command exits 0 (and its output contains TEXT)
  port:N       127.0.0.1:N accepts a TCP connection; then the container
               is killed
The container: unshare --mount --pid --fork --uts --ipc (host network),
rootfs = overlay of the unpacked image (read-only lower) and a fresh upper
dir per run, /proc mounted, host /dev bind-mounted (rbind), chroot via
unshare --root --wd, running as root. Mounts live in the container's mount
namespace and vanish with it.

The first run warms the page cache and is not counted; the table shows the
median and the minimum of the N (default 3) warm runs, the layer count, the
compressed size of the layers and the unpacked size (du of the rootfs).

  --quick       only the quick subset: ${CORPUS_QUICK[*]}
  --only A,B    only these images
  --out DIR     the OCI layout (default $CORPUS_OUT_DEFAULT)
  --runs N      warm runs per image (default 3)
  --timeout S   per run (default 60)
  --json        print the results as a JSON array instead of the table

Exit status 1 if any image is missing or fails. Root.
EOF
}

QUICK=0 ONLY='' OUT=$CORPUS_OUT_DEFAULT RUNS=3 TIMEOUT=60 JSON=0
while (($#)); do
    case $1 in
        --quick) QUICK=1; shift ;;
        --only) ONLY=${2:?--only needs NAME,...}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --timeout) TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
        --json) JSON=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "bad --runs '$RUNS'"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "bad --timeout '$TIMEOUT'"
need_root
need_cmd umoci unshare jq timeout
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
NVBENCH=$ROOT/target/release/nvbench
(cd "$ROOT" && cargo build --release --locked -p nvtier-testbed >&2)
OUT=$(readlink -m "$OUT")
[[ -f $OUT/index.json ]] || die "no OCI layout at $OUT (run build.sh first)"
images=$(corpus_json "$QUICK" "$ONLY")

work=$(mktemp -d /var/tmp/nvtier-corpus-check.XXXXXX)
CPID=''
cleanup() {
    stop_container
    if grep -q " $work/" /proc/self/mountinfo; then
        warn "mounts left under $work; not removing it"
    else
        rm -rf --one-file-system "$work"
    fi
}
trap cleanup EXIT

# alive PID: running (kill -0 also succeeds on an unreaped zombie)
alive() {
    local st
    read -r st 2>/dev/null <"/proc/$1/stat" || return 1
    st=${st##*) }
    [[ ${st%% *} != Z ]]
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_container BUNDLE RUNDIR: the bundle's process in a fresh container,
# in the background (CPID = the outer unshare); output in RUNDIR/out.
start_container() {
    local bundle=$1 rd=$2 cwd
    local -a args envs
    mkdir -p "$rd/upper" "$rd/work" "$rd/merged"
    mapfile -t args < <(jq -r '.process.args[]' "$bundle/config.json")
    mapfile -t envs < <(jq -r '.process.env[]?' "$bundle/config.json")
    cwd=$(jq -r '.process.cwd // "/"' "$bundle/config.json")
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --mount --pid --fork --uts --ipc --propagation private --kill-child -- /bin/bash -c '
        set -e
        lower=$1 rd=$2 cwd=$3 n=$4
        shift 4
        envs=("${@:1:n}")
        shift "$n"
        m=$rd/merged
        mount -t overlay overlay -o "lowerdir=$lower,upperdir=$rd/upper,workdir=$rd/work" "$m"
        mount -t proc proc "$m/proc"
        mount --rbind /dev "$m/dev"
        hostname nvtier-corpus
        exec env -i "${envs[@]}" unshare --root="$m" --wd="$cwd" -- "$@"
    ' _ "$bundle/rootfs" "$rd" "$cwd" "${#envs[@]}" "${envs[@]}" "${args[@]}" </dev/null >"$rd/out" 2>&1 &
    CPID=$!
}

# stop_container: SIGKILL the container's init, so the kernel kills the rest
# of its pid namespace; the outer unshare reaps it and exits, and by then
# every process of the container is gone (its sockets closed).
stop_container() {
    [[ -n $CPID ]] || return 0
    local c i kids=()
    read -r -a kids 2>/dev/null <"/proc/$CPID/task/$CPID/children" || true
    for c in "${kids[@]}"; do kill -KILL "$c" 2>/dev/null || true; done
    for ((i = 0; i < 500 && ${#kids[@]}; i++)); do
        alive "$CPID" || break
        sleep 0.01
    done
    kill -KILL "$CPID" 2>/dev/null || true
    wait "$CPID" 2>/dev/null || true
    CPID=''
}

# run_once BUNDLE READY RUNDIR: prints the milliseconds to readiness, or
# fails with a message on stderr.
run_once() {
    local bundle=$1 ready=$2 rd=$3 t0 rc=0 port deadline i
    trap stop_container EXIT # run_once runs in $(...): a subshell of its own
    if [[ $ready == port:* ]]; then
        port=${ready#port:}
        for ((i = 0; i < 100; i++)); do port_open "$port" || break; sleep 0.05; done
        port_open "$port" && { echo "127.0.0.1:$port is already in use on the host" >&2; return 1; }
        t0=$(now_ms)
        start_container "$bundle" "$rd"
        deadline=$((t0 + TIMEOUT * 1000))
        until port_open "$port"; do
            if ! alive "$CPID"; then
                wait "$CPID" || rc=$?
                CPID=''
                echo "exited ($rc) before 127.0.0.1:$port was ready: $(tail -c 600 "$rd/out")" >&2
                return 1
            fi
            (($(now_ms) < deadline)) || {
                stop_container
                echo "127.0.0.1:$port not ready after $TIMEOUT s: $(tail -c 600 "$rd/out")" >&2
                return 1
            }
            sleep 0.005
        done
        echo $(($(now_ms) - t0))
        stop_container
    else
        t0=$(now_ms)
        start_container "$bundle" "$rd"
        deadline=$((t0 + TIMEOUT * 1000))
        while alive "$CPID"; do
            (($(now_ms) < deadline)) || {
                stop_container
                echo "did not exit within $TIMEOUT s: $(tail -c 600 "$rd/out")" >&2
                return 1
            }
            sleep 0.005
        done
        local t1
        t1=$(now_ms)
        wait "$CPID" || rc=$?
        CPID=''
        ((rc == 0)) || { echo "exit status $rc: $(tail -c 600 "$rd/out")" >&2; return 1; }
        if [[ $ready == exit:* ]] && ! grep -qF -- "${ready#exit:}" "$rd/out"; then
            echo "output lacks '${ready#exit:}': $(tail -c 600 "$rd/out")" >&2
            return 1
        fi
        echo $((t1 - t0))
    fi
}

SAMPLES=$work/results.jsonl
: >"$SAMPLES"
failed=()
while read -r img; do
    name=$(jq -r .name <<<"$img")
    ready=$(jq -r .ready <<<"$img")
    category=$(jq -r .category <<<"$img")
    manifest=$(jq -r --arg t "$name" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$OUT/index.json")
    if [[ -z $manifest ]]; then
        warn "$name: not in $OUT (run build.sh)"
        failed+=("$name")
        jq -cn --arg n "$name" --arg c "$category" --arg r "$ready" '{name: $n, category: $c, ready: $r, ok: false, error: "not built"}' >>"$SAMPLES"
        continue
    fi
    mf=$OUT/blobs/sha256/${manifest#sha256:}
    sizes=$(jq -c '[.layers[].size]' "$mf")
    b=$work/$name
    umoci unpack --image "$OUT:$name" "$b" >/dev/null
    unpacked=$(du -sb "$b/rootfs" | cut -f1)
    times=() err=''
    for ((i = 0; i <= RUNS; i++)); do
        if ms=$(run_once "$b" "$ready" "$work/run.$name.$i" 2>"$work/err"); then
            ((i == 0)) || times+=("$ms")
        else
            err=$(tr '\n' ' ' <"$work/err")
            break
        fi
        rm -rf --one-file-system "$work/run.$name.$i"
    done
    rm -rf --one-file-system "$b" "$work/run.$name".*
    if [[ -n $err ]]; then
        warn "$name: FAILED: $err"
        failed+=("$name")
        jq -cn --arg n "$name" --arg c "$category" --arg r "$ready" --arg e "$err" \
            --argjson s "$sizes" --argjson u "$unpacked" \
            '{name: $n, category: $c, ready: $r, layer_sizes: $s, unpacked_bytes: $u, ok: false, error: $e}' >>"$SAMPLES"
        continue
    fi
    jq -cn --arg n "$name" --arg c "$category" --arg r "$ready" \
        --argjson s "$sizes" --argjson u "$unpacked" \
        '{name: $n, category: $c, ready: $r, layer_sizes: $s, unpacked_bytes: $u, ok: true,
          runs_ms: ($ARGS.positional | map(tonumber))}' --args -- "${times[@]}" >>"$SAMPLES"
    info "$name: ready in ${times[*]} ms ($RUNS warm runs), $unpacked bytes unpacked"
done < <(jq -c '.[]' <<<"$images")

if ((JSON)); then
    "$NVBENCH" report-corpus --samples "$SAMPLES" --json
else
    "$NVBENCH" report-corpus --samples "$SAMPLES"
fi
((${#failed[@]} == 0)) || die "failed: ${failed[*]}"
