#!/usr/bin/env bash
# True-DAX mode: boot a QEMU guest (TCG) with an emulated NVDIMM, convert it
# to fsdax, mount ext4 -o dax=always, and run nvtier's pmem tier on it.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lib.sh"

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
CACHE=${NVTIER_DAX_VM_DIR:-/var/tmp/nvtier-dax-vm}
# Debian's kernel: trixie ships 6.12 (overlay data-only layers need 6.8+).
KERNEL_SUITE=trixie
KERNEL_META=linux-image-amd64
# Guest modules (dependencies come from the kernel's modules.dep). nd_pmem
# also drives fsdax (pfn) namespaces; crc32c_generic serves ext4's checksums.
MODULES=(nfit nd_pmem crc32c_generic ext4 overlay virtio_net)
IMAGE_OCI=$CACHE/images
IMAGE_TAG=daxvm
IMAGE_SPEC=busybox,2M,1M,3M
RESULT_JSON=$ROOT/testbed/results/dax-vm.json

usage() {
    cat <<EOF
Usage:
  dax-vm.sh [--mem 2G] [--pmem 1G] [--smp 2] [--timeout 170] [--json]
            [--check] [--save] [--debug] [--nvtier BIN] [--refresh-kernel]
            [--keep] [--verbose]
  dax-vm.sh --help

Runs nvtier on real DAX: a QEMU guest under software emulation (TCG; the
host's /dev/kvm cannot boot a stock kernel) with an emulated NVDIMM
(-machine pc,nvdimm=on, -device nvdimm backed by a sparse file). Inside the
guest, /init:
  1. loads ${MODULES[*]} (+ deps),
  2. converts the label-less namespace0.0 to fsdax by hand through
     /sys/bus/nd (pfn device: uuid, mode=pmem, align, namespace, bind),
  3. mkfs.ext4 /dev/pmem0 and mounts it -o dax=always on /pmem,
  4. puts nvtier's disk tier and state on tmpfs, pmem_dir on /pmem,
  5. runs nvtier status (must say DAX: dax), pulls a 4-layer busybox test
     image with --placement pmem from a registry on the host (testbed/
     registry.sh, reached through QEMU user networking), mounts it (overlay
     lowerdirs on the DAX filesystem) and cold-starts it with nvtier run
     (plain, and --flat: a metadata layer over data-only lower layers, when
     the guest kernel has them), checking the output,
  6. traces a cold start (nvtier trace), migrates (hot files copied into hot
     data layers on pmem, layer bases moved to the disk tier) and
     cold-starts the migrated image.
The guest reports on its second serial port; its console log is shown on
failure. Everything (qemu, registry, netns, temp files) is removed on exit.

What it fetches or builds:
  - packages (qemu-system-x86, busybox-static, e2fsprogs, docker-registry,
    umoci, skopeo): testbed/install-deps.sh, when a command is missing
  - the guest kernel: Debian $KERNEL_SUITE's $KERNEL_META dependency
    (apt-get download under a private apt config, dpkg -x, depmod), cached
    in $CACHE/kernel (only vmlinuz and the modules used are kept)
  - nvtier: cargo build --release -p nvtier-driver (--debug: a debug build;
    --nvtier BIN: that binary); copied stripped into the initramfs with its
    shared libraries, busybox-static and mke2fs (rebuilt every run)
  - the test image: testbed/build-image.sh $IMAGE_SPEC (cached in
    $IMAGE_OCI)

Options:
  --mem SIZE         guest RAM (default 2G)
  --pmem SIZE        emulated NVDIMM size (default 1G, multiple of 128M)
  --smp N            guest vCPUs (default 2)
  --timeout SECS     kill the guest after SECS (default 170)
  --json             print one JSON object on stdout instead of the summary
  --check            fail (exit 1) unless nvtier reports real DAX, all layers
                     landed on pmem, the overlay lowerdirs are on the DAX
                     filesystem and the cold-start output is right; with a
                     6.8+ guest kernel also the --flat and migrated starts
  --save             also write $RESULT_JSON
  --debug            build and use target/debug/nvtier (no release build)
  --nvtier BIN       use BIN instead of building
  --refresh-kernel   download the guest kernel again
  --keep             keep the work directory (console log, initramfs)
  --verbose          guest kernel loglevel 7 (default 4) on the console log
Override the cache directory with NVTIER_DAX_VM_DIR. Must run as root.
EOF
}

MEM=2G PMEM=1G SMP=2 TIMEOUT=170 JSON=0 CHECK=0 SAVE=0 DEBUG=0 NVTIER='' REFRESH=0 KEEP=0 LOGLEVEL=4
while (($#)); do
    case $1 in
        --mem) MEM=${2:?--mem needs a value}; shift 2 ;;
        --pmem) PMEM=${2:?--pmem needs a value}; shift 2 ;;
        --smp) SMP=${2:?--smp needs a value}; shift 2 ;;
        --timeout) TIMEOUT=${2:?--timeout needs a value}; shift 2 ;;
        --nvtier) NVTIER=${2:?--nvtier needs a value}; shift 2 ;;
        --mem=* | --pmem=* | --smp=* | --timeout=* | --nvtier=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
        --json) JSON=1; shift ;;
        --check) CHECK=1; shift ;;
        --save) SAVE=1; shift ;;
        --debug) DEBUG=1; shift ;;
        --refresh-kernel) REFRESH=1; shift ;;
        --keep) KEEP=1; shift ;;
        --verbose) LOGLEVEL=7; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
