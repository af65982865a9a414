"""The CAGRA build against the hnsw build on 2 cores, in the index.

usage: report_cagra_2core.py CSV
Reads bench/cagra_2core.sh's CSV (set, build, rep, wall and CPU seconds)
and prints, per set, both builds' median wall time and the ratio of the
medians, next to each alternating pair's own ratio (issue 13's target:
CAGRA <= 0.5x the hnsw build).
"""
import csv
import statistics
import sys

builds = {}
with open(sys.argv[1]) as f:
    for r in csv.DictReader(f):
        builds.setdefault(r["set"], {}).setdefault(r["build"], {})[int(r["rep"])] = float(r["wall_seconds"])

print("| set | hnsw wall, median (s) | CAGRA wall, median (s) | CAGRA / hnsw | each pair | 0.5x target |")
print("|---|---:|---:|---:|---|---|")
for name, b in builds.items():
    if "hnsw" not in b or "cagra" not in b:
        print(f"| {name} | {'failed' if 'hnsw' not in b else ''} | {'failed' if 'cagra' not in b else ''} | | | |")
        continue
    h, c = statistics.median(b["hnsw"].values()), statistics.median(b["cagra"].values())
    pairs = ", ".join(f"{b['cagra'][k] / b['hnsw'][k]:.2f}" for k in sorted(b["hnsw"]) if k in b["cagra"])
    print(f"| {name} | {h:.2f} | {c:.2f} | {c / h:.2f} | {pairs} | {'met' if c / h <= 0.5 else 'missed'} |")
