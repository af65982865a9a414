#!/usr/bin/env bash
# bench/cagra_gpu_check.sh: the GPU checks of the CAGRA build, one short run
# (a few minutes on one H100) on a machine with an NVIDIA GPU and the CUDA
# toolkit; no PostgreSQL.  Exits non-zero at the first failure.
#
#	bash bench/cagra_gpu_check.sh --prepare	  here, where OpenBLAS is
#	bash bench/cagra_gpu_check.sh			  there, with bench/bin/ copied along
#
# A bare GPU machine has no OpenBLAS, which the driver needs: --prepare
# builds cuda/gnnvec_cuda.so and bench/bin/cagra_build where they can be
# built and copies the driver's libraries that are not on every machine
# into bench/bin/gpu-carry/, which the check puts on the library path (with
# $CUDA_HOME/lib64, for cuBLAS).  Where OpenBLAS and nvcc are present, the
# check builds what is missing itself.  Then:
#
#	1. compute-sanitizer memcheck and racecheck on a small build;
#	2. for every metric, the GPU build against the CPU build, with the data
#	   resident and then truly streamed (a device budget below the data
#	   set's size; the driver fails if the other mode ran): kNN graphs
#	   equal up to distance ties, the prune and merge from the GPU's kNN
#	   graph equal to the CPU's bit for bit (memcmp), search recall within
#	   0.5 points;
#	3. 1M x 128: kNN + prune + merge within 5 s, kNN recall >= 0.95
#	   against a direct brute force on sampled rows.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
carry=bench/bin/gpu-carry
driver=bench/bin/cagra_build
lib=cuda/gnnvec_cuda.so

if [ "${1:-}" = "--prepare" ]; then
	make -s "$lib" "$driver"
	rm -rf "$carry"
	mkdir -p "$carry"
	# every library the driver links that lives outside the C library's own
	ldd "$driver" | awk '/=> \// { print $3 }' |
		grep -Ev '/(libc|libm|libpthread|libdl|ld-linux[^/]*)\.so' |
		xargs -r -I{} cp -L {} "$carry/"
	ls "$carry"
	exit 0
fi

export LD_LIBRARY_PATH="$PWD/$carry:$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
[ -x "$lib" ] || make -s "$lib"
[ -x "$driver" ] || make -s "$driver"
{ "$driver" --help 2>&1 || true; } | grep -q usage ||
	{ echo "cagra_gpu_check: $driver does not run here (run --prepare where OpenBLAS is)"; exit 1; }

sanitizer="$CUDA_HOME/bin/compute-sanitizer"
[ -x "$sanitizer" ] || sanitizer=$(command -v compute-sanitizer || true)
[ -n "$sanitizer" ] || { echo "cagra_gpu_check: no compute-sanitizer"; exit 1; }

small=(--n 3000 --dim 32 --queries 50 --knn-sample 20 --ef "10,40"
	   --device gpu --cuda-lib "$lib" --detour cuvs)
for tool in memcheck racecheck; do
	echo "== compute-sanitizer $tool"
	"$sanitizer" --tool "$tool" --error-exitcode 9 "$driver" "${small[@]}"
done

# 40000 x 96 floats are 14.6 MiB, the graphs (I 48, d 32) 12.2 MiB.  With
# the data resident the smallest kNN block needs about 28 MiB in all;
# streamed, about 19.5 MiB (the gathered candidates, 256 x 60 x 96 floats,
# are the largest part).  A 24 MiB budget leaves only streaming.
for metric in l2 ip cosine l1; do
	for mode in resident streamed; do
		budget=0
		[ "$mode" = streamed ] && budget=24
		echo "== $metric, data $mode: GPU against CPU"
		"$driver" --n 40000 --dim 96 --queries 300 --knn-sample 100 \
			--metric "$metric" --device gpu --compare-cpu --cuda-lib "$lib" \
			--gpu-mem-mb "$budget" --expect-mode "$mode"
	done
done

echo "== l2, 1M x 128: kNN + prune + merge <= 5 s, kNN recall >= 0.95"
"$driver" --n 1000000 --dim 128 --queries 200 --knn-sample 100 --ef 40 \
	--device gpu --detour cuvs --cuda-lib "$lib" \
	--max-gpu-seconds 5 --min-knn-recall 0.95
echo "cagra_gpu_check: all passed"
