#!/usr/bin/python3
"""The held-out relevance table of bench/rerank_relevance.sh.

Reads OUT/relevance/<set>.txt (lines "SET METHOD VALUE...") and prints one
markdown row per set: P@10 of exact search, the plain index scan, the best
non-learned baseline (its k chosen on the training queries), the untrained
and trained GNN rerank, the trained HnswScan adapter; training seconds;
latency per query (ms, mean of the alternating passes) of plain, reranked
and adapted scans, and reranked / plain.
"""
import glob
import os
import statistics
import sys

ORDER = ["topics-s1.3", "topics-s1.5", "topics-s1.7", "fmnist", "wordnet"]


def parse(path):
    res = {}
    for line in open(path):
        parts = line.split()
        if len(parts) < 3:
            continue
        key = parts[1]
        if key.startswith("baseline"):
            k, _val, test, _exact = parts[-4:]
            res["baseline"] = "%.3f (%s)" % (float(test), k)
        elif key.endswith("_ms"):
            res.setdefault(key, []).append(float(parts[2]))
        elif key not in ("config", "adapter_config"):
            res[key] = parts[2]
    return res


def main():
    out = sys.argv[1]
    files = {os.path.basename(p)[:-4]: p for p in glob.glob(os.path.join(out, "relevance", "*.txt"))}
    names = [n for n in ORDER if n in files] + sorted(set(files) - set(ORDER))
    print("| set | exact | plain scan | baseline (k) | untrained | trained GNN | trained adapter "
          "| GNN train s | adapter train s | plain ms | rerank ms | adapted ms | rerank / plain |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n in names:
        r = parse(files[n])
        ms = {k: statistics.mean(r[k]) for k in ("plain_ms", "rerank_ms", "adapter_ms") if k in r}
        ratio = "%.2f" % (ms["rerank_ms"] / ms["plain_ms"]) if "rerank_ms" in ms and "plain_ms" in ms else ""
        print("| " + " | ".join([n] +
            [r.get(k, "") for k in ("exact", "plain_scan")] + [r.get("baseline", "")] +
            [r.get(k, "") for k in ("untrained", "trained", "adapter", "training_seconds",
                                    "adapter_training_seconds")] +
            ["%.3f" % ms[k] if k in ms else "" for k in ("plain_ms", "rerank_ms", "adapter_ms")] +
            [ratio]) + " |")


if __name__ == "__main__":
    main()
