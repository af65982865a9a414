#!/usr/bin/env bash
# make bench: datasets, benchmarks, tables and plots under bench/out/.
#
#   bench/run.sh            everything
#   bench/run.sh kernels    one part (data | kernels | index | rerank | relevance | latency | real | cagra)
#
# The real-data part (docs/benchmarks.md) compares gnnhnsw with hnswlib and
# with pgvector built from PGVECTOR_SRC (a pgvector source tree; without it
# pgvector is skipped) on word vectors, Fashion-MNIST and TF-IDF sets built
# from Debian packages; BENCH_1M=1 adds the synthetic 1M x 128 set (long).
#
# Machines here are noisy: every number is reported next to a reference
# measured in the same run (a plain scalar loop, OpenBLAS, hnswlib, exact
# brute force), and the ratios are what we quote.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
what=${1:-all}
out=bench/out
data=bench/data
mkdir -p "$out" "$data" bench/bin

# Debian's python3 (hnswlib, numpy, scipy and matplotlib are Debian packages)
PY=/usr/bin/python3
need=()
for p in libopenblas-dev python3-matplotlib python3-numpy python3-hnswlib \
	fasttext dataset-fashion-mnist dict-gcide python3-sklearn wordnet-base; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	else
		echo "run: sudo apt-get install -y ${need[*]}"; exit 1
	fi
fi

build() { make -s "bench/bin/$1"; }

# The 100k x 128 clustered set used by the index benchmarks (see gen_dataset.c)
dataset() {
	local dir=$data/clustered-100k-128
	build gen_dataset
	if [ ! -f "$dir/gt.i32" ]; then
		bench/bin/gen_dataset --out "$dir" --n 100000 --dim 128 --queries 1000 --seed 42
	fi
	build f32_to_copy
	[ -f "$dir/base.copy" ] || bench/bin/f32_to_copy "$dir/base.f32" 128 "$dir/base.copy"
	[ -f "$dir/queries.copy" ] || bench/bin/f32_to_copy "$dir/queries.f32" 128 "$dir/queries.copy"
}

# gnnhnsw against hnswlib (same data, same m/ef_construction, same run)
index() {
	local dir=$data/clustered-100k-128
	echo "== index: hnswlib reference (2 build threads, 1 query thread)"
	$PY bench/hnswlib_ref.py "$dir" "$out/hnswlib.csv" 16 64 2
	echo "== index: gnnhnsw in PostgreSQL"
	bash test/run.sh bench clustered-100k-128
	$PY bench/report_index.py "$out" "$dir" | tee "$out/index.md"
}

# real_dataset NAME: a real-data set (real_data.py) or the synthetic 1M set,
# made once and kept under bench/data/
real_dataset() {
	local name=$1 dir=$data/$1
	if [ ! -f "$dir/gt.i32" ]; then
		case $name in
			words-gcide-100) $PY bench/real_data.py words "$dir" ;;
			fashion-mnist-784) $PY bench/real_data.py fashion "$dir" ;;
			tfidf-gcide-256) $PY bench/real_data.py tfidf "$dir" ;;
			synthetic-1m-128)
				build gen_dataset
				bench/bin/gen_dataset --out "$dir" --n 1000000 --dim 128 --queries 1000 --seed 42
				;;
			*) echo "unknown real-data set: $name"; exit 2 ;;
		esac
	fi
	local dim
	dim=$(sed -n 's/^dim=//p' "$dir/meta.txt")
	build f32_to_copy
	[ -f "$dir/base.copy" ] || bench/bin/f32_to_copy "$dir/base.f32" "$dim" "$dir/base.copy"
	[ -f "$dir/queries.copy" ] || bench/bin/f32_to_copy "$dir/queries.f32" "$dim" "$dir/queries.copy"
}

