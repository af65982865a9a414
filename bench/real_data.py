"""Real-data sets for the index benchmark, built offline from Debian packages.

usage: real_data.py words|fashion|tfidf OUT_DIR

Writes the format of gen_dataset: OUT_DIR/base.f32 and queries.f32 (raw
little-endian float32 rows), gt.i32 (exact top-k row ids by brute force,
nearest first) and meta.txt.  Every random choice is seeded, and fastText
trains on one thread, so the same packages give the same bytes.

  words    fastText skipgram 100-d vectors of the words of GCIDE (dict-gcide,
           the Collaborative International Dictionary of English); queries are
           1000 vocabulary words held out of base; cosine.
  fashion  dataset-fashion-mnist: the 60k training images as 784-d pixel
           vectors; queries are 1000 of the 10k test images; L2.
  tfidf    GCIDE's entries as documents: TF-IDF (sklearn) projected to 256-d by
           a seeded Gaussian matrix; queries are 1000 entries held out of base;
           cosine.
"""
import gzip
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

GCIDE = "/usr/share/dictd/gcide.dict.dz"
FASHION = "/usr/share/datasets/fashion-mnist"
K = 100
QUERIES = 1000
SEED = 42

# GCIDE markup that is not prose: pronunciations (\Ab*di"ca*tion\) and the
# source tags ([1913 Webster], [PJC]) that end almost every entry
MARKUP = re.compile(r"\\[^\\\n]*\\|\[[^\]\n]*\]")
WORD = re.compile(r"[a-z]+")


def gcide_entries():
    """GCIDE's entries as lower-case word lists, in dictionary order.

    An entry starts at a line that begins in column 0 (the headword); its
    definition lines are indented."""
    with gzip.open(GCIDE, "rt", encoding="utf-8", errors="replace") as f:
        entry = []
        for line in f:
            if line[:1] not in ("", " ", "\t", "\n") and entry:
                yield entry
                entry = []
            entry.extend(WORD.findall(MARKUP.sub(" ", line).lower()))
        if entry:
            yield entry


def split_queries(n):
    """Row numbers of the held-out queries and of base, both ascending."""
    held = np.sort(np.random.default_rng(SEED).choice(n, QUERIES, replace=False))
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return held, np.flatnonzero(mask)


def ground_truth(base, queries, metric):
    """Exact top-K ids per query, in double precision, nearest first."""
    b = base.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "cosine":
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        dist = -(q @ b.T)
    else:
        dist = (b * b).sum(axis=1)[None, :] - 2.0 * (q @ b.T)
    top = np.argpartition(dist, K, axis=1)[:, :K]
    order = np.argsort(np.take_along_axis(dist, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1).astype(np.int32)


def write_set(out, base, queries, metric, source):
    os.makedirs(out, exist_ok=True)
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    gt = ground_truth(base, queries, metric)
    base.tofile(f"{out}/base.f32")
    queries.tofile(f"{out}/queries.f32")
    gt.tofile(f"{out}/gt.i32")
    with open(f"{out}/meta.txt", "w") as f:
        f.write(f"n={len(base)}\ndim={base.shape[1]}\nqueries={len(queries)}\nk={K}\n"
                f"metric={metric}\nseed={SEED}\nsource={source}\n")
    print(f"wrote {out}: {len(base)} x {base.shape[1]} base, {len(queries)} queries, "
          f"top-{K} {metric} ground truth")


def words(out):
    # the corpus and fastText's model (~1 GB with subwords) are not kept
    with tempfile.TemporaryDirectory() as work:
        names, vecs = train_words(work)
    held, kept = split_queries(len(vecs))
    write_set(out, vecs[kept], vecs[held], "cosine",
              f"fastText skipgram dim 100 minCount 3 epoch 5 on dict-gcide, {len(vecs)} words")
    with open(f"{out}/words.txt", "w") as f:
        f.write("\n".join(names[i] for i in kept) + "\n")
    with open(f"{out}/query_words.txt", "w") as f:
        f.write("\n".join(names[i] for i in held) + "\n")


def train_words(work):
    """fastText vectors of GCIDE's words: (words, float32 matrix)."""
    corpus = f"{work}/gcide.txt"
    with open(corpus, "w") as f:
        for entry in gcide_entries():
            f.write(" ".join(entry) + "\n")
    # one thread: fastText's training is only reproducible that way
    subprocess.run(["fasttext", "skipgram", "-input", corpus, "-output", f"{work}/gcide",
                    "-dim", "100", "-minCount", "3", "-epoch", "5", "-thread", "1",
                    "-seed", str(SEED), "-verbose", "1"], check=True)
    names, vecs = [], []
    with open(f"{work}/gcide.vec", encoding="utf-8") as f:
        next(f)
        for line in f:
            parts = line.rstrip().split(" ")
            if parts[0] != "</s>":
                names.append(parts[0])
                vecs.append(np.array(parts[1:], dtype=np.float32))
    return names, np.stack(vecs)


def idx_images(name):
    with gzip.open(f"{FASHION}/{name}", "rb") as f:
        raw = f.read()
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def fashion(out):
    train = idx_images("train-images-idx3-ubyte.gz")
    test = idx_images("t10k-images-idx3-ubyte.gz")
    pick = np.sort(np.random.default_rng(SEED).choice(len(test), QUERIES, replace=False))
    write_set(out, train, test[pick], "l2", "dataset-fashion-mnist train / 1000 of t10k, raw pixels")


def tfidf(out):
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [" ".join(e) for e in gcide_entries() if len(e) >= 5]
    x = TfidfVectorizer(min_df=2, sublinear_tf=True, dtype=np.float32).fit_transform(docs)
    rng = np.random.default_rng(SEED)
    proj = (rng.standard_normal((x.shape[1], 256)) / np.sqrt(256)).astype(np.float32)
    y = np.asarray(x @ proj)
    held, kept = split_queries(len(docs))
    write_set(out, y[kept], y[held], "cosine",
              f"GCIDE entries (>= 5 words), TF-IDF over {x.shape[1]} terms, Gaussian projection to 256")


if __name__ == "__main__":
    kind, out = sys.argv[1], sys.argv[2]
    {"words": words, "fashion": fashion, "tfidf": tfidf}[kind](out)
