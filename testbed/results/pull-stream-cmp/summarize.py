#!/usr/bin/env python3
"""Medians of the interleaved base-vs-stream runs in this directory
(RATE-BIN-K.json from `nvbench pull --reps 1`, alternating binaries)."""
import glob, json, os, statistics as st, sys

here = os.path.dirname(os.path.abspath(__file__))
out = []
for rate in ["1gbit", "100mbit"]:
    rows = {}
    for f in sorted(glob.glob(f"{here}/{rate}-*-*.json")):
        binary = os.path.basename(f).split("-")[1]
        r = json.load(open(f))
        for s in r["samples"]:
            first = min(l["download_start_ms"] for l in s["layers"] if l["download_start_ms"] is not None)
            rows.setdefault((s["image"], s["placement"], binary), []).append(dict(
                deploy=s["deploy_ms"], wire=s["wire_ms"], after=s["store_after_download_ms"],
                dl_span=s["download_done_ms"] - first, first=first,
                tail=s["deploy_ms"] - s["stored_done_ms"], pmem=s["pmem_bytes"] / 2**20))
    if not rows:
        continue
    images = sorted({k[0] for k in rows}, key=["mid", "bottom", "top", "even", "many"].index)
    out.append(f"### {rate}\n")
    out.append("| image | placement | binary | n | deploy ms | deploy / wire | after-dl ms | pmem MiB | before 1st byte ms | exit ms |")
    out.append("|---|---|---|--:|--:|--:|--:|--:|--:|--:|")
    med = lambda v: st.median(v)
    summary = {}
    for im in images:
        for pl in ["disk", "pmem", "lass"]:
            for b in ["base", "stream"]:
                v = rows.get((im, pl, b), [])
                if not v:
                    continue
                d = med([x["deploy"] for x in v]); w = med([x["wire"] for x in v])
                a = med([x["after"] for x in v])
                summary.setdefault((pl, b), []).append((d / w, a, d))
                out.append(f"| {im} | {pl} | {b} | {len(v)} | {d:.0f} | {d / w:.3f} | {a:.0f} | {med([x['pmem'] for x in v]):.1f} | {med([x['first'] for x in v]):.0f} | {med([x['tail'] for x in v]):.0f} |")
    out.append("")
    out.append("| placement | binary | deploy / wire (median over images) | after-dl ms (median over images) |")
    out.append("|---|---|--:|--:|")
    for (pl, b), v in sorted(summary.items()):
        out.append(f"| {pl} | {b} | {med([x[0] for x in v]):.3f} | {med([x[1] for x in v]):.0f} |")
    for pl in ["disk", "pmem", "lass"]:
        if (pl, "base") in summary and (pl, "stream") in summary:
            ratios = [s[2] / b[2] for s, b in zip(summary[(pl, "stream")], summary[(pl, "base")])]
            out.append(f"\n{pl}: stream / base deploy, median over images {med(ratios):.3f} (range {min(ratios):.3f}–{max(ratios):.3f})")
    out.append("")
print("\n".join(out))
