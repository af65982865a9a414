"""hnswlib reference for the index benchmark, on the same data in the same run.

usage: hnswlib_ref.py DATASET_DIR OUT_CSV [M] [EF_CONSTRUCTION] [THREADS]

Builds with `THREADS` threads (as our build uses both cores), then answers all
queries in one call on one thread (as one PostgreSQL backend does; no Python
overhead per query) at each ef_search, and writes
kind,ef,seconds,queries,recall_at_10,cpu_seconds rows (cpu_seconds: the
process's CPU time, every thread's, as PostgreSQL's side measures its
backend's).  The space is the dataset's metric
(meta.txt: l2 or cosine); EF_LIST in the environment overrides the ef_search
values (default "10 20 40 80 160").
"""
import os
import sys
import time

import hnswlib
import numpy as np

from index_results import load_gt10, load_meta

dataset, out = sys.argv[1], sys.argv[2]
m = int(sys.argv[3]) if len(sys.argv) > 3 else 16
efc = int(sys.argv[4]) if len(sys.argv) > 4 else 64
threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
meta = load_meta(dataset)
dim = int(meta["dim"])
base = np.fromfile(f"{dataset}/base.f32", dtype=np.float32).reshape(-1, dim)
queries = np.fromfile(f"{dataset}/queries.f32", dtype=np.float32).reshape(-1, dim)
gt = load_gt10(dataset, meta)

rows = []
index = hnswlib.Index(space=meta.get("metric", "l2"), dim=dim)
t0, c0 = time.perf_counter(), time.process_time()
index.init_index(max_elements=len(base), M=m, ef_construction=efc, random_seed=100)
index.add_items(base, np.arange(len(base)), num_threads=threads)
rows.append(("build", 0, time.perf_counter() - t0, len(base), "", time.process_time() - c0))

for ef in (int(x) for x in os.environ.get("EF_LIST", "10 20 40 80 160").split()):
    index.set_ef(max(ef, 10))
    wall = cpu = None
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        labels = index.knn_query(queries, k=10, num_threads=1)[0]
        elapsed, used = time.perf_counter() - t0, time.process_time() - c0
        wall = elapsed if wall is None else min(wall, elapsed)
        cpu = used if cpu is None else min(cpu, used)
    hits = sum(len(set(l.tolist()) & set(g.tolist())) for l, g in zip(labels, gt))
    rows.append(("search", ef, wall, len(queries), hits / (10 * len(queries)), cpu))

with open(out, "w") as f:
    f.write("kind,ef,seconds,queries,recall_at_10,cpu_seconds\n")
    for r in rows:
        f.write(",".join(str(x) for x in r) + "\n")
for r in rows:
    print("hnswlib", *r)
