#!/usr/bin/env bash
# Build a deterministic multi-layer OCI image (busybox base + data layers)
# with umoci. See testbed/README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

# Bump when the image contents produced for a given SPEC+seed change.
BUILDER_VERSION=2
# Fixed timestamps, so that SPEC+seed always give the same bytes.
EPOCH=1704067200 # 2024-01-01T00:00:00Z
CREATED=2024-01-01T00:00:00Z
BUSYBOX=/bin/busybox
APPLETS=(sh ls cat echo sleep true false sha256sum find env head tail wc stat
    mkdir rm cp mv ln touch dd grep test date id du)

usage() {
    cat <<'EOF'
Usage:
  build-image.sh --out DIR --tag TAG --layers SPEC [--seed N] [--cmd 'WORD...']
  build-image.sh --help

Builds (or reuses) image TAG in the OCI image layout DIR and prints its
manifest digest (sha256:...) on stdout.

SPEC is a comma list; the first item must be `busybox`, every further item
is the size of one data layer with a K, M or G suffix (powers of 1024), e.g.
  busybox,8M,4M,30M,2M,1M     -> 6 layers

  layer 0  busybox base: /bin/busybox (busybox-static) + applet symlinks
           (sh ls cat echo sleep true sha256sum find ...), /etc/passwd,
           /etc/group, /etc/hostname, /dev /proc /sys /root, /tmp (1777)
  layer i  /data/layerI.bin (SIZE bytes of incompressible AES-CTR keystream
           keyed by seed and i) and /data/layerI.txt
  layer 1  also /etc/removeme, /opt/dir/{a,b}, symlink /data/link ->
           layer1.txt and hardlink /data/hard == /data/layer1.txt
  layer 2  also whiteout /etc/.wh.removeme and opaque directory /opt/dir
           (.wh..wh..opq) now holding only /opt/dir/c
  layer 3  also /feat: an empty file, a 3 MiB mostly-zero file, a file
           with a user.nvtier xattr and its hardlink, a setuid file, a
           fifo, a char and a block device, a symlink to a directory

Layer i depends only on (seed, i, size of layer i), so images built with the
same seed share identical leading layers (layer 0 is the same everywhere).
All timestamps are fixed, so the same SPEC+seed gives byte-identical layer
blobs, config and manifest. If DIR already holds TAG built from the same
SPEC+seed (stamp in DIR/.nvtier-stamps/TAG), nothing is rebuilt.
The config is linux/amd64, Cmd ["/bin/sh"] unless --cmd is given.

Options:
  --out DIR      OCI image layout directory (created if missing)
  --tag TAG      tag (org.opencontainers.image.ref.name) to build
  --layers SPEC  layer spec, see above
  --seed N       data seed, non-negative integer (default 1)
  --cmd 'WORD...' the config's Cmd, split at spaces (default /bin/sh), e.g.
                 --cmd 'sleep 3600' for a pause image that stays alive
EOF
}

OUT='' TAG='' SPEC='' SEED=1 CMD=''
while (($#)); do
    case $1 in
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --layers) SPEC=${2:?--layers needs a value}; shift 2 ;;
        --seed) SEED=${2:?--seed needs a value}; shift 2 ;;
        --cmd) CMD=${2:?--cmd needs a value}; shift 2 ;;
        --out=* | --tag=* | --layers=* | --seed=* | --cmd=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $OUT ]] || die "missing --out DIR"
