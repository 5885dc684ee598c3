#!/usr/bin/env bash
# A local OCI registry (Debian's docker-registry, distribution v2.8) in its
# own network namespace behind a rate-limited veth pair. See testbed/README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

REGISTRY_BIN=/usr/bin/docker-registry
NS_IF=eth0

usage() {
    cat <<'EOF'
Usage:
  registry.sh up NAME [--rate 1gbit|100mbit|none] [--port 5000]
  registry.sh down NAME
  registry.sh env NAME
  registry.sh rate NAME RATE
  registry.sh --help

Runs /usr/bin/docker-registry (plain HTTP) inside network namespace nvt-NAME.
A veth pair joins it to the host: host side nvh-NAME (nvhNAME when NAME has
12 chars, to stay within 15 characters), namespace side eth0. Addresses come
from 10.77.X.0/30 (host .1, registry .2), X = cksum(NAME) mod 250 + 1,
probing X+1, X+2, ... if that /30 is already in use on the host.

Downloads from the registry (namespace -> host) are shaped by a tbf qdisc on
the namespace side of the veth. RATE is <N>kbit, <N>mbit, <N>gbit or none
(default 1gbit); burst = max(64 KiB, rate x 2 ms) rounded up to 64 KiB,
latency 50 ms. Uploads (pushes) are not shaped.

Blob data lives on disk in /var/tmp/nvtier-testbed/NAME/registry-data; the
config, pidfile and log (registry.log) in /run/nvtier-testbed/NAME/.

Commands:
  up     create netns, veth, qdisc and start the registry; idempotent (a
         running registry with the same config is kept). Prints `env` lines.
  down   stop the registry, delete netns and veth, remove the data directory;
         tolerates partial state.
  env    print shell-sourceable REGISTRY=10.77.X.2:PORT, REGISTRY_DATA,
         REGISTRY_NETNS, REGISTRY_RATE, REGISTRY_LOG.
  rate   change the download rate of a running registry.
EOF
}

