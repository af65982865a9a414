#!/usr/bin/env bash
# bench/cagra_bench.sh: CAGRA-built against HNSW-built index graphs on data
# sets that break kNN graphs (no PostgreSQL).  For each set, bench/bin/
# cagra_build --index builds the graph the index writes both ways from the
# same sampled levels and prints recall@10 at ef 10..320 and both build
# times, measured in the same run; the target is the CAGRA-built recall
# within 0.5 point of the HNSW-built one at every ef.  Results go to
# bench/out/cagra.md.
#
#	bash bench/cagra_bench.sh			the generated sets, and the real sets
#										found under bench/data
#	PRUNE=detour,auto bash bench/cagra_bench.sh
#										one CAGRA build per pruning (driver's
#										--prune; default auto, as the index)
#
# Generated: 1000 separated clusters (100k x 128), 1000 clusters along a
# 16-d subspace (20k x 64), heavy duplicates (100k rows of 10k vectors),
# the clusters again under inner product, the demo's data (200 Gaussian
# topics of sigma 1.5 in 64-d, 10k rows) and 10k random rows in 32-d under
# the cosine metric (no cluster structure).  Real, when bench/run.sh has
# fetched them: fashion-mnist-784 (L2, 784-d), words-gcide-100 (cosine,
# fastText word vectors) and tfidf-gcide-256 (cosine); the first two also
# under inner product, where rows of uneven length make a row's neighbours
# the long rows beyond it.
set -euo pipefail
cd "$(dirname "$0")/.."
data=bench/data
out=bench/out
own=$out/cagra-data
mkdir -p "$out" "$own"
make -s bench/bin/gen_dataset bench/bin/cagra_build

# one file of (n + queries) x dim floats, as the driver reads it
joined() {
	local dir=$1 file=$own/$(basename "$1").f32
	[ -f "$file" ] || cat "$dir/base.f32" "$dir/queries.f32" >"$file"
	echo "$file"
}

gen() {
	local dir=$own/$1
	shift
	[ -f "$dir/queries.f32" ] || bench/bin/gen_dataset --out "$dir" --k 10 "$@" >/dev/null
	joined "$dir"
}

# name, file, n, dim, driver options
run() {
	local name=$1 file=$2 n=$3 dim=$4
	shift 4
	echo "== $name"
	bench/bin/cagra_build --file "$file" --n "$n" --dim "$dim" --index \
		--threads 2 --knn partitioned --I 48 --d 32 --knn-sample 10 \
		--ef 10,20,40,80,160,320 --prune "${PRUNE:-auto}" "$@" |
		grep -E '^index build|^cagra index|^hnsw index|^identical|  ef |lists probed|NN-descent|^pruning'
}

{
	c1000=$(gen cagra-c1000-100k-128 --n 100000 --dim 128 --queries 1000 \
		--clusters 1000 --spread 0.1 --seed 7)
	run "1000 clusters, 100k x 128, L2" "$c1000" 100000 128
	run "1000 clusters, 100k x 128, inner product" "$c1000" 100000 128 --metric ip
	run "heavy duplicates: 100k rows of 10k vectors, L2" "$c1000" 100000 128 --distinct 10000
	sub=$(gen cagra-sub16-20k-64 --n 20000 --dim 64 --queries 300 \
		--clusters 1000 --spread 0.05 --noise 0.02 --intrinsic 16 --seed 3)
	run "1000 clusters along 16 dimensions, 20k x 64, L2" "$sub" 20000 64 --queries 300
	topics=$(gen cagra-topics-10k-64 --n 10000 --dim 64 --intrinsic 64 --queries 1000 \
		--clusters 200 --spread 1.5 --noise 0 --plain 1 --seed 11)
	run "the demo's topics: 200 in 64-d, sigma 1.5, 10k rows, L2" "$topics" 10000 64
	random=$(gen cagra-random-10k-32 --n 10000 --dim 32 --intrinsic 32 --queries 1000 \
		--clusters 1 --spread 1 --centre-scale 0 --noise 0 --plain 1 --seed 13)
	run "random rows, 10k x 32, cosine" "$random" 10000 32 --metric cosine
	if [ -f "$data/fashion-mnist-784/queries.f32" ]; then
		run "fashion-mnist, 60k x 784, L2" "$(joined "$data/fashion-mnist-784")" 60000 784
		run "fashion-mnist, 60k x 784, inner product" "$(joined "$data/fashion-mnist-784")" 60000 784 --metric ip
	fi
	if [ -f "$data/words-gcide-100/queries.f32" ]; then
		run "word vectors, 64654 x 100, cosine" "$(joined "$data/words-gcide-100")" 64654 100 --metric cosine
		run "word vectors, 64654 x 100, inner product" "$(joined "$data/words-gcide-100")" 64654 100 --metric ip
	fi
	if [ -f "$data/tfidf-gcide-256/queries.f32" ]; then
		run "tf-idf, 118774 x 256, cosine" "$(joined "$data/tfidf-gcide-256")" 118774 256 --metric cosine
	fi
} | tee "$out/cagra.md"
