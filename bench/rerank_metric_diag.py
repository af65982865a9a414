#!/usr/bin/python3
"""Diagnosis for docs/gnn.md: what a learned linear metric can do on a
relevance set of bench/rerank_relevance_data.py (the same items, pairs and
held-out queries the bench loads into PostgreSQL).

Usage: bench/rerank_metric_diag.py DIR SET    (DIR as written by the generator)

Every method reranks each held-out query's 100 exact nearest candidates
(the plain scan at ef 100 returns them, recall ~1) and reports class P@10:
  exact            the candidates' own order
  oracle           the ceiling: as many same-class candidates as there are,
                   up to 10
  knn-mean k       the non-learned baseline (mean of a candidate and its k
                   nearest items)
  lda (labels)     an upper bound for any linear metric: LDA fitted on the
                   labels of every item (a user has no such labels), ranking
                   by distance in the LDA space blended with raw distance
  metric L         a full 64 x 64 linear map L, ranking by |L(q - c)|^2,
                   trained by InfoNCE on the click pairs only: the positive
                   against the query's other candidates (no labels)
  query map W      the HnswScan adapter's form: ranking by |W q - c|^2
  bilinear         a scoring head s = q^T M c (what cos(q', c') with a
                   linear layer on both sides can express, up to norms)
  mlp              -|f(q) - f(c)|^2 with a residual one-hidden-layer f
                   (non-linear, as the GNN layer is)
  ... (labels)     metric / bilinear / mlp trained with every same-class
                   candidate of the training queries as positives
  10-NN class vote the query's class guessed from its 10 nearest items'
                   labels, that class's candidates first (non-linear, labels)
Each learned method is trained on 80% of the pairs, its epoch and blend
with raw distance are chosen on the other 20% (positive's mean rank, as
gnnvec_train does), and the held-out queries are touched once.
"""
import sys

import numpy as np

N_CAND = 100


def parse_vec(s):
    return np.array([float(x) for x in s.strip()[1:-1].split(",")], np.float32)


def load(d):
    items, label = [], []
    for line in open(d + "/items.copy"):
        i, lab, v = line.split("\t")
        items.append(parse_vec(v))
        label.append(int(lab))
    tq, tp = [], []
    for line in open(d + "/train.copy"):
        q, p = line.split("\t")
        tq.append(parse_vec(q))
        tp.append(parse_vec(p))
    hq, hl = [], []
    for line in open(d + "/heldout.copy"):
        _, lab, v = line.split("\t")
        hq.append(parse_vec(v))
        hl.append(int(lab))
    return (np.array(items), np.array(label), np.array(tq), np.array(tp),
            np.array(hq), np.array(hl))


def knn(q, x, k):
    xx = (x * x).sum(1)
    out = []
    for s in range(0, len(q), 1000):
        b = q[s:s + 1000]
        d = (b * b).sum(1)[:, None] + xx[None, :] - 2 * b @ x.T
        i = np.argpartition(d, k, 1)[:, :k]
        o = np.argsort(np.take_along_axis(d, i, 1), 1)
        out.append(np.take_along_axis(i, o, 1))
    return np.vstack(out)


def zs(x):
    sd = x.std(1, keepdims=True)
    return (x - x.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1)


def p10(score, cand, label, qlabel):
    o = np.argsort(-score, 1)[:, :10]
    return float((label[np.take_along_axis(cand, o, 1)] == qlabel[:, None]).mean())


def mean_rank(score, pos):
    """Mean rank (0 best) of column pos[i] in each row of score."""
    s = score[np.arange(len(pos)), pos]
    return float((score > s[:, None]).sum(1).mean())


BLENDS = [0.0, 0.25, 0.5, 1, 2, 4, 8, 1e9]	# weight of the learned term, raw 1


def choose_blend(raw, learned, pos):
    best = None
    for w in BLENDS:
        r = mean_rank(zs(raw) + w * zs(learned) if w < 1e9 else zs(learned), pos)
        if best is None or r < best[0]:
            best = (r, w)
    return best


def blended(raw, learned, w):
    return zs(raw) + w * zs(learned) if w < 1e9 else zs(learned)


