#!/usr/bin/env bash
# Emulated storage tiers for nvtier: a tmpfs "pmem" tier and a throttled
# loop-device ext4 "HDD" tier. See testbed/README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

BLKIO_ROOT=/sys/fs/cgroup/blkio

usage() {
    cat <<'EOF'
Usage:
  tiers.sh up NAME [--pmem-size 2G] [--hdd-size 8G] [--iops 150] [--bps 150M]
  tiers.sh down NAME
  tiers.sh env NAME
  tiers.sh exec NAME -- CMD [ARGS...]
  tiers.sh drop-caches
  tiers.sh --help

Emulated tiers for testbed NAME (1-12 chars of [a-z0-9-]):

  pmem  tmpfs of --pmem-size at /run/nvtier-testbed/NAME/pmem
  hdd   ext4 on a sparse image /var/tmp/nvtier-testbed/NAME/hdd.img, attached
        with `losetup --direct-io=on` (read_ahead_kb=1024), mounted at
        /run/nvtier-testbed/NAME/hdd

The loop device is throttled with cgroup v1 blkio rules
(read/write iops and bps) in /sys/fs/cgroup/blkio/nvtier-testbed-NAME; only
processes in that cgroup are throttled for reads (use `exec`). Write iops/bps
rules for the device are also set on the root blkio cgroup, because buffered
writes are written back from the root cgroup.

Sizes take K/M/G/T suffixes (powers of 1024). --bps is bytes per second
(150M = 150 MiB/s). --iops 0 / --bps 0 means "no limit".

Commands:
  up           create (or complete / re-apply) the tiers; idempotent. Prints
               the same lines as `env`.
  down         undo everything `up` did, tolerating partial state.
  env          print shell-sourceable PMEM_DIR, DISK_DIR, LOOP_DEV,
               LOOP_MAJMIN, BLKIO_CGROUP.
  exec         run CMD inside the blkio cgroup (with the env exported).
  drop-caches  sync and drop the page cache, dentries and inodes.
EOF
}

set_paths() {
    NAME=$1
    RUN_DIR=$NVT_RUN_ROOT/$NAME
    VAR_DIR=$NVT_VAR_ROOT/$NAME
    PMEM_DIR=$RUN_DIR/pmem
    DISK_DIR=$RUN_DIR/hdd
    IMG=$VAR_DIR/hdd.img
    STATE=$RUN_DIR/tiers.state
    BLKIO_CGROUP=$BLKIO_ROOT/nvtier-testbed-$NAME
}

load_state() {
    LOOP_DEV='' LOOP_MAJMIN='' PMEM_SIZE='' HDD_SIZE='' IOPS='' BPS=''
    [[ -f $STATE ]] || return 1
    local k v
    while IFS='=' read -r k v; do
        case $k in
            LOOP_DEV | LOOP_MAJMIN | PMEM_SIZE | HDD_SIZE | IOPS | BPS) printf -v "$k" '%s' "$v" ;;
        esac
    done <"$STATE"
}

save_state() {
    mkdir -p "$RUN_DIR"
    local tmp=$STATE.tmp.$$
    {
        printf 'LOOP_DEV=%s\n' "$LOOP_DEV"
        printf 'LOOP_MAJMIN=%s\n' "$LOOP_MAJMIN"
        printf 'PMEM_SIZE=%s\n' "$PMEM_SIZE"
        printf 'HDD_SIZE=%s\n' "$HDD_SIZE"
        printf 'IOPS=%s\n' "$IOPS"
        printf 'BPS=%s\n' "$BPS"
    } >"$tmp"
    mv -f "$tmp" "$STATE"
}

print_env() {
    printf 'PMEM_DIR=%s\n' "$PMEM_DIR"
    printf 'DISK_DIR=%s\n' "$DISK_DIR"
    printf 'LOOP_DEV=%s\n' "$LOOP_DEV"
    printf 'LOOP_MAJMIN=%s\n' "$LOOP_MAJMIN"
    printf 'BLKIO_CGROUP=%s\n' "$BLKIO_CGROUP"
}

# Loop devices currently backed by $IMG (normally zero or one).
loops_for_img() {
    [[ -e $IMG ]] || return 0
    losetup -n -O NAME -j "$IMG" 2>/dev/null || true
}

majmin_of() {
    cat "/sys/block/$(basename "$1")/dev"
}

# write_rule FILE "MAJ:MIN VALUE"
write_rule() {
    local file=$1 rule=$2
    printf '%s\n' "$rule" >"$file" 2>/dev/null ||
        die "cannot write '$rule' to $file"
}

check_blkio() {
    [[ -f $BLKIO_ROOT/blkio.throttle.read_iops_device ]] ||
        die "cgroup v1 blkio throttling not available at $BLKIO_ROOT"
}

