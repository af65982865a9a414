/*
 * test_lora.c
 *		MicroLoRA maths against hand-computed values and finite differences,
 *		the scoped bank's category fallback and resets, scope parsing, and
 *		the trajectory ring.
 */
#include <math.h>
#include <string.h>

#include "unit.h"
#include "lora/lora.h"
#include "vector/distance.h"

#define CAP 64

static float arena[LORA_NUM_ADAPTERS * CAP * 2 * LORA_MAX_RANK];

static int
near(double got, double want, double tol)
{
	return fabs(got - want) <= tol;
}

/* An adapter on its own storage, initialised, with A and B set by hand. */
static void
make_adapter(LoraAdapter *ad, float *mem, int dim, int rank, float alpha,
			 const float *at, const float *b)
{
	lora_adapter_attach(ad, mem, CAP, 42);
	lora_adapter_init(ad, dim, rank, alpha);
	memcpy(lora_adapter_at(ad), at, sizeof(float) * dim * rank);
	memcpy(lora_adapter_b(ad), b, sizeof(float) * dim * rank);
}

static void
forward(const LoraAdapter *ad, const float *x, float *y)
{
	memcpy(y, x, sizeof(float) * ad->dim);
	lora_adapter_add_delta(ad, x, 1.0f, y);
}

/* rank 1, dim 2: every number below is worked out by hand in the comments */
static void
test_rank1_by_hand(void)
{
	static float mem[CAP * 2 * LORA_MAX_RANK];
	LoraAdapter ad;
	float		at[2] = {0.5f, -1.0f};	/* A = [0.5; -1] */
	float		b[2] = {2.0f, 3.0f};	/* B = [2 3] */
	float		x[2] = {1.0f, 2.0f};
	float		g[2] = {1.0f, -1.0f};
	float		y[2];

	make_adapter(&ad, mem, 2, 1, 0.5f, at, b);
	CHECK(lora_adapter_param_count(&ad) == 4, "param count %lld",
		  (long long) lora_adapter_param_count(&ad));

	/* h = x A = 0.5 - 2 = -1.5; y = x + 0.5 * -1.5 * [2 3] = [-0.5 -0.25] */
	forward(&ad, x, y);
	CHECK(near(y[0], -0.5, 1e-6) && near(y[1], -0.25, 1e-6),
		  "rank-1 forward: %g %g", y[0], y[1]);

	/* |0.5 A B|_F = 0.5 |A| |B| = 0.5 sqrt(1.25) sqrt(13) */
	CHECK(near(lora_adapter_delta_norm(&ad), 0.5 * sqrt(1.25) * sqrt(13.0), 1e-6),
		  "delta norm %g", lora_adapter_delta_norm(&ad));

	/*
	 * lr 0.1: u = B g = -1; B -= 0.1*0.5*h*g = [-0.075 0.075] -> [2.075 2.925];
	 * A -= 0.1*0.5*u*x = [-0.05 -0.1] -> [0.55 -0.9].
	 */
	CHECK(lora_adapter_step(&ad, x, g, 0.1f) == LORA_OK, "step");
	CHECK(near(lora_adapter_b(&ad)[0], 2.075, 1e-6) &&
		  near(lora_adapter_b(&ad)[1], 2.925, 1e-6),
		  "B after step: %g %g", lora_adapter_b(&ad)[0], lora_adapter_b(&ad)[1]);
	CHECK(near(lora_adapter_at(&ad)[0], 0.55, 1e-6) &&
		  near(lora_adapter_at(&ad)[1], -0.9, 1e-6),
		  "A after step: %g %g", lora_adapter_at(&ad)[0], lora_adapter_at(&ad)[1]);
	CHECK(ad.adapt_count == 1, "adapt count %llu",
		  (unsigned long long) ad.adapt_count);
}

