#!/usr/bin/env bash
# Build a Debian (bookworm) OCI image of up to four layers with debootstrap
# and umoci, like a four-step Dockerfile:
#   base     debootstrap --variant=minbase bookworm   (always; shared by all
#            images: the same blob in every image of a layout; without
#            .debs, apt lists and logs)
#   runtime  RUN apt-get install -y PACKAGES            (if --packages)
#   app      COPY SRC DEST ...                          (if --app-file)
#   config   COPY SRC DEST ... ; RUN SCRIPT             (if --config-file or
#                                                        --config-script)
# then the image config (cmd, env, workdir, labels).
#
#   build-debian-image.sh --out DIR --tag TAG [--packages "P1 P2"]
#       [--app-file SRC:DEST]... [--config-file SRC:DEST]...
#       [--config-script SCRIPT] [--cmd ARG]... [--env K=V]...
#       [--workdir DIR] [--label K=V]... [--force]
#
#   --out DIR           OCI layout (created if missing); may hold many tags
#   --tag TAG           the image's tag in DIR
#   --packages "..."    apt packages (--no-install-recommends) for the runtime
#                       layer; daemons are not started (policy-rc.d exit 101)
#   --app-file SRC:DEST a host file copied to DEST (absolute) in the app
#                       layer; repeatable; the mode of SRC is kept
#   --config-file SRC:DEST  same, for the config layer
#   --config-script SCRIPT  a host shell script run (sh, as root, in a chroot
#                       with /proc and /dev) after the config files are
#                       copied; its changes are part of the config layer
#   --cmd ARG           one word of the image's Cmd; repeat for each word
#                       (default: /bin/sh)
#   --env K=V           image Env entry; repeatable (PATH is always set)
#   --workdir DIR       image WorkingDir
#   --label K=V         image label; repeatable
#   --force             rebuild even if the image is up to date
#
# Cached: a stamp (OUT/.nvtier-stamps/TAG) records every input (builder
# version, base, packages, sha256 and destination of each file, script, cmd,
# env, workdir, labels); if it matches and TAG exists, nothing is rebuilt.
# The image is built under a temporary tag and renamed at the end, so a failed
# build leaves the previous TAG intact. Builds of one OUT are serialised (a
# lock next to OUT). Chroot mounts (/proc, /dev, the apt cache) live in a
# private mount namespace and vanish with it, even on failure. mtimes of files
# a step creates or changes, and all "created" dates, are clamped to
# SOURCE_DATE_EPOCH (default 2023-06-10, bookworm's release) so that rebuilds
# of the same inputs produce the same layers as far as apt allows.
# .deb files are cached in /var/tmp/nvtier-debian-cache/archives.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

# Bump when the way images are built changes: every cached image is rebuilt.
BUILDER_VERSION=3

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

OUT='' TAG='' PACKAGES='' CONFIG_SCRIPT='' WORKDIR='' FORCE=0
APP_FILES=() CONFIG_FILES=() CMD=() ENVS=() LABELS=()
MIRROR=${NVTIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
EPOCH=${SOURCE_DATE_EPOCH:-1686355200}
while (($#)); do
    case $1 in
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --packages) PACKAGES=${2?--packages needs a value}; shift 2 ;;
        --app-file) APP_FILES+=("${2:?--app-file needs SRC:DEST}"); shift 2 ;;
        --config-file) CONFIG_FILES+=("${2:?--config-file needs SRC:DEST}"); shift 2 ;;
        --config-script) CONFIG_SCRIPT=${2:?--config-script needs a file}; shift 2 ;;
        --cmd) CMD+=("${2?--cmd needs a value}"); shift 2 ;;
        --env) ENVS+=("${2:?--env needs K=V}"); shift 2 ;;
        --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
        --label) LABELS+=("${2:?--label needs K=V}"); shift 2 ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $OUT && -n $TAG ]] || die "need --out and --tag (see --help)"
