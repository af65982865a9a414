/*
 * test_cagra.c
 *		The CPU CAGRA stages: pruning and reverse merging on small graphs
 *		worked out by hand, the kNN stage against a double-precision brute
 *		force for every metric, both detour definitions, the connectivity
 *		repair, a whole build's search recall, the index's level 0 with its
 *		long edges against HNSW insertion, and the error returns.
 */
#include <math.h>
#include <string.h>

#include "cagra/cagra.h"
#define HNSW_PURE
#include "hnsw/hnsw.h"
#include "unit.h"
#include "vector/distance.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float
rand_uniform(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (float) ((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static float *
random_data(int64_t n, int dim)
{
	float	   *data = malloc(n * dim * sizeof(float));

	for (int64_t i = 0; i < n * dim; i++)
		data[i] = rand_uniform();
	return data;
}

static bool
rows_equal(const int32_t *got, const int32_t *want, int len)
{
	return memcmp(got, want, len * sizeof(int32_t)) == 0;
}

/* ---------------------------------------------------------------------- */

/*
 * I = 4, d = 3.  Row 0 is [1 2 3 4]; its closer neighbours' lists:
 *	 D = 1 (rank 0): [4 5 3 6]  4 is A's rank 3, at rank 0 in D: a detour in
 *							   both definitions; 3 is A's rank 2, at rank 2
 *							   in D: not below 2, so cuVS only.
 *	 D = 2 (rank 1): [5 6 3 7]  3 (A's rank 2) at rank 2 in D: cuVS only.
 *	 D = 3 (rank 2): [5 6 7 0]  nothing of A's farther than rank 2.
 * Counts by rank: cuVS [0 0 2 1], paper [0 0 0 1].  Smallest (count, rank):
 * cuVS ranks 0 1 3 -> [1 2 4]; paper ranks 0 1 2 -> [1 2 3].
 *
 * Row 4 is [0 1 2 3]:
 *	 D = 0 (rank 0): [1 2 3 4]  1 at 0 (<1), 2 at 1 (<2), 3 at 2 (<3): +1 to
 *							   ranks 1 2 3 in both.
 *	 D = 1 (rank 1): [4 5 3 6]  3 (rank 3) at rank 2 < 3: +1 to rank 3.
 *	 D = 2 (rank 2): [5 6 3 7]  3 (rank 3) at rank 2 < 3: +1 to rank 3.
 * Counts [0 1 1 3] in both: kept [0 1 2].
 */
static const int32_t prune_knn[8 * 4] = {
	1, 2, 3, 4,
	4, 5, 3, 6,
	5, 6, 3, 7,
	5, 6, 7, 0,
	0, 1, 2, 3,
	6, 7, 0, 1,
	7, 5, 0, 1,
	6, 5, 4, 0,
};

static void
test_prune_by_hand(void)
{
	int32_t		pruned[8 * 3];
	char		err[256];
	static const int32_t any_row0[3] = {1, 2, 4};
	static const int32_t paper_row0[3] = {1, 2, 3};
	static const int32_t row4[3] = {0, 1, 2};

	CHECK(cagra_prune(prune_knn, 8, 4, 3, CAGRA_DETOUR_ANY_RANK, 2, NULL, pruned,
					  err, sizeof(err)) == CAGRA_OK, "prune any-rank: %s", err);
	CHECK(rows_equal(pruned, any_row0, 3), "any-rank row 0: [%d %d %d]",
		  pruned[0], pruned[1], pruned[2]);
	CHECK(rows_equal(pruned + 4 * 3, row4, 3), "any-rank row 4: [%d %d %d]",
		  pruned[12], pruned[13], pruned[14]);

	CHECK(cagra_prune(prune_knn, 8, 4, 3, CAGRA_DETOUR_RANK_BELOW, 1, NULL, pruned,
					  err, sizeof(err)) == CAGRA_OK, "prune rank-below: %s", err);
	CHECK(rows_equal(pruned, paper_row0, 3), "rank-below row 0: [%d %d %d]",
		  pruned[0], pruned[1], pruned[2]);
	CHECK(rows_equal(pruned + 4 * 3, row4, 3), "rank-below row 4: [%d %d %d]",
		  pruned[12], pruned[13], pruned[14]);
}

/*
 * Input rows with a repeated id, the node itself and -1: I = 4, d = 3.
 * Row 0 [2 2 0 1]: edges are 2 (rank 0) and 1 (rank 3); D = 2's list
 * [1 0 -1 -1] holds 1 at rank 0, a detour in both definitions.  Counts
 * rank 0: 0, rank 3: 1 -> [2 1 -1].
 */
static void
test_prune_odd_input(void)
{
	static const int32_t knn[3 * 4] = {
		2, 2, 0, 1,
		2, 0, -1, -1,
		1, 0, -1, -1,
	};
	static const int32_t want[3 * 3] = {
		2, 1, -1,
		2, 0, -1,
		1, 0, -1,
	};
	int32_t		pruned[3 * 3];
	char		err[256];

	CHECK(cagra_prune(knn, 3, 4, 3, CAGRA_DETOUR_ANY_RANK, 1, NULL, pruned,
					  err, sizeof(err)) == CAGRA_OK, "prune odd input: %s", err);
	CHECK(rows_equal(pruned, want, 9), "odd input: [%d %d %d][%d %d %d][%d %d %d]",
		  pruned[0], pruned[1], pruned[2], pruned[3], pruned[4], pruned[5],
		  pruned[6], pruned[7], pruned[8]);
}

/*
 * d = 2, one protected forward edge per row.  Pruned graph:
 *	0: [1 2]  1: [0 2]  2: [0 1]  3: [2 0]
 * Reverse lists, rank 0 edges first (sources in id order), then rank 1,
 * at most d = 2 each:
 *	rank 0: 0->1, 1->0, 2->0, 3->2	  rev 0 [1 2], rev 1 [0], rev 2 [3]
 *	rank 1: 0->2, 1->2 (full), 2->1, 3->0 (full)
 *									  rev 1 [0 2], rev 2 [3 0]
 * Merged rows (protected edge, then reverse edges, then forward ones):
 *	0: 1, rev 1 (dup) 2 -> [1 2]
 *	1: 0, rev 0 (dup) 2 -> [0 2]
 *	2: 0, rev 3		  -> [0 3]
 *	3: 2, no reverse, forward 0 -> [2 0]
 */
static void
test_merge_reverse_by_hand(void)
{
	static const int32_t pruned[4 * 2] = {1, 2, 0, 2, 0, 1, 2, 0};
	static const int32_t want[4 * 2] = {1, 2, 0, 2, 0, 3, 2, 0};
	int32_t		graph[4 * 2];
	char		err[256];

	CHECK(cagra_merge_reverse(pruned, 4, 2, 2, graph, err, sizeof(err)) == CAGRA_OK,
		  "merge: %s", err);
	CHECK(rows_equal(graph, want, 8), "merged: [%d %d][%d %d][%d %d][%d %d]",
		  graph[0], graph[1], graph[2], graph[3], graph[4], graph[5],
		  graph[6], graph[7]);
}

/*
 * d = 4, two protected edges.  Pruned graph of 5 nodes:
 *	0: [1 2 3 4]  1: [0 2 3 4]  2: [0 1 3 4]  3: [0 1 2 4]  4: [3 -1 -1 -1]
 * Reverse lists, capped at d = 4, filled rank by rank:
 *	rank 0: 0->1 1->0 2->0 3->0 4->3	 rev 0 [1 2 3], rev 1 [0], rev 3 [4]
 *	rank 1: 0->2 1->2 2->1 3->1			 rev 1 [0 2 3], rev 2 [0 1]
 *	rank 2: 0->3 1->3 2->3 3->2			 rev 2 [0 1 3], rev 3 [4 0 1 2]
 *	rank 3: 0->4 1->4 2->4 3->4			 rev 4 [0 1 2 3]
 * Merged:
 *	0: 1 2 | rev 1 2 dup, 3 | fwd 3 dup, 4		 -> [1 2 3 4]
 *	3: 0 1 | rev 4, 0 dup, 1 dup, 2				 -> [0 1 4 2]
 *	4: 3 (-1 skipped) | rev 0 1 2				 -> [3 0 1 2]
 */
static void
test_merge_reverse_protected(void)
{
	static const int32_t pruned[5 * 4] = {
		1, 2, 3, 4, 0, 2, 3, 4, 0, 1, 3, 4, 0, 1, 2, 4, 3, -1, -1, -1};
	static const int32_t row0[4] = {1, 2, 3, 4};
	static const int32_t row3[4] = {0, 1, 4, 2};
	static const int32_t row4[4] = {3, 0, 1, 2};
	int32_t		graph[5 * 4];
	char		err[256];

	CHECK(cagra_merge_reverse(pruned, 5, 4, 2, graph, err, sizeof(err)) == CAGRA_OK,
		  "merge: %s", err);
	CHECK(rows_equal(graph, row0, 4), "row 0: [%d %d %d %d]",
		  graph[0], graph[1], graph[2], graph[3]);
	CHECK(rows_equal(graph + 12, row3, 4), "row 3: [%d %d %d %d]",
		  graph[12], graph[13], graph[14], graph[15]);
	CHECK(rows_equal(graph + 16, row4, 4), "row 4: [%d %d %d %d]",
		  graph[16], graph[17], graph[18], graph[19]);
}

/* ---------------------------------------------------------------------- */

static double
ref_distance(CagraMetric metric, const float *a, const float *b, int dim)
{
	double		na,
				nb;

	switch (metric)
	{
		case CAGRA_METRIC_L2:
			return vec_l2_squared_ref(a, b, dim);
		case CAGRA_METRIC_INNER_PRODUCT:
			return -vec_inner_product_ref(a, b, dim);
		case CAGRA_METRIC_L1:
			return vec_l1_ref(a, b, dim);
		case CAGRA_METRIC_COSINE:
			break;
	}
	na = vec_inner_product_ref(a, a, dim);
	nb = vec_inner_product_ref(b, b, dim);
	if (na == 0.0 || nb == 0.0)
		return 1.0;
	return 1.0 - vec_inner_product_ref(a, b, dim) / sqrt(na * nb);
}

static int
double_cmp(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Row q of a kNN result (or brute force when self < 0) against a double
 * brute force: the j-th returned neighbour must be at the j-th smallest
 * distance (within float rounding), ids distinct and not q itself.  Returns
 * the number of ids that differ from the double-precision order.
 */
static int
check_knn_row(const float *base, int64_t n, const float *query, int64_t self,
			  int dim, CagraMetric metric, int k, const int32_t *ids,
			  double *scratch, int *bad)
{
	int			m = 0;
	int			differ = 0;
	double		scale = 0.0;

	for (int64_t i = 0; i < n; i++)
		if (i != self)
			scratch[m++] = ref_distance(metric, query, base + i * dim, dim);
	qsort(scratch, m, sizeof(double), double_cmp);
	for (int j = 0; j < m; j++)
		scale = fmax(scale, fabs(scratch[j]));
	for (int j = 0; j < k; j++)
	{
		double		got;

		if (ids[j] < 0 || ids[j] >= n || ids[j] == self)
		{
			(*bad)++;
			continue;
		}
		for (int i = 0; i < j; i++)
			if (ids[i] == ids[j])
				(*bad)++;
		got = ref_distance(metric, query, base + (int64_t) ids[j] * dim, dim);
		if (fabs(got - scratch[j]) > 1e-5 * (scale + 1.0))
		{
			differ++;
			(*bad)++;
		}
	}
	return differ;
}

/*
 * Distance-based pruning on six points of a line (L2, I = 3, d = 2), kNN
 * lists exact:
 *	 x: p0 0, p1 1, p2 2, p3 -1.5, p4 3, p5 -10
 *	 kNN: p0 [1 3 2], p1 [0 2 4], p2 [1 4 0], p3 [0 1 2], p4 [2 1 0],
 *		  p5 [3 0 1]
 * Pass 1 (a candidate stays unless nearer to a kept one than to the node,
 * then the discarded fill to d): p0 [1 3] (3 is 6.25 from 1, 2.25 from
 * p0), p1 [0 2], p2 [1 4], p3 [0 1] (1 and 2 are nearer to 0; 1 fills),
 * p4 [2 1], p5 [3 0].  Edges into p3: from p5 (first slot), p0 (second).
 * Pass 2 adds p5 to p3's candidates: 100 from p0, 72.25 from p3, so it
 * stays and p3 gets [0 5], where the kNN list alone gives [0 1].  The
 * other rows keep their pass-1 lists.
 *
 * The survey (all six rows): of the 18 pairs (closer a, farther b) of the
 * rows' lists, 16 have b in a's list (not p0's 1 -> 3, not p1's 0 -> 4);
 * the heuristic alone keeps 2, 2, 2, 1, 1, 1 of the 3 candidates.
 */
static void
test_prune_distance_by_hand(void)
{
	static const float line[6] = {0, 1, 2, -1.5f, 3, -10};
	static const int32_t knn[6 * 3] = {
		1, 3, 2,
		0, 2, 4,
		1, 4, 0,
		0, 1, 2,
		2, 1, 0,
		3, 0, 1,
	};
	static const int32_t want[6 * 2] = {
		1, 3,
		0, 2,
		1, 4,
		0, 5,
		2, 1,
		3, 0,
	};
	int32_t		graph[6 * 2];
	char		err[256];
	CagraPruneSurvey survey;

	for (int threads = 1; threads <= 3; threads++)
	{
		CHECK(cagra_prune_distance(line, 6, 1, CAGRA_METRIC_L2, knn, 3, 2,
								   threads, NULL, graph, err, sizeof(err)) == CAGRA_OK,
			  "prune by distance: %s", err);
		for (int i = 0; i < 6; i++)
			CHECK(rows_equal(graph + i * 2, want + i * 2, 2),
				  "prune by distance, %d threads: row %d is [%d %d], want [%d %d]",
				  threads, i, graph[i * 2], graph[i * 2 + 1], want[i * 2],
				  want[i * 2 + 1]);
	}
	cagra_prune_survey(line, 6, 1, CAGRA_METRIC_L2, knn, 3, &survey);
	CHECK(survey.rows == 6 && fabs(survey.detour_share - 16.0 / 18.0) < 1e-9 &&
		  fabs(survey.heuristic_kept - 1.5) < 1e-9,
		  "survey: %lld rows, detour share %.4f (want 0.8889), heuristic keeps %.3f (want 1.5)",
		  (long long) survey.rows, survey.detour_share, survey.heuristic_kept);
}

/*
 * The cosine distance of rows x and y from their product p, through the
 * rows' reciprocal lengths, as cagra_prune_distance computes it.
 */
static float
select_ref_cosine(const float *x, const float *y, int dim, float p)
{
	float		nx = sqrtf(vec_inner_product(x, x, dim));
	float		ny = sqrtf(vec_inner_product(y, y, dim));

	return 1.0f - p * (nx > 0 ? 1.0f / nx : 0.0f) * (ny > 0 ? 1.0f / ny : 0.0f);
}

/*
 * The distance cagra_prune_distance selects by: cagra_distance, except
 * cosine, from the rows' reciprocal lengths (one dot product a pair).
 */
static float
select_ref_distance(const float *data, int dim, CagraMetric metric,
					int64_t a, int64_t b)
{
	const float *x = data + a * dim;
	const float *y = data + b * dim;

	if (metric == CAGRA_METRIC_COSINE)
		return select_ref_cosine(x, y, dim, vec_inner_product(x, y, dim));
	return cagra_distance(metric, x, y, dim);
}

/*
 * The node's distance to a candidate as cagra_prune_distance measures it:
 * from the tiled products (cagra_row_products, the same float for a pair
 * in any call), whose rounding differs from the distance kernels'.  A
 * reference taking them from select_ref_distance differed on near ties
 * (row 120 of one draw under inner product).
 */
static float
select_ref_node_distance(const float *data, int dim, CagraMetric metric,
						 int64_t node, int64_t b)
{
	const float *x = data + node * dim;
	const float *y = data + b * dim;
	float		p;

	if (metric == CAGRA_METRIC_L1)
		return cagra_distance(metric, x, y, dim);
	cagra_row_products(&x, 1, &y, 1, dim, metric == CAGRA_METRIC_L2, false,
					   &p, 1);
	if (metric == CAGRA_METRIC_COSINE)
		return select_ref_cosine(x, y, dim, p);
	return metric == CAGRA_METRIC_L2 ? p : -p;
}

/*
 * HNSW's heuristic for node over ids[0 .. n_ids) as the documentation of
 * cagra_prune_distance states it, every distance computed: candidates
 * nearest first by (distance, id), each kept unless nearer to a kept one
 * than to the node, the rest filling up to d, then -1.
 */
static void
select_ref_row(const float *data, int dim, CagraMetric metric, int64_t node,
			   const int32_t *ids, int n_ids, int d, int32_t *out)
{
	int32_t		cand[2 * 64];
	float		dist[2 * 64];
	bool		kept[2 * 64] = {0};
	int			n = 0,
				len = 0;

	for (int i = 0; i < n_ids; i++)
	{
		bool		seen = ids[i] < 0 || ids[i] == node;

		for (int j = 0; j < n && !seen; j++)
			seen = cand[j] == ids[i];
		if (seen)
			continue;
		cand[n] = ids[i];
		dist[n++] = select_ref_node_distance(data, dim, metric, node, ids[i]);
	}
	for (int i = 1; i < n; i++)		/* insertion sort by (distance, id) */
		for (int j = i; j > 0 && (dist[j] < dist[j - 1] ||
								  (dist[j] == dist[j - 1] && cand[j] < cand[j - 1])); j--)
		{
			float		t = dist[j];
			int32_t		c = cand[j];

			dist[j] = dist[j - 1];
			cand[j] = cand[j - 1];
			dist[j - 1] = t;
			cand[j - 1] = c;
		}
	for (int i = 0; i < n && len < d; i++)
	{
		bool		occluded = false;

		for (int j = 0; j < len && !occluded; j++)
			occluded = select_ref_distance(data, dim, metric, cand[i], out[j]) <
				dist[i];
		if (!occluded)
		{
			kept[i] = true;
			out[len++] = cand[i];
		}
	}
	for (int i = 0; i < n && len < d; i++)
		if (!kept[i])
			out[len++] = cand[i];
	while (len < d)
		out[len++] = -1;
}

/*
 * cagra_prune_distance against the rule computed naively (no distances
 * reused, no pairs skipped, rows by id) on random rows of every metric:
 * the same graph, on 1 and 3 threads.
 */
static void
test_prune_distance_reference(void)
{
	const int64_t n = 700;
	const int	dim = 12,
				I = 24,
				d = 12;
	static const CagraMetric metrics[] = {CAGRA_METRIC_L2, CAGRA_METRIC_COSINE,
	CAGRA_METRIC_L1, CAGRA_METRIC_INNER_PRODUCT};
	float	   *data = random_data(n, dim);
	int32_t    *knn = malloc(n * I * sizeof(int32_t));
	int32_t    *pass1 = malloc(n * d * sizeof(int32_t));
	int32_t    *rev = malloc(n * d * sizeof(int32_t));
	int		   *n_rev = malloc(n * sizeof(int));
	int32_t    *want = malloc(n * d * sizeof(int32_t));
	int32_t    *got = malloc(n * d * sizeof(int32_t));
	char		err[256];

	for (int mi = 0; mi < 4; mi++)
	{
		CagraMetric metric = metrics[mi];
		int64_t		differ = -1;

		CHECK(cagra_knn_exact(data, n, dim, metric, I, 1, NULL, knn, NULL,
							  err, sizeof(err)) == CAGRA_OK, "kNN: %s", err);
		/* a few short lists, as the partitioned kNN may leave */
		for (int64_t i = 0; i < n; i += 50)
			knn[i * I + I - 1] = -1;
		for (int64_t i = 0; i < n; i++)
			select_ref_row(data, dim, metric, i, knn + i * I, I, d, pass1 + i * d);
		cagra_reverse_lists(pass1, n, d, rev, n_rev);
		for (int64_t i = 0; i < n; i++)
		{
			int32_t		ids[2 * 64];

			memcpy(ids, pass1 + i * d, d * sizeof(int32_t));
			memcpy(ids + d, rev + i * d, n_rev[i] * sizeof(int32_t));
			select_ref_row(data, dim, metric, i, ids, d + n_rev[i], d, want + i * d);
		}
		for (int threads = 1; threads <= 3; threads += 2)
		{
			CHECK(cagra_prune_distance(data, n, dim, metric, knn, I, d, threads,
									   NULL, got, err, sizeof(err)) == CAGRA_OK,
				  "prune by distance: %s", err);
			for (int64_t i = 0; i < n && differ < 0; i++)
				if (!rows_equal(got + i * d, want + i * d, d))
					differ = i;
			CHECK(differ < 0,
				  "prune by distance, metric %d, %d threads: row %lld differs from the rule computed naively",
				  (int) metric, threads, (long long) differ);
		}
	}
	free(data);
	free(knn);
	free(pass1);
	free(rev);
	free(n_rev);
	free(want);
	free(got);
}

static void
test_knn_exact_one(int64_t n, int dim, CagraMetric metric, int k,
				   float offset, float spread)
{
	float	   *data = random_data(n, dim);
	int32_t    *knn = malloc(n * k * sizeof(int32_t));
	float	   *dists = malloc(n * k * sizeof(float));
	double	   *scratch = malloc(n * sizeof(double));
	char		err[256];
	int			bad = 0;
	int			unsorted = 0;
	int64_t		step = n > 1000 ? 7 : 1;

	for (int64_t i = 0; i < n * dim; i++)
		data[i] = offset + spread * data[i];
	/* a zero row: cosine must place it at distance 1 from everything */
	if (metric == CAGRA_METRIC_COSINE)
		memset(data + (n / 2) * dim, 0, dim * sizeof(float));
	CHECK(cagra_knn_exact(data, n, dim, metric, k, 3, NULL, knn, dists,
						  err, sizeof(err)) == CAGRA_OK,
		  "knn n=%lld dim=%d metric=%d: %s", (long long) n, dim, metric, err);
	for (int64_t q = 0; q < n; q += step)
	{
		check_knn_row(data, n, data + q * dim, q, dim, metric, k,
					  knn + q * k, scratch, &bad);
		for (int j = 1; j < k; j++)
			if (dists[q * k + j] < dists[q * k + j - 1])
				unsorted++;
	}
	CHECK(bad == 0, "knn n=%lld dim=%d metric=%d k=%d: %d wrong neighbours",
		  (long long) n, dim, metric, k, bad);
	CHECK(unsorted == 0, "knn n=%lld dim=%d metric=%d: %d rows out of order",
		  (long long) n, dim, metric, unsorted);
	free(data);
	free(knn);
	free(dists);
	free(scratch);
}

static void
test_knn_exact(void)
{
	static const int64_t sizes[] = {2, 37, 300, 2600};
	static const int dims[] = {1, 3, 17, 130};

	for (int metric = CAGRA_METRIC_L2; metric <= CAGRA_METRIC_L1; metric++)
		for (int s = 0; s < 4; s++)
		{
			int64_t		n = sizes[s];
			int			k = n - 1 < 24 ? (int) n - 1 : 24;

			test_knn_exact_one(n, dims[s], (CagraMetric) metric, k, 0.0f, 1.0f);
		}
	/* odd tails of the SIMD kernels, with the row blocks full and partial */
	test_knn_exact_one(129, 33, CAGRA_METRIC_L2, 5, 0.0f, 1.0f);
	test_knn_exact_one(257, 7, CAGRA_METRIC_INNER_PRODUCT, 40, 0.0f, 1.0f);

	/*
	 * Far from the origin |x|^2 + |y|^2 - 2 x.y cancels to nothing in float:
	 * the GEMM must see centred data for L2.
	 */
	test_knn_exact_one(500, 16, CAGRA_METRIC_L2, 10, 100.0f, 0.01f);
}

static void
test_brute_force(void)
{
	int64_t		n = 2100,
				nq = 50;
	int			dim = 19,
				k = 10;
	float	   *base = random_data(n, dim);
	float	   *queries = random_data(nq, dim);
	int32_t    *ids = malloc(nq * k * sizeof(int32_t));
	double	   *scratch = malloc(n * sizeof(double));
	char		err[256];
	int			bad = 0;

	for (int metric = CAGRA_METRIC_L2; metric <= CAGRA_METRIC_L1; metric++)
	{
		CHECK(cagra_brute_force(base, n, queries, nq, dim, metric, k, 2, NULL, ids,
								NULL, err, sizeof(err)) == CAGRA_OK,
			  "brute force: %s", err);
		for (int64_t q = 0; q < nq; q++)
			check_knn_row(base, n, queries + q * dim, -1, dim, metric, k,
						  ids + q * k, scratch, &bad);
		CHECK(bad == 0, "brute force metric %d: %d wrong neighbours", metric, bad);
	}
	/* k = n: every base row, in order */
	CHECK(cagra_brute_force(base, 12, queries, 3, dim, CAGRA_METRIC_L2, 12, 1, NULL,
							ids, NULL, err, sizeof(err)) == CAGRA_OK,
		  "brute force k = n: %s", err);
	bad = 0;
	for (int64_t q = 0; q < 3; q++)
		check_knn_row(base, 12, queries + q * dim, -1, dim, CAGRA_METRIC_L2, 12,
					  ids + q * 12, scratch, &bad);
	CHECK(bad == 0, "brute force k = n: %d wrong neighbours", bad);
	free(base);
	free(queries);
	free(ids);
	free(scratch);
}

/* ---------------------------------------------------------------------- */

/* ---------------------------------------------------------------------- */

/* Points on a line: 0..1 near 0, 2..3 near 10, 4..5 near 20. */
static const float line_points[6] = {0.0f, 1.0f, 10.0f, 11.0f, 20.0f, 21.0f};

/*
 * Three pairs pointing at each other, one free slot each (d = 2).  From
 * entry 0, node 2 is found first: the search from 0 for x = 10 ends at 1
 * (distance 81) before 0 (100); 1's free slot takes 1 -> 2, and 3 comes
 * with 2.  Node 4 (x = 20): the search reaches 3 (81), which gets 3 -> 4.
 */
static void
test_connectivity_free_slots(void)
{
	int32_t		graph[6 * 2] = {1, -1, 0, -1, 3, -1, 2, -1, 5, -1, 4, -1};
	static const int32_t want[6 * 2] = {1, -1, 0, 2, 3, -1, 2, 4, 5, -1, 4, -1};
	int64_t		unreachable = -1,
				added = -1;
	char		err[256];

	CHECK(cagra_count_reachable(graph, 6, 2, 0, err, sizeof(err)) == 2,
		  "pairs: only 0 and 1 reachable before the repair");
	CHECK(cagra_guarantee_connectivity(graph, 6, 2, line_points, 1,
									   CAGRA_METRIC_L2, 0, &unreachable, &added,
									   err, sizeof(err)) == CAGRA_OK,
		  "repair: %s", err);
	CHECK(unreachable == 4 && added == 2, "repair found %lld unreachable, added %lld",
		  (long long) unreachable, (long long) added);
	CHECK(rows_equal(graph, want, 12), "repaired graph differs");
	CHECK(cagra_count_reachable(graph, 6, 2, 0, err, sizeof(err)) == 6,
		  "pairs: all reachable after the repair");
}

/*
 * Full rows (d = 1): 0 -> 1 -> 0, 2 -> 3 -> 2.  0's only edge is the tree
 * edge that reaches 1, so it must stay; 1's edge back to the entry is no
 * tree edge and is replaced: 1 -> 2.  Expected [1][2][3][2].
 */
static void
test_connectivity_full_rows(void)
{
	int32_t		graph[4] = {1, 0, 3, 2};
	static const int32_t want[4] = {1, 2, 3, 2};
	char		err[256];

	CHECK(cagra_guarantee_connectivity(graph, 4, 1, line_points, 1,
									   CAGRA_METRIC_L2, 0, NULL, NULL,
									   err, sizeof(err)) == CAGRA_OK,
		  "repair full rows: %s", err);
	CHECK(rows_equal(graph, want, 4), "full rows: [%d][%d][%d][%d]",
		  graph[0], graph[1], graph[2], graph[3]);
}

/*
 * A graph holding an id out of range (7 of 3 nodes) is searched and
 * repaired as if the slot were empty.  Points 0, 1, 2 on a line; 0 -> 1, 7;
 * 1 -> 0; 2 -> 1.  Node 2 is unreached from 0; the search for x = 2 ends at
 * 1 (distance 1), whose empty slot takes 1 -> 2.
 */
static void
test_out_of_range_ids(void)
{
	static const float points[3] = {0.0f, 1.0f, 2.0f};
	int32_t		graph[3 * 2] = {1, 7, 0, -1, 1, -1};
	static const int32_t want[3 * 2] = {1, 7, 0, 2, 1, -1};
	CagraSearch *search = cagra_search_create(3, 4);
	int32_t		found[2];
	float		query = 2.0f;
	char		err[256];

	CHECK(cagra_count_reachable(graph, 3, 2, 0, err, sizeof(err)) == 2,
		  "out-of-range id: two nodes reachable");
	CHECK(cagra_search(search, graph, 3, 2, points, 1, CAGRA_METRIC_L2, &query,
					   0, 4, 2, found, NULL) == 2 && found[0] == 1 && found[1] == 0,
		  "search skips the out-of-range id");
	CHECK(cagra_guarantee_connectivity(graph, 3, 2, points, 1, CAGRA_METRIC_L2,
									   0, NULL, NULL, err, sizeof(err)) == CAGRA_OK &&
		  rows_equal(graph, want, 6), "repair with an out-of-range id: [%d %d][%d %d][%d %d]",
		  graph[0], graph[1], graph[2], graph[3], graph[4], graph[5]);
	cagra_search_free(search);
}

/* Well separated clusters: the CAGRA graph falls apart without the repair. */
static float *
cluster_data(int n_clusters, int per_cluster, int dim)
{
	float	   *data = malloc((int64_t) n_clusters * per_cluster * dim * sizeof(float));

	for (int c = 0; c < n_clusters; c++)
		for (int i = 0; i < per_cluster; i++)
			for (int j = 0; j < dim; j++)
				data[((int64_t) c * per_cluster + i) * dim + j] =
					(j == 0 ? 1000.0f * c : 0.0f) + rand_uniform();
	return data;
}

/*
 * cluster_data with the clusters brought close: 1000 apart on axis 0 they
 * would make k-means trivial.
 */
static float *
close_cluster_data(int n_clusters, int per_cluster, int dim)
{
	float	   *data = cluster_data(n_clusters, per_cluster, dim);

	for (int64_t i = 0; i < (int64_t) n_clusters * per_cluster; i++)
		data[i * dim] *= 0.002f;
	return data;
}

static bool
graph_well_formed(const int32_t *graph, int64_t n, int d)
{
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < d; j++)
		{
			int32_t		id = graph[i * d + j];

			if (id < -1 || id >= n || id == i)
				return false;
			for (int l = 0; l < j && id >= 0; l++)
				if (graph[i * d + l] == id)
					return false;
		}
	return true;
}

static bool
knn_rows_well_formed(const int32_t *knn, const float *dists, int64_t n, int k)
{
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < k; j++)
		{
			int32_t		id = knn[i * k + j];

			if (id < 0 || id >= n || id == i)
				return false;
			if (j > 0 && dists[i * k + j] < dists[i * k + j - 1])
				return false;
			for (int l = 0; l < j; l++)
				if (knn[i * k + l] == id)
					return false;
		}
	return true;
}

static double
knn_overlap(const int32_t *a, const int32_t *b, int64_t n, int k)
{
	int64_t		hits = 0;

	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < k; j++)
			for (int l = 0; l < k; l++)
				hits += a[i * k + j] == b[i * k + l];
	return (double) hits / ((double) n * k);
}

/*
 * NN-descent from a random graph: on uniform data in 8 dimensions it
 * climbs to nearly the exact kNN graph, under L2 and cosine; the result
 * does not depend on the number of threads; from a half-right graph, a
 * recall target stops it early, and a graph that meets the target is left
 * alone; an exact graph
 * stays exact (no distance ties in random floats); bad arguments are
 * rejected.
 */
static void
refine_from_ring(int32_t *knn, int64_t n, int k)
{
	/* row i starts with i+1 .. i+k (mod n): unrelated to the data */
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < k; j++)
			knn[i * k + j] = (int32_t) ((i + 1 + j) % n);
	knn[5 * k + 3] = -1;		/* an empty slot fills up too */
}

