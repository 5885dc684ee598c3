# shellcheck shell=bash
# Common helpers for the nvtier testbed scripts. Sourced, never executed.

NVT_RUN_ROOT=/run/nvtier-testbed
# shellcheck disable=SC2034 # used by the scripts that source this file
NVT_VAR_ROOT=/var/tmp/nvtier-testbed

PROG=${PROG:-$(basename "$0")}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}

warn() {
    printf '%s: warning: %s\n' "$PROG" "$*" >&2
}

info() {
    [[ ${NVT_QUIET:-0} == 1 ]] || printf '%s: %s\n' "$PROG" "$*" >&2
}

need_root() {
    [[ $EUID -eq 0 ]] || die "must run as root"
}

need_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 ||
            die "required command '$c' not found (run testbed/install-deps.sh)"
    done
}

# NAME: short identifier [a-z0-9-], starting with [a-z0-9], at most 12 chars.
validate_name() {
    local name=${1-}
    [[ -n $name ]] || die "missing NAME"
    [[ $name =~ ^[a-z0-9][a-z0-9-]{0,11}$ ]] ||
        die "invalid NAME '$name': use 1-12 chars of [a-z0-9-], starting with a letter or digit"
}

# The command line of a script whose commands act on one testbed NAME:
# run_named_command CMD... -- COMMAND NAME [ARGS...] checks that COMMAND is
# one of CMD... and NAME is valid, calls the script's set_paths NAME, then
# cmd_COMMAND ARGS. -h/--help/help (as COMMAND, or as NAME) print the
# script's usage.
run_named_command() {
    local -a cmds=()
    local cmd c known=0
    while [[ $1 != -- ]]; do
        cmds+=("$1")
        shift
    done
    shift
    (($#)) || { usage >&2; exit 2; }
    cmd=$1
    shift
    case $cmd in
        -h | --help | help) usage; exit 0 ;;
    esac
    for c in "${cmds[@]}"; do
        [[ $c == "$cmd" ]] && known=1
    done
    ((known)) || die "unknown command '$cmd' (see --help)"
    [[ ${1-} == -h || ${1-} == --help ]] && { usage; exit 0; }
    validate_name "${1-}"
    set_paths "$1"
    shift
    "cmd_$cmd" "$@"
}

# parse_size 8M -> bytes. Suffixes K, M, G, T (powers of 1024, optional
# trailing B / iB), or a plain number of bytes.
parse_size() {
    local s=${1-} n u
    [[ $s =~ ^([0-9]+)([KkMmGgTt]?)(i?[Bb])?$ ]] || return 1
    n=${BASH_REMATCH[1]}
    u=${BASH_REMATCH[2]^^}
    case $u in
        '') ;;
        K) n=$((n * 1024)) ;;
        M) n=$((n * 1024 * 1024)) ;;
        G) n=$((n * 1024 * 1024 * 1024)) ;;
        T) n=$((n * 1024 * 1024 * 1024 * 1024)) ;;
    esac
    printf '%s\n' "$n"
}

# Take an exclusive lock on a testbed-wide lock file for the rest of the
# process' life (fd 9). Serialises allocation of shared resources (loop
# devices, subnets) between parallel invocations with different NAMEs.
global_lock() {
    local which=$1
    mkdir -p "$NVT_RUN_ROOT"
    exec 9>"$NVT_RUN_ROOT/.$which.lock"
    flock -w 60 9 || die "timed out waiting for $NVT_RUN_ROOT/.$which.lock"
}

stop_pid() { # stop_pid PID SECS: TERM, wait, KILL
    local pid=$1 secs=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
