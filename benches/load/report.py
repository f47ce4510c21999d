#!/usr/bin/env python3
"""Summarize benches/load/run.sh: the median round per target (req/s, p50, p99, CPU per
request), peak RSS, ratios to nginx and to bare Pingora; writes results.md, results.tsv
and ratios.svg (throughput and CPU-efficiency ratios to nginx, one bar pair per target).

report.py OUT ROUNDS DURATION CONNECTIONS"""
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone

out, rounds, duration, conns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
NAMES = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "pingora": "bare Pingora + mimalloc",
    "gateway_plain": "gateway, plain route",
    "gateway_full": "gateway, full pipeline",
    "full_ratio0": "full + tracing, ratio 0",
    "full_ratio1": "full + tracing, ratio 1",
}
rows = {}
for line in open(os.path.join(out, "rounds.tsv")):
    _, t, rps, p50, p99, cpu = line.split("\t")
    rows.setdefault(t, []).append((float(rps), float(p50), float(p99), float(cpu)))
rss = {}
for line in open(os.path.join(out, "rss.tsv")):
    t, kib = line.split("\t")
    rss[t] = int(kib) / 1024
order = [t for t in NAMES if t in rows]


def med(t, i):
    return statistics.median(r[i] for r in rows[t])


m = {t: {"rps": med(t, 0), "p50": med(t, 1), "p99": med(t, 2), "cpu": med(t, 3)} for t in order}
base_n, base_p = m["nginx"], m["pingora"]


def cmd(*a):
    try:
        return subprocess.run(a, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


model = next((l.split(":", 1)[1].strip() for l in cmd("lscpu").splitlines() if l.startswith("Model name")), "?")
lines = [
    f"Run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}: {rounds} interleaved rounds of {duration} s, "
    f"wrk -t1 -c{conns} (keepalive), 100-byte body, each proxy one worker pinned to the same core; "
    f"medians of the rounds. Machine: {cmd('nproc')} x {model}, Linux {platform.release()}.",
    "",
    "| target | req/s | x nginx | x bare Pingora | p50 µs | p99 µs | CPU µs/request | CPU x bare Pingora | peak RSS MiB |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
]
tsv = ["target\treq_s\tx_nginx\tx_pingora\tp50_us\tp99_us\tcpu_us\tcpu_x_pingora\trss_mib"]
for t in order:
    r = m[t]
    lines.append(
        f"| {NAMES[t]} | {r['rps']:,.0f} | {r['rps'] / base_n['rps']:.2f} | {r['rps'] / base_p['rps']:.2f} | "
        f"{r['p50']:.0f} | {r['p99']:.0f} | {r['cpu']:.1f} | {r['cpu'] / base_p['cpu']:.2f} | {rss.get(t, 0):.1f} |"
    )
    tsv.append(
        f"{t}\t{r['rps']:.0f}\t{r['rps'] / base_n['rps']:.3f}\t{r['rps'] / base_p['rps']:.3f}\t{r['p50']:.0f}\t"
        f"{r['p99']:.0f}\t{r['cpu']:.1f}\t{r['cpu'] / base_p['cpu']:.3f}\t{rss.get(t, 0):.1f}"
    )
if "gateway_plain" in m and "gateway_full" in m:
    lines.append("")
    lines.append(
        f"Full pipeline / plain route: {m['gateway_full']['rps'] / m['gateway_plain']['rps']:.2f}x req/s, "
        f"{m['gateway_full']['cpu'] / m['gateway_plain']['cpu']:.2f}x CPU per request."
    )
for t in ("full_ratio0", "full_ratio1"):
    if t in m and "gateway_full" in m:
        lines.append("")
        lines.append(
            f"{NAMES[t]} / full pipeline: {m[t]['rps'] / m['gateway_full']['rps']:.2f}x req/s, "
            f"{m[t]['cpu'] / m['gateway_full']['cpu']:.2f}x CPU per request."
        )
lines.append("")
lines.append("Every round (req/s, CPU µs/request):")
lines.append("")
for t in order:
    lines.append(f"- {NAMES[t]}: " + ", ".join(f"{r[0]:,.0f} / {r[3]:.1f}" for r in rows[t]))
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
open(os.path.join(out, "results.tsv"), "w").write("\n".join(tsv) + "\n")

# The chart: per target, throughput and CPU efficiency (nginx CPU/request over the
# target's), both as ratios to nginx; a line at 1.0.
W, H, left, top, bar, gap = 720, 60 + 46 * len(order), 210, 40, 16, 14
scale = 420 / max(1.0, max(max(m[t]["rps"] / base_n["rps"], base_n["cpu"] / m[t]["cpu"]) for t in order))
svg = [
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="13">',
    f'<rect width="{W}" height="{H}" fill="white"/>',
    f'<text x="{left}" y="22" font-weight="bold">Ratio to nginx (1 worker, 1 core; higher is better)</text>',
]
for i, t in enumerate(order):
    y = top + i * (2 * bar + gap)
    tp = m[t]["rps"] / base_n["rps"]
    eff = base_n["cpu"] / m[t]["cpu"]
    svg.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">{NAMES[t]}</text>')
    svg.append(f'<rect x="{left}" y="{y}" width="{tp * scale:.1f}" height="{bar - 2}" fill="#3b73b9"/>')
    svg.append(f'<text x="{left + tp * scale + 4:.1f}" y="{y + bar - 4}">{tp:.2f} req/s</text>')
    svg.append(f'<rect x="{left}" y="{y + bar}" width="{eff * scale:.1f}" height="{bar - 2}" fill="#e08a2c"/>')
    svg.append(f'<text x="{left + eff * scale + 4:.1f}" y="{y + 2 * bar - 4}">{eff:.2f} CPU efficiency</text>')
x1 = left + scale
svg.append(f'<line x1="{x1:.1f}" y1="{top - 6}" x2="{x1:.1f}" y2="{H - 20}" stroke="#444" stroke-dasharray="4 3"/>')
svg.append(f'<text x="{x1:.1f}" y="{H - 6}" text-anchor="middle">1.0 = nginx</text>')
svg.append("</svg>")
open(os.path.join(out, "ratios.svg"), "w").write("\n".join(svg) + "\n")
