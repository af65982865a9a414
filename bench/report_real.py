"""Real-data index benchmark report for one set: gnnhnsw against pgvector and
hnswlib, measured in the same run by real_bench.sh.

usage: report_real.py RESULT_DIR DATASET_DIR

Reads RESULT_DIR/{hnswlib.csv,pg_hnsw.csv,pg_cagra.csv,pgv_hnsw.csv} and the
(query id, item id) result files beside them (pgv_* only when pgvector ran),
prints markdown tables and draws RESULT_DIR/recall_qps.png.

Speeds are given twice: by wall time and by CPU time (the PostgreSQL
backend's, hnswlib's process), the second being what other jobs on a shared
machine do not move.  q/s at equal recall: each curve's q/s at recall@10 =
0.95 and 0.99, linear in
log(q/s) between the two ef_search points whose recall brackets the target;
"not reached" when no point reaches it; when the smallest ef_search is
already above the target, its q/s is a lower bound, marked ">=".
"""
import math
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from index_results import load_gt10, load_meta, results_recall_per_query, rows

TARGETS = (0.95, 0.99)
res, dataset = sys.argv[1], sys.argv[2]
meta = load_meta(dataset)
gt = load_gt10(dataset, meta)


class Curve:
    """One index: build seconds (wall, CPU), size, and per ef_search
    (ef, recall, {"wall": q/s, "cpu": q/s, "cold_cpu": q/s}): the steady
    state of a backend, and its first statement."""

    def __init__(self, name, csv_name, results_prefix=None):
        r = rows(f"{res}/{csv_name}")
        build = next(x for x in r if x["kind"] == "build")
        self.name = name
        self.build = {"wall": float(build["seconds"]), "cpu": float(build["cpu_seconds"])}
        self.bytes = int(build["bytes"]) if build.get("bytes") else None
        self.points = []
        self.per_query = {}     # ef -> each query's recall, when results were kept
        for x in (x for x in r if x["kind"] == "search"):
            ef = int(x["ef"])
            if results_prefix:
                per_query = results_recall_per_query(f"{res}/{results_prefix}_ef{ef}.csv", gt)
                self.per_query[ef] = per_query
                recall = sum(per_query) / len(per_query)
            else:
                recall = float(x["recall_at_10"])
            n = int(x["queries"])
            # cold_cpu: the first statement of a new backend (pg_bench.sh);
            # an in-process library (hnswlib) has no such state: its one clock
            cold = x.get("cold_cpu_seconds") or x["cpu_seconds"]
            self.points.append((ef, recall, {"wall": n / float(x["seconds"]), "cpu": n / float(x["cpu_seconds"]),
                                             "cold_cpu": n / float(cold)}))

    def recall(self, ef):
        return next(r for e, r, _ in self.points if e == ef)

    def gap(self, other, ef):
        """Recall difference to other at ef in points, with the standard
        error of that mean difference over the queries (paired: the same
        queries), when both kept their results."""
        d = 100 * (self.recall(ef) - other.recall(ef))
        a, b = self.per_query.get(ef), other.per_query.get(ef)
        if not a or not b or len(a) < 2:
            return f"{d:+.1f}"
        diffs = [x - y for x, y in zip(a, b)]
        mean = sum(diffs) / len(diffs)
        var = sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)
        return f"{d:+.1f} ± {100 * math.sqrt(var / len(diffs)):.1f}"

    def qps(self, ef, clock):
        return next(q[clock] for e, _, q in self.points if e == ef)

    def qps_at(self, target, clock):
        """(q/s, is_lower_bound) at recall target, or None if never reached."""
        prev = None
        for _, r, qs in self.points:
            q = qs[clock]
            if r >= target:
                if prev is None:
                    return q, True
                r0, q0 = prev
                t = (target - r0) / (r - r0)
                return math.exp(math.log(q0) + t * (math.log(q) - math.log(q0))), False
            prev = (r, q)
        return None


def fmt_qps(v):
    if v is None:
        return "not reached"
    return f"{'>= ' if v[1] else ''}{v[0]:.0f}"


def fmt_ratio(a, b):
    if a is None or b is None:
        return "n/a"
    if a[1] and b[1]:
        return "n/a (both above at the smallest ef)"
    bound = ">= " if a[1] else "<= " if b[1] else ""
    return f"{bound}{a[0] / b[0]:.2f}x"


def mib(b):
    return f"{b / 2**20:.1f} MiB"