# gnnhnsw against pgvector and hnswlib on real data, all in one run
real() {
	local sets=${REAL_SETS:-words-gcide-100 fashion-mnist-784 tfidf-gcide-256} set
	[ "${BENCH_1M:-0}" = 1 ] && sets="$sets synthetic-1m-128"
	for set in $sets; do real_dataset "$set"; done
	[ -n "${PGVECTOR_SRC:-}" ] || echo "== real: PGVECTOR_SRC is not set; pgvector is skipped"
	for set in $sets; do rm -rf "${out:?}/real/$set"; done
	REAL_SETS="$sets" BENCH_SCRIPT=real_bench.sh bash test/run.sh bench .
	for set in $sets; do
		$PY bench/report_real.py "$out/real/$set" "$data/$set" | tee "$out/real/$set/report.md"
	done
	# every set measured so far (each set's engines were measured in one run)
	for report in "$out"/real/*/report.md; do cat "$report"; echo; done >"$out/real.md"
}

# SET-ip beside SET: the same rows (base.copy) under inner product
ip_twin() {
	local dir=$data/$1
	mkdir -p "$dir-ip"
	sed 's/^metric=.*/metric=ip/' "$dir/meta.txt" >"$dir-ip/meta.txt"
	grep -q '^metric=' "$dir-ip/meta.txt" || echo metric=ip >>"$dir-ip/meta.txt"
	ln -sfn "../$1/base.copy" "$dir-ip/base.copy"
}

# CAGRA-built against hnsw-built graphs (docs/cagra.md): recall@10 at ef
# 10-320 on the sets that break kNN graphs (bench/cagra_bench.sh, no
# PostgreSQL), then both builds in the index on 2 cores, alternating
# (bench/cagra_2core.sh; CAGRA_REPS builds each, default 3), on the real
# sets and the 1000 clusters, those with rows of uneven length also under
# inner product
cagra() {
	local real_sets="words-gcide-100 tfidf-gcide-256 fashion-mnist-784" set
	local c1000=$data/cagra-c1000-100k-128
	for set in $real_sets; do real_dataset "$set"; done
	bash bench/cagra_bench.sh
	# the generated clusters (cagra_bench.sh) as the index loads them
	mkdir -p "$c1000"
	cp "$out/cagra-data/cagra-c1000-100k-128/meta.txt" "$c1000/"
	build f32_to_copy
	[ -f "$c1000/base.copy" ] ||
		bench/bin/f32_to_copy "$out/cagra-data/cagra-c1000-100k-128/base.f32" 128 "$c1000/base.copy"
	for set in cagra-c1000-100k-128 words-gcide-100 fashion-mnist-784; do ip_twin "$set"; done
	rm -f "$out/cagra_2core.csv"
	SETS="$real_sets cagra-c1000-100k-128 cagra-c1000-100k-128-ip words-gcide-100-ip fashion-mnist-784-ip" \
		REPS=${CAGRA_REPS:-3} BENCH_SCRIPT=cagra_2core.sh bash test/run.sh bench words-gcide-100
	$PY bench/report_cagra_2core.py "$out/cagra_2core.csv" | tee "$out/cagra_2core.md"
}

kernels() {
	build kernel_bench
	echo "== distance kernels (ns per distance, one core, 512 KiB working set)"
	bench/bin/kernel_bench >"$out/kernels.csv"
	$PY bench/report_kernels.py "$out/kernels.csv" "$out/kernels.png" | tee "$out/kernels.md"
}

# GNN reranker: relevance against known truth, latency, learning curve
rerank() {
	$PY bench/rerank_data.py "$data/rerank"
	BENCH_SCRIPT=rerank_bench.sh bash test/run.sh bench rerank
	$PY bench/report_rerank.py "$out" | tee "$out/rerank.md"
}

# Held-out relevance (docs/gnn.md): topics, Fashion-MNIST and WordNet glosses;
# exact, plain scan, non-learned baseline, GNN rerank, HnswScan adapter
relevance() {
	$PY bench/rerank_relevance_data.py "$data/relevance"
	rm -rf "${out:?}/relevance"
	BENCH_SCRIPT=rerank_relevance.sh bash test/run.sh bench relevance
	$PY bench/report_relevance.py "$out" | tee "$out/relevance.md"
}

# Reranked against plain scans at the same ef, backend CPU time (docs/gnn.md)
latency() {
	$PY bench/rerank_relevance_data.py "$data/relevance"
	BENCH_SCRIPT=rerank_latency.sh bash test/run.sh bench relevance
}

case $what in
	all) dataset; kernels; index; rerank; relevance; real; cagra ;;
	data) dataset ;;
	kernels) kernels ;;
	index) dataset; index ;;
	rerank) rerank ;;
	relevance) relevance ;;
	latency) latency ;;
	real) real ;;
	cagra) cagra ;;
	*) echo "unknown part: $what"; exit 2 ;;
esac