cmd_up() {
    local pmem_size=2G hdd_size=8G iops=150 bps=150M
    while (($#)); do
        case $1 in
            --pmem-size) pmem_size=${2:?--pmem-size needs a value}; shift 2 ;;
            --hdd-size) hdd_size=${2:?--hdd-size needs a value}; shift 2 ;;
            --iops) iops=${2:?--iops needs a value}; shift 2 ;;
            --bps) bps=${2:?--bps needs a value}; shift 2 ;;
            --pmem-size=* | --hdd-size=* | --iops=* | --bps=*)
                set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
            -h | --help) usage; exit 0 ;;
            *) die "up: unknown argument '$1' (see --help)" ;;
        esac
    done
    local pmem_bytes hdd_bytes bps_bytes
    pmem_bytes=$(parse_size "$pmem_size") || die "bad --pmem-size '$pmem_size'"
    hdd_bytes=$(parse_size "$hdd_size") || die "bad --hdd-size '$hdd_size'"
    bps_bytes=$(parse_size "$bps") || die "bad --bps '$bps'"
    [[ $iops =~ ^[0-9]+$ ]] || die "bad --iops '$iops'"
    ((pmem_bytes > 0)) || die "--pmem-size must be > 0"
    ((hdd_bytes >= 64 * 1024 * 1024)) || die "--hdd-size must be at least 64M"

    need_root
    need_cmd losetup mkfs.ext4 blkid mountpoint flock truncate
    check_blkio
    load_state || true

    mkdir -p "$RUN_DIR" "$VAR_DIR" "$PMEM_DIR" "$DISK_DIR"

    # --- pmem: tmpfs ---------------------------------------------------------
    if mountpoint -q "$PMEM_DIR"; then
        local cur
        cur=$(findmnt -n -o FSTYPE --target "$PMEM_DIR")
        [[ $cur == tmpfs ]] || die "$PMEM_DIR is mounted but is $cur, not tmpfs"
        mount -o remount,size="$pmem_bytes" "$PMEM_DIR" ||
            die "cannot resize pmem tmpfs to $pmem_size"
    else
        mount -t tmpfs -o size="$pmem_bytes",mode=0755 "nvtier-pmem-$NAME" "$PMEM_DIR" ||
            die "cannot mount tmpfs on $PMEM_DIR"
    fi
    PMEM_SIZE=$pmem_bytes

    # --- hdd: sparse image on a direct-io loop device --------------------------
    global_lock loop
    if [[ -e $IMG ]]; then
        local cur_size
        cur_size=$(stat -c %s "$IMG")
        if ((cur_size != hdd_bytes)); then
            die "$IMG exists with size $cur_size, not $hdd_bytes; run 'tiers.sh down $NAME' first to change --hdd-size"
        fi
    else
        truncate -s "$hdd_bytes" "$IMG" || die "cannot create sparse image $IMG"
    fi
    HDD_SIZE=$hdd_bytes

    local loops=()
    mapfile -t loops < <(loops_for_img)
    if ((${#loops[@]} == 0)); then
        LOOP_DEV=$(losetup --direct-io=on --find --show "$IMG") ||
            die "losetup failed for $IMG (no free loop device?)"
    else
        LOOP_DEV=${loops[0]}
        ((${#loops[@]} == 1)) || warn "$IMG is attached to several loop devices: ${loops[*]}; using $LOOP_DEV"
        losetup --direct-io=on "$LOOP_DEV" 2>/dev/null || true
    fi
    LOOP_MAJMIN=$(majmin_of "$LOOP_DEV")
    # Record the device now, so that `down` can clean up after a failure below.
    save_state
    exec 9>&- # release the loop lock

    local sysblk
    sysblk=/sys/block/$(basename "$LOOP_DEV")
    if [[ $(cat "$sysblk/loop/dio" 2>/dev/null || echo 0) != 1 ]]; then
        warn "$LOOP_DEV is not in direct-io mode (backing filesystem refused O_DIRECT?); reads may be served from the host page cache"
    fi
    echo 1024 >"$sysblk/queue/read_ahead_kb" || die "cannot set read_ahead_kb on $LOOP_DEV"

    if ! mountpoint -q "$DISK_DIR"; then
        local fstype
        fstype=$(blkid -p -s TYPE -o value "$LOOP_DEV" 2>/dev/null || true)
        if [[ $fstype != ext4 ]]; then
            # No lazy init: ext4lazyinit writing in the background would
            # disturb measurements.
            mkfs.ext4 -q -F -m 0 -E lazy_itable_init=0,lazy_journal_init=0 \
                -L "nvt-$NAME" "$LOOP_DEV" || die "mkfs.ext4 failed on $LOOP_DEV"
        fi
        mount -t ext4 "$LOOP_DEV" "$DISK_DIR" || die "cannot mount $LOOP_DEV on $DISK_DIR"
    else
        local src
        src=$(findmnt -n -o SOURCE --target "$DISK_DIR")
        [[ $src == "$LOOP_DEV" ]] || die "$DISK_DIR is mounted from $src, expected $LOOP_DEV"
    fi

    # --- blkio throttling ------------------------------------------------------
    IOPS=$iops
    BPS=$bps_bytes
    mkdir -p "$BLKIO_CGROUP" || die "cannot create cgroup $BLKIO_CGROUP"
    local dir
    for dir in read write; do
        write_rule "$BLKIO_CGROUP/blkio.throttle.${dir}_iops_device" "$LOOP_MAJMIN $IOPS"
        write_rule "$BLKIO_CGROUP/blkio.throttle.${dir}_bps_device" "$LOOP_MAJMIN $BPS"
    done
    # Buffered writes are written back by kernel threads in the root cgroup.
    write_rule "$BLKIO_ROOT/blkio.throttle.write_iops_device" "$LOOP_MAJMIN $IOPS"
    write_rule "$BLKIO_ROOT/blkio.throttle.write_bps_device" "$LOOP_MAJMIN $BPS"
    save_state

    print_env
}

umount_retry() {
    local dir=$1
    mountpoint -q "$dir" 2>/dev/null || return 0
    umount "$dir" 2>/dev/null && return 0
    sync
    sleep 1
    umount "$dir" 2>/dev/null && return 0
    warn "$dir is busy; detaching it lazily (umount -l)"
    umount -l "$dir" || warn "umount -l $dir failed"
}

cmd_down() {
    (($# == 0)) || die "down: unexpected argument '$1'"
    need_root
    load_state || true

    # All loop devices we may have set up: recorded one plus any attached to IMG.
    local -A devs=()
    [[ -n $LOOP_DEV ]] && devs[$LOOP_DEV]=1
    local d
    while read -r d; do
        [[ -n $d ]] && devs[$d]=1
    done < <(loops_for_img)

    # cgroup: move any remaining processes out, then remove it.
    if [[ -d $BLKIO_CGROUP ]]; then
        local pid try
        for ((try = 0; try < 5; try++)); do
            while read -r pid; do
                if [[ -n $pid ]]; then
                    echo "$pid" >"$BLKIO_ROOT/cgroup.procs" 2>/dev/null || true
                fi
            done <"$BLKIO_CGROUP/cgroup.procs"
            rmdir "$BLKIO_CGROUP" 2>/dev/null && break
            sleep 0.2
        done
        [[ -d $BLKIO_CGROUP ]] && warn "could not remove cgroup $BLKIO_CGROUP"
    fi

    # Root-cgroup write rules (they would otherwise stay on the loop device
    # and throttle its next user).
    local mm
    local -A mms=()
    [[ -n $LOOP_MAJMIN ]] && mms[$LOOP_MAJMIN]=1
    for d in "${!devs[@]}"; do
        mm=$(majmin_of "$d" 2>/dev/null) && mms[$mm]=1
    done
    for mm in "${!mms[@]}"; do
        local f
        for f in write_iops_device write_bps_device; do
            if grep -q "^$mm " "$BLKIO_ROOT/blkio.throttle.$f" 2>/dev/null; then
                echo "$mm 0" >"$BLKIO_ROOT/blkio.throttle.$f" 2>/dev/null ||
                    warn "cannot clear root rule $mm in blkio.throttle.$f"
            fi
        done
    done

    umount_retry "$DISK_DIR"
    umount_retry "$PMEM_DIR"

    for d in "${!devs[@]}"; do
        # Only detach it if it is still backed by our image.
        if losetup -n -O BACK-FILE "$d" 2>/dev/null | grep -qF "$IMG"; then
            losetup -d "$d" 2>/dev/null || warn "cannot detach $d (busy?)"
        fi
    done

    rm -f "$IMG" "$STATE"
    rmdir "$PMEM_DIR" "$DISK_DIR" 2>/dev/null || true
    rmdir "$VAR_DIR" "$RUN_DIR" 2>/dev/null || true
    # The shared parent $NVT_VAR_ROOT stays: removing it raced with a
    # parallel `up` between its `mkdir -p` of the parent and of its own dir.
    return 0
}

require_up() {
    load_state || die "tiers for '$NAME' are not up (no $STATE)"
    mountpoint -q "$PMEM_DIR" || die "tiers for '$NAME' are incomplete: $PMEM_DIR is not mounted (run up again or down)"
    mountpoint -q "$DISK_DIR" || die "tiers for '$NAME' are incomplete: $DISK_DIR is not mounted (run up again or down)"
    [[ -d $BLKIO_CGROUP ]] || die "tiers for '$NAME' are incomplete: no cgroup $BLKIO_CGROUP"
}

cmd_env() {
    (($# == 0)) || die "env: unexpected argument '$1'"
    require_up
    print_env
}

cmd_exec() {
    [[ ${1-} == -- ]] && shift
    (($#)) || die "exec: missing command (usage: tiers.sh exec NAME -- CMD...)"
    need_root
    require_up
    echo $$ >"$BLKIO_CGROUP/cgroup.procs" || die "cannot join cgroup $BLKIO_CGROUP"
    export PMEM_DIR DISK_DIR LOOP_DEV LOOP_MAJMIN BLKIO_CGROUP
    exec "$@"
}

cmd_drop_caches() {
    need_root
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# drop-caches is the one command without a NAME.
[[ ${1-} == drop-caches ]] && { cmd_drop_caches; exit 0; }
run_named_command up down env exec -- "$@"