/* rank 3, dim 3 with A = I: y = x + alpha x B */
static void
test_rank3_by_hand(void)
{
	static float mem[CAP * 2 * LORA_MAX_RANK];
	LoraAdapter ad;
	float		at[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
	float		b[9] = {1, 2, 0, 0, 1, 0, 0, 0, 3};
	float		x[3] = {1, 1, 1};
	float		y[3];

	/* x B = [1 3 3]; y = [1 1 1] + 0.5 [1 3 3] = [1.5 2.5 2.5] */
	make_adapter(&ad, mem, 3, 3, 0.5f, at, b);
	forward(&ad, x, y);
	CHECK(near(y[0], 1.5, 1e-6) && near(y[1], 2.5, 1e-6) && near(y[2], 2.5, 1e-6),
		  "rank-3 forward: %g %g %g", y[0], y[1], y[2]);
	/* |0.5 B|_F = 0.5 sqrt(1 + 4 + 1 + 9) */
	CHECK(near(lora_adapter_delta_norm(&ad), 0.5 * sqrt(15.0), 1e-6),
		  "rank-3 delta norm %g", lora_adapter_delta_norm(&ad));
	CHECK(lora_adapter_param_count(&ad) == 18, "rank-3 param count");
}

/* L = <g, y(theta)> for the adapter's current parameters, in double. */
static double
linear_loss(const LoraAdapter *ad, const float *x, const float *g)
{
	float		y[CAP];
	double		loss = 0.0;

	forward(ad, x, y);
	for (int j = 0; j < ad->dim; j++)
		loss += (double) g[j] * y[j];
	return loss;
}

/*
 * The SGD step against central finite differences of L = <g, y>, whose
 * gradient with respect to y is g: theta_new = theta - lr * dL/dtheta for
 * every element of A and B, at rank 4 (above the default) and dim 5.
 */
static void
test_step_matches_finite_differences(void)
{
	static float mem[CAP * 2 * LORA_MAX_RANK];
	LoraAdapter ad;
	int			dim = 5,
				rank = 4,
				n = dim * rank,
				bad = 0;
	float		at[20],
				b[20],
				x[5] = {0.3f, -1.2f, 0.7f, 2.0f, -0.4f},
				g[5] = {0.5f, 0.1f, -0.8f, 0.25f, 1.1f};
	double		expect_at[20],
				expect_b[20];
	float		lr = 0.05f,
				eps = 1e-2f;

	for (int i = 0; i < n; i++)
	{
		at[i] = 0.1f * (float) ((i * 7) % 11) - 0.5f;
		b[i] = 0.05f * (float) ((i * 5) % 9) - 0.2f;
	}
	make_adapter(&ad, mem, dim, rank, 0.75f, at, b);
	for (int which = 0; which < 2; which++)
	{
		float	   *p = which == 0 ? lora_adapter_at(&ad) : lora_adapter_b(&ad);
		double	   *expect = which == 0 ? expect_at : expect_b;

		for (int i = 0; i < n; i++)
		{
			float		saved = p[i];
			double		up,
						down;

			p[i] = saved + eps;
			up = linear_loss(&ad, x, g);
			p[i] = saved - eps;
			down = linear_loss(&ad, x, g);
			p[i] = saved;
			expect[i] = saved - lr * (up - down) / (2.0 * eps);
		}
	}
	CHECK(lora_adapter_step(&ad, x, g, lr) == LORA_OK, "rank-4 step");
	for (int i = 0; i < n; i++)
	{
		bad += !near(lora_adapter_at(&ad)[i], expect_at[i], 2e-5);
		bad += !near(lora_adapter_b(&ad)[i], expect_b[i], 2e-5);
	}
	CHECK(bad == 0, "%d parameters differ from the finite-difference step", bad);
}

/* Initialisation: B zero (identity), A bounded and reproducible. */
static void
test_init(void)
{
	static float mem1[CAP * 2 * LORA_MAX_RANK],
				mem2[CAP * 2 * LORA_MAX_RANK];
	LoraAdapter a1,
				a2;
	float		x[CAP],
				y[CAP];
	int			dim = 16,
				out_of_bounds = 0,
				differ = 0,
				all_equal = 1;

	lora_adapter_attach(&a1, mem1, CAP, 7);
	lora_adapter_attach(&a2, mem2, CAP, 7);
	CHECK(lora_adapter_init(&a1, dim, 2, 0.1f) == LORA_OK, "init");
	lora_adapter_init(&a2, dim, 2, 0.1f);
	for (int i = 0; i < dim; i++)
		x[i] = (float) i - 3.0f;
	forward(&a1, x, y);
	CHECK(memcmp(x, y, sizeof(float) * dim) == 0, "untrained adapter is not the identity");
	CHECK(lora_adapter_delta_norm(&a1) == 0.0, "untrained delta norm %g",
		  lora_adapter_delta_norm(&a1));
	for (int i = 0; i < 2 * dim; i++)
	{
		out_of_bounds += fabsf(lora_adapter_at(&a1)[i]) > 0.25f;	/* 1/sqrt(16) */
		differ += lora_adapter_at(&a1)[i] != lora_adapter_at(&a2)[i];
		all_equal &= lora_adapter_at(&a1)[i] == lora_adapter_at(&a1)[0];
	}
	CHECK(out_of_bounds == 0, "%d values of A outside +-1/sqrt(dim)", out_of_bounds);
	CHECK(differ == 0, "same seed gave a different A");
	CHECK(!all_equal, "A is constant");
	CHECK(lora_adapter_init(&a1, CAP + 1, 2, 0.1f) == LORA_DIM_TOO_LARGE,
		  "dimension above capacity accepted");
}

static LoraSettings settings = {2, 0.5f, 0.1f};

/* Bank on the static arena, fallback as asked. */
static void
make_bank(LoraBank *bank, bool fallback)
{
	lora_bank_init(bank, arena, CAP);
	bank->category_fallback = fallback;
}

/* y = w y_op + (1 - w) y_cat with w = min(adapts/10, 1) */
static void
test_fallback_blend(void)
{
	LoraBank	bank;
	LoraAdapter *op,
			   *cat;
	float		x[4] = {1.0f, -2.0f, 0.5f, 3.0f},
				g[4] = {0.2f, 0.4f, -0.1f, 0.3f},
				y[4],
				y_op[4],
				y_cat[4];
	int			bad = 0;

	make_bank(&bank, true);
	op = &bank.op[LORA_HASH_JOIN];
	cat = &bank.cat[LORA_CAT_JOIN];
	CHECK(lora_bank_forward(&bank, LORA_HASH_JOIN, x, 4, &settings, y) == LORA_OK,
		  "first forward");
	CHECK(op->dim == 4 && cat->dim == 4 && op->rank == 2 && op->alpha == 0.5f,
		  "first vector initialises scope and category adapters");
	CHECK(bank.op[LORA_MERGE_JOIN].dim == 0, "a sibling scope was initialised");
	CHECK(lora_bank_scope_weight(&bank, LORA_HASH_JOIN) == 0.0, "weight before adapting");

	for (int i = 0; i < 3; i++)
		CHECK(lora_bank_adapt(&bank, LORA_HASH_JOIN, x, g, 4, &settings) == LORA_OK,
			  "adapt %d", i);
	CHECK(op->adapt_count == 3 && cat->adapt_count == 3,
		  "both adapters learn: %llu %llu", (unsigned long long) op->adapt_count,
		  (unsigned long long) cat->adapt_count);
	CHECK(near(lora_bank_scope_weight(&bank, LORA_HASH_JOIN), 0.3, 1e-12),
		  "weight after 3 adapts %g", lora_bank_scope_weight(&bank, LORA_HASH_JOIN));

	/* the same input gave both adapters the same gradient, but A differs */
	CHECK(lora_adapter_delta_norm(op) != lora_adapter_delta_norm(cat),
		  "operator and category adapters are identical");
	forward(op, x, y_op);
	forward(cat, x, y_cat);
	lora_bank_forward(&bank, LORA_HASH_JOIN, x, 4, &settings, y);
	for (int j = 0; j < 4; j++)
		bad += !near(y[j], 0.3 * y_op[j] + 0.7 * y_cat[j], 1e-5);
	CHECK(bad == 0, "blended output differs from 0.3 op + 0.7 category");
	CHECK(op->forward_count == 2 && cat->forward_count == 2, "forward counts %llu %llu",
		  (unsigned long long) op->forward_count, (unsigned long long) cat->forward_count);

	/* after 10 adaptations the scope stands alone */
	for (int i = 0; i < 7; i++)
		lora_bank_adapt(&bank, LORA_HASH_JOIN, x, g, 4, &settings);
	CHECK(lora_bank_scope_weight(&bank, LORA_HASH_JOIN) == 1.0, "weight after 10");
	forward(op, x, y_op);
	lora_bank_forward(&bank, LORA_HASH_JOIN, x, 4, &settings, y);
	CHECK(memcmp(y, y_op, sizeof(y)) == 0, "weight 1 output is not the scope's own");
	CHECK(cat->forward_count == 2, "category used at weight 1");

	/* a sibling with no adaptations answers with the category's knowledge */
	lora_bank_forward(&bank, LORA_MERGE_JOIN, x, 4, &settings, y);
	forward(cat, x, y_cat);
	CHECK(memcmp(y, y_cat, sizeof(y)) == 0, "untrained sibling does not use its category");
}

static void
test_fallback_off(void)
{
	LoraBank	bank;
	float		x[3] = {1, 2, 3},
				g[3] = {1, 0, -1},
				y[3],
				y_op[3];

	make_bank(&bank, false);
	lora_bank_forward(&bank, LORA_SORT, x, 3, &settings, y);
	lora_bank_adapt(&bank, LORA_SORT, x, g, 3, &settings);
	CHECK(bank.cat[LORA_CAT_ORDER].dim == 0 && bank.cat[LORA_CAT_ORDER].adapt_count == 0,
		  "category touched with fallback off");
	CHECK(lora_bank_scope_weight(&bank, LORA_SORT) == 1.0, "weight with fallback off");
	lora_bank_forward(&bank, LORA_SORT, x, 3, &settings, y);
	forward(&bank.op[LORA_SORT], x, y_op);
	CHECK(memcmp(y, y_op, sizeof(y)) == 0, "fallback off output is not the scope's");
}

/*
 * Reward by hand (dim 2, rank 1, alpha 1, lr 0.5, A = [1; 0], B = 0):
 * x = [3 4], h = 3, r = 0.5: g = -0.5 x/|x| = [-0.3 -0.4], u = B g = 0,
 * B -= 0.5 * 3 * g -> [0.45 0.6], A unchanged; y(x) = x + 3 B = [4.35 5.8].
 */
static void
test_reward_by_hand(void)
{
	LoraBank	bank;
	LoraSettings s = {1, 1.0f, 0.5f};
	LoraAdapter *op;
	float		x[2] = {3, 4},
				y[2];

	make_bank(&bank, false);
	CHECK(lora_bank_reward(&bank, LORA_LIMIT, NULL, 2, 0.5, &s) == LORA_NO_INPUT,
		  "reward without an input");
	lora_bank_forward(&bank, LORA_LIMIT, x, 2, &s, y);
	op = &bank.op[LORA_LIMIT];
	lora_adapter_at(op)[0] = 1.0f;
	lora_adapter_at(op)[1] = 0.0f;
	CHECK(lora_bank_reward(&bank, LORA_LIMIT, x, 2, 0.5, &s) == LORA_OK, "reward");
	CHECK(near(lora_adapter_b(op)[0], 0.45, 1e-6) && near(lora_adapter_b(op)[1], 0.6, 1e-6),
		  "B after reward: %g %g", lora_adapter_b(op)[0], lora_adapter_b(op)[1]);
	CHECK(lora_adapter_at(op)[0] == 1.0f && lora_adapter_at(op)[1] == 0.0f,
		  "A moved although B was zero");
	lora_bank_forward(&bank, LORA_LIMIT, x, 2, &s, y);
	CHECK(near(y[0], 4.35, 1e-5) && near(y[1], 5.8, 1e-5), "output after reward: %g %g",
		  y[0], y[1]);

	/* a reward of 5 is clipped to 1: the same step as a reward of 1 */
	{
		float		b5[2];

		lora_bank_reward(&bank, LORA_LIMIT, x, 2, 5.0, &s);
		memcpy(b5, lora_adapter_b(op), sizeof(b5));
		make_bank(&bank, false);
		lora_bank_forward(&bank, LORA_LIMIT, x, 2, &s, y);
		lora_adapter_at(op)[0] = 1.0f;
		lora_adapter_at(op)[1] = 0.0f;
		lora_bank_reward(&bank, LORA_LIMIT, x, 2, 0.5, &s);
		lora_bank_forward(&bank, LORA_LIMIT, x, 2, &s, y);
		lora_bank_reward(&bank, LORA_LIMIT, x, 2, 1.0, &s);
		CHECK(near(b5[0], lora_adapter_b(op)[0], 1e-6) &&
			  near(b5[1], lora_adapter_b(op)[1], 1e-6),
			  "reward 5 not clipped to 1: %g vs %g", b5[0], lora_adapter_b(op)[0]);
	}

	/*
	 * A negative reward moves the output back against the input (a
	 * first-order statement: checked with a small learning rate).
	 */
	{
		LoraSettings small = {1, 1.0f, 0.01f};
		float		before[2],
					after[2];

		lora_bank_forward(&bank, LORA_LIMIT, x, 2, &small, before);
		lora_bank_reward(&bank, LORA_LIMIT, x, 2, -1.0, &small);
		lora_bank_forward(&bank, LORA_LIMIT, x, 2, &small, after);
		CHECK((after[0] - before[0]) * x[0] + (after[1] - before[1]) * x[1] < 0,
			  "negative reward did not pull the output back");
	}
}

static void
test_errors_and_resets(void)
{
	LoraBank	bank;
	float		x[4] = {1, 2, 3, 4},
				y[CAP + 1],
				big[CAP + 1] = {0},
				huge[4] = {1e30f, -1e30f, 1e30f, 1e30f};
	float		a0[8];
	LoraSettings wild = {2, 1000.0f, 1000.0f};

	make_bank(&bank, true);
	CHECK(lora_bank_adapt(&bank, LORA_SEQ_SCAN, NULL, x, 4, &settings) == LORA_NO_INPUT,
		  "adapt without an input");
	lora_bank_forward(&bank, LORA_SEQ_SCAN, x, 4, &settings, y);
	memcpy(a0, lora_adapter_at(&bank.op[LORA_SEQ_SCAN]), sizeof(a0));
	CHECK(lora_bank_forward(&bank, LORA_SEQ_SCAN, x, 3, &settings, y) == LORA_DIM_MISMATCH,
		  "forward with another dimension");
	CHECK(lora_bank_adapt(&bank, LORA_SEQ_SCAN, x, x, 3, &settings) == LORA_DIM_MISMATCH,
		  "gradient with another dimension");
	/* the category adapter (Scan, dim 4) blocks a sibling at dim 3 ... */
	CHECK(lora_bank_forward(&bank, LORA_INDEX_SCAN, x, 3, &settings, y) == LORA_DIM_MISMATCH,
		  "sibling at another dimension while the category is in use");
	CHECK(bank.op[LORA_INDEX_SCAN].dim == 0, "failing call initialised an adapter");
	/* ... but not with fallback off */
	bank.category_fallback = false;
	CHECK(lora_bank_forward(&bank, LORA_INDEX_SCAN, x, 3, &settings, y) == LORA_OK,
		  "independent scope at its own dimension");
	bank.category_fallback = true;
	CHECK(lora_bank_forward(&bank, LORA_RERANK, big, CAP + 1, &settings, y) ==
		  LORA_DIM_TOO_LARGE, "dimension above capacity");
	CHECK(bank.op[LORA_RERANK].dim == 0 && bank.cat[LORA_CAT_VECTOR].dim == 0,
		  "too-large vector initialised an adapter");

	/* resetting a scope: dimension free again, same initial A */
	lora_bank_adapt(&bank, LORA_SEQ_SCAN, x, x, 4, &settings);
	lora_bank_reset_scope(&bank, LORA_SEQ_SCAN);
	CHECK(bank.op[LORA_SEQ_SCAN].dim == 0 && bank.op[LORA_SEQ_SCAN].adapt_count == 0 &&
		  bank.op[LORA_SEQ_SCAN].forward_count == 0,
		  "reset scope");
	CHECK(bank.cat[LORA_CAT_SCAN].adapt_count == 1, "scope reset cleared its category");
	lora_bank_forward(&bank, LORA_SEQ_SCAN, x, 4, &settings, y);
	CHECK(memcmp(a0, lora_adapter_at(&bank.op[LORA_SEQ_SCAN]), sizeof(a0)) == 0,
		  "reset adapter does not start where it did");

	lora_bank_reset_all(&bank);
	for (int i = 0; i < LORA_NUM_ADAPTERS; i++)
		CHECK(lora_bank_adapter(&bank, i)->dim == 0, "adapter %d kept its dimension", i);
	CHECK(lora_bank_forward(&bank, LORA_SEQ_SCAN, x, 3, &settings, y) == LORA_OK,
		  "new dimension after reset_all");

	/* an update that overflows resets the adapter instead of keeping inf */
	lora_bank_reset_all(&bank);
	bank.category_fallback = false;
	lora_bank_forward(&bank, LORA_RESULT, huge, 4, &wild, y);
	CHECK(lora_bank_adapt(&bank, LORA_RESULT, huge, huge, 4, &wild) == LORA_DIVERGED,
		  "overflowing update");
	CHECK(bank.op[LORA_RESULT].dim == 0, "diverged adapter was kept");

	/* an input whose output overflows changes nothing */
	{
		float		top[4] = {3e38f, 3e38f, 3e38f, 3e38f};
		LoraAdapter *ad = &bank.op[LORA_RESULT];

		lora_bank_forward(&bank, LORA_RESULT, x, 4, &settings, y);
		for (int i = 0; i < 8; i++)
			lora_adapter_b(ad)[i] = 100.0f;
		CHECK(lora_bank_forward(&bank, LORA_RESULT, top, 4, &settings, y) == LORA_NOT_FINITE,
			  "overflowing output");
		CHECK(ad->forward_count == 1 && lora_adapter_b(ad)[0] == 100.0f,
			  "overflowing forward changed the adapter");
	}
}

static void
test_scopes(void)
{
	static const char *const seed_names[LORA_NUM_SCOPES] = {
		"SeqScan", "IndexScan", "HnswScan", "IvfFlatScan", "NestedLoopJoin",
		"HashJoin", "MergeJoin", "Aggregate", "GroupBy", "Filter", "Project",
		"Sort", "Limit", "VectorDistance", "Rerank", "Materialize", "Result"
	};
	static const int seed_categories[LORA_NUM_SCOPES] = {
		0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6
	};
	int			bad = 0;

	for (int s = 0; s < LORA_NUM_SCOPES; s++)
	{
		bad += strcmp(lora_scope_name(s), seed_names[s]) != 0;
		bad += (int) lora_scope_category(s) != seed_categories[s];
		bad += lora_scope_parse(seed_names[s]) != s;
	}
	CHECK(bad == 0, "%d scope names/categories differ from the seed", bad);
	CHECK(strcmp(lora_category_name(LORA_CAT_AGGREGATION), "Aggregation") == 0 &&
		  strcmp(lora_category_name(LORA_CAT_UTILITY), "Utility") == 0, "category names");
	CHECK(lora_scope_parse("hnswscan") == LORA_HNSW_SCAN, "lower case");
	CHECK(lora_scope_parse("HASHJOIN") == LORA_HASH_JOIN, "upper case");
	CHECK(lora_scope_parse("0") == 0 && lora_scope_parse("16") == 16, "numbers");
	CHECK(lora_scope_parse("17") == LORA_SCOPE_OUT_OF_RANGE, "17");
	CHECK(lora_scope_parse("-1") == LORA_SCOPE_OUT_OF_RANGE, "-1");
	CHECK(lora_scope_parse("99999999999999999999") == LORA_SCOPE_OUT_OF_RANGE, "overflow");
	CHECK(lora_scope_parse("Hnsw") == LORA_SCOPE_UNKNOWN, "prefix");
	CHECK(lora_scope_parse(" 2") == LORA_SCOPE_UNKNOWN, "leading space");
	CHECK(lora_scope_parse("2x") == LORA_SCOPE_UNKNOWN, "trailing junk");
	CHECK(lora_scope_parse("") == LORA_SCOPE_UNKNOWN, "empty");
	CHECK(lora_scope_plan_nodes(LORA_FILTER) == NULL &&
		  lora_scope_plan_nodes(LORA_SEQ_SCAN) != NULL, "plan node descriptions");
}

static void
test_ring(void)
{
	static char storage[4096];
	LoraRing	ring;
	LoraTrajectoryStats st;
	float		emb[3] = {1, 2, 3};

	CHECK(lora_ring_size(3, 2) == 3 * sizeof(LoraTrajectory) + 6 * sizeof(float),
		  "ring size");
	lora_ring_init(&ring, storage, 3, 2);
	lora_ring_stats(&ring, 0.4, &st);
	CHECK(st.total == 0 && st.buffered == 0 && st.best_improvement == 0.0 &&
		  st.mean_improvement == 0.0, "empty ring stats");

	/* SeqScan 10 ms (own baseline, 0), 5 ms (baseline 10: +0.5), 30 ms (7.5: -3) */
	lora_ring_record(&ring, LORA_SEQ_SCAN, 10.0, 100, 1, NULL, 0, 0);
	lora_ring_record(&ring, LORA_SEQ_SCAN, 5.0, 100, 1, emb, 2, 0);
	lora_ring_record(&ring, LORA_SEQ_SCAN, 30.0, 100, 1, emb, 3, 0);
	CHECK(lora_ring_get(&ring, 1)->baseline_ms == 10.0 &&
		  lora_ring_get(&ring, 1)->improvement == 0.5, "second record");
	CHECK(lora_ring_get(&ring, 2)->baseline_ms == 7.5 &&
		  lora_ring_get(&ring, 2)->improvement == -3.0, "third record");
	CHECK(lora_ring_get(&ring, 0)->emb_dim == 0 && lora_ring_get(&ring, 1)->emb_dim == 2 &&
		  lora_ring_embedding(&ring, 1)[1] == 2.0f, "embedding kept");
	CHECK(lora_ring_get(&ring, 2)->emb_dim == 0 && ring.embeddings_dropped == 1,
		  "wide embedding dropped and counted");

	lora_ring_stats(&ring, 0.4, &st);
	CHECK(st.total == 3 && st.buffered == 3, "counts");
	CHECK(near(st.mean_improvement, -2.5 / 3, 1e-12), "mean %g", st.mean_improvement);
	CHECK(st.best_improvement == 0.5, "best %g", st.best_improvement);
	CHECK(near(st.success_rate, 1.0 / 3, 1e-12), "success rate %g", st.success_rate);
	/* deviations from -5/6: 5/6, 4/3, -13/6 -> (25/36 + 64/36 + 169/36) / 3 */
	CHECK(near(st.variance, 258.0 / 108, 1e-12), "variance %g", st.variance);
	CHECK(st.high_quality == 1 && st.by_op[LORA_SEQ_SCAN] == 3, "high quality, by op");

	/* wrap: a Sort record pushes the oldest SeqScan out */
	lora_ring_record(&ring, LORA_SORT, 2.0, 10, 1, NULL, 0, 0);
	CHECK(lora_ring_count(&ring) == 3 && lora_ring_get(&ring, 0)->id == 2 &&
		  lora_ring_get(&ring, 2)->op == LORA_SORT, "ring wraps oldest first");
	lora_ring_stats(&ring, 0.4, &st);
	CHECK(st.total == 4 && st.by_op[LORA_SEQ_SCAN] == 2 && st.by_op[LORA_SORT] == 1,
		  "stats after wrap");
	CHECK(lora_ring_embedding(&ring, 0)[0] == 1.0f, "embedding follows its record");

	lora_ring_reset(&ring);
	CHECK(lora_ring_count(&ring) == 0 && ring.embeddings_dropped == 0, "reset");
	lora_ring_record(&ring, LORA_SEQ_SCAN, 4.0, 1, 1, NULL, 0, 0);
	CHECK(lora_ring_get(&ring, 0)->baseline_ms == 4.0, "reset clears baselines");

	/* a zero baseline (nodes too fast for the clock) means no improvement */
	lora_ring_record(&ring, LORA_LIMIT, 0.0, 1, 1, NULL, 0, 0);
	lora_ring_record(&ring, LORA_LIMIT, 0.5, 1, 1, NULL, 0, 0);
	CHECK(lora_ring_get(&ring, 2)->baseline_ms == 0.0 &&
		  lora_ring_get(&ring, 2)->improvement == 0.0, "zero baseline");
}

int
main(void)
{
	vec_distance_init(VEC_ISA_AVX512);
	test_rank1_by_hand();
	test_rank3_by_hand();
	test_step_matches_finite_differences();
	test_init();
	test_fallback_blend();
	test_fallback_off();
	test_reward_by_hand();
	test_errors_and_resets();
	test_scopes();
	test_ring();
	return unit_report("lora");
}