gnn = Curve("gnnhnsw", "pg_hnsw.csv", "pg_results")
# a CAGRA build that failed (pg_bench.sh says why) leaves no CSV
cagra = Curve("gnnhnsw cagra", "pg_cagra.csv", "pg_cagra_results") if os.path.exists(f"{res}/pg_cagra.csv") else None
hnswlib = Curve("hnswlib", "hnswlib.csv")
pgv = Curve("pgvector", "pgv_hnsw.csv", "pgv_results") if os.path.exists(f"{res}/pgv_hnsw.csv") else None
peers = [c for c in (pgv, hnswlib) if c]

print(f"### {os.path.basename(os.path.normpath(res))}: {meta['n']} x {meta['dim']}, {meta['metric']}")
print()
print(f"Source: {meta.get('source', 'see meta.txt')}. {meta['queries']} queries, m = 16, ef_construction = 64.")
if pgv is None:
    print()
    print("pgvector: skipped (PGVECTOR_SRC was not set).")
print()
print("| | gnnhnsw | " + " | ".join(p.name for p in peers) + " | "
      + " | ".join(f"gnnhnsw / {p.name}" for p in peers) + " |")
print("|---|---:|" + "---:|" * (2 * len(peers)))
for clock, what in (("wall", "wall"), ("cpu", "CPU")):
    print(f"| build, {what} s | {gnn.build[clock]:.1f} | " + " | ".join(f"{p.build[clock]:.1f}" for p in peers)
          + " | " + " | ".join(f"{gnn.build[clock] / p.build[clock]:.2f}x" for p in peers) + " |")
print(f"| index size | {mib(gnn.bytes)} | " + " | ".join(mib(p.bytes) if p.bytes else "(in memory)" for p in peers)
      + " | " + " | ".join(f"{gnn.bytes / p.bytes:.2f}x" if p.bytes else "" for p in peers) + " |")
# a set where some curve stays below 0.95 (TF-IDF) is also compared at the
# highest multiple of 0.05 that every curve reaches
targets = list(TARGETS)
top = min(max(r for _, r, _ in c.points) for c in [gnn] + peers)
if top < TARGETS[0] and top >= 0.05:
    targets.insert(0, math.floor(top * 20) / 20)
for clock, what in (("cpu", "CPU"), ("cold_cpu", "CPU, a new backend's first statement"), ("wall", "wall")):
    for target in targets:
        g = gnn.qps_at(target, clock)
        print(f"| q/s ({what}) at recall {target} | {fmt_qps(g)} | "
              + " | ".join(fmt_qps(p.qps_at(target, clock)) for p in peers)
              + " | " + " | ".join(fmt_ratio(g, p.qps_at(target, clock)) for p in peers) + " |")
print()
if cagra:
    print(f"build_method = 'cagra' (cpu): build {cagra.build['wall']:.1f}s wall, {cagra.build['cpu']:.1f}s CPU "
          f"({cagra.build['wall'] / gnn.build['wall']:.2f}x gnnhnsw's hnsw build in wall time), index {mib(cagra.bytes)}.")
else:
    print("build_method = 'cagra' (cpu): the build failed (see the bench log), no column.")
print()
gap_vs = "pgvector" if pgv else "hnswlib"
ref = pgv or hnswlib
print("| ef_search | recall gnnhnsw | recall " + " | recall ".join(p.name for p in peers)
      + f" | gap vs {gap_vs} (points ± standard error) | recall cagra | CPU q/s gnnhnsw | CPU q/s "
      + " | CPU q/s ".join(p.name for p in peers) + " | wall q/s gnnhnsw | wall q/s "
      + " | wall q/s ".join(p.name for p in peers) + " |")
print("|---:|" + "---:|" * (5 + 3 * len(peers)))
for ef, r, q in gnn.points:
    print(f"| {ef} | {r:.4f} | " + " | ".join(f"{p.recall(ef):.4f}" for p in peers)
          + f" | {gnn.gap(ref, ef)} | {cagra.recall(ef) if cagra else float('nan'):.4f} | {q['cpu']:.0f} | "
          + " | ".join(f"{p.qps(ef, 'cpu'):.0f}" for p in peers) + f" | {q['wall']:.0f} | "
          + " | ".join(f"{p.qps(ef, 'wall'):.0f}" for p in peers) + " |")

fig, ax = plt.subplots(figsize=(7, 4))
for c in [c for c in (gnn, cagra) if c] + peers:
    ax.plot([r for _, r, _ in c.points], [q["cpu"] for _, _, q in c.points], "o-", label=c.name)
ax.set_yscale("log")
ax.set_xlabel("recall@10")
ax.set_ylabel("queries per CPU second (one core)")
ax.set_title(f"{os.path.basename(os.path.normpath(res))}: {meta['n']} x {meta['dim']}, {meta['metric']}, "
             "m=16, ef_construction=64")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(f"{res}/recall_qps.png", dpi=120)