static void
test_knn_refine(void)
{
	int64_t		n = 3000;
	int			dim = 8,
				k = 12;
	float	   *data = random_data(n, dim);
	int32_t    *exact = malloc(n * k * sizeof(int32_t));
	int32_t    *one = malloc(n * k * sizeof(int32_t));
	int32_t    *two = malloc(n * k * sizeof(int32_t));
	float	   *dists = malloc(n * k * sizeof(float));
	CagraRefineOptions full = {30, 8, 0.0, NULL, NULL};
	CagraRefineOptions bad;
	CagraRefineStats st;
	char		err[256];
	double		start,
				recall;
	int			full_iterations;

	for (int metric = CAGRA_METRIC_L2; metric <= CAGRA_METRIC_COSINE; metric += 2)
	{
		CHECK(cagra_knn_exact(data, n, dim, (CagraMetric) metric, k, 2, NULL, exact,
							  NULL, err, sizeof(err)) == CAGRA_OK, "exact: %s", err);
		refine_from_ring(one, n, k);
		memcpy(two, one, n * k * sizeof(int32_t));
		start = knn_overlap(one, exact, n, k);
		CHECK(cagra_knn_refine(data, n, dim, (CagraMetric) metric, k, &full, 1, NULL,
							   one, dists, &st, err, sizeof(err)) == CAGRA_OK,
			  "refine, metric %d, 1 thread: %s", metric, err);
		recall = knn_overlap(one, exact, n, k);
		CHECK(recall >= 0.95 && start < 0.05,
			  "metric %d: NN-descent from a random graph: recall %.4f -> %.4f",
			  metric, start, recall);
		CHECK(st.iterations >= 2 && st.iterations < 30 && st.recall_before == -1.0,
			  "metric %d: stopped by the update count after %d iterations",
			  metric, st.iterations);
		CHECK(knn_rows_well_formed(one, dists, n, k), "refined rows well formed");
		for (int64_t i = 0; i < n * k; i++)
			if (fabs(dists[i] - cagra_distance((CagraMetric) metric, data + (i / k) * dim,
											   data + (int64_t) one[i] * dim, dim)) > 1e-5)
			{
				CHECK(false, "row %lld: distance of %d wrong", (long long) (i / k), one[i]);
				break;
			}
		CHECK(cagra_knn_refine(data, n, dim, (CagraMetric) metric, k, &full, 2, NULL,
							   two, NULL, NULL, err, sizeof(err)) == CAGRA_OK,
			  "refine, 2 threads: %s", err);
		CHECK(rows_equal(one, two, n * k), "metric %d: 1 and 2 threads refine alike",
			  metric);
	}

	/* L2 from here on */
	CHECK(cagra_knn_exact(data, n, dim, CAGRA_METRIC_L2, k, 2, NULL, exact, NULL,
						  err, sizeof(err)) == CAGRA_OK, "exact: %s", err);
	/* half right: each row's second half replaced by ring entries */
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < k; j++)
		{
			int32_t		ring = (int32_t) ((i + 1 + j) % n);
			bool		taken = false;

			for (int l = 0; l < k / 2; l++)
				taken |= exact[i * k + l] == ring;
			two[i * k + j] = j < k / 2 ? exact[i * k + j] : taken ? -1 : ring;
		}
	memcpy(one, two, n * k * sizeof(int32_t));
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &full, 2, NULL, one,
						   NULL, &st, err, sizeof(err)) == CAGRA_OK,
		  "refine half right: %s", err);
	full_iterations = st.iterations;
	memcpy(one, two, n * k * sizeof(int32_t));
	bad = full;
	bad.target_recall = 0.8;
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &bad, 2, NULL, one,
						   NULL, &st, err, sizeof(err)) == CAGRA_OK &&
		  st.recall_before > 0.4 && st.recall_before < 0.6 &&
		  st.recall_after >= 0.8 && st.iterations >= 1 &&
		  st.iterations < full_iterations,
		  "target 0.8: %d of %d iterations, checked recall %.3f -> %.3f (%s)",
		  st.iterations, full_iterations, st.recall_before, st.recall_after, err);
	bad.target_recall = 0.4;
	memcpy(one, two, n * k * sizeof(int32_t));
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &bad, 2, NULL, one,
						   NULL, &st, err, sizeof(err)) == CAGRA_OK &&
		  st.iterations == 0 &&
		  knn_overlap(one, exact, n, k) == knn_overlap(two, exact, n, k),
		  "a graph past the target is left alone, only sorted (%d iterations)",
		  st.iterations);

	memcpy(one, exact, n * k * sizeof(int32_t));
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &full, 2, NULL, one,
						   dists, &st, err, sizeof(err)) == CAGRA_OK &&
		  st.iterations == 1 && rows_equal(one, exact, n * k),
		  "an exact graph is left as it is, after one iteration (%d)", st.iterations);

	bad = full;
	bad.sample = 0;
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &bad, 2, NULL, one,
						   NULL, NULL, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "sample 0 is rejected");
	bad = full;
	bad.iterations = -1;
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &bad, 2, NULL, one,
						   NULL, NULL, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "negative iterations are rejected");
	bad = full;
	bad.target_recall = 1.5;
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &bad, 2, NULL, one,
						   NULL, NULL, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "a target recall above 1 is rejected");
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, (int) n, &full, 2, NULL,
						   one, NULL, NULL, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "k = n is rejected");
	free(data);
	free(exact);
	free(one);
	free(two);
	free(dists);
}

/*
 * NN-descent told which pairs were ranked already.  Rows are in 3 lists by
 * id, list l having searched itself and list l + 1 (one way only); every
 * row starts from its exact kNN among the rows of its searched lists.
 * Told so, NN-descent must end where it ends untold, as those pairs would
 * only be rejected again, and it does end elsewhere if the two ends of a
 * pair are mixed up; told that every pair was ranked, it leaves the graph
 * as it is.
 */
static void
test_knn_refine_searched(void)
{
	int64_t		n = 3000;
	int			dim = 8,
				k = 12,
				n_lists = 3;
	float	   *data = random_data(n, dim);
	int32_t    *list_of = malloc(n * sizeof(int32_t));
	int32_t    *start = malloc(n * k * sizeof(int32_t));
	float	   *start_d = malloc(n * k * sizeof(float));
	int32_t    *told = malloc(n * k * sizeof(int32_t));
	int32_t    *untold = malloc(n * k * sizeof(int32_t));
	uint64_t	searched = 0;
	uint64_t	everything = 1;
	int32_t    *one_list = calloc(n, sizeof(int32_t));
	CagraSearchedPairs pairs = {n_lists, list_of, &searched};
	CagraSearchedPairs all_pairs = {1, one_list, &everything};
	CagraRefineOptions plain = {30, 8, 0.0, NULL, NULL};
	CagraRefineOptions with_pairs = {30, 8, 0.0, NULL, &pairs};
	CagraRefineStats st;
	char		err[256];

	for (int64_t i = 0; i < n; i++)
		list_of[i] = (int32_t) (i % n_lists);
	for (int l = 0; l < n_lists; l++)
	{
		searched |= UINT64_C(1) << (l * n_lists + l);
		searched |= UINT64_C(1) << (l * n_lists + (l + 1) % n_lists);
	}
	CHECK(cagra_pair_searched(&pairs, 0, 1) && !cagra_pair_searched(&pairs, 1, 0) &&
		  cagra_pair_searched(&pairs, 2, 0) && cagra_pair_searched(&pairs, 3, 6),
		  "searched bits by list, one way");
	/* each row's exact kNN among its searched lists, by insertion */
	for (int64_t p = 0; p < n; p++)
	{
		int32_t    *ids = start + p * k;
		float	   *ds = start_d + p * k;
		int			len = 0;

		for (int64_t q = 0; q < n; q++)
		{
			float		d;
			int			at;

			if (q == p || !cagra_pair_searched(&pairs, (int32_t) p, (int32_t) q))
				continue;
			d = cagra_distance(CAGRA_METRIC_L2, data + p * dim, data + q * dim, dim);
			if (len == k && d >= ds[k - 1])
				continue;
			at = len < k ? len++ : k - 1;
			while (at > 0 && ds[at - 1] > d)
			{
				ids[at] = ids[at - 1];
				ds[at] = ds[at - 1];
				at--;
			}
			ids[at] = (int32_t) q;
			ds[at] = d;
		}
	}
	memcpy(told, start, n * k * sizeof(int32_t));
	memcpy(untold, start, n * k * sizeof(int32_t));
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &plain, 2, NULL,
						   untold, NULL, NULL, err, sizeof(err)) == CAGRA_OK,
		  "refine untold: %s", err);
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &with_pairs, 2, NULL,
						   told, NULL, NULL, err, sizeof(err)) == CAGRA_OK,
		  "refine told: %s", err);
	CHECK(!rows_equal(untold, start, n * k) && rows_equal(told, untold, n * k),
		  "told which pairs were ranked, NN-descent ends where it ends untold");
	memcpy(told, start, n * k * sizeof(int32_t));
	with_pairs.searched = &all_pairs;
	CHECK(cagra_knn_refine(data, n, dim, CAGRA_METRIC_L2, k, &with_pairs, 2, NULL,
						   told, NULL, &st, err, sizeof(err)) == CAGRA_OK &&
		  rows_equal(told, start, n * k) && st.iterations == 1,
		  "told every pair was ranked, NN-descent changes nothing (%d iterations)",
		  st.iterations);
	free(data);
	free(list_of);
	free(start);
	free(start_d);
	free(told);
	free(untold);
	free(one_list);
}

