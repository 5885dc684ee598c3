#!/usr/bin/env bash
# Tracer benchmark: overhead of the eBPF tracer on a file-heavy
# cold start, and lost events at the highest open rate we can produce.
#
#   sudo bash testbed/bench-trace.sh [--reps 10] [--name trbench]
#
# Image: Debian bookworm minbase + python3 + /app/main.py importing a dozen
# stdlib packages (testbed/build-debian-image.sh). Each rep runs, in
# alternating order, `nvtier run --drop-caches` (baseline) and
# `nvtier trace --tracer ebpf` (traced) inside the HDD throttle cgroup, and
# compares the command's wall time. Results: testbed/results/trace.{json,md}.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

REPS=10
NAME=trbench
PLACEMENTS="lass pmem"
while (($#)); do
    case $1 in
        --reps) REPS=$2; shift 2 ;;
        --name) NAME=$2; shift 2 ;;
        --placements) PLACEMENTS=$2; shift 2 ;;
        -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "bench-trace.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $(id -u) -eq 0 ]] || { echo "bench-trace.sh: needs root" >&2; exit 1; }

t_start=$(date +%s)
bash testbed/install-deps.sh
cargo build --release --locked -p nvtier-driver
NVTIER=$PWD/target/release/nvtier
# shellcheck source-path=SCRIPTDIR source=bench-common.sh
source testbed/bench-common.sh
build_python_image
bench_testbed_up "$NAME" none

RES=$STATE/samples.jsonl
: >"$RES"
for placement in $PLACEMENTS; do
    "$NVTIER" rm "$REF" >/dev/null 2>&1 || true
    "$NVTIER" pull --json --placement "$placement" "$REF" >/dev/null
    # One warm-up of each, not recorded.
    bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches --json "$REF" -- python3 /app/main.py >/dev/null
    bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" trace --tracer ebpf --json "$REF" -- python3 /app/main.py >/dev/null
    for i in $(seq "$REPS"); do
        order="base traced"
        ((i % 2 == 0)) && order="traced base"
        for what in $order; do
            if [[ $what == base ]]; then
                out=$(bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --drop-caches --json "$REF" -- python3 /app/main.py 2>/dev/null)
                jq -c --arg p "$placement" '{placement: $p, what: "base", ms: .elapsed_ms, exit: .exit_code, lost: 0, files: null}' <<<"$out" >>"$RES"
            else
                out=$(bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" trace --tracer ebpf --json "$REF" -- python3 /app/main.py 2>/dev/null)
                jq -c --arg p "$placement" '{placement: $p, what: "traced", ms: .elapsed_ms, exit: .exit_code, lost: .lost_events, files: .files, hot_share: .hot_share, tracer: .tracer}' <<<"$out" >>"$RES"
            fi
        done
    done
done

# Highest open rate: a tight open/close loop inside the container, traced.
storm=$(bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" trace --tracer ebpf --warm --json "$REF" -- \
    python3 -c 'import os
for i in range(200000):
    os.close(os.open("/etc/hostname", os.O_RDONLY))' 2>/dev/null)
storm_base=$(bash testbed/tiers.sh exec "$NAME" -- "$NVTIER" run --json "$REF" -- \
    python3 -c 'import os
for i in range(200000):
    os.close(os.open("/etc/hostname", os.O_RDONLY))' 2>/dev/null)

mkdir -p testbed/results
python3 - "$RES" "$REPS" "$t_start" <<'PY' "$storm" "$storm_base"
import json, sys, statistics, platform, os, subprocess, datetime
res, reps, t0 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
storm, storm_base = json.loads(sys.argv[4]), json.loads(sys.argv[5])
rows = [json.loads(l) for l in open(res)]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
opens = next((f["count"] for f in storm["profile"]["files"] if f["path"] == "/etc/hostname"), 0)
out = {"date": date, "machine": {"cpu": cpu, "nproc": os.cpu_count(), "mem_kib": int(mem), "kernel": platform.release()},
       "reps": reps, "samples": rows,
       "storm": {"opens_requested": 200000, "opens_recorded": opens, "lost_events": storm["lost_events"],
                 "traced_ms": storm["elapsed_ms"], "base_ms": storm_base["elapsed_ms"]}}
json.dump(out, open("testbed/results/trace.json", "w"), indent=1)
md = [f"# nvtier tracer benchmark\n",
      f"**{date}** · {cpu} ({os.cpu_count()} CPUs, {int(mem)//1024//1024} GiB, Linux {platform.release()}) · {reps} reps per placement, alternating order · run took {(int(__import__('time').time())-t0)/60:.1f} min including build\n",
      "Workload: Debian bookworm + python3, `python3 /app/main.py` importing json, email.parser, http.client, sqlite3, asyncio, decimal, argparse, logging, xml.dom.minidom, csv, unittest, urllib.request. Caches dropped before every run; the HDD tier throttled (150 IOPS, 150 MiB/s). Baseline = `nvtier run --drop-caches`; traced = `nvtier trace --tracer ebpf` (same probe, plus the eBPF tracer). Wall time of the command, medians (min–max).\n",
      "| placement | baseline ms | traced ms | overhead | files in profile | hot share of image bytes | lost events |",
      "|---|--:|--:|--:|--:|--:|--:|"]
verdicts = []
for p in dict.fromkeys(r["placement"] for r in rows):
    b = [r["ms"] for r in rows if r["placement"] == p and r["what"] == "base"]
    t = [r["ms"] for r in rows if r["placement"] == p and r["what"] == "traced"]
    tr = [r for r in rows if r["placement"] == p and r["what"] == "traced"]
    mb, mt = statistics.median(b), statistics.median(t)
    ov = (mt / mb - 1) * 100
    verdicts.append((p, ov))
    md.append(f"| {p} | {mb:.1f} ({min(b):.1f}–{max(b):.1f}) | {mt:.1f} ({min(t):.1f}–{max(t):.1f}) | {ov:+.1f}% | {statistics.median([r['files'] for r in tr]):.0f} | {statistics.median([r['hot_share'] for r in tr])*100:.1f}% | {sum(r['lost'] for r in tr)} |")
md.append("")
md.append(f"Open storm: 200000 `open`+`close` of one file in a tight Python loop, traced: **{opens} opens recorded, {storm['lost_events']} events lost**; {storm['elapsed_ms']:.0f} ms traced vs {storm_base['elapsed_ms']:.0f} ms untraced ({200000/(storm['elapsed_ms']/1000):.0f} opens/s).")
md.append("")
for p, ov in verdicts:
    md.append(f"- {p}: overhead {ov:+.1f}% — goal < 3%: **{'met' if ov < 3 else 'missed'}**")
md.append(f"- zero lost events at the highest open rate: **{'met' if storm['lost_events'] == 0 and opens >= 200000 else 'missed'}**")
open("testbed/results/trace.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY
