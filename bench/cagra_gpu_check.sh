#!/usr/bin/env bash
# bench/cagra_gpu_check.sh: the GPU checks of the CAGRA build, one short run
# (meant to take under 8 minutes on one H100; it fails past 480 s) on a
# machine with an NVIDIA GPU and the CUDA toolkit; no PostgreSQL, no
# network.  Exits non-zero at the first failure.
#
#	bash bench/cagra_gpu_check.sh --prepare	  here, where OpenBLAS is
#	bash bench/cagra_gpu_check.sh			  there, with bench/bin/ and
#											  cuda/gnnvec_cuda.so carried
#
# A bare GPU machine has no OpenBLAS, which the driver needs: --prepare
# builds cuda/gnnvec_cuda.so and bench/bin/cagra_build where they can be
# built, and copies the driver's libraries that are not on every machine
# into bench/bin/gpu-carry/, which the check puts on the library path (with
# $CUDA_HOME/lib64, for cuBLAS, which gnnvec_cuda.so links dynamically).
# Where OpenBLAS and nvcc are present, the check builds what is missing
# itself.  Then:
#
#	1. compute-sanitizer memcheck and racecheck on small builds: exact kNN
#	   with the data resident, partitioned kNN with the data streamed;
#	2. for every metric, both kNN methods, the data resident and then
#	   streamed (--gpu-stream; the driver fails if the other mode ran): the
#	   GPU build against the CPU build (exact: kNN graphs equal up to
#	   distance ties, search recall within 0.5 points; partitioned: both
#	   kNN recalls printed, not compared, since the CPU now probes each
#	   row's nearest lists and the GPU each list's), and the CPU's prune
#	   and merge of the GPU's kNN graph equal to the GPU's bit for bit
#	   (memcmp);
#	3. 1M x 128, partitioned kNN: kNN + prune + merge within 5 s, and the
#	   GPU's kNN recall (against a direct brute force on sampled rows) at
#	   least 0.5 (--min-knn-recall), with the CPU's prune and merge of the
#	   GPU's kNN graph memcmp'ed.  On these generated 1M rows the CPU's
#	   partitioned kNN with 5 probes per list had recall 0.55 (measured on
#	   the CPU, one thread, 152 s, before the CPU probed per row), so the
#	   floor catches a broken search, not a weak one.  The GPU still
#	   probes per list, as the CPU did before docs/cagra.md's eleventh
#	   pass; the per-row probes are not ported to cuda/cagra.cu.
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
carry=bench/bin/gpu-carry
driver=bench/bin/cagra_build
lib=cuda/gnnvec_cuda.so
limit_seconds=480

if [ "${1:-}" = "--prepare" ]; then
	make -s "$lib" "$driver"
	rm -rf "$carry"
	mkdir -p "$carry"
	# every library the driver links that lives outside the C library's own
	ldd "$driver" | awk '/=> \// { print $3 }' |
		grep -Ev '/(libc|libm|libpthread|libdl|ld-linux[^/]*)\.so' |
		xargs -r -I{} cp -L {} "$carry/"
	ls "$carry"
	{ LD_LIBRARY_PATH="$PWD/$carry" "$driver" --help 2>&1 || true; } | grep -q usage
	echo "cagra_gpu_check: prepared $lib, $driver and $carry; carry bench/bin and $lib"
	exit 0
fi

SECONDS=0
export LD_LIBRARY_PATH="$PWD/$carry:$CUDA_HOME/lib64:${LD_LIBRARY_PATH:-}"
[ -f "$lib" ] || make -s "$lib"
[ -x "$driver" ] || make -s "$driver"
{ "$driver" --help 2>&1 || true; } | grep -q usage ||
	{ echo "cagra_gpu_check: $driver does not run here (run --prepare where OpenBLAS is)"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

sanitizer="$CUDA_HOME/bin/compute-sanitizer"
[ -x "$sanitizer" ] || sanitizer=$(command -v compute-sanitizer || true)
[ -n "$sanitizer" ] || { echo "cagra_gpu_check: no compute-sanitizer"; exit 1; }

# The GPU searches CAGRA_LIST_PROBES lists and runs no NN-descent; the CPU
# is held to the same count and no refining (its probes are per row).
common=(--device gpu --cuda-lib "$lib" --probes 5 --refine 0)
small_exact=(--n 3000 --dim 32 --queries 50 --knn-sample 20 --ef "10,40"
			 --detour cuvs --expect-mode resident)
small_lists=(--n 3000 --dim 32 --queries 50 --knn-sample 20 --ef "10,40"
			 --detour cuvs --knn partitioned --list-rows 100 --gpu-stream
			 --expect-mode streamed)
for tool in memcheck racecheck; do
	echo "== compute-sanitizer $tool, exact kNN, data resident"
	"$sanitizer" --tool "$tool" --error-exitcode 9 "$driver" "${common[@]}" "${small_exact[@]}"
	echo "== compute-sanitizer $tool, partitioned kNN, data streamed"
	"$sanitizer" --tool "$tool" --error-exitcode 9 "$driver" "${common[@]}" "${small_lists[@]}"
done

for metric in l2 ip cosine l1; do
	for knn in exact partitioned; do
		for mode in resident streamed; do
			stream=()
			[ "$mode" = streamed ] && stream=(--gpu-stream)
			echo "== $metric, $knn kNN, data $mode: GPU against CPU"
			"$driver" --n 40000 --dim 96 --queries 300 --knn-sample 100 \
				--metric "$metric" --knn "$knn" --compare-cpu "${common[@]}" \
				"${stream[@]}" --expect-mode "$mode"
		done
	done
done

echo "== l2, 1M x 128, partitioned kNN: kNN + prune + merge <= 5 s, kNN recall against the CPU's"
"$driver" --n 1000000 --dim 128 --queries 200 --knn-sample 50 --ef 40 \
	--knn partitioned --detour cuvs --compare-cpu "${common[@]}" \
	--expect-mode resident --max-gpu-seconds 5 --min-knn-recall 0.5

echo "cagra_gpu_check: the whole check took ${SECONDS} s (limit ${limit_seconds} s)"
[ "$SECONDS" -le "$limit_seconds" ] || { echo "cagra_gpu_check: FAIL: over ${limit_seconds} s"; exit 1; }
echo "cagra_gpu_check: all passed"
