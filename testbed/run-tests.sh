#!/usr/bin/env bash
# The test suite: formatting, lints, unit tests and the root integration
# tests (real registry, overlay mounts, loop devices, network namespaces).
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "run-tests.sh: the integration tests need root (mounts, loop devices, netns): sudo bash testbed/run-tests.sh" >&2
    exit 1
fi

echo "==> installing dependencies"
bash testbed/install-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> shellcheck"
if command -v shellcheck >/dev/null; then
    shellcheck -x testbed/*.sh testbed/corpus/*.sh .ci/run
else
    echo "shellcheck not installed; skipped"
fi

echo "==> cargo test (unit + root integration tests)"
# Every testbed a test brings up is named in this file (driver/tests/common),
# so the leak check looks at this run's testbeds only, not at other users'.
NVTIER_TEST_NAMES_FILE=$(mktemp /tmp/nvtier-test-names.XXXXXX)
export NVTIER_TEST_NAMES_FILE
trap 'rm -f "$NVTIER_TEST_NAMES_FILE"' EXIT
cargo test --workspace --locked -- --test-threads=4

# Tests must leave no testbed behind (mounts, loops, namespaces, daemons).
leaked=()
while read -r name; do
    [[ -n $name ]] || continue
    if [[ -e /run/nvtier-testbed/$name ]]; then
        leaked+=("testbed $name")
    fi
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "nvt-$name"; then
        leaked+=("netns nvt-$name")
    fi
    if losetup -a 2>/dev/null | grep -q "/nvtier-testbed/$name/"; then
        leaked+=("loop device of $name")
    fi
done < <(sort -u "$NVTIER_TEST_NAMES_FILE")
if ((${#leaked[@]})); then
    echo "run-tests.sh: tests leaked: ${leaked[*]}" >&2
    exit 1
fi
# The snapshotter tests' engines (containerd, dockerd, nvtier serve) run on
# sockets under /run/nvtier-eng/NAME and must all be gone.
if pgrep -f -- '/run/nvtier-eng/' >/dev/null; then
    echo "run-tests.sh: tests leaked engine processes:" >&2
    pgrep -af -- '/run/nvtier-eng/' >&2
    exit 1
fi
if [[ -n $(find /run/nvtier-eng -mindepth 1 -maxdepth 1 2>/dev/null) ]]; then
    echo "run-tests.sh: tests leaked engine directories in /run/nvtier-eng" >&2
    exit 1
fi
# The CRI tests' pods run under the cgroup parent /nvtier-cri-NAME.
if [[ -n $(find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -name 'nvtier-cri-*' 2>/dev/null) ]]; then
    echo "run-tests.sh: tests leaked pod cgroups:" >&2
    find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -name 'nvtier-cri-*' >&2
    exit 1
fi
# Real DAX: a QEMU guest (TCG) with an emulated NVDIMM converted to fsdax,
# ext4 -o dax=always, nvtier's pmem tier on it (about 45 s; see docs/benchmarks.md).
echo "==> true-DAX VM (testbed/dax-vm.sh --check)"
# The nvtier binary is the one cargo test just built for the integration tests.
bash testbed/dax-vm.sh --check --nvtier "${CARGO_TARGET_DIR:-target}/debug/nvtier"

echo "==> all tests passed ($(sort -u "$NVTIER_TEST_NAMES_FILE" | grep -c .) testbeds brought up and torn down)"