[[ -n $TAG ]] || die "missing --tag TAG"
[[ -n $SPEC ]] || die "missing --layers SPEC"
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "invalid tag '$TAG'"
[[ $SEED =~ ^[0-9]+$ ]] || die "invalid --seed '$SEED' (non-negative integer)"
[[ $CMD =~ ^[A-Za-z0-9_./=:\ -]*$ ]] || die "invalid --cmd '$CMD' (words of [A-Za-z0-9_./=:-])"
CMD_ARGS=()
read -r -a CMD_WORDS <<<"${CMD:-/bin/sh}"
((${#CMD_WORDS[@]})) || die "--cmd has no words"
for w in "${CMD_WORDS[@]}"; do
    CMD_ARGS+=(--config.cmd "$w")
done

IFS=',' read -r -a ITEMS <<<"$SPEC"
if ((${#ITEMS[@]} == 0)) || [[ ${ITEMS[0]} != busybox ]]; then
    die "invalid SPEC '$SPEC': the first item must be 'busybox'"
fi
SIZES=()
for item in "${ITEMS[@]:1}"; do
    [[ $item =~ ^[0-9]+[KkMmGg]?$ ]] || die "invalid layer size '$item' in SPEC (use e.g. 512K, 8M, 1G)"
    bytes=$(parse_size "$item") || die "invalid layer size '$item' in SPEC"
    ((bytes > 0)) || die "layer size must be > 0 in SPEC ('$item')"
    SIZES+=("$bytes")
done
NDATA=${#SIZES[@]}

need_cmd umoci tar openssl jq sha256sum flock head setfattr mknod mkfifo truncate
[[ -x $BUSYBOX ]] || die "$BUSYBOX not found (apt-get install busybox-static)"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; install busybox-static"
fi

umask 022
export LC_ALL=C
OUT=$(readlink -m "$OUT")
STAMP_DIR=$OUT/.nvtier-stamps
STAMP=$STAMP_DIR/$TAG
WANT_STAMP=$(printf 'builder=%s\nspec=%s\nseed=%s\n' "$BUILDER_VERSION" "$SPEC" "$SEED")
# The default Cmd is left out, so that the stamps of earlier builds still hold.
if [[ -n $CMD ]]; then
    WANT_STAMP+=$(printf '\ncmd=%s' "$CMD")
fi

# Serialise builds into the same layout: lock its parent directory (it exists
# before the layout does, and locking it leaves no lock file behind).
PARENT=$(dirname "$OUT")
mkdir -p "$PARENT" || die "cannot create $PARENT"
exec 9<"$PARENT"
flock -w 600 9 || die "timed out waiting for another build in $PARENT"

tag_digest() { # tag_digest TAG -> manifest digest or nothing
    [[ -f $OUT/index.json ]] || return 0
    jq -r --arg t "$1" \
        '.manifests[]? | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
        "$OUT/index.json" | head -n1
}

# --- cache -------------------------------------------------------------------
if [[ -f $STAMP ]]; then
    have=$(tag_digest "$TAG")
    if [[ -n $have && -f $OUT/blobs/sha256/${have#sha256:} ]] &&
        [[ $(grep -v '^manifest=' "$STAMP") == "$WANT_STAMP" ]] &&
        grep -qx "manifest=$have" "$STAMP"; then
        info "$OUT:$TAG is up to date ($SPEC, seed $SEED)"
        printf '%s\n' "$have"
        exit 0
    fi
fi

# --- build -------------------------------------------------------------------
if [[ -e $OUT ]]; then
    [[ -f $OUT/oci-layout ]] || {
        [[ -d $OUT && -z $(ls -A "$OUT") ]] || die "$OUT exists and is not an OCI image layout"
        rmdir "$OUT"
    }
fi
[[ -e $OUT ]] || umoci init --layout "$OUT" || die "umoci init --layout $OUT failed"
mkdir -p "$STAMP_DIR"
rm -f "$STAMP"

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/nvtier-build.XXXXXX")
BUILD_TAG=nvtier-build-$$
cleanup() {
    rm -rf "$WORK"
    if [[ -f $OUT/index.json && -n $(tag_digest "$BUILD_TAG") ]]; then
        umoci rm --image "$OUT:$BUILD_TAG" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

IMG=$OUT:$BUILD_TAG
umoci new --image "$IMG" || die "umoci new failed"
umoci config --image "$IMG" --no-history --created "$CREATED" --author nvtier-testbed \
    --architecture amd64 --os linux \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "${CMD_ARGS[@]}" --config.workingdir / ||
    die "umoci config failed"

# make_tar STAGE OUT.tar: deterministic tar of STAGE's contents (no ./ prefix).
make_tar() {
    local stage=$1 out=$2 entries=()
    mapfile -t entries < <(find "$stage" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort)
    tar --create --file="$out" --directory="$stage" \
        --sort=name --format=posix --xattrs --xattrs-include='user.*' \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        --mtime=@"$EPOCH" --owner=0 --group=0 --numeric-owner \
        -- "${entries[@]}" || die "tar failed for $stage"
}

add_layer() { # add_layer TAR CREATED_BY
    umoci raw add-layer --image "$IMG" --history.created "$CREATED" \
        --history.author nvtier-testbed --history.created_by "$2" "$1" ||
        die "umoci raw add-layer failed ($2)"
}

# fill FILE LAYER SIZE: deterministic incompressible bytes.
fill() {
    local file=$1 layer=$2 size=$3 key
    key=$(printf 'nvtier-testbed seed=%s layer=%s' "$SEED" "$layer" | sha256sum | cut -c1-32)
    head -c "$size" /dev/zero |
        openssl enc -aes-128-ctr -nosalt -K "$key" -iv 00000000000000000000000000000000 >"$file" ||
        die "openssl failed generating $file"
    [[ $(stat -c %s "$file") == "$size" ]] || die "generated $file has the wrong size"
}

mkfile() { # mkfile PATH MODE CONTENT
    printf '%s' "$3" >"$1"
    chmod "$2" "$1"
}

# Layer 0: busybox base.
s=$WORK/l0
mkdir -p "$s"/{bin,etc,dev,proc,sys,tmp,root}
chmod 0755 "$s"/{bin,etc,dev}
chmod 0555 "$s"/proc "$s"/sys
chmod 1777 "$s"/tmp
chmod 0700 "$s"/root
cp "$BUSYBOX" "$s/bin/busybox"
chmod 0755 "$s/bin/busybox"
for a in "${APPLETS[@]}"; do
    ln -s busybox "$s/bin/$a"
done
mkfile "$s/etc/passwd" 0644 $'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n'
mkfile "$s/etc/group" 0644 $'root:x:0:\nnogroup:x:65534:\n'
mkfile "$s/etc/hostname" 0644 $'nvtier\n'
make_tar "$s" "$WORK/l0.tar"
add_layer "$WORK/l0.tar" "ADD busybox-static rootfs / # nvtier-testbed base"
rm -rf "$s" "$WORK/l0.tar"

for ((i = 1; i <= NDATA; i++)); do
    size=${SIZES[i - 1]}
    s=$WORK/l$i
    mkdir -p "$s/data"
    fill "$s/data/layer$i.bin" "$i" "$size"
    mkfile "$s/data/layer$i.txt" 0644 "nvtier testbed layer $i: $size bytes, seed $SEED"$'\n'
    extra=''
    if ((i == 1)); then
        mkdir -p "$s/etc" "$s/opt/dir"
        mkfile "$s/etc/removeme" 0644 $'this file is deleted by layer 2\n'
        mkfile "$s/opt/dir/a" 0644 $'a (hidden by the opaque /opt/dir of layer 2)\n'
        mkfile "$s/opt/dir/b" 0644 $'b (hidden by the opaque /opt/dir of layer 2)\n'
        ln -s layer1.txt "$s/data/link"
        ln "$s/data/layer1.txt" "$s/data/hard"
        extra=' && touch /etc/removeme /opt/dir/a /opt/dir/b && ln -s layer1.txt /data/link && ln /data/layer1.txt /data/hard'
    elif ((i == 2)); then
        mkdir -p "$s/etc" "$s/opt/dir"
        mkfile "$s/etc/.wh.removeme" 0644 ''
        mkfile "$s/opt/dir/.wh..wh..opq" 0644 ''
        mkfile "$s/opt/dir/c" 0644 $'c (the only entry of /opt/dir)\n'
        extra=' && rm /etc/removeme && rm -r /opt/dir && mkdir /opt/dir && touch /opt/dir/c'
    elif ((i == 3)); then
        f=$s/feat
        mkdir -p "$f"
        : >"$f/empty"
        truncate -s 3M "$f/zeros"
        printf 'data in the middle\n' | dd of="$f/zeros" bs=1 seek=1048576 conv=notrunc status=none
        mkfile "$f/xattr" 0640 $'has a user xattr\n'
        setfattr -n user.nvtier -v hello "$f/xattr" || die "setfattr failed (does $WORK support user xattrs?)"
        ln "$f/xattr" "$f/xattr-hard"
        mkfile "$f/suid" 4755 $'#!/bin/sh\necho suid\n'
        mkfifo "$f/fifo"
        mknod "$f/chr" c 1 3
        mknod "$f/blk" b 7 200
        ln -s /opt "$f/dirlink"
        extra=' && mkdir /feat && (features: empty, zeros, xattr, hardlink, suid, fifo, devices, dir symlink)'
    fi
    make_tar "$s" "$WORK/l$i.tar"
    add_layer "$WORK/l$i.tar" "RUN nvtier-testbed fill /data/layer$i.bin $size${extra}"
    rm -rf "$s" "$WORK/l$i.tar"
done
((NDATA >= 2)) || warn "SPEC has fewer than 2 data layers: the image has no whiteout/opaque entries"

# --- verify with umoci's own applier -----------------------------------------
bundle=$WORK/bundle
umoci unpack --image "$IMG" "$bundle" >/dev/null || die "umoci unpack (verification) failed"
r=$bundle/rootfs
[[ -x $r/bin/sh ]] || die "verify: /bin/sh missing"
for ((i = 1; i <= NDATA; i++)); do
    [[ $(stat -c %s "$r/data/layer$i.bin") == "${SIZES[i - 1]}" ]] || die "verify: /data/layer$i.bin has the wrong size"
done
if ((NDATA >= 2)); then
    [[ ! -e $r/etc/removeme ]] || die "verify: whiteout of /etc/removeme not applied"
    optdir=$(find "$r/opt/dir" -mindepth 1 -printf '%P ')
    [[ $optdir == 'c ' ]] || die "verify: opaque /opt/dir should hold only c, has: $optdir"
fi
if ((NDATA >= 1)); then
    [[ $(readlink "$r/data/link") == layer1.txt ]] || die "verify: /data/link is not a symlink to layer1.txt"
    [[ $(stat -c %i "$r/data/hard") == $(stat -c %i "$r/data/layer1.txt") ]] || die "verify: /data/hard is not a hardlink of /data/layer1.txt"
fi
rm -rf "$bundle"

# --- publish under TAG -------------------------------------------------------
if [[ -n $(tag_digest "$TAG") ]]; then
    umoci rm --image "$OUT:$TAG" || die "umoci rm $OUT:$TAG failed"
fi
umoci tag --image "$IMG" "$TAG" || die "umoci tag failed"
umoci rm --image "$IMG" || die "umoci rm $IMG failed"
umoci gc --layout "$OUT" || warn "umoci gc failed"

digest=$(tag_digest "$TAG")
[[ -n $digest ]] || die "tag $TAG missing from $OUT/index.json after build"
printf '%smanifest=%s\n' "$WANT_STAMP"$'\n' "$digest" >"$STAMP"
info "built $OUT:$TAG ($((NDATA + 1)) layers, seed $SEED)"
printf '%s\n' "$digest"
