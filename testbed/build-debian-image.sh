#!/usr/bin/env bash
# Build a Debian (bookworm) multi-layer OCI image with debootstrap + umoci:
#   layer 0  debootstrap --variant=minbase           (base distro)
#   layer 1  apt-get install PACKAGES                (engine / system deps)
#   layer 2  an application file (/app/main.py or the given --app-file)
# Cached: if OUT already holds TAG with the same PACKAGES, nothing is rebuilt.
#
#   build-debian-image.sh --out DIR --tag TAG --packages "python3" [--app-file SRC:DEST]
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

OUT='' TAG='' PACKAGES='' APP=''
MIRROR=${NVTIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
while (($#)); do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        --tag) TAG=$2; shift 2 ;;
        --packages) PACKAGES=$2; shift 2 ;;
        --app-file) APP=$2; shift 2 ;;
        -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $OUT && -n $TAG && -n $PACKAGES ]] || die "need --out, --tag and --packages (see --help)"
need_root

stamp_dir=$OUT/.nvtier-stamps
app_sum=
[[ -n $APP ]] && app_sum="$(sha256sum "${APP%%:*}" | cut -d' ' -f1):${APP#*:}"
want="debian bookworm minbase | $PACKAGES | $app_sum"
if [[ -f $stamp_dir/$TAG && $(cat "$stamp_dir/$TAG") == "$want" ]]; then
    info "$OUT:$TAG is up to date"
    exit 0
fi

cache=/var/tmp/nvtier-debian-cache
mkdir -p "$cache"
base=$cache/bookworm-minbase
if [[ ! -f $base/.complete ]]; then
    rm -rf "$base"
    info "debootstrap bookworm (minbase) from $MIRROR"
    debootstrap --variant=minbase bookworm "$base" "$MIRROR" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
    touch "$base/.complete"
fi

work=$(mktemp -d /var/tmp/nvtier-debimg.XXXXXX)
cleanup() {
    for m in proc dev; do umount -l "$work/bundle/rootfs/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

[[ -d $OUT ]] || umoci init --layout "$OUT"
umoci new --image "$OUT:$TAG"
umoci unpack --image "$OUT:$TAG" "$work/bundle" >/dev/null
cp -a "$base/." "$work/bundle/rootfs/"
rm -f "$work/bundle/rootfs/.complete"
umoci repack --history.created_by "debootstrap --variant=minbase bookworm" --image "$OUT:$TAG" "$work/bundle"
rm -rf "$work/bundle"

umoci unpack --image "$OUT:$TAG" "$work/bundle" >/dev/null
r=$work/bundle/rootfs
mount -t proc proc "$r/proc"
mount --bind /dev "$r/dev"
cp /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
# shellcheck disable=SC2086
chroot "$r" /bin/sh -c "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq --no-install-recommends $PACKAGES && apt-get clean && rm -rf /var/lib/apt/lists/*" \
    >"$work/apt.log" 2>&1 || { tail -20 "$work/apt.log" >&2; die "apt-get install $PACKAGES failed"; }
umount -l "$r/proc" "$r/dev"
umoci repack --history.created_by "RUN apt-get install -y $PACKAGES" --image "$OUT:$TAG" "$work/bundle"
rm -rf "$work/bundle"

if [[ -n $APP ]]; then
    umoci unpack --image "$OUT:$TAG" "$work/bundle" >/dev/null
    src=${APP%%:*} dest=${APP#*:}
    mkdir -p "$work/bundle/rootfs/$(dirname "$dest")"
    cp "$src" "$work/bundle/rootfs/$dest"
    umoci repack --history.created_by "COPY $(basename "$src") $dest" --image "$OUT:$TAG" "$work/bundle"
fi
umoci config --image "$OUT:$TAG" --config.cmd /bin/sh --architecture amd64 --os linux >/dev/null
umoci gc --layout "$OUT"
mkdir -p "$stamp_dir"
echo "$want" >"$stamp_dir/$TAG"
info "built $OUT:$TAG"
