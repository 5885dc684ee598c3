#!/usr/bin/env bash
# Fetch newer container engines (containerd 1.7, dockerd 26) from Debian's
# trixie suite and unpack them (dpkg -x) into a private cache directory.
# The host's apt configuration and installed packages are never touched.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

CACHE=${NVTIER_ENGINES_DIR:-/var/tmp/nvtier-engines}
# runc is NOT taken from trixie: its binary needs glibc 2.38 (bookworm has
# 2.36) and fails with "GLIBC_2.38 not found"; bookworm's runc 1.1.5 is used.
# The Go binaries below run on bookworm.
PACKAGES=(containerd docker.io docker-cli)

usage() {
    cat <<EOF
Usage:
  engines.sh fetch      download + unpack (idempotent), print shell variables
  engines.sh env        print shell variables of an existing cache
  engines.sh --help

Downloads ${PACKAGES[*]} from the Debian trixie suite (same mirror as the
bookworm lines in /etc/apt/sources.list.d/) with \`apt-get download\` under a
private Dir::Etc::SourceList/Dir::State/Dir::Cache, and unpacks them with
\`dpkg -x\` into $CACHE/root. Prints:
  ENGINES_ROOT, ENGINES_BIN (a directory of links to the trixie binaries,
  to put first in PATH: containerd, containerd-shim-runc-v2, ctr, dockerd,
  docker, docker-init, docker-proxy; runc stays bookworm's),
  CONTAINERD17, CONTAINERD_SHIM, DOCKERD26, DOCKER_CLI
Override the cache with NVTIER_ENGINES_DIR. Must run as root.
EOF
}

print_env() {
    local r=$CACHE/root
    printf 'ENGINES_ROOT=%s\n' "$r"
    printf 'CONTAINERD17=%s\n' "$r/usr/bin/containerd"
    printf 'CONTAINERD_SHIM=%s\n' "$r/usr/bin/containerd-shim-runc-v2"
    printf 'DOCKERD26=%s\n' "$r/usr/sbin/dockerd"
    printf 'DOCKER_CLI=%s\n' "$r/usr/bin/docker"
    printf 'ENGINES_BIN=%s\n' "$CACHE/bin"
}

fetch() {
    need_root
    need_cmd apt-get dpkg flock
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    if [[ -f $CACHE/.done ]]; then
        print_env
        return 0
    fi
    local apt=$CACHE/apt
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$apt/etc"
    # trixie sources from the bookworm deb822 lines (same mirrors).
    local src=$apt/etc/trixie.sources f
    : >"$src"
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        sed -e 's/\bbookworm-security\b/trixie-security/g' \
            -e 's/\bbookworm-updates\b/trixie-updates/g' \
            -e 's/\bbookworm\b/trixie/g' "$f" >>"$src"
        printf '\n' >>"$src"
    done
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
        [[ -f $f ]] || continue
        grep -E '^deb ' "$f" | sed -e 's/bookworm/trixie/g' >>"$apt/etc/trixie.list" || true
    done
    local opts=(
        -o "Dir::Etc::SourceList=${apt}/etc/trixie.list"
        -o "Dir::Etc::SourceParts=${apt}/etc"
        -o "Dir::State=${apt}"
        -o "Dir::State::Lists=${apt}/lists"
        -o "Dir::State::status=/dev/null"
        -o "Dir::Cache=${apt}/cache"
        -o "APT::Get::List-Cleanup=0"
        -o "Debug::NoLocking=1"
    )
    touch "$apt/etc/trixie.list"
    info "apt-get update (trixie, private lists)"
    apt-get "${opts[@]}" -qq update >"$apt/update.log" 2>&1 ||
        { cat "$apt/update.log" >&2; die "apt-get update for trixie failed"; }
    (
        cd "$apt/debs"
        apt-get "${opts[@]}" -qq download "${PACKAGES[@]}" >"$apt/download.log" 2>&1
    ) || { cat "$apt/download.log" >&2; die "apt-get download failed"; }
    rm -rf "$CACHE/root.tmp"
    mkdir -p "$CACHE/root.tmp"
    local d
    for d in "$apt"/debs/*.deb; do
        dpkg -x "$d" "$CACHE/root.tmp"
    done
    rm -rf "${CACHE:?}/root" "${CACHE:?}/bin"
    mv "$CACHE/root.tmp" "$CACHE/root"
    mkdir -p "$CACHE/bin"
    local b
    for b in usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/bin/ctr \
        usr/sbin/dockerd usr/bin/docker usr/bin/docker-init usr/sbin/docker-proxy; do
        if [[ -e $CACHE/root/$b ]]; then ln -sf "$CACHE/root/$b" "$CACHE/bin/"; fi
    done
    "$CACHE/root/usr/bin/containerd" --version >&2 ||
        die "the trixie containerd binary does not run here"
    "$CACHE/root/usr/sbin/dockerd" --version >&2 ||
        die "the trixie dockerd binary does not run here"
    ls "$apt"/debs >"$CACHE/.done"
    print_env
}

case ${1-} in
    fetch) fetch ;;
    env) [[ -f $CACHE/.done ]] || die "no engines in $CACHE (run: engines.sh fetch)"; print_env ;;
    -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
esac