class Learner:
    """InfoNCE over a query's candidates, Adam.

    kind 'metric':   s_j = -|P (q - c_j)|^2,   P D x D
    kind 'query':    s_j = -|P q - c_j|^2,     P D x D (a query map)
    kind 'bilinear': s_j = q^T P c_j
    kind 'mlp':      s_j = -|f(q) - f(c_j)|^2, f(x) = x + relu(x W1 + b1) W2,
                     hidden 4 D (a non-linear embedding of both sides)
    All start at the identity (W2 = 0), so epoch 0 is raw distance (or the
    dot product)."""

    def __init__(self, kind, dim, lr, tau):
        self.kind, self.lr, self.tau = kind, lr, tau
        if kind == "mlp":
            rng = np.random.default_rng(17)
            self.ps = [rng.standard_normal((dim, 4 * dim)) / np.sqrt(dim), np.zeros(4 * dim),
                       np.zeros((4 * dim, dim))]
        else:
            self.ps = [np.eye(dim)]
        self.m = [np.zeros_like(x) for x in self.ps]
        self.v = [np.zeros_like(x) for x in self.ps]
        self.t = 0

    def embed(self, x):
        w1, b1, w2 = self.ps
        h = np.maximum(x @ w1 + b1, 0)
        return x + h @ w2, h

    def scores(self, q, c):
        """q: B x D, c: B x n x D -> B x n."""
        p = self.ps[0]
        if self.kind == "metric":
            diff = (q[:, None, :] - c) @ p.T
            return -(diff * diff).sum(2)
        if self.kind == "query":
            diff = (q @ p.T)[:, None, :] - c
            return -(diff * diff).sum(2)
        if self.kind == "mlp":
            diff = self.embed(q)[0][:, None, :] - self.embed(c)[0]
            return -(diff * diff).sum(2)
        return ((q @ p)[:, None, :] * c).sum(2)

    def grads(self, q, c, g):
        """Gradients of the loss from g = dL/ds (B x n)."""
        p = self.ps[0]
        if self.kind == "metric":
            diff = q[:, None, :] - c	# B n D
            dim = q.shape[1]
            return [-2 * (g[:, :, None] * (diff @ p.T)).reshape(-1, dim).T @ diff.reshape(-1, dim)]
        if self.kind == "query":
            diff = (q @ p.T)[:, None, :] - c
            return [-2 * (g[:, :, None] * diff).sum(1).T @ q]
        if self.kind == "bilinear":
            return [q.T @ (g[:, :, None] * c).sum(1)]
        w1, b1, w2 = self.ps
        fq, hq = self.embed(q)
        fc, hc = self.embed(c)
        u = fq[:, None, :] - fc	# B n D
        gq = -2 * (g[:, :, None] * u).sum(1)	# dL/df(q)
        gc = 2 * g[:, :, None] * u	# dL/df(c_j)
        x = np.concatenate([q, c.reshape(-1, c.shape[2])])
        h = np.concatenate([hq, hc.reshape(-1, hc.shape[2])])
        gf = np.concatenate([gq, gc.reshape(-1, gc.shape[2])])
        gh = (gf @ w2.T) * (h > 0)
        return [x.T @ gh, gh.sum(0), h.T @ gf]

    def step(self, q, c, pos):
        s = self.scores(q, c) / self.tau
        s -= s.max(1, keepdims=True)
        e = np.exp(s)
        prob = e / e.sum(1, keepdims=True)
        g = prob.copy()
        if pos.ndim == 1:
            g[np.arange(len(pos)), pos] -= 1	# dL/ds * tau
        else:	# several positives (a mask): L = -log sum of their probabilities
            pp = prob * pos
            g -= pp / np.maximum(pp.sum(1, keepdims=True), 1e-30)
        g /= self.tau * len(pos)
        self.t += 1
        for x, grad, m, v in zip(self.ps, self.grads(q, c, g), self.m, self.v):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad * grad
            x -= self.lr * (m / (1 - 0.9 ** self.t)) / (np.sqrt(v / (1 - 0.999 ** self.t)) + 1e-8)


def train_eval(kind, items, cand_t, pos_t, tq, cand_h, hq, fit, val, epochs=30, lr=1e-3, tau=None,
               target=None):
    """target: what the loss pulls up (default the logged positive; a mask of
    every same-class candidate for the labelled bound); the epoch and blend
    are always chosen on the logged positive of the validation pairs."""
    if target is None:
        target = pos_t
    dim = items.shape[1]
    if tau is None:
        tau = float(np.median(((tq[:, None, :] - items[cand_t[:, :10]]) ** 2).sum(2))) / 10
    lr_ = Learner(kind, dim, lr, tau)
    rng = np.random.default_rng(3)
    raw_v = -((tq[val][:, None, :] - items[cand_t[val]]) ** 2).sum(2)
    best = None
    for ep in range(epochs + 1):
        if ep > 0:
            order = rng.permutation(fit)
            for s in range(0, len(order), 32):
                b = order[s:s + 32]
                lr_.step(tq[b], items[cand_t[b]], target[b])
        sv = lr_.scores(tq[val], items[cand_t[val]])
        r, w = choose_blend(raw_v, sv, pos_t[val])
        if best is None or r < best[0]:
            best = (r, w, ep, [x.copy() for x in lr_.ps])
    r, w, ep, p = best
    lr_.ps = p
    raw_h = -((hq[:, None, :] - items[cand_h]) ** 2).sum(2)
    return blended(raw_h, lr_.scores(hq, items[cand_h]), w), w, ep


