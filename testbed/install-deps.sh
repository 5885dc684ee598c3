#!/usr/bin/env bash
# Install the Debian packages and Rust tools the nvtier testbed needs.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

PACKAGES=(
    docker-registry umoci skopeo busybox-static containerd runc debootstrap
    # protoc: build.rs of the containerd-snapshots crate compiles the protos
    protobuf-compiler
    fio cgroup-tools iproute2 clang libelf-dev zlib1g-dev pkg-config jq
    # eBPF tracer build: vmlinux.h from the running kernel's BTF
    bpftool gcc
    e2fsprogs util-linux kmod
    # Docker Engine 20.10 (dockerd) for the legacy graph driver plugin tests
    docker.io
    # dax-vm.sh: a QEMU guest with an emulated NVDIMM (real DAX); xz unpacks
    # the guest kernel's modules, strip shrinks the initramfs binaries
    qemu-system-x86 xz-utils binutils ca-certificates
    # used by the testbed scripts themselves
    curl openssl tar attr
    # lint for these scripts (run by run-tests.sh)
    shellcheck
    # DejaVuSans.ttf: the font `nvbench report` draws its plots with
    fonts-dejavu-core
)

usage() {
    cat <<EOF
Usage:
  install-deps.sh [--no-rust]
  install-deps.sh --help

Installs, quietly and only what is missing:
  - Debian packages: ${PACKAGES[*]}
    (apt-get update runs only if the package lists are missing or older
    than one day)
  - rustup components clippy and rustfmt (skipped with --no-rust or when
    rustup is not installed)
  - cargo-nextest, with \`cargo install --locked cargo-nextest\`, only if no
    cargo-nextest binary is found (skipped with --no-rust)
Must run as root (for apt-get). Idempotent.
EOF
}

NO_RUST=0
while (($#)); do
    case $1 in
        --no-rust) NO_RUST=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# --- Debian packages ----------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$p")
    fi
done

if ((${#missing[@]})); then
    need_root
    export DEBIAN_FRONTEND=noninteractive
    lists=/var/lib/apt/lists
    aptlog=$(mktemp)
    trap 'rm -f "$aptlog"' EXIT
    # Another process (a parallel test run, another engineer) may hold the
    # dpkg/apt locks: let apt wait for them, and retry a few times on top.
    apt_retry() {
        local i
        for i in 1 2 3 4 5 6; do
            if apt-get -o DPkg::Lock::Timeout=120 "$@" >"$aptlog" 2>&1; then
                return 0
            fi
            grep -qiE 'lock|Could not get lock|dpkg was interrupted' "$aptlog" || return 1
            info "apt is busy (attempt $i); retrying"
            sleep $((i * 5))
        done
        return 1
    }
    if [[ -z $(find "$lists" -maxdepth 1 -name '*_Packages*' -mtime -1 -print -quit 2>/dev/null) ]]; then
        info "apt-get update"
        apt_retry update -qq || { cat "$aptlog" >&2; die "apt-get update failed"; }
    fi
    info "installing: ${missing[*]}"
    apt_retry install -y -qq --no-install-recommends "${missing[@]}" ||
        { cat "$aptlog" >&2; die "apt-get install failed for: ${missing[*]}"; }
else
    info "all Debian packages present"
fi

# --- Rust tools ---------------------------------------------------------------
if ((NO_RUST == 0)); then
    # rustup/cargo usually live in ~/.cargo/bin, which may not be on PATH.
    [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]] && PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    if command -v rustup >/dev/null 2>&1; then
        installed=$(rustup component list --installed 2>/dev/null || true)
        comps=()
        for c in clippy rustfmt; do
            grep -q "^$c" <<<"$installed" || comps+=("$c")
        done
        if ((${#comps[@]})); then
            info "rustup component add ${comps[*]}"
            rustup component add "${comps[@]}" >/dev/null 2>&1 ||
                die "rustup component add ${comps[*]} failed"
        fi
    else
        warn "rustup not found; skipping clippy/rustfmt"
    fi
    if ! command -v cargo-nextest >/dev/null 2>&1; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found; cannot install cargo-nextest"
        info "cargo install --locked cargo-nextest"
        cargo install --quiet --locked cargo-nextest || die "cargo install cargo-nextest failed"
    fi
fi
info "done"
