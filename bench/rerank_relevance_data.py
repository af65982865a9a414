#!/usr/bin/python3
"""Held-out relevance sets for the GNN rerank benchmark (bench/rerank_relevance.sh).

Writes DIR/<set>/{items,train,heldout}.copy (COPY text format) and
DIR/<set>/baseline.txt, the P@10 of the best non-learned graph baseline.

Sets (all deterministic):
  topics-s<sigma>: 200 latent topics in 64 dimensions, 50 items per topic,
      each item the topic's centre plus sigma * N(0, I); queries are other
      noisy views.  Relevant = same topic.
  fmnist: Fashion-MNIST (Debian package dataset-fashion-mnist): the first
      N_ITEMS training images are the items, test images the queries;
      pixels / 255, projected to 64 dimensions by a seeded Gaussian random
      projection.  Relevant = same class.
  wordnet: WordNet 3.0 noun glosses (Debian package wordnet-base,
      /usr/share/wordnet/data.noun), labelled by their lexicographer file
      (26 classes: noun.animal, noun.artifact, ...).  A gloss is embedded
      by TF-IDF (sublinear tf, smoothed idf over the sampled glosses, L2
      normalised) and a seeded Gaussian random projection to 64
      dimensions, normalised again (L2 distance then orders as cosine).
      Items, training and held-out queries are disjoint random synsets.
      Relevant = same lexicographer file.
Training pairs: (query, an item of the query's class among its 100
nearest, at random): the clicks a user would log.  Held-out queries have
their class; P@10 = share of the top 10 in the query's class.

The non-learned baseline: each of the query's 100 nearest candidates is
scored by the distance from the query to the mean of the candidate and
its k nearest items; k in {4, 8, 16, 32} chosen on the training queries.
"""
import gzip
import os
import sys

import numpy as np

DIM = 64
N_CAND = 100


def vec(x):
    return "[" + ",".join("%.5g" % v for v in x) + "]"


def knn(q, x, k, exclude_self=False):
    xx = (x * x).sum(1)
    out = []
    for s in range(0, len(q), 1000):
        b = q[s:s + 1000]
        d = (b * b).sum(1)[:, None] + xx[None, :] - 2 * b @ x.T
        if exclude_self:
            d[np.arange(len(b)), np.arange(s, s + len(b))] = np.inf
        i = np.argpartition(d, k, 1)[:, :k]
        o = np.argsort(np.take_along_axis(d, i, 1), 1)
        out.append(np.take_along_axis(i, o, 1))
    return np.vstack(out)


def p10(order, cand, label, qlabel):
    top = np.take_along_axis(cand, order[:, :10], 1)
    return float((label[top] == qlabel[:, None]).mean())


def baseline(items, label, tq, tl, hq, hl):
    nn = knn(items, items, 32, exclude_self=True)
    best = None
    for k in (4, 8, 16, 32):
        mean = (items + items[nn[:, :k]].sum(1)) / (k + 1)
        scores = []
        for q, lab in ((tq, tl), (hq, hl)):
            cand = knn(q, items, N_CAND)
            d = ((q[:, None, :] - mean[cand]) ** 2).sum(2)
            scores.append(p10(np.argsort(d, 1), cand, label, lab))
        if best is None or scores[0] > best[1]:
            best = (k, scores[0], scores[1])
    return best


def write_set(out, name, items, label, tq, tl, hq, hl, rng):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    cand = knn(tq, items, N_CAND)
    with open(os.path.join(d, "items.copy"), "w") as f:
        for i, x in enumerate(items):
            f.write("%d\t%d\t%s\n" % (i + 1, label[i], vec(x)))
    with open(os.path.join(d, "train.copy"), "w") as f:
        for q, lab, c in zip(tq, tl, cand):
            hits = [j for j in c if label[j] == lab]
            if hits:
                f.write("%s\t%s\n" % (vec(q), vec(items[hits[rng.integers(0, len(hits))]])))
    with open(os.path.join(d, "heldout.copy"), "w") as f:
        for i, (q, lab) in enumerate(zip(hq, hl)):
            f.write("%d\t%d\t%s\n" % (i, lab, vec(q)))
    k, val, test = baseline(items, label, tq, tl, hq, hl)
    hc = knn(hq, items, N_CAND)
    exact = p10(np.tile(np.arange(N_CAND), (len(hq), 1)), hc, label, hl)
    with open(os.path.join(d, "baseline.txt"), "w") as f:
        f.write("%d %.4f %.4f %.4f\n" % (k, val, test, exact))
    print("%s: %d items, %d pairs, %d held-out; exact P@10 %.3f, baseline k=%d P@10 %.3f (held-out)"
          % (name, len(items), len(tq), len(hq), exact, k, test))