def main():
    d = sys.argv[1] + "/" + sys.argv[2]
    items, label, tq, tp, hq, hl = load(d)
    # the positive's id: the item equal to the logged vector (it is among the 100 nearest)
    cand_t = knn(tq, items, N_CAND)
    pos_t = np.array([int(np.argmin(((items[c] - p) ** 2).sum(1))) for c, p in zip(cand_t, tp)])
    cand_h = knn(hq, items, N_CAND)
    raw_h = -((hq[:, None, :] - items[cand_h]) ** 2).sum(2)
    print("%s: %d items, %d pairs, %d held-out" % (sys.argv[2], len(items), len(tq), len(hq)))
    print("exact                     %.3f" % p10(raw_h, cand_h, label, hl))
    same = (label[cand_h] == hl[:, None]).sum(1)
    print("oracle (ceiling)          %.3f" % np.minimum(same, 10).mean(0).__truediv__(10))
    nn = knn(items, items, 33)[:, 1:]
    for k in (4, 8, 16, 32):
        m = (items + items[nn[:, :k]].sum(1)) / (k + 1)
        print("knn-mean k %-2d             %.3f" % (k, p10(-((hq[:, None, :] - m[cand_h]) ** 2).sum(2),
                                                        cand_h, label, hl)))
    # LDA on every item's label: a linear metric's upper bound (labels a user lacks)
    mu = items.mean(0)
    classes = np.unique(label)
    sw = np.zeros((items.shape[1],) * 2)
    sb = np.zeros_like(sw)
    for c in classes:
        xc = items[label == c]
        mc = xc.mean(0)
        sw += (xc - mc).T @ (xc - mc)
        sb += len(xc) * np.outer(mc - mu, mc - mu)
    ev, evec = np.linalg.eig(np.linalg.solve(sw + 1e-3 * np.eye(len(sw)), sb))
    proj = np.real(evec[:, np.argsort(-np.real(ev))[:len(classes) - 1]])
    lda_h = -(((hq[:, None, :] - items[cand_h]) @ proj) ** 2).sum(2)
    for w in (0.5, 1, 2, 1e9):
        print("lda (labels) w %-4g       %.3f" % (w, p10(blended(raw_h, lda_h, w), cand_h, label, hl)))
    rng = np.random.default_rng(5)
    perm = rng.permutation(len(tq))
    nval = len(tq) // 5
    val, fit = perm[:nval], perm[nval:]
    for kind in ("metric", "query", "bilinear", "mlp"):
        for lr in (1e-3, 1e-2):
            s, w, ep = train_eval(kind, items, cand_t, pos_t, tq, cand_h, hq, fit, val, lr=lr)
            print("%-9s lr %-5g           %.3f  (blend w %g, epoch %d)"
                  % (kind, lr, p10(s, cand_h, label, hl), w, ep))
    # the same learners given every same-class candidate of the training
    # queries as positives (labels a user does not log): a linear bound
    mask = (label[cand_t] == label[pos_t][:, None]).astype(float)
    for kind in ("metric", "bilinear", "mlp"):
        s, w, ep = train_eval(kind, items, cand_t, pos_t, tq, cand_h, hq, fit, val, target=mask)
        print("%-9s (labels)            %.3f  (blend w %g, epoch %d)"
              % (kind, p10(s, cand_h, label, hl), w, ep))
    # a non-linear bound with labels: the query's class predicted by the
    # vote of its 10 nearest labelled items, candidates of that class first
    vote = np.array([np.bincount(label[c[:10]], minlength=label.max() + 1).argmax() for c in cand_h])
    print("10-NN class vote (labels) %.3f" % p10(zs(raw_h) + 100 * (label[cand_h] == vote[:, None]),
                                             cand_h, label, hl))


if __name__ == "__main__":
    main()
