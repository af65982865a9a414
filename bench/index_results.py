"""Reading the index benchmark's files: dataset meta and ground truth, the
CSV files pg_bench.sh and hnswlib_ref.py write, recall@10 of a result file."""
import csv

import numpy as np


def load_meta(dataset):
    return dict(line.split("=", 1) for line in open(f"{dataset}/meta.txt").read().splitlines() if "=" in line)


def load_gt10(dataset, meta):
    """Exact top-10 ids per query (gt.i32 holds top-k, k from meta.txt)."""
    return np.fromfile(f"{dataset}/gt.i32", dtype=np.int32).reshape(-1, int(meta["k"]))[:, :10]


def rows(path):
    return list(csv.DictReader(open(path)))


def results_recall_per_query(path, gt):
    """Each query's recall@10 in a (query id, item id) CSV written by
    pg_bench.sh."""
    found = {}
    for q, item in csv.reader(open(path)):
        found.setdefault(int(q), set()).add(int(item))
    return [len(found.get(q, set()) & set(gt[q].tolist())) / 10 for q in range(len(gt))]


def results_recall(path, gt):
    """recall@10 of a (query id, item id) CSV written by pg_bench.sh."""
    per_query = results_recall_per_query(path, gt)
    return sum(per_query) / len(per_query)
