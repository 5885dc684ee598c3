#!/usr/bin/env bash
# Deployment benchmark of nvtier: LASS vs all-pmem vs all-disk pulls on the
# emulated testbed. Installs dependencies, builds nvtier and nvbench, runs
# `nvbench pull` with the given arguments (see `nvbench pull --help`).
# Results: testbed/results/pull-RATE.{json,md}. Must run as root.
#
#   testbed/bench-pull.sh                 # 5 images x 3 placements x 5 reps at 1gbit
#   testbed/bench-pull.sh --quick         # mid and top, 3 reps
#   testbed/bench-pull.sh --rate 100mbit --reps 3
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"

if [[ ${1-} == -h || ${1-} == --help ]]; then
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0
fi
((EUID == 0)) || { echo "bench-pull.sh: must run as root" >&2; exit 1; }

bash testbed/install-deps.sh
cargo build --release -p nvtier-driver -p nvtier-testbed
exec target/release/nvbench pull --nvtier target/release/nvtier "$@"