MEM_B=$(parse_size "$MEM") || die "bad --mem '$MEM'"
PMEM_B=$(parse_size "$PMEM") || die "bad --pmem '$PMEM'"
((MEM_B >= 512 << 20)) || die "--mem must be at least 512M"
((PMEM_B >= 256 << 20 && PMEM_B % (128 << 20) == 0)) ||
    die "--pmem must be a multiple of 128M, at least 256M"
[[ $SMP =~ ^[1-9][0-9]?$ ]] || die "bad --smp '$SMP'"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "bad --timeout '$TIMEOUT'"

need_root
T_START=$(date +%s.%N)

# --- packages -------------------------------------------------------------------
need_pkgs() {
    local c
    for c in qemu-system-x86_64 mke2fs apt-get dpkg depmod xz gzip strip ldd jq \
        skopeo umoci curl ip flock; do
        command -v "$c" >/dev/null 2>&1 || return 1
    done
    [[ -x /bin/busybox && -x /usr/bin/docker-registry && -f /etc/ssl/certs/ca-certificates.crt ]] || return 1
    ! ldd /bin/busybox >/dev/null 2>&1 # busybox-static, not the dynamic one
}
if ! need_pkgs; then
    info "installing missing packages (testbed/install-deps.sh --no-rust)"
    bash "$ROOT/testbed/install-deps.sh" --no-rust >&2
    need_pkgs || die "packages still missing after install-deps.sh (qemu-system-x86_64, busybox-static, e2fsprogs, ...)"
fi

# --- cleanup --------------------------------------------------------------------
WORK='' QEMU_PID='' REG_NAME=''
cleanup() {
    local rc=$?
    if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 30; i++)); do
            kill -0 "$QEMU_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [[ -n $REG_NAME ]]; then
        bash "$ROOT/testbed/registry.sh" down "$REG_NAME" >/dev/null 2>&1 ||
            warn "registry.sh down $REG_NAME failed"
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if ((KEEP)); then
            info "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/run.XXXXXX")

# --- guest kernel (cached) ---------------------------------------------------------
# kernel_fetch: Debian $KERNEL_SUITE's kernel into $CACHE/kernel/VERSION
# (vmlinuz, config, the wanted modules decompressed, load order). Sets KDIR.
kernel_fetch() {
    exec 8>"$CACHE/.kernel.lock"
    flock -w 600 8 || die "timed out waiting for $CACHE/.kernel.lock"
    local want cur
    want=$(printf '%s\n' "${MODULES[@]}")
    if ((REFRESH == 0)) && [[ -L $CACHE/kernel/current ]]; then
        cur=$(readlink -f "$CACHE/kernel/current")
        if [[ -f $cur/.done ]] && [[ $(<"$cur/.done") == "$want" ]]; then
            KDIR=$cur
            exec 8>&-
            return 0
        fi
    fi
    local apt=$CACHE/apt f
    rm -rf "$apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$apt/etc"
    # The suite from the host's Debian (deb822) sources: same mirrors.
    for f in /etc/apt/sources.list.d/*.sources; do
        if [[ ! -f $f ]] || ! grep -q 'bookworm' "$f"; then continue; fi
        sed -e "s/\\bbookworm\\b/$KERNEL_SUITE/g" -e "s/\\bbookworm-/$KERNEL_SUITE-/g" "$f" \
            >>"$apt/etc/suite.sources"
        printf '\n' >>"$apt/etc/suite.sources"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        grep -E '^deb .*debian.* bookworm' "$f" | sed -e "s/bookworm/$KERNEL_SUITE/g" \
            >>"$apt/etc/suite.list" || true
    done
    touch "$apt/etc/suite.list"
    [[ -s $apt/etc/suite.list || -s $apt/etc/suite.sources ]] ||
        die "no Debian bookworm apt sources found to derive the $KERNEL_SUITE suite from"
    local opts=(
        -o "Dir::Etc::SourceList=$apt/etc/suite.list"
        -o "Dir::Etc::SourceParts=$apt/etc"
        -o "Dir::State=$apt"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::State::status=/dev/null"
        -o "Dir::Cache=$apt/cache"
        -o "APT::Get::List-Cleanup=0"
        -o "Debug::NoLocking=1"
        -o "APT::Sandbox::User=root"
    )
    info "apt-get update ($KERNEL_SUITE, private lists)"
    apt-get "${opts[@]}" -qq update >"$apt/log" 2>&1 ||
        { cat "$apt/log" >&2; die "apt-get update for $KERNEL_SUITE failed"; }
    local pkg
    pkg=$(apt-cache "${opts[@]}" depends "$KERNEL_META" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ {print $2; exit}')
    [[ -n $pkg ]] || die "cannot resolve $KERNEL_META in $KERNEL_SUITE"
    info "apt-get download $pkg"
    (cd "$apt/debs" && apt-get "${opts[@]}" -qq download "$pkg") >"$apt/log" 2>&1 ||
        { cat "$apt/log" >&2; die "apt-get download $pkg failed"; }
    local deb x kver mdir
    deb=$(find "$apt/debs" -name '*.deb' | head -n1)
    x=$apt/x
    mkdir -p "$x"
    dpkg -x "$deb" "$x" || die "dpkg -x $deb failed"
    kver=$(find "$x/boot" -name 'vmlinuz-*' -printf '%f\n' | head -n1)
    kver=${kver#vmlinuz-}
    [[ -n $kver ]] || die "no vmlinuz in $deb"
    mdir=$x/lib/modules/$kver
    [[ -d $mdir ]] || mdir=$x/usr/lib/modules/$kver
    [[ -d $mdir ]] || die "no modules for $kver in $deb"
    # The package ships no modules.dep (its postinst runs depmod).
    depmod -b "${mdir%/lib/modules/*}" "$kver" || die "depmod for $kver failed"
    local out=$CACHE/kernel/$kver
    rm -rf "$out"
    mkdir -p "$out/modules"
    cp "$x/boot/vmlinuz-$kver" "$out/vmlinuz"
    cp "$x/boot/config-$kver" "$out/config"
    # Resolve dependencies (depth first, deps before users) from modules.dep.
    local -A seen=()
    local order=()
    add_mod() {
        local name=${1//-/_} line path deps d base
        [[ -n ${seen[$name]-} ]] && return 0
        seen[$name]=1
        line=$(awk -v n="$name" '{p=$1; sub(/:$/, "", p); b=p; sub(/.*\//, "", b); sub(/\.ko(\.[a-z]+)?$/, "", b); gsub(/-/, "_", b); if (b == n) {print; exit}}' "$mdir/modules.dep")
        if [[ -z $line ]]; then
            grep -qE "/${name//_/[-_]}\\.ko" "$mdir/modules.builtin" && return 0
            die "module $name is neither in modules.dep nor built in ($kver)"
        fi
        path=${line%%:*}
        deps=${line#*:}
        for d in $deps; do
            base=${d##*/}
            add_mod "${base%%.ko*}"
        done
        base=${path##*/}
        base=${base%%.ko*}
        case $path in
            *.xz) xz -dc "$mdir/$path" >"$out/modules/${base//-/_}.ko" ;;
            *.zst) zstd -qdc "$mdir/$path" >"$out/modules/${base//-/_}.ko" ;;
            *.gz) gzip -dc "$mdir/$path" >"$out/modules/${base//-/_}.ko" ;;
            *) cp "$mdir/$path" "$out/modules/${base//-/_}.ko" ;;
        esac || die "cannot unpack module $path"
        order+=("${base//-/_}")
    }
    local m
    for m in "${MODULES[@]}"; do add_mod "$m"; done
    printf '%s\n' "${order[@]}" >"$out/modules.order"
    printf '%s\n' "$pkg" >"$out/package"
    printf '%s\n' "$want" >"$out/.done"
    ln -sfn "$kver" "$CACHE/kernel/current"
    rm -rf "$apt"
    KDIR=$out
    exec 8>&-
    info "guest kernel $kver cached in $out"
}