/*
 * The partitioned kNN: exact when every list probes every list, exact when
 * the probed lists are too small to hold k neighbours (every row goes to
 * the exact fallback), and close to exact on clustered data.
 */
static void
test_knn_partitioned(void)
{
	int			dim = 12,
				k = 16;
	int64_t		n = 3000;
	float	   *data = close_cluster_data(30, 100, dim);
	int32_t    *exact = malloc(n * k * sizeof(int32_t));
	int32_t    *part = malloc(n * k * sizeof(int32_t));
	float	   *exact_d = malloc(n * k * sizeof(float));
	float	   *part_d = malloc(n * k * sizeof(float));
	char		err[256];
	double		recall;

	CHECK(cagra_knn_exact(data, n, dim, CAGRA_METRIC_L2, k, 2, NULL, exact, exact_d,
						  err, sizeof(err)) == CAGRA_OK, "exact: %s", err);

	/*
	 * 600 rows, 3 lists, 3 probes: every row is searched among all rows,
	 * each list's rows in the search's form of its metric (L2: moved to the
	 * probed list's centre)
	 */
	for (int m = CAGRA_METRIC_L2; m <= CAGRA_METRIC_L1; m++)
	{
		CHECK(cagra_knn_partitioned(data, 600, dim, (CagraMetric) m, k, 200, 3, 0, 2,
									NULL, part, part_d, NULL, err,
									sizeof(err)) == CAGRA_OK,
			  "partitioned, every list probed, metric %d: %s", m, err);
		CHECK(cagra_knn_exact(data, 600, dim, (CagraMetric) m, k, 2, NULL, exact,
							  exact_d, err, sizeof(err)) == CAGRA_OK, "exact 600: %s", err);
		/* all but L1: the codes' rounding may swap near ties */
		CHECK(rows_equal(part, exact, 600 * k) ||
			  (m != CAGRA_METRIC_L1 && knn_overlap(part, exact, 600, k) > 0.999),
			  "probing every list equals the exact kNN, metric %d: overlap %.5f",
			  m, knn_overlap(part, exact, 600, k));
	}
	CHECK(cagra_knn_exact(data, 600, dim, CAGRA_METRIC_L2, k, 2, NULL, exact, exact_d,
						  err, sizeof(err)) == CAGRA_OK, "exact 600: %s", err);

	/* one probe of a 2-row list cannot hold 16 neighbours: exact fallback */
	CHECK(cagra_knn_partitioned(data, 600, dim, CAGRA_METRIC_L2, k, 2, 1, 0, 2, NULL,
								part, part_d, NULL, err, sizeof(err)) == CAGRA_OK,
		  "partitioned, tiny lists: %s", err);
	CHECK(rows_equal(part, exact, 600 * k), "tiny lists equal the exact kNN");

	CHECK(cagra_knn_exact(data, n, dim, CAGRA_METRIC_L2, k, 2, NULL, exact, exact_d,
						  err, sizeof(err)) == CAGRA_OK, "exact: %s", err);
	CHECK(cagra_knn_partitioned(data, n, dim, CAGRA_METRIC_L2, k, 150, 3, 0, 2, NULL,
								part, part_d, NULL, err, sizeof(err)) == CAGRA_OK,
		  "partitioned: %s", err);
	CHECK(knn_rows_well_formed(part, part_d, n, k), "partitioned rows well formed");
	recall = knn_overlap(part, exact, n, k);
	CHECK(recall >= 0.9, "partitioned kNN recall %.4f", recall);

	CHECK(cagra_knn_partitioned(data, n, dim, CAGRA_METRIC_L2, k, 1, 3, 0, 2, NULL,
								part, part_d, NULL, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "list_rows 1 is rejected");

	/*
	 * The lists rank by the panels' values and turn them back into
	 * distances (centred L2, unit-length cosine, negated inner product, L1
	 * as computed): with every list probed (4 of 750 rows), every metric's
	 * lists hold the exact neighbours' distances, up to rounding: float
	 * rounding for L1, the codes' for the others (cagra_code_row: about
	 * 2e-5 |u| |v| for the rows u, v centred on their lists' means, where
	 * these rows' |u| |v| is still many times their distances: the worst
	 * seen was 9e-4 of |distance| + 1, under L2, and 1.7e-3 under inner
	 * product with its rows coded as given; a wrong scale or pair would be
	 * off by the distance).
	 */
	for (int metric = CAGRA_METRIC_L2; metric <= CAGRA_METRIC_L1; metric++)
	{
		double		worst = 0.0;

		CHECK(cagra_knn_exact(data, n, dim, (CagraMetric) metric, k, 2, NULL,
							  exact, exact_d, err, sizeof(err)) == CAGRA_OK,
			  "exact, metric %d: %s", metric, err);
		CHECK(cagra_knn_partitioned(data, n, dim, (CagraMetric) metric, k, 750, 4, 0, 2,
									NULL, part, part_d, NULL, err, sizeof(err)) == CAGRA_OK,
			  "partitioned, metric %d: %s", metric, err);
		for (int64_t i = 0; i < n * k; i++)
		{
			double		want = cagra_distance((CagraMetric) metric, data + (i / k) * dim,
											  data + (int64_t) part[i] * dim, dim);

			worst = fmax(worst, fabs(part_d[i] - want) / (fabs(want) + 1.0));
			worst = fmax(worst, fabs(part_d[i] - exact_d[i]) / (fabs(exact_d[i]) + 1.0));
		}
		CHECK(worst < (metric == CAGRA_METRIC_L1 ? 1e-4 : 5e-3),
			  "metric %d: partitioned distances off by %.2g", metric, worst);
	}
	free(data);
	free(exact);
	free(part);
	free(exact_d);
	free(part_d);
}

/*
 * Under inner product a row's neighbours are the longest rows in its
 * direction, in lists far from the row when the rows' lengths vary: 40
 * directions, each row a direction plus noise at a length between 0.1 and
 * 3.  Ranking the probes by x.c (probe_metric in cagra_partition.c) finds
 * them; ranking them by distance, as for L2, the short rows probe the
 * lists around the origin.  kNN recall over the three draws (one per
 * kernel set): 0.90-0.97, and 0.78-0.81 with the probes ranked by
 * distance.
 */
static void
test_knn_partitioned_inner_product(void)
{
	int			dim = 16,
				k = 16,
				n_dirs = 40;
	int64_t		n = 4000;
	float	   *dirs = random_data(n_dirs, dim);
	float	   *data = malloc(n * dim * sizeof(float));
	int32_t    *exact = malloc(n * k * sizeof(int32_t));
	int32_t    *part = malloc(n * k * sizeof(int32_t));
	float	   *dists = malloc(n * k * sizeof(float));
	char		err[256];
	double		recall;

	for (int64_t i = 0; i < n; i++)
	{
		const float *d = dirs + (i % n_dirs) * dim;
		float		length = 0.1f + 1.45f * (rand_uniform() + 1.0f);

		for (int j = 0; j < dim; j++)
			data[i * dim + j] = length * (d[j] + 0.15f * rand_uniform());
	}
	CHECK(cagra_knn_exact(data, n, dim, CAGRA_METRIC_INNER_PRODUCT, k, 2, NULL,
						  exact, dists, err, sizeof(err)) == CAGRA_OK,
		  "exact: %s", err);
	/* 40 lists of about 100 rows, 4 probes: a tenth of the rows a row */
	CHECK(cagra_knn_partitioned(data, n, dim, CAGRA_METRIC_INNER_PRODUCT, k, 100,
								4, 0, 2, NULL, part, dists, NULL, err,
								sizeof(err)) == CAGRA_OK,
		  "partitioned: %s", err);
	CHECK(knn_rows_well_formed(part, dists, n, k), "rows well formed");
	recall = knn_overlap(part, exact, n, k);
	CHECK(recall >= 0.86, "inner product, 4 of 40 lists probed: kNN recall %.4f",
		  recall);
	free(dirs);
	free(data);
	free(exact);
	free(part);
	free(dists);
}

static void
test_connectivity_build(void)
{
	int			dim = 8;
	int64_t		n = 4 * 50;
	float	   *data = cluster_data(4, 50, dim);
	int32_t    *graph = malloc(n * 8 * sizeof(int32_t));
	CagraParams params;
	CagraStats	stats;
	char		err[256];

	cagra_params_default(&params, 4);	/* I = 12, d = 8 */
	params.n_threads = 2;
	CHECK(cagra_build(data, n, dim, &params, graph, &stats, err, sizeof(err)) == CAGRA_OK,
		  "build without repair: %s", err);
	CHECK(stats.unreachable >= 150, "clusters: %lld unreachable without repair",
		  (long long) stats.unreachable);
	CHECK(cagra_count_reachable(graph, n, 8, stats.entry, err, sizeof(err)) < n,
		  "clusters: graph disconnected without repair");

	params.guarantee_connectivity = true;
	CHECK(cagra_build(data, n, dim, &params, graph, &stats, err, sizeof(err)) == CAGRA_OK,
		  "build with repair: %s", err);
	CHECK(stats.repair_edges >= 3 && stats.unreachable >= 150,
		  "clusters: %lld repair edges for %lld unreachable",
		  (long long) stats.repair_edges, (long long) stats.unreachable);
	CHECK(cagra_count_reachable(graph, n, 8, stats.entry, err, sizeof(err)) == n,
		  "clusters: every node reachable after repair");
	CHECK(graph_well_formed(graph, n, 8), "repaired graph well formed");
	free(data);
	free(graph);
}

/* ---------------------------------------------------------------------- */

static double
search_recall(const int32_t *graph, int64_t n, int d, const float *data,
			  int dim, const float *queries, int nq, const int32_t *truth,
			  int32_t entry, int ef)
{
	CagraSearch *search = cagra_search_create(n, ef);
	int32_t		found[10];
	int64_t		hits = 0;

	for (int q = 0; q < nq; q++)
	{
		int			got = cagra_search(search, graph, n, d, data, dim,
									   CAGRA_METRIC_L2, queries + q * dim,
									   entry, ef, 10, found, NULL);

		for (int i = 0; i < got; i++)
			for (int j = 0; j < 10; j++)
				hits += found[i] == truth[q * 10 + j];
	}
	cagra_search_free(search);
	return (double) hits / (nq * 10.0);
}

/* Both detour definitions give a navigable graph of the right shape. */
static void
test_build_recall(void)
{
	int			dim = 8,
				nq = 100;
	int64_t		n = 4000;
	float	   *data = random_data(n, dim);
	float	   *queries = random_data(nq, dim);
	int32_t    *graph = malloc(n * 16 * sizeof(int32_t));
	int32_t    *truth = malloc(nq * 10 * sizeof(int32_t));
	CagraParams params;
	CagraStats	stats;
	char		err[256];

	CHECK(cagra_brute_force(data, n, queries, nq, dim, CAGRA_METRIC_L2, 10, 2, NULL,
							truth, NULL, err, sizeof(err)) == CAGRA_OK,
		  "ground truth: %s", err);
	cagra_params_default(&params, 8);	/* I = 24, d = 16 */
	params.guarantee_connectivity = true;
	for (int detour = 0; detour <= 1; detour++)
	{
		double		recall;

		params.detour = (CagraDetour) detour;
		CHECK(cagra_build(data, n, dim, &params, graph, &stats, err,
						  sizeof(err)) == CAGRA_OK, "build: %s", err);
		CHECK(graph_well_formed(graph, n, 16), "detour %d: graph well formed", detour);
		recall = search_recall(graph, n, 16, data, dim, queries, nq, truth,
							   stats.entry, 64);
		CHECK(recall >= 0.95, "detour %d: recall@10 at ef 64 = %.3f", detour, recall);
	}
	params.pruning = CAGRA_PRUNE_DISTANCE;
	{
		double		recall;
		int32_t    *again = malloc(n * 16 * sizeof(int32_t));

		params.n_threads = 1;
		CHECK(cagra_build(data, n, dim, &params, graph, &stats, err,
						  sizeof(err)) == CAGRA_OK, "build by distance: %s", err);
		CHECK(stats.prune.pruning == CAGRA_PRUNE_DISTANCE, "pruned by distance");
		CHECK(graph_well_formed(graph, n, 16), "distance: graph well formed");
		recall = search_recall(graph, n, 16, data, dim, queries, nq, truth,
							   stats.entry, 64);
		CHECK(recall >= 0.95, "distance: recall@10 at ef 64 = %.3f", recall);
		/* the same graph on any number of threads */
		params.n_threads = 3;
		CHECK(cagra_build(data, n, dim, &params, again, &stats, err,
						  sizeof(err)) == CAGRA_OK, "build by distance: %s", err);
		CHECK(rows_equal(graph, again, n * 16),
			  "distance pruning on 1 and 3 threads gives the same graph");

		/* AUTO: distance pruning exactly below the detour share bound */
		params.pruning = CAGRA_PRUNE_AUTO;
		CHECK(cagra_build(data, n, dim, &params, again, &stats, err,
						  sizeof(err)) == CAGRA_OK, "build auto: %s", err);
		CHECK(stats.prune.survey.rows == 256 &&
			  stats.prune.survey.detour_share > 0 &&
			  stats.prune.survey.detour_share < 1 &&
			  stats.prune.pruning ==
			  (stats.prune.survey.detour_share < CAGRA_PRUNE_DISTANCE_SHARE ?
			   CAGRA_PRUNE_DISTANCE : CAGRA_PRUNE_DETOUR),
			  "auto: detour share %.4f, pruned by %d",
			  stats.prune.survey.detour_share, (int) stats.prune.pruning);
		free(again);
	}
	free(data);
	free(queries);
	free(graph);
	free(truth);
}

/* ---------------------------------------------------------------------- */

static void *
index_alloc(void *ctx, size_t size)
{
	(void) ctx;
	return malloc(size);
}

static void
index_free(void *ctx, void *ptr)
{
	(void) ctx;
	free(ptr);
}

static const HnswAllocator index_allocator = {index_alloc, index_free, NULL};

static double
index_recall(HnswGraph *g, const float *queries, int nq, int dim,
			 const int32_t *truth, int ef)
{
	int64_t		hits = 0;

	for (int q = 0; q < nq; q++)
	{
		int32_t		ids[10];
		float		dists[10];
		int			got = hnsw_graph_search(g, queries + (int64_t) q * dim, 10, ef,
											ids, dists);

		for (int i = 0; i < got; i++)
			for (int j = 0; j < 10; j++)
				hits += ids[i] == truth[q * 10 + j];
	}
	return (double) hits / (nq * 10.0);
}

/*
 * The index's graph both ways (cagra_hnsw.c) on n rows of dim: level 0
 * from CAGRA (pruning AUTO) plus long edges through the upper levels
 * against HNSW insertion, from the same sampled levels.  At ef 10 the
 * CAGRA-built graph must find as much as the HNSW-built one, less half a
 * point (issue 13's target).  Returns the pruning the build chose.
 */
static CagraPruning
index_level0_check(const char *what, const float *data, int64_t n, int dim,
				   const float *queries, int nq)
{
	int			m = 16;
	int32_t    *truth = malloc(sizeof(int32_t) * nq * 10);
	int32_t    *graph = malloc(sizeof(int32_t) * n * 2 * m);
	HnswGraph  *hnsw = hnsw_graph_create(dim, m, 64, HNSW_METRIC_L2, 16, 7,
										 &index_allocator);
	HnswGraph  *cagra = hnsw_graph_create(dim, m, 64, HNSW_METRIC_L2, 16, 7,
										  &index_allocator);
	CagraParams params;
	CagraStats	stats;
	char		err[256];
	int64_t		dropped,
				connected,
				unreached;
	bool		dup;
	double		r_hnsw,
				r_cagra;

	CHECK(cagra_brute_force(data, n, queries, nq, dim, CAGRA_METRIC_L2, 10, 2,
							NULL, truth, NULL, err, sizeof(err)) == CAGRA_OK,
		  "%s: ground truth: %s", what, err);

	for (int64_t i = 0; i < n; i++)
		hnsw_graph_insert(hnsw, data + i * dim, hnsw_graph_random_level(hnsw),
						  NULL, NULL, &dup);
	hnsw_graph_connect(hnsw, &unreached);

	for (int64_t i = 0; i < n; i++)
		hnsw_graph_append(cagra, data + i * dim, hnsw_graph_random_level(cagra));
	hnsw_graph_reserve_search(cagra);
	hnsw_graph_link_upper(cagra);
	cagra_params_default(&params, m);	/* I = 48, d = 32 */
	params.n_threads = 2;
	CHECK(cagra_build(data, n, dim, &params, graph, &stats, err,
					  sizeof(err)) == CAGRA_OK, "%s: build: %s", what, err);
	CHECK(cagra_hnsw_level0(cagra, graph, 2 * m,
							stats.prune.pruning == CAGRA_PRUNE_DISTANCE, 2,
							NULL, &dropped, &connected, err,
							sizeof(err)) == CAGRA_OK, "%s: level 0: %s", what, err);
	hnsw_graph_connect(cagra, &unreached);

	r_hnsw = index_recall(hnsw, queries, nq, dim, truth, 10);
	r_cagra = index_recall(cagra, queries, nq, dim, truth, 10);
	CHECK(r_cagra >= r_hnsw - 0.005,
		  "%s: recall@10 at ef 10 CAGRA-built %.4f, HNSW-built %.4f (detour share %.3f)",
		  what, r_cagra, r_hnsw, stats.prune.survey.detour_share);
	hnsw_graph_free(hnsw);
	hnsw_graph_free(cagra);
	free(truth);
	free(graph);
	return stats.prune.pruning;
}

/*
 * 600 small clusters of uneven size along an 8-dimensional subspace of 32
 * dimensions, queries near stored rows: pruned by detour counts, 0.9995
 * against 0.9858 at ef 10; with the long edges chosen from a beam of m at
 * level 1, 0.9768.
 */
static void
test_index_level0(void)
{
	int			dim = 32,
				sub = 8,
				n_clusters = 600,
				nq = 400;
	int64_t		n = 12000;
	float	   *centres = malloc(sizeof(float) * n_clusters * sub);
	float	   *data = malloc(sizeof(float) * n * dim);
	float	   *queries = malloc(sizeof(float) * nq * dim);

	for (int i = 0; i < n_clusters * sub; i++)
		centres[i] = rand_uniform();
	for (int64_t i = 0; i < n; i++)
	{
		/* cluster sizes fall off as 1 / rank (a uniform of a square) */
		float		u = (rand_uniform() + 1.0f) / 2.0f;
		int			c = (int) (n_clusters * u * u) % n_clusters;

		for (int j = 0; j < dim; j++)
			data[i * dim + j] = centres[c * sub + j % sub] * (1.0f + 0.03f * j) +
				0.03f * rand_uniform();
	}
	for (int q = 0; q < nq; q++)
		for (int j = 0; j < dim; j++)
			queries[q * dim + j] = data[(int64_t) (q * 29) * dim + j] +
				0.03f * rand_uniform();
	CHECK(index_level0_check("clusters", data, n, dim, queries, nq) ==
		  CAGRA_PRUNE_DETOUR, "clusters: pruned by detour counts");
	free(centres);
	free(data);
	free(queries);
}

/* About N(0, 1): a sum of four uniforms, scaled to unit variance. */
static float
rand_normal(void)
{
	return (rand_uniform() + rand_uniform() + rand_uniform() + rand_uniform()) *
		0.8660254f;
}

/*
 * The demo's kind of data: 100 topics in 48 dimensions, each row its
 * topic's centre plus noise of sigma 1.5, queries drawn the same way.
 * Topics overlap, a closer neighbour rarely lists a farther one, and the
 * build prunes by distance; by detour counts with all long edges the
 * CAGRA-built graph trailed the HNSW-built one at ef 10.
 */
static void
test_index_level0_topics(void)
{
	int			dim = 48,
				n_topics = 100,
				nq = 400;
	int64_t		n = 7000;
	float	   *centres = malloc(sizeof(float) * n_topics * dim);
	float	   *data = malloc(sizeof(float) * n * dim);
	float	   *queries = malloc(sizeof(float) * nq * dim);

	for (int i = 0; i < n_topics * dim; i++)
		centres[i] = rand_normal();
	for (int64_t i = 0; i < n + nq; i++)
	{
		float	   *row = i < n ? data + i * dim : queries + (i - n) * dim;
		int			t = (int) (i % n_topics);

		for (int j = 0; j < dim; j++)
			row[j] = centres[t * dim + j] + 1.5f * rand_normal();
	}
	CHECK(index_level0_check("topics", data, n, dim, queries, nq) ==
		  CAGRA_PRUNE_DISTANCE, "topics: pruned by distance");
	free(centres);
	free(data);
	free(queries);
}

/*
 * Long edges under inner product (cagra_hnsw.c, LONG_EDGES_SELECT): rows
 * of norms from 1 to 10, level 0 given no CAGRA edges, so that each
 * node's level-0 list is its long edges alone.  The heuristic's test keeps
 * a candidate only when no kept node has a larger inner product with it
 * than the node has, which a large-norm kept node almost always has: alone
 * it left nodes with one or two long edges.  Filled with the nearest it
 * passed over, every node holds its m / 2 at least.
 */
static void
test_index_level0_inner_product(void)
{
	int			dim = 16,
				m = 8;
	int64_t		n = 2000;
	float	   *data = random_data(n, dim);
	int32_t    *graph = malloc(sizeof(int32_t) * n * 2 * m);
	HnswGraph  *g[2];
	char		err[256];
	int64_t		dropped,
				connected[2],
				added,
				unreached;
	int			fewest = 2 * m;
	int64_t		differ = 0;

	for (int64_t i = 0; i < n; i++)
	{
		float		norm = 1.0f + 4.5f * (rand_uniform() + 1.0f);

		for (int j = 0; j < dim; j++)
			data[i * dim + j] *= norm;
	}
	for (int64_t i = 0; i < n * 2 * m; i++)
		graph[i] = -1;
	for (int t = 0; t < 2; t++)
	{
		g[t] = hnsw_graph_create(dim, m, 64, HNSW_METRIC_IP, 16, 7,
								 &index_allocator);
		for (int64_t i = 0; i < n; i++)
			hnsw_graph_append(g[t], data + i * dim, hnsw_graph_random_level(g[t]));
		hnsw_graph_reserve_search(g[t]);
		hnsw_graph_link_upper(g[t]);
		CHECK(cagra_hnsw_level0(g[t], graph, 2 * m, false, t + 1, NULL, &dropped,
								&connected[t], err, sizeof(err)) == CAGRA_OK,
			  "inner product level 0, %d threads: %s", t + 1, err);
	}
	for (int64_t i = 0; i < n; i++)
	{
		if (g[1]->nodes[i].counts[0] < fewest)
			fewest = g[1]->nodes[i].counts[0];
		differ += g[0]->nodes[i].counts[0] != g[1]->nodes[i].counts[0] ||
			memcmp(g[0]->nodes[i].nbrs, g[1]->nodes[i].nbrs,
				   sizeof(int32_t) * g[0]->nodes[i].counts[0]) != 0;
	}
	CHECK(fewest >= m / 2,
		  "inner product: a node has %d long edges, fewer than m / 2 = %d",
		  fewest, m / 2);
	/* long edges alone leave small-norm nodes without in-edges */
	CHECK(connected[1] > 0 && connected[0] == connected[1] && differ == 0,
		  "inner product: the reachability pass added %lld and %lld edges on 1 and 2 threads, %lld level-0 lists differ",
		  (long long) connected[0], (long long) connected[1], (long long) differ);
	added = hnsw_graph_connect(g[1], &unreached);
	CHECK(added == 0 && unreached == 0,
		  "inner product: after level 0, hnsw_graph_connect added %lld edges (none expected) and left %lld unreachable",
		  (long long) added, (long long) unreached);
	for (int t = 0; t < 2; t++)
		hnsw_graph_free(g[t]);
	free(graph);
	free(data);
}

/* ---------------------------------------------------------------------- */

typedef struct StopAfter
{
	int			polls;
	int			limit;			/* answer "stop" from poll limit + 1 on */
} StopAfter;

static bool
stop_after(void *arg)
{
	StopAfter  *stop = arg;

	return ++stop->polls > stop->limit;
}

/*
 * The interrupt check: polled on the calling thread before each chunk (8
 * query blocks of 512 rows here), it stops a build part-way through.
 */
static void
test_interrupt(void)
{
	int64_t		n = 4000;
	int			dim = 8;
	float	   *data = random_data(n, dim);
	int32_t    *graph = malloc(n * 16 * sizeof(int32_t));
	int32_t    *knn = malloc(n * 24 * sizeof(int32_t));
	CagraParams params;
	StopAfter	stop = {0, 3};
	CagraInterrupt interrupt = {stop_after, &stop};
	char		err[256] = "";

	cagra_params_default(&params, 8);	/* I = 24, d = 16 */
	params.n_threads = 1;
	params.interrupt = interrupt;
	CHECK(cagra_build(data, n, dim, &params, graph, NULL, err, sizeof(err)) ==
		  CAGRA_ERR_CANCELED && strstr(err, "canceled") != NULL,
		  "build stopped by the interrupt check: %s", err);
	CHECK(stop.polls == 4, "the check was polled %d times, not 4", stop.polls);

	stop.polls = 0;
	stop.limit = 1000000;
	CHECK(cagra_build(data, n, dim, &params, graph, NULL, err, sizeof(err)) == CAGRA_OK &&
		  stop.polls >= 8, "a check that never says stop: %s, %d polls", err, stop.polls);

	stop.polls = 0;
	stop.limit = 0;
	params.n_threads = 2;
	params.knn_method = CAGRA_KNN_PARTITIONED;
	params.list_rows = 256;
	CHECK(cagra_build(data, n, dim, &params, graph, NULL, err, sizeof(err)) ==
		  CAGRA_ERR_CANCELED, "partitioned build stopped: %s", err);

	stop.polls = 0;
	CHECK(cagra_knn_exact(data, n, dim, CAGRA_METRIC_L2, 24, 2, NULL, knn, NULL,
						  err, sizeof(err)) == CAGRA_OK &&
		  cagra_prune(knn, n, 24, 16, CAGRA_DETOUR_ANY_RANK, 2, &interrupt, graph,
					  err, sizeof(err)) == CAGRA_ERR_CANCELED,
		  "pruning stopped: %s", err);
	free(data);
	free(graph);
	free(knn);
}

static void
expect_param_error(const CagraParams *params, int64_t n, const char *what)
{
	char		err[256] = "";
	float		data[4 * 2] = {0};
	int32_t		graph[64];

	CHECK(cagra_params_check(params, n, 2, err, sizeof(err)) == CAGRA_ERR_PARAM &&
		  err[0] != '\0', "params_check should reject %s", what);
	err[0] = '\0';
	if (n <= 4)
		CHECK(cagra_build(data, n, 2, params, graph, NULL, err, sizeof(err)) ==
			  CAGRA_ERR_PARAM && err[0] != '\0', "build should reject %s", what);
}

static void
test_errors(void)
{
	CagraParams good;
	CagraParams p;
	char		err[256];
	int32_t		out[16];
	static const float data[3] = {1, 2, 3};
	static const int32_t bad_knn[2] = {1, 7};

	cagra_params_default(&good, 1); /* I = 3, d = 2 */
	CHECK(cagra_params_check(&good, 4, 2, err, sizeof(err)) == CAGRA_OK,
		  "defaults of m = 1 on 4 rows: %s", err);

	p = good;
	p.graph_degree = 4;
	expect_param_error(&p, 4, "graph_degree > intermediate_graph_degree");
	p = good;
	expect_param_error(&p, 3, "intermediate_graph_degree >= rows");
	p = good;
	p.graph_degree = 0;
	expect_param_error(&p, 4, "graph_degree 0");
	p = good;
	p.intermediate_degree = CAGRA_MAX_DEGREE + 1;
	expect_param_error(&p, 100000, "intermediate_graph_degree too large");
	p = good;
	p.metric = (CagraMetric) 9;
	expect_param_error(&p, 4, "unknown metric");
	p = good;
	p.detour = (CagraDetour) 2;
	expect_param_error(&p, 4, "unknown detour");
	p = good;
	p.pruning = (CagraPruning) 3;
	expect_param_error(&p, 4, "unknown pruning");
	p = good;
	p.n_threads = -1;
	expect_param_error(&p, 4, "negative n_threads");
	p = good;
	p.entry = 4;
	expect_param_error(&p, 4, "entry past the last row");
	expect_param_error(&good, 1, "a single row");
	CHECK(cagra_params_check(&good, 4, 0, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "params_check should reject dimension 0");

	CHECK(cagra_knn_exact(data, 3, 1, CAGRA_METRIC_L2, 3, 1, NULL, out, NULL,
						  err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "knn should reject k >= n");
	CHECK(cagra_brute_force(data, 3, data, 1, 1, CAGRA_METRIC_L2, 4, 1, NULL, out,
							NULL, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "brute force should reject k > n");
	CHECK(cagra_prune(bad_knn, 2, 1, 1, CAGRA_DETOUR_ANY_RANK, 1, NULL, out,
					  err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "prune should reject a node id out of range");
	CHECK(cagra_prune(bad_knn, 2, 1, 2, CAGRA_DETOUR_ANY_RANK, 1, NULL, out,
					  err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "prune should reject d > I");
	CHECK(cagra_prune_distance(data, 2, 1, CAGRA_METRIC_L2, bad_knn, 1, 1, 1,
							   NULL, out, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "prune by distance should reject a node id out of range");
	CHECK(cagra_prune_distance(data, 2, 1, CAGRA_METRIC_L2, bad_knn, 1, 2, 1,
							   NULL, out, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "prune by distance should reject d > I");
	CHECK(cagra_merge_reverse(bad_knn, 2, 1, 1, out, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "merge should reject a node id out of range");
	CHECK(cagra_guarantee_connectivity(out, 2, 1, data, 1, CAGRA_METRIC_L2, 2,
									   NULL, NULL, err, sizeof(err)) == CAGRA_ERR_PARAM,
		  "repair should reject an entry out of range");
	CHECK(cagra_gpu_open("/nonexistent/gnnvec_cuda.so", err, sizeof(err)) == NULL &&
		  strstr(err, "cannot load GPU module") != NULL,
		  "loading a missing GPU module fails with a message: %s", err);
}

/*
 * The pruning's AVX-512 route masks and its scalar ones give the same
 * graph, for both detour definitions, on a real kNN graph (I = 48).
 */
static void
test_prune_simd_agrees(void)
{
	int			dim = 16,
				d = 32;
	int64_t		n = 3000;
	float	   *data = cluster_data(30, 100, dim);
	int32_t    *knn = malloc(n * 48 * sizeof(int32_t));
	int32_t    *fast = malloc(n * d * sizeof(int32_t));
	int32_t    *slow = malloc(n * d * sizeof(int32_t));
	char		err[256];

	/* 37: the SIMD kernels' last chunk of a row is partial */
	for (int I = 37; I <= 48; I += 11)
	{
		CHECK(cagra_knn_exact(data, n, dim, CAGRA_METRIC_L2, I, 2, NULL, knn, NULL,
							  err, sizeof(err)) == CAGRA_OK, "exact: %s", err);
		for (int detour = CAGRA_DETOUR_ANY_RANK; detour <= CAGRA_DETOUR_RANK_BELOW; detour++)
		{
			vec_distance_init(VEC_ISA_SCALAR);
			CHECK(cagra_prune(knn, n, I, d, (CagraDetour) detour, 2, NULL, slow,
							  err, sizeof(err)) == CAGRA_OK, "prune (scalar): %s", err);
			for (VecIsa isa = VEC_ISA_AVX2; isa <= VEC_ISA_AVX512; isa++)
			{
				VecIsa		level = vec_distance_init(isa);

				if (level != isa)
					continue;	/* not on this CPU */
				CHECK(cagra_prune(knn, n, I, d, (CagraDetour) detour, 2, NULL, fast,
								  err, sizeof(err)) == CAGRA_OK, "prune (%s): %s",
					  vec_isa_name(level), err);
				CHECK(rows_equal(fast, slow, n * d),
					  "I %d, detour %d: %s and scalar pruning agree", I, detour,
					  vec_isa_name(level));
			}
		}
	}
	vec_distance_init(VEC_ISA_AVX512);
	free(data);
	free(knn);
	free(fast);
	free(slow);
}

/* The kNN stages and the pruning, with the distance kernels at `isa`. */
/*
 * The probe choice: the fewest probes that reach the target, or where the
 * next window of probes gains too little, or the most allowed.
 */
static void
test_list_choose_probes(void)
{
	double		steep[9] = {0, 0.5, 0.8, 0.9, 0.93, 0.96, 0.97, 0.98, 0.99};
	double		flat[9] = {0, 0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17};
	double		stall[9] = {0, 0.10, 0.20, 0.21, 0.21, 0.21, 0.21, 0.50, 0.70};
	double		jump[9] = {0, 0.10, 0.11, 0.11, 0.11, 0.30, 0.31, 0.31, 0.31};
	double		near[9] = {0, 0.90, 0.93, 0.945, 0.949, 0.951, 0.952, 0.953, 0.954};

	CHECK(cagra_list_choose_probes(steep, 8, 0.95, 0.005) == 5,
		  "steep curve: the first probe count at the target");
	CHECK(cagra_list_choose_probes(steep, 8, 0.999, 0.005) == 8,
		  "steep curve, target never reached: the most allowed");
	CHECK(cagra_list_choose_probes(flat, 8, 0.95, 0.02) == 1,
		  "flat curve: one point a probe is below a gain of two");
	CHECK(cagra_list_choose_probes(flat, 8, 0.95, 0.005) == 8,
		  "flat curve: one point a probe is above a gain of half a point");
	CHECK(cagra_list_choose_probes(stall, 8, 0.95, 0.02) == 2,
		  "a window of flat probes stops the search (%d)",
		  cagra_list_choose_probes(stall, 8, 0.95, 0.02));
	CHECK(cagra_list_choose_probes(near, 8, 0.95, 0.02) == 5,
		  "a flat window that reaches the target: the probes that reach it (%d)",
		  cagra_list_choose_probes(near, 8, 0.95, 0.02));
	CHECK(cagra_list_choose_probes(near, 8, 0.96, 0.02) == 1,
		  "a flat window short of the target: stop (%d)",
		  cagra_list_choose_probes(near, 8, 0.96, 0.02));
	CHECK(cagra_list_choose_probes(jump, 8, 0.95, 0.02) == 5,
		  "flat probes before a steep one within the window do not (%d)",
		  cagra_list_choose_probes(jump, 8, 0.95, 0.02));
}

/*
 * The check: exact rows score 1, and the partitioned stage's recall curve
 * predicts what its search finds: with the probes it chose, the lists hold
 * what the curve said (NN-descent's first check measures the lists before
 * it changes them), and on well-separated clusters few probes suffice.
 */
static void
test_knn_check(void)
{
	int			dim = 12,
				k = 16;
	int64_t		n = 6000;
	float	   *data = close_cluster_data(60, 100, dim);
	int32_t    *exact = malloc(n * k * sizeof(int32_t));
	int32_t    *part = malloc(n * k * sizeof(int32_t));
	CagraKnnCheck check;
	CagraKnnStats st;
	char		err[256];

	CHECK(cagra_knn_exact(data, n, dim, CAGRA_METRIC_L2, k, 2, NULL, exact, NULL,
						  err, sizeof(err)) == CAGRA_OK, "exact: %s", err);
	CHECK(cagra_knn_check_prepare(&check, data, n, dim, CAGRA_METRIC_L2, k, 2,
								  NULL, err, sizeof(err)) == CAGRA_OK &&
		  check.n_rows == CAGRA_KNN_CHECK_ROWS, "check: %s", err);
	CHECK(cagra_knn_check_recall(&check, exact) == 1.0, "the exact graph scores 1");
	memcpy(part, exact, n * k * sizeof(int32_t));
	for (int64_t i = 0; i < n; i++)
		part[i * k] = -1;
	CHECK(fabs(cagra_knn_check_recall(&check, part) - (k - 1.0) / k) < 1e-9,
		  "one neighbour of k missing everywhere: %.4f",
		  cagra_knn_check_recall(&check, part));
	cagra_knn_check_free(&check);

	/* lists of 50 rows on 60 clusters of 100: its own cluster in 2-3 lists */
	CHECK(cagra_knn_partitioned(data, n, dim, CAGRA_METRIC_L2, k, 50, 0, 1, 2, NULL,
								part, NULL, &st, err, sizeof(err)) == CAGRA_OK,
		  "partitioned, probes chosen: %s", err);
	CHECK(st.n_lists == 120 && st.n_probe_recall == CAGRA_LIST_PROBES_MAX + 1 &&
		  st.probes >= 2 && st.probes < 10,
		  "%d probes of %d lists chosen", st.probes, st.n_lists);
	CHECK(st.probe_recall[st.probes] >= CAGRA_LIST_TARGET_RECALL &&
		  st.probe_recall[st.probes - 1] < CAGRA_LIST_TARGET_RECALL,
		  "the fewest probes reaching the target: %.4f at %d, %.4f at one fewer",
		  st.probe_recall[st.probes], st.probes, st.probe_recall[st.probes - 1]);
	CHECK(st.refine.recall_before >= st.probe_recall[st.probes] - 0.001 &&
		  st.refine.recall_before <= st.probe_recall[st.probes] + 0.01 &&
		  st.refine.iterations == 0,
		  "the lists hold what the curve predicted: %.4f, predicted %.4f (%d iterations)",
		  st.refine.recall_before, st.probe_recall[st.probes], st.refine.iterations);
	CHECK(knn_overlap(part, exact, n, k) >= CAGRA_LIST_TARGET_RECALL - 0.02,
		  "all rows: recall %.4f", knn_overlap(part, exact, n, k));

	/*
	 * A fixed count is searched as given, and the curve is still measured.
	 * The lists may hold a little more than predicted: rows of lists too
	 * small for k neighbours get an exact search.
	 */
	CHECK(cagra_knn_partitioned(data, n, dim, CAGRA_METRIC_L2, k, 50, 1, 1, 2, NULL,
								part, NULL, &st, err, sizeof(err)) == CAGRA_OK &&
		  st.probes == 1 &&
		  st.refine.recall_before >= st.probe_recall[1] - 0.001 &&
		  st.refine.recall_before <= st.probe_recall[1] + 0.01,
		  "one probe: %.4f, predicted %.4f", st.refine.recall_before,
		  st.probe_recall[1]);
	free(data);
	free(exact);
	free(part);
}

/*
 * Codes (cagra_code_row): within the limit that keeps dim x limit^2 sums in
 * 32 bits, the largest value at the limit, each code within half a step of
 * its value, an odd dimension's last code zero; a zero row and a row near
 * FLT_MIN come out without overflow.
 */
static void
test_code_rows(void)
{
	int			dims[] = {1, 2, 12, 99, 100, 784, 16000};
	float	   *row = malloc(16000 * sizeof(float));
	int16_t    *codes = malloc(16000 * sizeof(int16_t));

	for (int t = 0; t < (int) (sizeof(dims) / sizeof(dims[0])); t++)
	{
		int			dim = dims[t];
		int64_t		width = CAGRA_CODE_DIM(dim);
		int64_t		limit = cagra_code_limit(dim);
		float		inv;
		bool		near = true;
		int			top = 0;

		CHECK(limit == INT16_MAX ? width * limit * limit <= INT32_MAX :
			  width * limit * limit <= INT32_MAX &&
			  width * (limit + 1) * (limit + 1) > INT32_MAX,
			  "dim %d: limit %lld keeps the sums in 32 bits, and no lower",
			  dim, (long long) limit);
		for (int d = 0; d < dim; d++)
			row[d] = (rand_uniform() - 0.5f) * (d == dim / 2 ? 1e3f : 3.0f);
		codes[width - 1] = 77;
		inv = cagra_code_row(row, dim, codes);
		for (int d = 0; d < dim; d++)
		{
			near &= fabs(codes[d] * (double) inv - row[d]) <= 0.5001 * inv;
			top = abs(codes[d]) > top ? abs(codes[d]) : top;
		}
		CHECK(near && top == limit, "dim %d: codes within half a step, largest %d of %lld",
			  dim, top, (long long) limit);
		CHECK(width == dim || codes[width - 1] == 0, "dim %d: the padding is zero", dim);
	}
	for (int d = 0; d < 12; d++)
		row[d] = 0.0f;
	codes[5] = 9;
	CHECK(cagra_code_row(row, 12, codes) == 0.0f && codes[5] == 0,
		  "a zero row: zero codes and scale");
	row[3] = 2e-38f;
	row[7] = -1e-38f;
	CHECK(cagra_code_row(row, 12, codes) > 0.0f && codes[3] == cagra_code_limit(12) &&
		  codes[0] == 0 && abs(codes[7] * 2 + codes[3]) <= 2,
		  "a row near FLT_MIN: %d %d", codes[3], codes[7]);
	free(row);
	free(codes);
}

/*
 * The code kernels sum integers, so the AVX2 kernel and the plain one give
 * the same values to the bit: under inner product, whose codes come from
 * plain loops (no float length, which the SIMD distance kernels would round
 * differently), the lists' search is the same under both.
 */
static void
test_code_kernels_agree(void)
{
	int			dim = 37,
				k = 16;
	int64_t		n = 2000;
	float	   *data = malloc(n * dim * sizeof(float));
	int32_t    *ids[2];
	float	   *dists[2];
	char		err[256];

	for (int64_t i = 0; i < n * dim; i++)
		data[i] = rand_uniform() - 0.3f;
	for (int v = 0; v < 2; v++)
	{
		ids[v] = malloc(n * k * sizeof(int32_t));
		dists[v] = malloc(n * k * sizeof(float));
		vec_distance_init(v == 0 ? VEC_ISA_SCALAR : VEC_ISA_AVX2);
		CHECK(cagra_knn_partitioned(data, n, dim, CAGRA_METRIC_INNER_PRODUCT, k, 100, 6,
									0, 2, NULL, ids[v], dists[v], NULL, err,
									sizeof(err)) == CAGRA_OK,
			  "partitioned, isa %d: %s", v, err);
	}
	vec_distance_init(VEC_ISA_AVX512);
	CHECK(rows_equal(ids[0], ids[1], n * k) &&
		  memcmp(dists[0], dists[1], n * k * sizeof(float)) == 0,
		  "plain and AVX2 code kernels give the same lists' search");
	for (int v = 0; v < 2; v++)
	{
		free(ids[v]);
		free(dists[v]);
	}
	free(data);
}

/*
 * Tiled products of rows given by pointer: each entry within rounding of
 * the double-precision product, and the same float for a pair wherever it
 * falls in a tile, on either side, and under upper (NN-descent relies on a
 * pair's distance being the same from every call).  Dimensions with and
 * without a partial block of 8, row counts that leave partial tiles.
 */
static void
test_row_products(void)
{
	const int	dims[] = {1, 5, 8, 13, 100, 256};
	const int	na = 7,
				nb = 11;

	for (int isa = 0; isa < 2; isa++)
	{
		vec_distance_init(isa == 0 ? VEC_ISA_SCALAR : VEC_ISA_AVX2);
		for (int t = 0; t < (int) (sizeof(dims) / sizeof(dims[0])); t++)
		{
			int			dim = dims[t];
			float	   *pool = malloc((na + nb) * dim * sizeof(float));
			const float *a[7],
					   *b[11],
					   *swap_a[11],
					   *swap_b[7];
			float		out[7 * 11],
						swapped[11 * 7],
						self[7 * 7];
			int			wrong = 0,
						unequal = 0;

			for (int i = 0; i < (na + nb) * dim; i++)
				pool[i] = rand_uniform() * 3.0f;
			for (int r = 0; r < na; r++)
				a[r] = swap_b[na - 1 - r] = pool + r * dim;
			for (int c = 0; c < nb; c++)
				b[c] = swap_a[nb - 1 - c] = pool + (na + c) * dim;
			for (int diff = 0; diff < 2; diff++)
			{
				cagra_row_products(a, na, b, nb, dim, diff, false, out, nb);
				cagra_row_products(swap_a, nb, swap_b, na, dim, diff, false,
								   swapped, na);
				cagra_row_products(a, na, a, na, dim, diff, true, self, na);
				for (int r = 0; r < na; r++)
					for (int c = 0; c < nb; c++)
					{
						double		ref = diff ? vec_l2_squared_ref(a[r], b[c], dim) :
							vec_inner_product_ref(a[r], b[c], dim);
						float		again;

						wrong += fabs(out[r * nb + c] - ref) > 1e-5 * (9.0 * dim + fabs(ref));
						unequal += memcmp(&out[r * nb + c],
										  &swapped[(nb - 1 - c) * na + na - 1 - r],
										  sizeof(float)) != 0;
						cagra_row_products(&a[r], 1, &b[c], 1, dim, diff, false,
										   &again, 1);
						unequal += memcmp(&out[r * nb + c], &again, sizeof(float)) != 0;
					}
				for (int r = 0; r < na; r++)
					for (int c = r + 1; c < na; c++)
					{
						float		again;

						cagra_row_products(&a[c], 1, &a[r], 1, dim, diff, false,
										   &again, 1);
						unequal += memcmp(&self[r * na + c], &again, sizeof(float)) != 0;
					}
				CHECK(wrong == 0, "isa %d, dim %d, %s: %d products off",
					  isa, dim, diff ? "differences" : "dots", wrong);
				CHECK(unequal == 0,
					  "isa %d, dim %d, %s: %d products differ by place or side",
					  isa, dim, diff ? "differences" : "dots", unequal);
			}
			free(pool);
		}
	}
	vec_distance_init(VEC_ISA_AVX512);
}

static void
test_knn_stages(VecIsa isa)
{
	vec_distance_init(isa);
	test_prune_by_hand();
	test_prune_odd_input();
	test_prune_distance_by_hand();
	test_prune_distance_reference();
	test_knn_exact();
	test_brute_force();
	test_knn_partitioned();
	test_knn_partitioned_inner_product();
	test_knn_refine();
	test_knn_check();
	vec_distance_init(VEC_ISA_AVX512);
}

int
main(void)
{
	vec_distance_init(VEC_ISA_AVX512);
	test_knn_stages(VEC_ISA_AVX512);
	/* the same checks through the AVX2 and scalar scan kernels */
	test_knn_stages(VEC_ISA_AVX2);
	test_knn_stages(VEC_ISA_SCALAR);
	test_prune_simd_agrees();
	test_code_rows();
	test_code_kernels_agree();
	test_row_products();
	test_list_choose_probes();
	test_merge_reverse_by_hand();
	test_merge_reverse_protected();
	test_connectivity_free_slots();
	test_connectivity_full_rows();
	test_out_of_range_ids();
	test_connectivity_build();
	test_build_recall();
	test_index_level0();
	test_index_level0_topics();
	test_index_level0_inner_product();
	test_interrupt();
	test_errors();
	/* last: its random rows would change every later test's data */
	test_knn_refine_searched();
	return unit_report("cagra");
}
