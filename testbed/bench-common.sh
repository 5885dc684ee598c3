# shellcheck shell=bash
# Shared by the cold-start benchmarks (bench-trace.sh, bench-flat.sh,
# bench-coldstart.sh): the Debian python image and a one-image testbed.
# Source it from the repository root.

PYTHON_OCI=/var/tmp/nvtier-bench-images/debian

# The benchmark app: a dozen stdlib imports, then "ready". One text for
# every benchmark, so the cached image (keyed by its content) is shared.
build_python_image() {
    local app
    app=$(mktemp)
    cat >"$app" <<'PY'
import json, email.parser, http.client, sqlite3, asyncio, decimal, argparse, logging, xml.dom.minidom, csv, unittest, urllib.request
print("ready")
PY
    bash testbed/build-debian-image.sh --out "$PYTHON_OCI" --tag python --packages python3 --app-file "$app:/app/main.py"
    rm -f "$app"
}

# bench_testbed_up NAME RATE: tiers + registry at RATE, the python image
# pushed, an nvtier config. Sets STATE, REF, NVTIER_CONFIG and the tiers'
# and registry's variables; tears everything down on exit.
bench_testbed_up() {
    BENCH_NAME=$1
    STATE=/var/tmp/nvtier-bench/$BENCH_NAME
    trap bench_testbed_down EXIT
    bench_testbed_down
    bash testbed/tiers.sh up "$BENCH_NAME" --pmem-size 2G --hdd-size 4G >/dev/null
    bash testbed/registry.sh up "$BENCH_NAME" --rate "$2" >/dev/null
    eval "$(bash testbed/tiers.sh env "$BENCH_NAME")"
    eval "$(bash testbed/registry.sh env "$BENCH_NAME")"
    REF=$REGISTRY/python:latest
    bash testbed/push-image.sh "$PYTHON_OCI:python" "$REF" >/dev/null
    mkdir -p "$STATE/state"
    export NVTIER_CONFIG=$STATE/config.toml
    cat >"$NVTIER_CONFIG" <<CFG
state_dir = "$STATE/state"
pmem_dir = "$PMEM_DIR"
disk_dir = "$DISK_DIR"
pmem_budget = "2G"
insecure_registries = ["$REGISTRY"]
CFG
}

bench_testbed_down() {
    bash testbed/registry.sh down "$BENCH_NAME" >/dev/null 2>&1 || true
    bash testbed/tiers.sh down "$BENCH_NAME" >/dev/null 2>&1 || true
    rm -rf "$STATE"
}