[[ $TAG =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "bad --tag '$TAG'"
need_root
need_cmd umoci debootstrap unshare chroot flock jq sha256sum
((${#CMD[@]})) || CMD=(/bin/sh)
for f in "${APP_FILES[@]}" "${CONFIG_FILES[@]}"; do
    [[ $f == *:/* ]] || die "bad file spec '$f': want SRC:/ABSOLUTE/DEST"
    [[ -f ${f%%:*} ]] || die "no such file: ${f%%:*}"
done
[[ -z $CONFIG_SCRIPT || -f $CONFIG_SCRIPT ]] || die "no such file: $CONFIG_SCRIPT"
for e in "${ENVS[@]}" "${LABELS[@]}"; do
    [[ $e == [A-Za-z_]*=* ]] || die "bad K=V '$e'"
done
has_path=0
for e in "${ENVS[@]}"; do [[ $e == PATH=* ]] && has_path=1; done
((has_path)) || ENVS=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "${ENVS[@]}")

OUT=${OUT%/}
mkdir -p "$(dirname "$OUT")"
exec 8>"$OUT.lock"
flock -w 3600 8 || die "timed out waiting for $OUT.lock"

# --- base (debootstrap, cached per machine) -------------------------------------
cache=/var/tmp/nvtier-debian-cache
mkdir -p "$cache/archives/partial"
base=$cache/bookworm-minbase
(
    flock 7
    if [[ ! -f $base/.complete ]]; then
        rm -rf "$base"
        info "debootstrap bookworm (minbase) from $MIRROR"
        debootstrap --variant=minbase bookworm "$base" "$MIRROR" >"$cache/debootstrap.log" 2>&1 ||
            { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
        touch "$base/.complete"
    fi
) 7>"$cache/.base.lock"

# --- cache stamp ----------------------------------------------------------------
filesum() { printf '%s %s\n' "$(sha256sum <"${1%%:*}" | cut -d' ' -f1)" "${1#*:}"; }
want=$(
    echo "builder $BUILDER_VERSION epoch $EPOCH"
    echo "base bookworm minbase $(sha256sum <"$base/var/lib/dpkg/status" | cut -d' ' -f1)"
    echo "packages $PACKAGES"
    for f in "${APP_FILES[@]}"; do echo "app $(filesum "$f")"; done
    for f in "${CONFIG_FILES[@]}"; do echo "config $(filesum "$f")"; done
    [[ -z $CONFIG_SCRIPT ]] || echo "config-script $(sha256sum <"$CONFIG_SCRIPT" | cut -d' ' -f1)"
    echo "cmd $(jq -cn '$ARGS.positional' --args -- "${CMD[@]}")"
    echo "env $(jq -cn '$ARGS.positional' --args -- "${ENVS[@]}")"
    echo "workdir $WORKDIR"
    echo "labels $(jq -cn '$ARGS.positional' --args -- "${LABELS[@]}")"
)
stamp_dir=$OUT/.nvtier-stamps
has_tag() { [[ -f $OUT/index.json ]] && jq -e --arg t "$1" 'any(.manifests[]?; .annotations["org.opencontainers.image.ref.name"] == $t)' "$OUT/index.json" >/dev/null; }
if ((!FORCE)) && [[ -f $stamp_dir/$TAG && $(cat "$stamp_dir/$TAG") == "$want" ]] && has_tag "$TAG"; then
    info "$OUT:$TAG is up to date"
    exit 0
fi

# --- build ------------------------------------------------------------------------
work=$(mktemp -d /var/tmp/nvtier-debimg.XXXXXX)
TMPTAG=$TAG.nvtier-building
cleanup() {
    # Mounts exist only inside the namespaces of in_chroot; the check is a
    # belt and braces guard against deleting host files through a bind mount.
    if grep -q " $work/" /proc/self/mountinfo; then
        warn "mounts left under $work; not removing it"
    else
        rm -rf --one-file-system "$work"
    fi
    if has_tag "$TMPTAG"; then umoci rm --image "$OUT:$TMPTAG" 2>/dev/null || true; fi
}
trap cleanup EXIT

created=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)
[[ -d $OUT ]] || umoci init --layout "$OUT"
has_tag "$TMPTAG" && umoci rm --image "$OUT:$TMPTAG"
rm -f "$stamp_dir/$TAG"
umoci new --image "$OUT:$TMPTAG"
umoci unpack --image "$OUT:$TMPTAG" "$work/bundle" >/dev/null
r=$work/bundle/rootfs

# repack CREATED_BY: one new layer with the changes in the bundle since the
# last repack; mtimes changed since the step began are clamped first.
repack() {
    find "$r" -xdev -newer "$work/step" -exec touch -h -d "@$EPOCH" {} +
    umoci repack --refresh-bundle --history.created "$created" --history.created_by "$1" \
        --image "$OUT:$TMPTAG" "$work/bundle"
}
step() { touch "$work/step"; }

# in_chroot LOG SCRIPT: run sh -c SCRIPT in the rootfs as root, in private
# mount/pid/ipc/uts namespaces with /proc, /dev, resolv.conf and the apt cache.
in_chroot() {
    local log=$1 script=$2
    # shellcheck disable=SC2016 # expanded by the inner bash
    unshare --mount --pid --fork --ipc --uts --propagation private -- /bin/bash -c '
        set -e
        r=$1 cache=$2 script=$3
        mount -t proc proc "$r/proc"
        mount --bind /dev "$r/dev"
        mount --bind "$cache/archives" "$r/var/cache/apt/archives"
        [[ -f $r/etc/resolv.conf && -f /etc/resolv.conf ]] &&
            mount --bind "$(readlink -f /etc/resolv.conf)" "$r/etc/resolv.conf"
        exec chroot "$r" /usr/bin/env -i HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -ec "$script"
    ' _ "$r" "$cache" "$script" >>"$log" 2>&1
}

# Daemons' maintainer scripts must not start services in the chroot.
policy_rc_d() {
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod 755 "$r/usr/sbin/policy-rc.d"
}
tidy() {
    rm -f "$r/usr/sbin/policy-rc.d" "$r"/var/log/apt/* "$r"/var/log/dpkg.log "$r"/var/log/alternatives.log \
        "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/var/cache/ldconfig/aux-cache
    rm -rf "${r:?}"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "${r:?}"/tmp/* "$r"/root/.cache
}

# copy_files SRC:DEST...: copies into the rootfs; appends "COPY NAME DEST" to
# HIST (NAME = basename of DEST, so temporary source names do not show)
HIST=''
copy_files() {
    local f src dest
    for f in "$@"; do
        src=${f%%:*} dest=${f#*:}
        mkdir -p "$r$(dirname "$dest")"
        cp --preserve=mode --remove-destination "$src" "$r$dest"
        HIST+="${HIST:+; }COPY $(basename "$dest") $dest"
    done
}

info "building $OUT:$TAG"
# 1. base: the debootstrap tree without its downloaded .debs, apt lists and
# logs (like the official debian images)
step
tar -C "$base" --exclude=./.complete --exclude='./var/cache/apt/archives/*.deb' \
    --exclude='./var/lib/apt/lists/*_*' --exclude='./var/log/*.log' -cf - . | tar -C "$r" -xpf -
touch -h -d "@$EPOCH" "$r"
umoci repack --refresh-bundle --history.created "$created" \
    --history.created_by "debootstrap --variant=minbase bookworm $MIRROR" --image "$OUT:$TMPTAG" "$work/bundle"

# 2. runtime
if [[ -n $PACKAGES ]]; then
    step
    policy_rc_d
    info "apt-get install $PACKAGES"
    (
        flock 7
        in_chroot "$work/apt.log" "apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES"
    ) 7>"$cache/.apt.lock" || { tail -30 "$work/apt.log" >&2; die "apt-get install $PACKAGES failed"; }
    tidy
    repack "RUN apt-get install -y --no-install-recommends $PACKAGES"
fi

# 3. application
if ((${#APP_FILES[@]})); then
    step
    HIST=''
    copy_files "${APP_FILES[@]}"
    repack "$HIST"
fi

# 4. config
if ((${#CONFIG_FILES[@]})) || [[ -n $CONFIG_SCRIPT ]]; then
    step
    HIST=''
    copy_files "${CONFIG_FILES[@]}"
    if [[ -n $CONFIG_SCRIPT ]]; then
        policy_rc_d
        cp "$CONFIG_SCRIPT" "$r/tmp/nvtier-config.sh"
        in_chroot "$work/config.log" "sh /tmp/nvtier-config.sh" ||
            { tail -30 "$work/config.log" >&2; die "--config-script $CONFIG_SCRIPT failed"; }
        tidy
        HIST+="${HIST:+; }RUN $(basename "$CONFIG_SCRIPT")"
    fi
    repack "$HIST"
fi

# image config
cfg=(--architecture amd64 --os linux --created "$created" --history.created "$created")
for a in "${CMD[@]}"; do cfg+=(--config.cmd "$a"); done
for e in "${ENVS[@]}"; do cfg+=(--config.env "$e"); done
for l in "${LABELS[@]}"; do cfg+=(--config.label "$l"); done
[[ -z $WORKDIR ]] || cfg+=(--config.workingdir "$WORKDIR")
umoci config --image "$OUT:$TMPTAG" "${cfg[@]}" \
    --history.created_by "CMD $(jq -cn '$ARGS.positional' --args -- "${CMD[@]}")" >/dev/null

has_tag "$TAG" && umoci rm --image "$OUT:$TAG"
umoci tag --image "$OUT:$TMPTAG" "$TAG"
umoci rm --image "$OUT:$TMPTAG"
umoci gc --layout "$OUT"
mkdir -p "$stamp_dir"
printf '%s\n' "$want" >"$stamp_dir/$TAG"
info "built $OUT:$TAG"
