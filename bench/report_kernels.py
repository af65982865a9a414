"""Table (markdown) and plot of bench/bin/kernel_bench output."""
import csv
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

src, png = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
ns = {(int(r["dim"]), r["metric"], r["impl"]): float(r["ns_per_distance"]) for r in rows}
dims = sorted({d for d, _, _ in ns})

print("| dim | L2 ns (gnnvec) | L2 vs plain loop | IP ns (gnnvec) | IP vs plain loop | IP vs OpenBLAS sdot |")
print("|---:|---:|---:|---:|---:|---:|")
for d in dims:
    l2, ip = ns[(d, "l2", "gnnvec")], ns[(d, "ip", "gnnvec")]
    print(f"| {d} | {l2:.1f} | {ns[(d, 'l2', 'plain')] / l2:.1f}x | {ip:.1f} "
          f"| {ns[(d, 'ip', 'plain')] / ip:.1f}x | {ns[(d, 'ip', 'openblas_sdot')] / ip:.2f}x |")

fig, ax = plt.subplots(figsize=(7, 4))
for (metric, impl), style in {("l2", "plain"): "o--", ("l2", "gnnvec"): "o-",
                              ("ip", "plain"): "s--", ("ip", "gnnvec"): "s-",
                              ("ip", "openblas_sdot"): "^:"}.items():
    ax.plot(dims, [2 * d / ns[(d, metric, impl)] if metric == "ip" else 3 * d / ns[(d, metric, impl)]
                   for d in dims], style, label=f"{metric} {impl}")
ax.set_xscale("log", base=2)
ax.set_xticks(dims, [str(d) for d in dims])
ax.set_xlabel("dimensions")
ax.set_ylabel("GFLOP/s (one core)")
ax.set_title("Distance kernels: gnnvec vs plain loop vs OpenBLAS sdot")
ax.legend()
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(png, dpi=120)