def topics(out, sigma, n_train, n_held):
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((200, DIM)).astype(np.float32)
    label = np.repeat(np.arange(200), 50)
    items = centres[label] + sigma * rng.standard_normal((len(label), DIM)).astype(np.float32)

    def queries(n):
        t = rng.integers(0, 200, n)
        return centres[t] + sigma * rng.standard_normal((n, DIM)).astype(np.float32), t

    tq, tl = queries(n_train)
    hq, hl = queries(n_held)
    write_set(out, "topics-s%g" % sigma, items, label, tq, tl, hq, hl, rng)


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fmnist(out, n_items, n_train, n_held):
    src = "/usr/share/datasets/fashion-mnist"
    rng = np.random.default_rng(11)
    x = idx(src + "/train-images-idx3-ubyte.gz").reshape(60000, -1) / 255.0
    y = idx(src + "/train-labels-idx1-ubyte.gz")
    tx = idx(src + "/t10k-images-idx3-ubyte.gz").reshape(10000, -1) / 255.0
    ty = idx(src + "/t10k-labels-idx1-ubyte.gz")
    proj = (rng.standard_normal((784, DIM)) / np.sqrt(DIM)).astype(np.float32)
    items = (x[:n_items] @ proj).astype(np.float32)
    q = (tx @ proj).astype(np.float32)
    write_set(out, "fmnist", items, y[:n_items], q[:n_train], ty[:n_train],
              q[n_train:n_train + n_held], ty[n_train:n_train + n_held], rng)


def wordnet(out, n_items, n_train, n_held):
    import re
    import scipy.sparse as sp
    rng = np.random.default_rng(13)
    glosses, label = [], []
    with open("/usr/share/wordnet/data.noun", encoding="latin-1") as f:
        for line in f:
            if line.startswith("  "):	# the licence header
                continue
            head, _, gloss = line.partition("|")
            glosses.append(gloss)
            label.append(int(head.split()[1]))
    pick = rng.permutation(len(glosses))[:n_items + n_train + n_held]
    docs = [re.findall(r"[a-z][a-z0-9]+", glosses[i].lower()) for i in pick]
    label = np.array(label)[pick]
    vocab = {}
    rows, cols, vals = [], [], []
    for r, words in enumerate(docs):
        ids, counts = np.unique([vocab.setdefault(w, len(vocab)) for w in words], return_counts=True)
        rows += [r] * len(ids)
        cols += list(ids)
        vals += list(1 + np.log(counts))
    tf = sp.csr_matrix((vals, (rows, cols)), shape=(len(docs), len(vocab)))
    df = np.bincount(cols, minlength=len(vocab))
    x = tf @ sp.diags(np.log((1 + len(docs)) / (1 + df)) + 1)
    x = sp.diags(1 / np.maximum(np.sqrt(x.multiply(x).sum(1)).A1, 1e-12)) @ x
    proj = rng.standard_normal((len(vocab), DIM)) / np.sqrt(DIM)
    e = np.asarray(x @ proj, np.float32)
    e /= np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    a, b = n_items, n_items + n_train
    write_set(out, "wordnet", e[:a], label[:a], e[a:b], label[a:b], e[b:], label[b:], rng)


def main():
    out = sys.argv[1]
    n_items = int(os.environ.get("FMNIST_ITEMS", "10000"))
    for sigma in (1.3, 1.5, 1.7):
        topics(out, sigma, 2000, 400)
    if not os.path.exists(os.path.join(out, "fmnist", "baseline.txt")):
        fmnist(out, n_items, 2000, 400)
    if not os.path.exists(os.path.join(out, "wordnet", "baseline.txt")):
        wordnet(out, n_items, 2000, 400)


if __name__ == "__main__":
    main()
