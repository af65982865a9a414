/*
 * lora_bench.c
 *		Nanoseconds per MicroLoRA call through the scoped bank (what
 *		gnnvec_lora_forward / gnnvec_lora_adapt run, without the SQL call
 *		overhead), at 256 and 1536 dimensions.
 *
 *	  make bench/bin/lora_bench && bench/bin/lora_bench
 *
 * "forward" is a scope with 10 or more adaptations (its own adapter only);
 * "forward, blended" a scope still leaning on its category (two adapters);
 * "adapt" one gradient step of the scope's and its category's adapter.
 * Each figure is the best of 40 batches of calls lasting ~5 ms each: these
 * machines are shared, and other loads only ever add time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "lora/lora.h"
#include "vector/distance.h"

typedef enum Op
{
	OP_FORWARD,
	OP_ADAPT,
	OP_REWARD
} Op;

static double
now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void
run_op(LoraBank *bank, Op op, int scope, const float *x, const float *g,
	   int dim, const LoraSettings *s, float *y)
{
	LoraStatus	status = LORA_OK;

	if (op == OP_FORWARD)
		status = lora_bank_forward(bank, scope, x, dim, s, y);
	else if (op == OP_ADAPT)
		status = lora_bank_adapt(bank, scope, x, g, dim, s);
	else
		status = lora_bank_reward(bank, scope, x, dim, 0.1, s);
	if (status != LORA_OK)
	{
		fprintf(stderr, "lora_bench: call failed with status %d\n", status);
		exit(1);
	}
}

static double
time_op(LoraBank *bank, Op op, int scope, const float *x, const float *g,
		int dim, const LoraSettings *s, float *y)
{
	double		best = 1e300;
	long		iters = 1000;

	/* grow the batch until it lasts ~5 ms */
	for (;;)
	{
		double		t0 = now_ns();

		for (long i = 0; i < iters; i++)
			run_op(bank, op, scope, x, g, dim, s, y);
		if (now_ns() - t0 > 5e6)
			break;
		iters *= 2;
	}
	for (int rep = 0; rep < 40; rep++)
	{
		double		t0 = now_ns();
		double		per;

		for (long i = 0; i < iters; i++)
			run_op(bank, op, scope, x, g, dim, s, y);
		per = (now_ns() - t0) / iters;
		if (per < best)
			best = per;
	}
	return best;
}

static void
bench_dim(int dim, int rank)
{
	size_t		floats = LORA_NUM_ADAPTERS * lora_adapter_floats(dim);
	float	   *arena = calloc(floats, sizeof(float));
	float	   *x = malloc(sizeof(float) * dim);
	float	   *g = malloc(sizeof(float) * dim);
	float	   *y = malloc(sizeof(float) * dim);
	LoraSettings s = {rank, 0.1f, 1e-6f};	/* tiny steps: stays finite */
	LoraBank	bank;
	double		fwd,
				blended,
				adapt,
				reward;

	for (int i = 0; i < dim; i++)
	{
		x[i] = (float) ((i * 37) % 101) / 101.0f - 0.5f;
		g[i] = (float) ((i * 53) % 97) / 97.0f - 0.5f;
	}
	lora_bank_init(&bank, arena, dim);
	run_op(&bank, OP_FORWARD, LORA_HNSW_SCAN, x, g, dim, &s, y);
	blended = time_op(&bank, OP_FORWARD, LORA_SORT, x, g, dim, &s, y);
	for (int i = 0; i < LORA_FALLBACK_ADAPTS; i++)
		run_op(&bank, OP_ADAPT, LORA_HNSW_SCAN, x, g, dim, &s, y);
	fwd = time_op(&bank, OP_FORWARD, LORA_HNSW_SCAN, x, g, dim, &s, y);
	adapt = time_op(&bank, OP_ADAPT, LORA_HNSW_SCAN, x, g, dim, &s, y);
	reward = time_op(&bank, OP_REWARD, LORA_HNSW_SCAN, x, g, dim, &s, y);
	printf("%6d %4d %12.0f %17.0f %10.0f %10.0f\n", dim, rank, fwd, blended,
		   adapt, reward);
	free(arena);
	free(x);
	free(g);
	free(y);
}

int
main(void)
{
	VecIsa		isa = vec_distance_init(VEC_ISA_AVX512);

	printf("MicroLoRA, ns per call (kernels: %s)\n", vec_isa_name(isa));
	printf("%6s %4s %12s %17s %10s %10s\n", "dim", "rank", "forward",
		   "forward,blended", "adapt", "reward");
	bench_dim(256, 2);
	bench_dim(1536, 2);
	bench_dim(256, 8);
	bench_dim(1536, 8);
	return 0;
}
