"""Index benchmark report: gnnhnsw (in PostgreSQL) against hnswlib, same run.

usage: report_index.py OUT_DIR DATASET_DIR
Reads OUT_DIR/{pg_hnsw.csv,hnswlib.csv,pg_results_ef*.csv}, the CAGRA build's
OUT_DIR/{pg_cagra.csv,pg_cagra_results_ef*.csv} when present, and the ground
truth; prints markdown tables and draws OUT_DIR/index_recall_qps.png.
"""
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from index_results import load_gt10, load_meta, results_recall, rows

out, dataset = sys.argv[1], sys.argv[2]
meta = load_meta(dataset)
n, dim = int(meta["n"]), int(meta["dim"])
m = 16
gt = load_gt10(dataset, meta)


def pg_recall(ef, prefix="pg_results"):
    return results_recall(f"{out}/{prefix}_ef{ef}.csv", gt)


pg = rows(f"{out}/pg_hnsw.csv")
hl = rows(f"{out}/hnswlib.csv")
pg_build = next(float(r["seconds"]) for r in pg if r["kind"] == "build")
pg_bytes = next(int(r["bytes"]) for r in pg if r["kind"] == "build")
hl_build = next(float(r["seconds"]) for r in hl if r["kind"] == "build")
ideal = n * (dim * 4 + 2 * m * 6)

print(f"build: gnnhnsw {pg_build:.2f}s, hnswlib {hl_build:.2f}s, ratio {pg_build / hl_build:.2f}x (target <= 1.25x)")
print(f"index size: {pg_bytes / 2**20:.1f} MiB = {pg_bytes / ideal:.2f}x (vectors + level-0 TIDs, "
      f"{ideal / 2**20:.1f} MiB; target <= 1.2x)")
print()
print("| ef_search | recall@10 gnnhnsw | recall@10 hnswlib | gap (points) | QPS gnnhnsw (SQL) | QPS hnswlib (1 thread) | QPS ratio |")
print("|---:|---:|---:|---:|---:|---:|---:|")
pts = {"gnnhnsw": [], "hnswlib": []}
for r in (r for r in pg if r["kind"] == "search"):
    ef = int(r["ef"])
    h = next(x for x in hl if x["kind"] == "search" and int(x["ef"]) == ef)
    rp, rh = pg_recall(ef), float(h["recall_at_10"])
    qp = int(r["queries"]) / float(r["seconds"])
    qh = int(h["queries"]) / float(h["seconds"])
    pts["gnnhnsw"].append((rp, qp))
    pts["hnswlib"].append((rh, qh))
    print(f"| {ef} | {rp:.4f} | {rh:.4f} | {100 * (rp - rh):+.1f} | {qp:.0f} | {qh:.0f} | {qp / qh:.2f}x |")

# build_method = 'cagra' against the hnsw build and hnswlib, same run
cagra_csv = f"{out}/pg_cagra.csv"
try:
    cg = rows(cagra_csv)
except FileNotFoundError:
    cg = []
if cg:
    cg_build = next(float(r["seconds"]) for r in cg if r["kind"] == "build")
    cg_bytes = next(int(r["bytes"]) for r in cg if r["kind"] == "build")
    print()
    print(f"build_method = 'cagra' (cpu, graph_degree {2 * m}, intermediate_graph_degree {3 * m}): "
          f"{cg_build:.2f}s; speed-up {pg_build / cg_build:.2f}x over the gnnhnsw hnsw build "
          f"and {hl_build / cg_build:.2f}x over hnswlib (target >= 2x); index {cg_bytes / 2**20:.1f} MiB")
    print()
    print("| ef_search | recall@10 cagra | recall@10 hnsw build | gap (points, target >= -1) | QPS cagra (SQL) | QPS hnsw build (SQL) |")
    print("|---:|---:|---:|---:|---:|---:|")
    pts["gnnhnsw cagra"] = []
    for r in (r for r in cg if r["kind"] == "search"):
        ef = int(r["ef"])
        h = next(x for x in pg if x["kind"] == "search" and int(x["ef"]) == ef)
        rc, rp = pg_recall(ef, "pg_cagra_results"), pg_recall(ef)
        qc = int(r["queries"]) / float(r["seconds"])
        qp = int(h["queries"]) / float(h["seconds"])
        pts["gnnhnsw cagra"].append((rc, qc))
        print(f"| {ef} | {rc:.4f} | {rp:.4f} | {100 * (rc - rp):+.1f} | {qc:.0f} | {qp:.0f} |")

fig, ax = plt.subplots(figsize=(7, 4))
for name, p in pts.items():
    ax.plot([x for x, _ in p], [y for _, y in p], "o-", label=name)
ax.set_yscale("log")
ax.set_xlabel("recall@10")
ax.set_ylabel("queries/s (one core)")
ax.set_title(f"{n // 1000}k x {dim} clustered, m={m}, ef_construction=64")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(f"{out}/index_recall_qps.png", dpi=120)
