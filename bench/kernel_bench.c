/*
 * kernel_bench.c
 *		Distance-kernel throughput: gnnvec's dispatched kernels against a
 *		plain scalar loop and OpenBLAS sdot, for one query against a block
 *		of vectors that stays in cache (so the kernels, not DRAM, are timed).
 *
 * Output: one CSV line per (dim, metric, implementation) on stdout:
 *   dim,metric,impl,ns_per_distance,gflops
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "vector/distance.h"

#define WORKING_SET_BYTES (512 * 1024)

typedef float (*DistFn) (const float *a, const float *b, int n);

/* The baseline: what a straightforward C loop compiles to, unvectorised. */
__attribute__((optimize("no-tree-vectorize")))
static float
plain_l2(const float *a, const float *b, int n)
{
	float		s = 0.0f;

	for (int i = 0; i < n; i++)
		s += (a[i] - b[i]) * (a[i] - b[i]);
	return s;
}

__attribute__((optimize("no-tree-vectorize")))
static float
plain_ip(const float *a, const float *b, int n)
{
	float		s = 0.0f;

	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static float
blas_sdot(const float *a, const float *b, int n)
{
	return cblas_sdot(n, a, 1, b, 1);
}

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best of 5 runs of >= 50 ms each; returns ns per distance. */
static double
time_kernel(DistFn fn, const float *q, const float *block, int nvec, int dim)
{
	double		best = 1e30;
	volatile float sink = 0.0f;

	for (int run = 0; run < 5; run++)
	{
		long		calls = 0;
		double		t0 = now(),
					t;

		do
		{
			float		acc = 0.0f;

			for (int v = 0; v < nvec; v++)
				acc += fn(q, block + (long) v * dim, dim);
			sink += acc;
			calls += nvec;
			t = now() - t0;
		} while (t < 0.05);
		if (t / calls < best)
			best = t / calls;
	}
	(void) sink;
	return best * 1e9;
}

int
main(void)
{
	static const int dims[] = {128, 384, 768, 1536};
	VecIsa		isa = vec_distance_init(VEC_ISA_AVX512);

	openblas_set_num_threads(1);
	fprintf(stderr, "kernels: %s\n", vec_isa_name(isa));
	printf("dim,metric,impl,ns_per_distance,gflops\n");
	for (int d = 0; d < 4; d++)
	{
		int			dim = dims[d];
		int			nvec = WORKING_SET_BYTES / (dim * (int) sizeof(float));
		float	   *block = malloc(sizeof(float) * nvec * dim);
		float	   *q = malloc(sizeof(float) * dim);
		struct
		{
			const char *metric;
			const char *impl;
			DistFn		fn;
			int			flops_per_dim;
		}			cases[] = {
			{"l2", "plain", plain_l2, 3},
			{"l2", "gnnvec", vec_kernels.l2_squared, 3},
			{"ip", "plain", plain_ip, 2},
			{"ip", "gnnvec", vec_kernels.inner_product, 2},
			{"ip", "openblas_sdot", blas_sdot, 2},
		};

		srand(dim);
		for (long i = 0; i < (long) nvec * dim; i++)
			block[i] = (float) rand() / RAND_MAX - 0.5f;
		for (int i = 0; i < dim; i++)
			q[i] = (float) rand() / RAND_MAX - 0.5f;

		for (int c = 0; c < (int) (sizeof(cases) / sizeof(cases[0])); c++)
		{
			double		ns = time_kernel(cases[c].fn, q, block, nvec, dim);

			printf("%d,%s,%s,%.2f,%.2f\n", dim, cases[c].metric, cases[c].impl, ns,
				   cases[c].flops_per_dim * (double) dim / ns);
		}
		free(block);
		free(q);
	}
	return 0;
}
