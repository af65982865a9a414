#!/usr/bin/env bash
# bench/cagra_gpu_check.sh: the GPU checks of the CAGRA build, for a machine
# with an NVIDIA GPU (no PostgreSQL needed).  Builds the CUDA module and the
# driver, then, for every metric, builds the graph on the GPU and on the CPU
# and compares them (kNN graphs equal up to distance ties, search recall
# within 0.5 points at every ef); then the same with the data streamed
# through a small device-memory budget; then times 1M x 128.
# Exits non-zero at the first failed comparison.
set -euo pipefail
cd "$(dirname "$0")/.."

make -s cuda/gnnvec_cuda.so bench/bin/cagra_build
lib=cuda/gnnvec_cuda.so

for metric in l2 ip cosine l1; do
	echo "== $metric: GPU vs CPU, data resident"
	bench/bin/cagra_build --n 30000 --dim 100 --queries 500 --metric "$metric" \
		--device gpu --compare-cpu --cuda-lib "$lib"
done

echo "== l2: GPU vs CPU, data streamed (24 MiB device budget)"
bench/bin/cagra_build --n 30000 --dim 100 --queries 500 --device gpu --compare-cpu \
	--gpu-mem-mb 24 --cuda-lib "$lib"

echo "== l2: 1M x 128, GPU only (target: kNN + prune + merge <= 5 s on an H100)"
bench/bin/cagra_build --n 1000000 --dim 128 --queries 1000 --knn-sample 100 \
	--device gpu --detour cuvs --cuda-lib "$lib"
