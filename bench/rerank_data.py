#!/usr/bin/python3
"""Relevance benchmark data for the GNN reranker (bench/run.sh rerank).

Two deterministic data sets in COPY text format under DIR/<name>/:

topics: T latent topics with centres c_t ~ N(0, I) in 128 dimensions; each
    item belongs to one topic and its stored embedding is a noisy view
    c_t + sigma * N(0, I).  A query is another noisy view of a topic's
    centre; the relevant items are all items of that topic.  With sigma 2
    single vectors are weak evidence of the topic, but the kNN graph of the
    stored embeddings still links mostly same-topic items, so a model that
    aggregates graph neighbourhoods can recover what raw distance loses.
raw: items and queries i.i.d. N(0, I); the relevant items of a query are
    its 10 exact nearest neighbours: raw distance is the truth.

Files: items.copy (id, vector), train.copy (query vector, relevant item's
vector: the logged clicks), heldout.copy (qid, query vector, relevant ids).
"""
import os
import sys

import numpy as np

DIM = 128


def vec(x):
    return "[" + ",".join("%.6g" % v for v in x) + "]"


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")


def exact_topk(q, items, k):
    d = (q * q).sum(1)[:, None] + (items * items).sum(1)[None, :] - 2 * q @ items.T
    return np.argsort(d, 1)[:, :k]


def topics(out, rng, n_topics=100, per_topic=100, sigma=2.0, n_train=1000, n_held=200):
    centres = rng.standard_normal((n_topics, DIM)).astype(np.float32)
    topic = np.repeat(np.arange(n_topics), per_topic)
    items = centres[topic] + sigma * rng.standard_normal((len(topic), DIM)).astype(np.float32)

    def queries(n):
        t = rng.integers(0, n_topics, n)
        return t, centres[t] + sigma * rng.standard_normal((n, DIM)).astype(np.float32)

    tt, tq = queries(n_train)
    # a logged click: some item of the query's topic among its 100 nearest
    # (what a user sees), or any item of the topic when none is
    near = exact_topk(tq, items, 100)
    train = []
    for i in range(n_train):
        hits = [j for j in near[i] if topic[j] == tt[i]]
        j = hits[rng.integers(0, len(hits))] if hits else rng.choice(np.where(topic == tt[i])[0])
        train.append((vec(tq[i]), vec(items[j])))
    ht, hq = queries(n_held)
    held = [(str(i), vec(hq[i]),
             "{" + ",".join(str(j + 1) for j in np.where(topic == ht[i])[0]) + "}")
            for i in range(n_held)]
    return items, train, held


def raw(out, rng, n_items=10000, n_train=1000, n_held=200):
    items = rng.standard_normal((n_items, DIM)).astype(np.float32)
    tq = rng.standard_normal((n_train, DIM)).astype(np.float32)
    near = exact_topk(tq, items, 10)
    train = [(vec(tq[i]), vec(items[near[i][rng.integers(0, 10)]])) for i in range(n_train)]
    hq = rng.standard_normal((n_held, DIM)).astype(np.float32)
    hn = exact_topk(hq, items, 10)
    held = [(str(i), vec(hq[i]), "{" + ",".join(str(j + 1) for j in hn[i]) + "}")
            for i in range(n_held)]
    return items, train, held


def main():
    out = sys.argv[1]
    for name, make in (("topics", topics), ("raw", raw)):
        d = os.path.join(out, name)
        if os.path.exists(os.path.join(d, "heldout.copy")):
            continue
        os.makedirs(d, exist_ok=True)
        items, train, held = make(d, np.random.default_rng(2024))
        write(os.path.join(d, "items.copy"), ((str(i + 1), vec(x)) for i, x in enumerate(items)))
        write(os.path.join(d, "train.copy"), train)
        write(os.path.join(d, "heldout.copy"), held)
        print("%s: %d items, %d training pairs, %d held-out queries" % (name, len(items), len(train), len(held)))


if __name__ == "__main__":
    main()