# --- nvtier binary -------------------------------------------------------------------
if [[ -z $NVTIER ]]; then
    [[ -d ${CARGO_HOME:-$HOME/.cargo}/bin ]] && PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$PATH
    need_cmd cargo
    if ((DEBUG)); then
        info "cargo build -p nvtier-driver --bin nvtier"
        (cd "$ROOT" && cargo build --quiet --locked -p nvtier-driver --bin nvtier) ||
            die "cargo build failed"
        NVTIER=${CARGO_TARGET_DIR:-$ROOT/target}/debug/nvtier
    else
        info "cargo build --release -p nvtier-driver --bin nvtier"
        (cd "$ROOT" && cargo build --quiet --locked --release -p nvtier-driver --bin nvtier) ||
            die "cargo build --release failed"
        NVTIER=${CARGO_TARGET_DIR:-$ROOT/target}/release/nvtier
    fi
fi
[[ -x $NVTIER ]] || die "nvtier binary $NVTIER not found"

kernel_fetch
KVER=$(basename "$KDIR")

# --- test image + registry -----------------------------------------------------------
bash "$ROOT/testbed/build-image.sh" --out "$IMAGE_OCI" --tag "$IMAGE_TAG" \
    --layers "$IMAGE_SPEC" >/dev/null || die "build-image.sh failed"
REG_NAME=daxvm$$
REG_NAME=${REG_NAME:0:12}
reg_env=$(bash "$ROOT/testbed/registry.sh" up "$REG_NAME" --rate none) ||
    die "registry.sh up $REG_NAME failed"
REGISTRY=$(sed -n 's/^REGISTRY=//p' <<<"$reg_env")
[[ -n $REGISTRY ]] || die "registry.sh printed no REGISTRY"
REF=$REGISTRY/daxvm/busy:v1
bash "$ROOT/testbed/push-image.sh" "$IMAGE_OCI:$IMAGE_TAG" "$REF" >/dev/null ||
    die "push to $REF failed"

# The expected contents, from the image's own layer blobs.
manifest=$(jq -r --arg t "$IMAGE_TAG" \
    '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' \
    "$IMAGE_OCI/index.json")