set_paths() {
    NAME=$1
    RUN_DIR=$NVT_RUN_ROOT/$NAME
    VAR_DIR=$NVT_VAR_ROOT/$NAME
    DATA_DIR=$VAR_DIR/registry-data
    STATE=$RUN_DIR/registry.state
    CONF=$RUN_DIR/registry.yml
    PIDFILE=$RUN_DIR/registry.pid
    LOG=$RUN_DIR/registry.log
    NETNS=nvt-$NAME
    if ((${#NAME} <= 11)); then
        HOST_IF=nvh-$NAME
    else
        # NAME never starts with '-', so this cannot collide with nvh-<11 chars>.
        HOST_IF=nvh$NAME
    fi
}

load_state() {
    SUBNET_X='' PORT='' RATE=''
    [[ -f $STATE ]] || return 1
    local k v
    while IFS='=' read -r k v; do
        case $k in
            SUBNET_X | PORT | RATE) printf -v "$k" '%s' "$v" ;;
        esac
    done <"$STATE"
}

save_state() {
    mkdir -p "$RUN_DIR"
    local tmp=$STATE.tmp.$$
    printf 'SUBNET_X=%s\nPORT=%s\nRATE=%s\n' "$SUBNET_X" "$PORT" "$RATE" >"$tmp"
    mv -f "$tmp" "$STATE"
}

addr() { printf '10.77.%s.%s' "$SUBNET_X" "$1"; }

print_env() {
    printf 'REGISTRY=%s:%s\n' "$(addr 2)" "$PORT"
    printf 'REGISTRY_DATA=%s\n' "$DATA_DIR"
    printf 'REGISTRY_NETNS=%s\n' "$NETNS"
    printf 'REGISTRY_RATE=%s\n' "$RATE"
    printf 'REGISTRY_LOG=%s\n' "$LOG"
}

netns_exists() { [[ -e /run/netns/$NETNS ]]; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }
in_ns() { ip netns exec "$NETNS" "$@"; }

# Is 10.77.X.0/30 free? (no host address or route in it, not claimed by the
# state file of another testbed)
subnet_free() {
    local x=$1 f
    if ip -4 -o addr show | awk '{print $4}' | grep -q "^10\.77\.$x\."; then
        return 1
    fi
    if ip -4 route show to match "10.77.$x.1" 2>/dev/null | grep -qv '^default'; then
        return 1
    fi
    for f in "$NVT_RUN_ROOT"/*/registry.state; do
        [[ -f $f && $f != "$STATE" ]] || continue
        grep -qx "SUBNET_X=$x" "$f" && return 1
    done
    return 0
}

allocate_subnet() {
    local x0 i x
    x0=$(($(printf '%s' "$NAME" | cksum | cut -d' ' -f1) % 250 + 1))
    for ((i = 0; i < 250; i++)); do
        x=$(((x0 - 1 + i) % 250 + 1))
        if subnet_free "$x"; then
            SUBNET_X=$x
            return 0
        fi
    done
    die "no free 10.77.X.0/30 subnet left"
}

# rate_args RATE -> tc tbf arguments on stdout; empty for none.
rate_args() {
    local r=${1,,} n u bits burst
    [[ $r == none ]] && return 0
    [[ $r =~ ^([0-9]+)(kbit|mbit|gbit)$ ]] || return 1
    n=${BASH_REMATCH[1]}
    u=${BASH_REMATCH[2]}
    case $u in
        kbit) bits=$((n * 1000)) ;;
        mbit) bits=$((n * 1000000)) ;;
        gbit) bits=$((n * 1000000000)) ;;
    esac
    ((bits > 0)) || return 1
    # ~2 ms worth of bytes, at least 64 KiB, rounded up to 64 KiB.
    burst=$((bits / 8 / 500))
    burst=$(((burst + 65535) / 65536 * 65536))
    ((burst >= 65536)) || burst=65536
    printf 'rate %s burst %s latency 50ms\n' "$r" "$burst"
}

apply_rate() {
    local r=$1 args
    args=$(rate_args "$r") || die "bad rate '$r' (use e.g. 1gbit, 100mbit, 500kbit or none)"
    if [[ -z $args ]]; then
        in_ns tc qdisc del dev "$NS_IF" root 2>/dev/null || true
    else
        # shellcheck disable=SC2086 # word splitting of args is intended
        in_ns tc qdisc replace dev "$NS_IF" root tbf $args ||
            die "cannot set tbf qdisc ($args) on $NS_IF in $NETNS"
    fi
}

write_config() {
    local tmp=$CONF.tmp.$$
    cat >"$tmp" <<EOF
# generated by testbed/registry.sh for testbed '$NAME'
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DATA_DIR
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $(addr 2):$PORT
  secret: nvtier-testbed-$NAME
EOF
    if [[ -f $CONF ]] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1 # unchanged
    fi
    mv -f "$tmp" "$CONF"
    return 0
}

registry_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$REGISTRY_BIN serve $CONF" || return 1
    printf '%s\n' "$pid"
}

healthy() {
    curl --noproxy '*' -sf -o /dev/null --max-time 2 "http://$(addr 2):$PORT/v2/"
}

# kill_wait PID... : TERM, wait up to 5 s, then KILL.
kill_wait() {
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    local i p alive
    for ((i = 0; i < 50; i++)); do
        alive=0
        for p in "$@"; do
            kill -0 "$p" 2>/dev/null && alive=1
        done
        ((alive)) || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
    sleep 0.2
}

stop_registry() {
    local pid
    if pid=$(registry_pid); then
        kill_wait "$pid"
    fi
    rm -f "$PIDFILE"
}

start_registry() {
    mkdir -p "$DATA_DIR"
    : >"$LOG"
    # setsid: own session, no controlling terminal, survives the caller.
    # `ip netns exec` execs (no fork), so $! is the registry's pid.
    setsid ip netns exec "$NETNS" "$REGISTRY_BIN" serve "$CONF" \
        </dev/null >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    local i
    for ((i = 0; i < 100; i++)); do
        if healthy; then
            return 0
        fi
        if ! kill -0 "$(<"$PIDFILE")" 2>/dev/null; then
            break
        fi
        sleep 0.2
    done
    printf '%s: registry did not answer on http://%s:%s/v2/ within 20 s; log %s:\n' \
        "$PROG" "$(addr 2)" "$PORT" "$LOG" >&2
    sed 's/^/  | /' "$LOG" >&2 || true
    stop_registry
    exit 1
}

cmd_up() {
    local rate=1gbit port=5000
    while (($#)); do
        case $1 in
            --rate) rate=${2:?--rate needs a value}; shift 2 ;;
            --port) port=${2:?--port needs a value}; shift 2 ;;
            --rate=* | --port=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
            -h | --help) usage; exit 0 ;;
            *) die "up: unknown argument '$1' (see --help)" ;;
        esac
    done
    rate=${rate,,}
    rate_args "$rate" >/dev/null || die "bad --rate '$rate' (use e.g. 1gbit, 100mbit or none)"
    if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        die "bad --port '$port'"
    fi

    need_root
    need_cmd ip tc curl setsid flock cksum
    [[ -x $REGISTRY_BIN ]] || die "$REGISTRY_BIN not found (apt-get install docker-registry)"

    mkdir -p "$RUN_DIR" "$VAR_DIR"
    load_state || true

    global_lock net
    if ! netns_exists; then
        ip netns add "$NETNS" || die "cannot create network namespace $NETNS"
    fi
    if [[ -z $SUBNET_X ]] || ! subnet_is_ours; then
        allocate_subnet
    fi
    PORT=$port
    RATE=${RATE:-none}
    save_state

    if link_exists "$HOST_IF" && ! in_ns ip link show dev "$NS_IF" >/dev/null 2>&1; then
        # Stale host end whose peer is not in our namespace: recreate the pair.
        ip link del "$HOST_IF" 2>/dev/null || true
    fi
    if ! link_exists "$HOST_IF"; then
        in_ns ip link del "$NS_IF" 2>/dev/null || true
        ip link add "$HOST_IF" type veth peer name "$NS_IF" netns "$NETNS" ||
            die "cannot create veth pair $HOST_IF <-> $NETNS/$NS_IF"
    fi
    ip addr replace "$(addr 1)/30" dev "$HOST_IF" || die "cannot set address on $HOST_IF"
    ip link set "$HOST_IF" up
    in_ns ip addr replace "$(addr 2)/30" dev "$NS_IF" || die "cannot set address in $NETNS"
    in_ns ip link set lo up
    in_ns ip link set "$NS_IF" up
    exec 9>&- # release the net lock

    apply_rate "$rate"
    RATE=$rate
    save_state

    local changed=0
    write_config && changed=1
    if ((changed == 0)) && registry_pid >/dev/null && healthy; then
        : # already running with this config
    else
        stop_registry
        start_registry
    fi
    print_env
}

# The recorded subnet is still assigned to our host interface (or free).
subnet_is_ours() {
    if link_exists "$HOST_IF" &&
        ip -4 -o addr show dev "$HOST_IF" | grep -qF " $(addr 1)/30"; then
        return 0
    fi
    subnet_free "$SUBNET_X"
}

cmd_down() {
    (($# == 0)) || die "down: unexpected argument '$1'"
    need_root
    load_state || true

    stop_registry
    if netns_exists; then
        local pids=()
        mapfile -t pids < <(ip netns pids "$NETNS" 2>/dev/null || true)
        ((${#pids[@]} == 0)) || kill_wait "${pids[@]}"
        ip netns del "$NETNS" 2>/dev/null || warn "cannot delete network namespace $NETNS"
    fi
    # Deleting the namespace destroys the veth pair; this is for leftovers.
    if link_exists "$HOST_IF"; then
        ip link del "$HOST_IF" 2>/dev/null || warn "cannot delete link $HOST_IF"
    fi
    rm -rf "$DATA_DIR"
    rm -f "$CONF" "$LOG" "$STATE" "$PIDFILE"
    rmdir "$VAR_DIR" "$RUN_DIR" 2>/dev/null || true
    rmdir "$NVT_VAR_ROOT" 2>/dev/null || true
    return 0
}

require_up() {
    load_state || die "registry '$NAME' is not up (no $STATE)"
    netns_exists || die "registry '$NAME' is incomplete: no network namespace $NETNS (run up again or down)"
}

cmd_env() {
    (($# == 0)) || die "env: unexpected argument '$1'"
    require_up
    registry_pid >/dev/null || warn "registry process for '$NAME' is not running"
    print_env
}

cmd_rate() {
    (($# == 1)) || die "usage: registry.sh rate NAME RATE"
    local r=${1,,}
    need_root
    require_up
    apply_rate "$r"
    RATE=$r
    save_state
}

run_named_command up down env rate -- "$@"
