#!/usr/bin/python3
"""Diagnosis for docs/gnn.md: is there anything for a learned term to add
on top of the neighbourhood term, from the clicks, on a relevance set of
bench/rerank_relevance_data.py?

Usage: bench/rerank_residual_diag.py DIR/SET    (a set the generator wrote)

Every held-out query's 100 exact nearest items are reranked (topic or
class P@10) by:
  raw              distance (the plain scan's order)
  neighbourhood    z(-|q - mean(c, its 32 nearest items)|^2), the model's
                   skip term with exact neighbours
  query denoised   the same with q replaced by the mean of q and its m
                   nearest candidates (a non-learned guess at what the
                   layer's q' could add)
  residual         a * neighbourhood + q^T M mean(c, ...), M a 64 x 64 map
                   trained from zero by InfoNCE over the candidates on 80%
                   of the click pairs (numpy Adam, 20 epochs), a fitted
                   first by the same loss with M = 0, the epoch (0 = the
                   neighbourhood term alone) chosen by the positives' mean
                   rank on the other 20%, as gnnvec_train chooses
The residual's epoch 0 is the neighbourhood term: a learner of this kind
can only add what the clicks show beyond it.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rerank_metric_diag import knn, load, mean_rank, p10, zs  # noqa: E402

K_NEIGHBOURS = 32
EPOCHS = 20
BATCH = 64


def main(d):
    items, label, tq, tp, hq, hl = load(d)
    dim = items.shape[1]
    means = items[knn(items, items, K_NEIGHBOURS + 1)].mean(1)

    def nbterm(q, c):
        return zs(-((q[:, None, :] - means[c]) ** 2).sum(-1))

    ch = knn(hq, items, 100)
    ct = knn(tq, items, 100)
    pid = knn(tp, items, 1)[:, 0]
    hit = ct == pid[:, None]
    keep = hit.any(1)
    ct, tq, pos = ct[keep], tq[keep], hit[keep].argmax(1)
    raw = zs(-((hq[:, None, :] - items[ch]) ** 2).sum(-1))
    sh = nbterm(hq, ch)
    print("%s: raw %.4f, neighbourhood %.4f" % (os.path.basename(d.rstrip("/")),
          p10(raw, ch, label, hl), p10(sh, ch, label, hl)))
    for m in (4, 8, 16, 32):
        qh = (hq + items[ch[:, :m]].sum(1)) / (m + 1)
        print("  query denoised with its %d nearest candidates %.4f" %
              (m, p10(nbterm(qh, ch), ch, label, hl)))

    st = nbterm(tq, ct)
    perm = np.random.default_rng(0).permutation(len(tq))
    tr, va = perm[:int(0.8 * len(tq))], perm[int(0.8 * len(tq)):]

    def logits(a, M, q, s, c):
        return a * s + np.einsum("nd,de,nke->nk", q, M, means[c])

    def loss(a, M, idx):
        lg = logits(a, M, tq[idx], st[idx], ct[idx])
        lg -= lg.max(1, keepdims=True)
        p = np.exp(lg)
        p /= p.sum(1, keepdims=True)
        return -np.log(p[np.arange(len(idx)), pos[idx]] + 1e-12).mean(), p

    zero = np.zeros((dim, dim))
    a = min((0.5, 1, 2, 4, 8, 16), key=lambda w: loss(w, zero, tr)[0])
    for lr in (1e-3, 1e-2):
        M, m1, m2, step = zero.copy(), zero.copy(), zero.copy(), 0
        start = mean_rank(a * st[va], pos[va])
        best = (start, 0, M.copy())
        for ep in range(1, EPOCHS + 1):
            for b in range(0, len(tr), BATCH):
                idx = tr[b:b + BATCH]
                _, p = loss(a, M, idx)
                p[np.arange(len(idx)), pos[idx]] -= 1
                grad = np.einsum("nk,nd,nke->de", p / len(idx), tq[idx], means[ct[idx]])
                step += 1
                m1 = 0.9 * m1 + 0.1 * grad
                m2 = 0.999 * m2 + 0.001 * grad ** 2
                M -= lr * (m1 / (1 - 0.9 ** step)) / (np.sqrt(m2 / (1 - 0.999 ** step)) + 1e-8)
            r = mean_rank(logits(a, M, tq[va], st[va], ct[va]), pos[va])
            if r < best[0]:
                best = (r, ep, M.copy())
        print("  residual over %g x neighbourhood, lr %g: validation mean rank %.2f at epoch %d"
              " (epoch 0: %.2f), held-out %.4f" %
              (a, lr, best[0], best[1], start,
               p10(logits(a, best[2], hq, sh, ch), ch, label, hl)))


if __name__ == "__main__":
    main(sys.argv[1])