blob() { printf '%s/blobs/sha256/%s' "$IMAGE_OCI" "${1#sha256:}"; }
mapfile -t LAYER_DIGESTS < <(jq -r '.layers[].digest' "$(blob "$manifest")")
N_LAYERS=${#LAYER_DIGESTS[@]}
EXP_L2=$(tar -xzOf "$(blob "${LAYER_DIGESTS[2]}")" data/layer2.txt)
EXP_SHA=$(tar -xzOf "$(blob "${LAYER_DIGESTS[2]}")" data/layer2.bin | sha256sum | cut -d' ' -f1)

# --- initramfs ---------------------------------------------------------------------
IR=$WORK/initramfs
mkdir -p "$IR"/{bin,sbin,etc,lib/modules,proc,sys,dev,tmp,run,pmem,disk,mnt,var/lib,usr/bin,usr/sbin}
cp /bin/busybox "$IR/bin/busybox"
cp "$KDIR"/modules/*.ko "$IR/lib/modules/"
# copy_bin SRC DEST: a dynamically linked program and its libraries.
copy_bin() {
    local src=$1 dest=$2 lib
    install -D -m 0755 "$src" "$IR$dest"
    strip --strip-debug "$IR$dest" 2>/dev/null || true
    while read -r lib; do
        [[ -n $lib && ! -e $IR$lib ]] || continue
        install -D -m 0755 "$(readlink -f "$lib")" "$IR$lib"
    done < <(ldd "$src" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
}
copy_bin "$NVTIER" /usr/local/bin/nvtier
copy_bin "$(command -v mke2fs)" /usr/local/sbin/mke2fs
[[ -f /etc/mke2fs.conf ]] && cp /etc/mke2fs.conf "$IR/etc/"
# nvtier's HTTP client loads the system CA store even for plain-HTTP pulls.
CA=/etc/ssl/certs/ca-certificates.crt
[[ -f $CA ]] || die "$CA not found (apt-get install ca-certificates)"
install -D -m 0644 "$CA" "$IR$CA"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$IR/etc/passwd"
printf 'root:x:0:\n' >"$IR/etc/group"
{
    printf 'MODULES="%s"\n' "$(tr '\n' ' ' <"$KDIR/modules.order")"
    printf 'REGISTRY=%s\nREF=%s\nPMEM_BUDGET=%s\n' "$REGISTRY" "$REF" "$((PMEM_B / 2))"
} >"$IR/etc/daxvm.env"
cat >"$IR/init" <<'INIT'
#!/bin/busybox sh
# nvtier dax-vm guest: results go to the second serial port (ttyS1) as
# "NVTDAX KEY VALUE" lines, progress to the console (ttyS0).
/bin/busybox --install -s
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root NO_COLOR=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
. /etc/daxvm.env
exec 3>/dev/ttyS1
out() { echo "NVTDAX $*" >&3; }
log() { echo "dax-vm guest: $*" >/dev/console; }
fail() {
    log "FAIL: $*"
    out "END fail $*"
    sync
    poweroff -f
    sleep 60
}
uptime_s() { cut -d' ' -f1 /proc/uptime; }
oneline() { tr -d '\n' <"$1"; }

out kernel "$(uname -r)"
out t_init "$(uptime_s)"
for m in $MODULES; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done
out t_modules "$(uptime_s)"

# 1. fsdax: the label-less namespace (raw mode, no struct pages, no DAX) is
#    claimed by a pfn device whose memmap lives on the pmem itself.
ND=/sys/bus/nd/devices
i=0
while [ ! -e $ND/namespace0.0 ]; do
    i=$((i + 1)); [ $i -le 200 ] || fail "no nvdimm namespace0.0 in $ND (NFIT?)"
    sleep 0.1
done
out ns_mode_before "$(cat $ND/namespace0.0/mode 2>/dev/null)"
if [ -e $ND/namespace0.0/driver ]; then
    echo namespace0.0 >$ND/namespace0.0/driver/unbind || fail "unbind namespace0.0"
fi
pfn=$(cat $ND/region0/pfn_seed)
[ -n "$pfn" ] && [ -d "$ND/$pfn" ] || fail "no pfn seed in region0"
cat /proc/sys/kernel/random/uuid >"$ND/$pfn/uuid" || fail "set $pfn uuid"
echo pmem >"$ND/$pfn/mode" || fail "set $pfn mode"
echo 2097152 >"$ND/$pfn/align" 2>/dev/null || echo 4096 >"$ND/$pfn/align" || fail "set $pfn align"
echo namespace0.0 >"$ND/$pfn/namespace" || fail "set $pfn namespace"
echo "$pfn" >/sys/bus/nd/drivers/nd_pmem/bind || fail "bind $pfn to nd_pmem"
i=0
while [ ! -b /dev/pmem0 ]; do
    i=$((i + 1)); [ $i -le 100 ] || fail "no /dev/pmem0 after fsdax conversion"
    sleep 0.1
done
out t_fsdax "$(uptime_s)"
out ns_mode "$(cat $ND/namespace0.0/mode 2>/dev/null)"
out pfn "$pfn align=$(cat "$ND/$pfn/align") mode=$(cat "$ND/$pfn/mode")"

# 2. ext4 with DAX.
/usr/local/sbin/mke2fs -q -F -t ext4 -b 4096 -E nodiscard /dev/pmem0 >/dev/console 2>&1 || fail "mke2fs /dev/pmem0"
out t_mkfs "$(uptime_s)"
mount -t ext4 -o dax=always /dev/pmem0 /pmem || fail "mount -o dax=always /dev/pmem0 (see console)"
out boot_to_dax_s "$(uptime_s)"
out pmem_mount "$(grep ' /pmem ' /proc/mounts)"
out dmesg_dax "$(dmesg | grep -iE 'pmem0|dax' | tail -n 3 | tr '\n' '|')"

# 3. The disk tier and state on tmpfs, the network to the host's registry.
mount -t tmpfs -o size=512m tmpfs /disk
mount -t tmpfs -o size=256m tmpfs /var/lib
mount -t tmpfs tmpfs /tmp
mkdir -p /pmem/nvtier /disk/nvtier /var/lib/nvtier /etc/nvtier /mnt/c
ip link set lo up
ip link set eth0 up || fail "no eth0 (virtio_net)"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
i=0
until wget -q -O /dev/null "http://$REGISTRY/v2/"; do
    i=$((i + 1)); [ $i -le 30 ] || fail "registry http://$REGISTRY/v2/ unreachable from the guest"
    sleep 1
done
cat >/etc/nvtier/config.toml <<EOF
state_dir = "/var/lib/nvtier"
pmem_dir = "/pmem/nvtier"
disk_dir = "/disk/nvtier"
pmem_budget = $PMEM_BUDGET
placement = "pmem"
insecure_registries = ["$REGISTRY"]
snapshotter_socket = ""
docker_plugin_socket = ""
EOF

# 4. nvtier: DAX detection, pull, mount, cold starts.
nvtier status --json >/tmp/status.json 2>/tmp/err || fail "nvtier status: $(oneline /tmp/err)"
out status_json "$(oneline /tmp/status.json)"
out status_text "$(nvtier status 2>&1 | grep -m1 'pmem tier')"
nvtier pull --json --placement pmem "$REF" >/tmp/pull.json 2>/tmp/err ||
    fail "nvtier pull $REF: $(oneline /tmp/err)"
out pull_json "$(oneline /tmp/pull.json)"
nvtier mount "$REF" /mnt/c >/dev/null 2>/tmp/err || fail "nvtier mount: $(oneline /tmp/err)"
out overlay "$(grep ' /mnt/c ' /proc/mounts)"
out mount_ls "$(ls /mnt/c/data | tr '\n' ' ')"
nvtier umount /mnt/c >/dev/null 2>/tmp/err || fail "nvtier umount: $(oneline /tmp/err)"
CMD='echo "L2=$(cat /data/layer2.txt)"; echo "SHA=$(sha256sum /data/layer2.bin | cut -c1-64)"; echo "OPT=$(ls /opt/dir)"; if [ -e /etc/removeme ]; then echo RM=present; else echo RM=gone; fi'
for mode in plain flat; do
    flag=''
    [ $mode = flat ] && flag=--flat
    if nvtier run --drop-caches --json $flag "$REF" -- /bin/sh -c "$CMD" >/tmp/run.json 2>/tmp/run.out; then
        out "run_${mode}_json" "$(oneline /tmp/run.json)"
        grep -E '^(L2|SHA|OPT|RM)=' /tmp/run.out | while read -r l; do out "run_${mode}_out" "$l"; done
    else
        out "run_${mode}_error" "$(oneline /tmp/run.out)"
    fi
done
# 5. Hot-file tiering on DAX: trace a cold start, migrate (hot files are
#    copied into hot data layers on pmem, layer bases move to disk), and
#    cold-start the migrated image.
if nvtier trace --json "$REF" -- /bin/sh -c "$CMD" >/tmp/trace.json 2>/tmp/err; then
    out trace_json "$(oneline /tmp/trace.json)"
    if nvtier migrate --json "$REF" >/tmp/migrate.json 2>/tmp/err; then
        out migrate_json "$(oneline /tmp/migrate.json)"
        if nvtier run --drop-caches --json "$REF" -- /bin/sh -c "$CMD" >/tmp/run.json 2>/tmp/run.out; then
            out run_migrated_json "$(oneline /tmp/run.json)"
            grep -E '^(L2|SHA|OPT|RM)=' /tmp/run.out | while read -r l; do out run_migrated_out "$l"; done
        else
            out run_migrated_error "$(oneline /tmp/run.out)"
        fi
    else
        out migrate_error "$(oneline /tmp/err)"
    fi
else
    out trace_error "$(oneline /tmp/err)"
fi
nvtier status --json >/tmp/status.json 2>/tmp/err || fail "nvtier status: $(oneline /tmp/err)"
out status_after_json "$(oneline /tmp/status.json)"
out pmem_df "$(df -k /pmem | tail -n 1)"
out guest_s "$(uptime_s)"
out END ok
sync
poweroff -f
sleep 60
INIT
chmod 0755 "$IR/init"
(cd "$IR" && find . -print0 | sort -z | busybox cpio -o -H newc -0 2>/dev/null | gzip -1) \
    >"$WORK/initramfs.gz" || die "cannot build the initramfs"
info "initramfs $(du -h "$WORK/initramfs.gz" | cut -f1) (kernel $KVER, nvtier $(du -h "$IR/usr/local/bin/nvtier" | cut -f1))"

# --- boot ----------------------------------------------------------------------------
truncate -s "$PMEM_B" "$WORK/pmem.img"
CONSOLE=$WORK/console.log RESULT=$WORK/result.log
: >"$CONSOLE"
: >"$RESULT"
MAXMEM=$(((MEM_B + PMEM_B) >> 20))M
# shellcheck disable=SC2054 # qemu's option values are comma lists
QEMU_ARGS=(
    -accel tcg -machine pc,nvdimm=on -cpu max -smp "$SMP"
    -m "$((MEM_B >> 20))M,slots=2,maxmem=$MAXMEM"
    -object "memory-backend-file,id=mem1,share=on,mem-path=$WORK/pmem.img,size=$PMEM_B"
    -device nvdimm,id=nvdimm1,memdev=mem1
    -kernel "$KDIR/vmlinuz" -initrd "$WORK/initramfs.gz"
    -append "console=ttyS0 panic=-1 loglevel=$LOGLEVEL rdinit=/init"
    -nodefaults -display none -no-reboot
    -serial "file:$CONSOLE" -serial "file:$RESULT"
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0
)
for attempt in 1 2; do
    : >"$CONSOLE"
    : >"$RESULT"
    rm -f "$WORK/pmem.img"
    truncate -s "$PMEM_B" "$WORK/pmem.img"
    info "booting the guest (TCG, $SMP vCPU, ${MEM} RAM, ${PMEM} NVDIMM; timeout ${TIMEOUT}s)"
    T_BOOT=$(date +%s.%N)
    qemu-system-x86_64 "${QEMU_ARGS[@]}" </dev/null >"$WORK/qemu.log" 2>&1 &
    QEMU_PID=$!
    deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$QEMU_PID" 2>/dev/null; do
        grep -q '^NVTDAX END' "$RESULT" && break
        if ((SECONDS >= deadline)); then
            warn "guest timed out after ${TIMEOUT}s; console tail:"
            tail -n 30 "$CONSOLE" | sed 's/^/  | /' >&2
            die "timeout (raise --timeout; --verbose --keep for the kernel's messages)"
        fi
        sleep 0.2
    done
    # Let it power off by itself, briefly.
    for ((i = 0; i < 50; i++)); do
        kill -0 "$QEMU_PID" 2>/dev/null || break
        sleep 0.1
    done
    T_END=$(date +%s.%N)
    grep -q '^NVTDAX END' "$RESULT" && break
    # The guest kernel sometimes oopses at boot under TCG with 2 vCPUs
    # (int3 while patching code on a secondary CPU): not nvtier's doing, so
    # boot once more.
    if ((attempt == 1)) && grep -q 'Kernel panic' "$CONSOLE"; then
        warn "the guest kernel crashed while booting (TCG); console tail:"
        tail -n 8 "$CONSOLE" | sed 's/^/  | /' >&2
        warn "booting the guest again"
        continue
    fi
    if ! grep -q '^NVTDAX END' "$RESULT"; then
        warn "the guest stopped without a result; qemu said:"
        sed 's/^/  | /' "$WORK/qemu.log" >&2
        warn "console tail:"
        tail -n 40 "$CONSOLE" | sed 's/^/  | /' >&2
        die "no result from the guest"
    fi
done
tr -d '\r' <"$RESULT" >"$WORK/result.txt"

# --- report ----------------------------------------------------------------------------
# r KEY: the value of the first "NVTDAX KEY VALUE" line.
r() { awk -v k="$1" '$1 == "NVTDAX" && $2 == k {sub(/^NVTDAX [^ ]+ ?/, ""); print; exit}' "$WORK/result.txt"; }
# ra KEY: all values of KEY, one per line.
ra() { awk -v k="$1" '$1 == "NVTDAX" && $2 == k {sub(/^NVTDAX [^ ]+ ?/, ""); print}' "$WORK/result.txt"; }
END_LINE=$(r END)
if [[ $END_LINE != ok ]]; then
    warn "console tail:"
    tail -n 40 "$CONSOLE" | sed 's/^/  | /' >&2
    die "guest failed: ${END_LINE#fail }"
fi
json_or_null() { if [[ -n $1 ]] && jq -e . >/dev/null 2>&1 <<<"$1"; then printf '%s' "$1"; else printf 'null'; fi; }
STATUS=$(json_or_null "$(r status_json)")
STATUS_AFTER=$(json_or_null "$(r status_after_json)")
PULL=$(json_or_null "$(r pull_json)")
RUN_PLAIN=$(json_or_null "$(r run_plain_json)")
RUN_FLAT=$(json_or_null "$(r run_flat_json)")
RUN_MIG=$(json_or_null "$(r run_migrated_json)")
TRACE=$(json_or_null "$(r trace_json)")
MIGRATE=$(json_or_null "$(r migrate_json)")
OVERLAY=$(r overlay)
# lowerdir= paths (':' separated; '::' separates data-only layers).
LOWERS=$(awk '{print $4}' <<<"$OVERLAY" | tr ',' '\n' | sed -n 's/^\(lowerdir\|lowerdir+\|datadir+\)=//p' |
    tr ':' '\n' | grep -v '^$' || true)
LOWERS_ON_DAX=false
if [[ -n $LOWERS ]] && ! grep -qv '^/pmem/' <<<"$LOWERS"; then LOWERS_ON_DAX=true; fi
out_ok() { # out_ok MODE: the command printed what the image holds
    local o
    o=$(ra "run_$1_out")
    [[ $o == "$(printf 'L2=%s\nSHA=%s\nOPT=c\nRM=gone' "$EXP_L2" "$EXP_SHA")" ]]
}
PLAIN_OK=false FLAT_OK=false MIG_OK=false
out_ok plain && PLAIN_OK=true
out_ok flat && FLAT_OK=true
out_ok migrated && MIG_OK=true
MIG_ERROR=$(r trace_error)
[[ -n $MIG_ERROR ]] && MIG_ERROR="nvtier trace: $MIG_ERROR"
[[ -z $(r migrate_error) ]] || MIG_ERROR="nvtier migrate: $(r migrate_error)"
[[ -z $(r run_migrated_error) ]] || MIG_ERROR="nvtier run (migrated): $(r run_migrated_error)"
TOTAL_S=$(awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
VM_S=$(awk -v a="$T_BOOT" -v b="$T_END" 'BEGIN {printf "%.1f", b - a}')

REPORT=$(jq -n \
    --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --arg kernel "$(r kernel)" --arg kpkg "$(cat "$KDIR/package")" \
    --arg qemu "$(qemu-system-x86_64 --version | head -n1)" \
    --arg mem "$MEM" --arg pmem "$PMEM" --argjson smp "$SMP" \
    --arg ns_before "$(r ns_mode_before)" --arg ns "$(r ns_mode)" --arg pfn "$(r pfn)" \
    --arg mount "$(r pmem_mount)" --arg dmesg "$(r dmesg_dax)" \
    --arg words "$(r status_text | tr -s ' ')" --arg overlay "$OVERLAY" \
    --argjson lowers_on_dax "$LOWERS_ON_DAX" \
    --argjson status "$STATUS" --argjson status_after "$STATUS_AFTER" \
    --argjson pull "$PULL" --argjson run_plain "$RUN_PLAIN" --argjson run_flat "$RUN_FLAT" \
    --argjson plain_ok "$PLAIN_OK" --argjson flat_ok "$FLAT_OK" \
    --argjson trace "$TRACE" --argjson migrate "$MIGRATE" --argjson run_mig "$RUN_MIG" \
    --argjson mig_ok "$MIG_OK" --arg mig_error "$MIG_ERROR" \
    --arg flat_error "$(r run_flat_error)" --arg plain_error "$(r run_plain_error)" \
    --arg df "$(r pmem_df)" --argjson n_layers "$N_LAYERS" \
    --arg boot_to_dax "$(r boot_to_dax_s)" --arg guest_s "$(r guest_s)" \
    --arg t_init "$(r t_init)" --arg t_modules "$(r t_modules)" \
    --arg t_fsdax "$(r t_fsdax)" --arg t_mkfs "$(r t_mkfs)" \
    --arg vm_s "$VM_S" --arg total_s "$TOTAL_S" '
    def num: if . == "" or . == null then null else tonumber end;
    def ms: if . == null then null else (. * 10 | round) / 10 end;
    {
      date: $date, guest_kernel: $kernel, kernel_package: $kpkg, qemu: $qemu,
      accel: "tcg", smp: $smp, mem: $mem, pmem: $pmem,
      namespace_mode: {before: $ns_before, after: (if $ns == "memory" then "fsdax" else $ns end),
        sysfs_after: $ns},
      pfn: $pfn,
      pmem_mount: $mount, dmesg_dax: $dmesg,
      nvtier_dax: ($status.dax // null),
      dax_detected: (($status.dax // "") == "dax"),
      nvtier_says: $words,
      tiering: ($status.tiering // null), tiering_reason: ($status.tiering_reason // null),
      pull_ms: ($pull.stored_done_ms // null | ms),
      pull_pmem_bytes: ($pull.pmem_bytes // null),
      layers: $n_layers,
      layers_on_pmem: ([$pull.layers[]? | select(.tier == "pmem")] | length),
      overlay: $overlay, overlay_lowerdirs_on_dax: $lowers_on_dax,
      cold_start_ms: ($run_plain.elapsed_ms // null | ms),
      cold_start_mount_ms: ($run_plain.mount_ms // null | ms),
      cold_start_output_ok: $plain_ok,
      cold_start_error: (if $plain_error == "" then null else $plain_error end),
      flat_cold_start_ms: ($run_flat.elapsed_ms // null | ms),
      flat_mount_ms: ($run_flat.mount_ms // null | ms),
      flat_tiered: ($run_flat.tiered // null),
      flat_output_ok: $flat_ok,
      flat_error: (if $flat_error == "" then null else $flat_error end),
      trace: {tracer: ($trace.tracer // null), files: ($trace.files // null),
        hot_bytes: ($trace.bytes // null)},
      migrate: {copied_bytes: ($migrate.copied_bytes // null),
        relocated_bytes: ($migrate.relocated_bytes // null),
        pmem_used_before: ($migrate.pmem_used_before // null),
        pmem_used_after: ($migrate.pmem_used_after // null),
        elapsed_ms: ($migrate.elapsed_ms // null | ms)},
      migrated_cold_start_ms: ($run_mig.elapsed_ms // null | ms),
      migrated_tiered: ($run_mig.tiered // null),
      migrated_output_ok: $mig_ok,
      migrated_error: (if $mig_error == "" then null else $mig_error end),
      pmem_used_bytes: ($status_after.pmem_used_bytes // null),
      pmem_layer_bytes: ($status_after.pmem_layer_bytes // null),
      pmem_meta_bytes: ($status_after.pmem_meta_bytes // null),
      pmem_df: $df,
      boot_to_dax_s: ($boot_to_dax | num), guest_s: ($guest_s | num),
      guest_uptime_s: {init: ($t_init | num), modules_loaded: ($t_modules | num),
        fsdax: ($t_fsdax | num), mkfs: ($t_mkfs | num), dax_mounted: ($boot_to_dax | num)},
      vm_s: ($vm_s | num), total_s: ($total_s | num)
    }') || die "cannot build the JSON report"

if ((SAVE)); then
    mkdir -p "$(dirname "$RESULT_JSON")"
    printf '%s\n' "$REPORT" >"$RESULT_JSON"
    info "wrote $RESULT_JSON"
fi
if ((JSON)); then
    printf '%s\n' "$REPORT"
else
    jq -r '
      def f: if . == null then "-" else tostring end;
      "true-DAX VM (\(.accel), \(.smp) vCPU, \(.mem) RAM, \(.pmem) NVDIMM)",
      "  guest kernel       \(.guest_kernel) (\(.kernel_package))",
      "  namespace          \(.namespace_mode.before) -> \(.namespace_mode.after) (sysfs mode \(.namespace_mode.sysfs_after), \(.pfn))",
      "  pmem mount         \(.pmem_mount)",
      "  nvtier DAX         \(.dax_detected) (\(.nvtier_says))",
      "  tiering            \(.tiering|f)\(if .tiering_reason then ": " + .tiering_reason else "" end)",
      "  pull               \(.pull_ms|f) ms, \(.layers_on_pmem)/\(.layers) layers on pmem (\(.pull_pmem_bytes|f) B on the DAX tier)",
      "  overlay lowerdirs  on DAX: \(.overlay_lowerdirs_on_dax)",
      "  cold start         \(.cold_start_ms|f) ms (mount \(.cold_start_mount_ms|f) ms), output ok: \(.cold_start_output_ok)",
      "  flat cold start    \(.flat_cold_start_ms|f) ms (mount + metadata layer \(.flat_mount_ms|f) ms, tiered \(.flat_tiered|f)), output ok: \(.flat_output_ok)\(if .flat_error then " error: " + .flat_error else "" end)",
      "  hot-file tiering   trace (\(.trace.tracer|f)): \(.trace.files|f) files, \(.trace.hot_bytes|f) B; migrate \(.migrate.elapsed_ms|f) ms: copied \(.migrate.copied_bytes|f) B to pmem, bases \(.migrate.relocated_bytes|f) B to disk, pmem \(.migrate.pmem_used_before|f) -> \(.migrate.pmem_used_after|f) B",
      "  migrated start     \(.migrated_cold_start_ms|f) ms (tiered \(.migrated_tiered|f)), output ok: \(.migrated_output_ok)\(if .migrated_error then " error: " + .migrated_error else "" end)",
      "  bytes on DAX tier  \(.pmem_used_bytes|f) at the end (layers \(.pmem_layer_bytes|f), metadata \(.pmem_meta_bytes|f)); df: \(.pmem_df | gsub(" +"; " "))",
      "  boot to DAX mount  \(.boot_to_dax_s|f) s (guest uptime: /init \(.guest_uptime_s.init|f), modules \(.guest_uptime_s.modules_loaded|f), fsdax \(.guest_uptime_s.fsdax|f), mkfs \(.guest_uptime_s.mkfs|f)); guest done at \(.guest_s|f) s",
      "  VM wall time       \(.vm_s|f) s; total \(.total_s|f) s"
    ' <<<"$REPORT"
fi

if ((CHECK)); then
    fails=()
    c() { jq -e "$1" >/dev/null <<<"$REPORT" || fails+=("$2"); }
    c '.dax_detected' "nvtier does not report real DAX on the pmem tier (status dax: $(jq -r .nvtier_dax <<<"$REPORT"))"
    c '.pmem_mount | test("dax=always")' "the pmem mount has no dax=always: $(jq -r .pmem_mount <<<"$REPORT")"
    c '.namespace_mode.after == "fsdax"' "namespace0.0 is not in fsdax mode"
    c '.layers_on_pmem == .layers and .layers > 0' "not every layer was stored on pmem"
    c '.overlay_lowerdirs_on_dax' "the overlay's lowerdirs are not all on /pmem: $(jq -r .overlay <<<"$REPORT")"
    c '.cold_start_output_ok' "nvtier run printed the wrong output (or failed: $(jq -r '.cold_start_error // "-"' <<<"$REPORT"))"
    c '.cold_start_ms != null' "nvtier run reported no cold-start time"
    if jq -e '.tiering == "file-granular"' >/dev/null <<<"$REPORT"; then
        c '.flat_output_ok and .flat_tiered == true' \
            "nvtier run --flat (data-only lower layers on DAX) failed: $(jq -r '.flat_error // "wrong output"' <<<"$REPORT")"
        c '.migrate.copied_bytes > 0 and .migrated_output_ok and .migrated_tiered == true' \
            "trace + migrate + run of the migrated image failed: $(jq -r '.migrated_error // "wrong output or nothing copied"' <<<"$REPORT")"
    fi
    if ((${#fails[@]})); then
        for f in "${fails[@]}"; do printf '%s: CHECK FAILED: %s\n' "$PROG" "$f" >&2; done
        exit 1
    fi
    info "check passed: nvtier runs on real DAX (guest $(r kernel), ${TOTAL_S}s)"
fi
