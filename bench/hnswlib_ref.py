#!/usr/bin/python3
"""Reference for bench/cagra_build: hnswlib (Debian's python3-hnswlib) on the
same raw float32 file (n + queries rows of dim, the last rows the queries),
printing build time and recall@10 at the same ef values.

    bench/cagra_build --n 100000 --dim 128 --dump /tmp/x.f32 ...
    /usr/bin/python3 bench/hnswlib_ref.py /tmp/x.f32 100000 128 1000 2
"""
import sys
import time

import hnswlib
import numpy as np


def main():
    path, n, dim, nq, threads = sys.argv[1], *map(int, sys.argv[2:6])
    m, ef_construction = 16, 64
    data = np.fromfile(path, dtype=np.float32, count=(n + nq) * dim).reshape(n + nq, dim)
    base, queries = data[:n], data[n:]

    # exact ground truth, in blocks to bound memory
    base_norms = (base * base).sum(1)
    truth = []
    for q0 in range(0, nq, 256):
        q = queries[q0:q0 + 256]
        d = base_norms[None, :] - 2.0 * q @ base.T
        truth.append(np.argsort(d, axis=1)[:, :10])
    truth = np.vstack(truth)

    index = hnswlib.Index(space="l2", dim=dim)
    index.init_index(max_elements=n, M=m, ef_construction=ef_construction, random_seed=1)
    index.set_num_threads(threads)
    t = time.monotonic()
    index.add_items(base, np.arange(n))
    print(f"hnswlib build  {time.monotonic() - t:7.3f} s  (M {m}, ef_construction {ef_construction}, {threads} threads)")

    index.set_num_threads(1)
    for ef in (10, 20, 40, 80, 160):
        index.set_ef(ef)
        t = time.monotonic()
        labels, _ = index.knn_query(queries, k=10)
        elapsed = time.monotonic() - t
        hits = sum(len(set(labels[i]) & set(truth[i])) for i in range(nq))
        print(f"    ef {ef:4d}  recall@10 {hits / (nq * 10):.4f}  {nq / elapsed:8.0f} queries/s")


if __name__ == "__main__":
    main()
