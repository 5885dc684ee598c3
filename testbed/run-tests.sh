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
    shellcheck -x testbed/*.sh .ci/run
else
    echo "shellcheck not installed; skipped"
fi

echo "==> cargo test (unit + root integration tests)"
testbeds() { find /run/nvtier-testbed -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort; }
before=$(testbeds)
cargo test --workspace --locked -- --test-threads=4

# Tests must leave no testbed behind (mounts, loops, namespaces, daemons).
after=$(testbeds)
leaked=$(comm -13 <(echo "$before" | sort) <(echo "$after" | sort) | sed '/^$/d')
if [[ -n $leaked ]]; then
    echo "run-tests.sh: tests leaked testbeds: $leaked" >&2
    exit 1
fi
if ip netns list 2>/dev/null | grep -q '^nvt-'; then
    for ns in $(ip netns list | awk '/^nvt-/{print $1}'); do
        name=${ns#nvt-}
        if ! grep -qx "$name" <<<"$before"; then
            echo "run-tests.sh: leaked network namespace $ns" >&2
            exit 1
        fi
    done
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
echo "==> all tests passed"
