/*
 * cagra_select.c
 *		Distance-based pruning: stages 2 and 3 of a CAGRA build by the
 *		neighbour-selection heuristic of HNSW and NSG instead of detour
 *		counts.
 *
 * The heuristic (Malkov & Yashunin, "Efficient and robust approximate
 * nearest neighbor search using Hierarchical Navigable Small World graphs",
 * TPAMI 2018, Alg. 4; the same rule is NSG's edge selection, Fu et al.,
 * "Fast Approximate Nearest Neighbor Search With The Navigating
 * Spreading-out Graph", VLDB 2019): candidates are taken nearest first,
 * and one is kept unless it is nearer to a node already kept than to the
 * row's own node; the discarded ones fill the row to d, nearest first
 * (HNSW's keepPrunedConnections).  Two passes:
 *
 *	1. each kNN list (I candidates) is selected down to d;
 *	2. each node's final list is selected again, among its pass-1 list and
 *	   the nodes whose pass-1 lists hold it (at most d of them, in order of
 *	   the edge's place in its source's list, then of source id), as HNSW
 *	   re-selects a neighbour's list among the list it has and the new
 *	   element that links to it.  (Its whole kNN list instead of its pass-1
 *	   list gave the same graphs on the topics, random rows, tf-idf and
 *	   Fashion-MNIST, for 5-25% more time.)
 *
 * Detour counts work on ranks: an edge A -> B is detourable when a closer
 * neighbour of A lists B.  Where the kNN lists of neighbours share few
 * members (data of high intrinsic dimension without cluster structure),
 * counts are low and say little, and among more candidates they favour far
 * edges; the distances themselves still say which directions an edge
 * covers.  Each pass costs up to (candidates x d) distances per node, so
 * the build measures first whether the data are of that kind
 * (cagra_prune_survey) and uses this only then.
 *
 * Each row depends only on the kNN graph or, in pass 2, on the pass-1
 * graph, whose reverse lists are gathered serially: the result does not
 * depend on the number of threads, nor on the order the rows are taken in.
 *
 * At a million rows the stage waits on memory for the candidates' vectors
 * more than it computes, so rows are taken in breadth-first order of the
 * kNN graph (cagra_locality_order), not by id: consecutive rows share most
 * of their candidates and find them in the cache.  Pass 2 skips the test
 * between two candidates that pass 1 both kept for the node: pass 1 found
 * the later one not occluded by the earlier, with the same distances.
 * (Keeping pass 1's distances for pass 2 saved nothing measurable: the
 * heuristic reads the candidates' vectors anyway.)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"
#include "vector/distance.h"

typedef struct SelectCandidate
{
	float		dist;
	int32_t		id;
	bool		kept_before;	/* pass 2: pass 1 kept it for this node */
} SelectCandidate;

typedef struct SelectJob
{
	const float *data;
	int			dim;
	CagraMetric metric;
	const float *rnorm;			/* cosine: 1 / |row|, 0 for a zero row */
	const int32_t *order;		/* the rows in the order they are taken */
	const int32_t *lists;		/* pass 1: the kNN graph; pass 2: pass 1's */
	int			width;			/* their degree: I, then d */
	int			d;
	/* pass 2: how many lead each pass-1 row kept, its reverse lists */
	const uint16_t *list_kept;	/* n */
	const int32_t *rev;			/* n x d */
	const int  *n_rev;
	int32_t    *out;			/* n x d */
	uint16_t   *out_kept;		/* pass 1: how many lead out kept (n) */
	/* per-thread scratch: I + d candidates, flags and picks (I >= d) */
	SelectCandidate **cands;
	unsigned char **kept;
	int		  **picked;
	const float ***rows;		/* I + d + 1 row pointers (select_measure) */
	float	  **products;		/* I + d */
} SelectJob;

static int
select_candidate_cmp(const void *a, const void *b)
{
	const SelectCandidate *x = a;
	const SelectCandidate *y = b;

	if (x->dist != y->dist)
		return x->dist < y->dist ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/*
 * The distance between rows a and b from p, their dot product (under L2
 * their squared difference): under cosine from the reciprocal lengths.
 */
static inline float
select_product_distance(const SelectJob *job, int64_t a, int64_t b, float p)
{
	if (job->rnorm != NULL)
		return 1.0f - p * job->rnorm[a] * job->rnorm[b];
	return job->metric == CAGRA_METRIC_L2 ? p : -p;
}

/*
 * The distance between rows a and b; under cosine from the reciprocal
 * lengths, one dot product instead of cagra_distance's three.
 */
static inline float
select_distance(const SelectJob *job, int64_t a, int64_t b)
{
	const float *x = job->data + a * job->dim;
	const float *y = job->data + b * job->dim;

	if (job->rnorm != NULL)
		return select_product_distance(job, a, b,
									   vec_inner_product(x, y, job->dim));
	return cagra_distance(job->metric, x, y, job->dim);
}

/*
 * Add id to cands unless it is no edge, the node itself or there already;
 * its distance comes from select_measure.
 */
static void
select_add(int64_t self, int32_t id, bool kept_before, SelectCandidate *cands,
		   int *n_cands)
{
	if (id < 0 || id == self)
		return;
	for (int i = 0; i < *n_cands; i++)
		if (cands[i].id == id)
			return;
	cands[*n_cands].id = id;
	cands[*n_cands].kept_before = kept_before;
	(*n_cands)++;
}

/*
 * The node's distance to each candidate, from one call of tiled products
 * (cagra_row_products) instead of one pair at a time: loading the
 * candidates' rows is most of this stage's wait, and the tiles load four
 * at once.  rows and products have room for n_cands + 1.
 */
static void
select_measure(const SelectJob *job, int64_t self, SelectCandidate *cands,
			   int n_cands, const float **rows, float *products)
{
	/* L1 has no product; the survey measures cosine without lengths */
	if (job->metric == CAGRA_METRIC_L1 ||
		(job->metric == CAGRA_METRIC_COSINE && job->rnorm == NULL))
	{
		for (int i = 0; i < n_cands; i++)
			cands[i].dist = select_distance(job, self, cands[i].id);
		return;
	}
	rows[0] = job->data + self * job->dim;
	for (int i = 0; i < n_cands; i++)
		rows[i + 1] = job->data + (int64_t) cands[i].id * job->dim;
	cagra_row_products(rows, 1, rows + 1, n_cands, job->dim,
					   job->metric == CAGRA_METRIC_L2, false, products,
					   n_cands);
	for (int i = 0; i < n_cands; i++)
		cands[i].dist = select_product_distance(job, self, cands[i].id,
												products[i]);
}

/*
 * The heuristic over cands (sorted by (distance, id)) into out (d slots):
 * the kept candidates, nearest first, then the discarded ones, nearest
 * first, then -1.  Returns how many were kept.
 */
static int
select_row(const SelectJob *job, const SelectCandidate *cands, int n_cands,
		   unsigned char *kept, int *picked, int32_t *out)
{
	int			d = job->d;
	int			len = 0;
	int			n_kept;

	memset(kept, 0, n_cands);
	for (int i = 0; i < n_cands && len < d; i++)
	{
		const SelectCandidate *c = &cands[i];
		bool		occluded = false;

		for (int j = 0; j < len && !occluded; j++)
		{
			const SelectCandidate *k = &cands[picked[j]];

			/* pass 1 tested this pair with the same distances */
			if (c->kept_before && k->kept_before)
				continue;
			occluded = select_distance(job, c->id, k->id) < c->dist;
		}
		if (!occluded)
		{
			kept[i] = 1;
			picked[len++] = i;
		}
	}
	n_kept = len;
	for (int i = 0; i < n_cands && len < d; i++)
		if (!kept[i])
			picked[len++] = i;
	for (int j = 0; j < d; j++)
		out[j] = j < len ? cands[picked[j]].id : -1;
	return n_kept;
}

/*
 * Start loading the vectors of a node's list: taken next, they are read
 * while this node is selected (a seventh less time at 1M x 128).
 */
static void
select_prefetch(const SelectJob *job, int64_t node)
{
	const int32_t *list = job->lists + node * job->width;

	for (int r = 0; r < job->width; r++)
		if (list[r] >= 0)
			vec_prefetch_all(job->data + (int64_t) list[r] * job->dim, job->dim);
}

static int
select_range(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const SelectJob *job = arg;
	SelectCandidate *cands = job->cands[thread_no];
	unsigned char *kept = job->kept[thread_no];
	int		   *picked = job->picked[thread_no];
	int			d = job->d;

	for (int64_t pos = begin; pos < end; pos++)
	{
		int64_t		node = job->order[pos];
		const int32_t *list = job->lists + node * job->width;
		int			n_cands = 0;
		int			n_kept;

		if (pos + 1 < end)
			select_prefetch(job, job->order[pos + 1]);
		for (int r = 0; r < job->width; r++)
			select_add(node, list[r],
					   job->list_kept != NULL && r < job->list_kept[node],
					   cands, &n_cands);
		if (job->rev != NULL)
			for (int r = 0; r < job->n_rev[node]; r++)
				select_add(node, job->rev[node * d + r], false, cands,
						   &n_cands);
		select_measure(job, node, cands, n_cands, job->rows[thread_no],
					   job->products[thread_no]);
		qsort(cands, n_cands, sizeof(SelectCandidate), select_candidate_cmp);
		n_kept = select_row(job, cands, n_cands, kept, picked,
							job->out + node * d);
		if (job->out_kept != NULL)
			job->out_kept[node] = (uint16_t) n_kept;
	}
	return 0;
}

CagraStatus
cagra_prune_distance(const float *data, int64_t n, int dim,
					 CagraMetric metric, const int32_t *knn, int I, int d,
					 int n_threads, const CagraInterrupt *interrupt,
					 int32_t *graph, char *errbuf, size_t errlen)
{
	SelectJob	job = {0};
	int32_t    *pruned = NULL;
	uint16_t   *pruned_kept = NULL;
	int32_t    *order = NULL;
	int32_t    *rev = NULL;
	int		   *n_rev = NULL;
	float	   *rnorm = NULL;
	bool		ok;
	int			rc = 0;

	if (n < 2 || n > INT32_MAX || dim < 1 || I < 1 || d < 1 || d > I ||
		(unsigned) metric > CAGRA_METRIC_L1 || n_threads < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "cannot prune %lld rows of degree %d to degree %d by distance",
						   (long long) n, I, d);
	if (cagra_graph_check(knn, n, I, "kNN graph", errbuf, errlen) != CAGRA_OK)
		return CAGRA_ERR_PARAM;

	cagra_kernels_ready();
	n_threads = cagra_thread_count(n_threads);
	job.data = data;
	job.dim = dim;
	job.metric = metric;
	job.d = d;
	pruned = malloc((size_t) n * d * sizeof(int32_t));
	pruned_kept = malloc((size_t) n * sizeof(uint16_t));
	order = malloc((size_t) n * sizeof(int32_t));
	rev = malloc((size_t) n * d * sizeof(int32_t));
	n_rev = malloc((size_t) n * sizeof(int));
	job.cands = calloc(n_threads, sizeof(SelectCandidate *));
	job.kept = calloc(n_threads, sizeof(unsigned char *));
	job.picked = calloc(n_threads, sizeof(int *));
	job.rows = calloc(n_threads, sizeof(const float **));
	job.products = calloc(n_threads, sizeof(float *));
	if (metric == CAGRA_METRIC_COSINE)
	{
		rnorm = malloc((size_t) n * sizeof(float));
		for (int64_t i = 0; rnorm != NULL && i < n; i++)
		{
			const float *x = data + i * dim;
			float		norm = sqrtf(vec_inner_product(x, x, dim));

			rnorm[i] = norm > 0 ? 1.0f / norm : 0.0f;
		}
		job.rnorm = rnorm;
	}
	ok = pruned && pruned_kept && order && rev &&
		n_rev && job.cands && job.kept && job.picked && job.rows &&
		job.products &&
		(rnorm != NULL || metric != CAGRA_METRIC_COSINE);
	for (int t = 0; ok && t < n_threads; t++)
	{
		job.cands[t] = malloc((I + d) * sizeof(SelectCandidate));
		job.kept[t] = malloc(I + d);
		job.picked[t] = malloc(d * sizeof(int));
		job.rows[t] = malloc((I + d + 1) * sizeof(const float *));
		job.products[t] = malloc((I + d) * sizeof(float));
		ok = job.cands[t] != NULL && job.kept[t] != NULL &&
			job.picked[t] != NULL && job.rows[t] != NULL &&
			job.products[t] != NULL;
	}

	ok = ok && cagra_locality_order(knn, n, I, order);
	if (ok)
	{
		job.order = order;
		/* pass 1: each kNN list alone */
		job.lists = knn;
		job.width = I;
		job.out = pruned;
		job.out_kept = pruned_kept;
		rc = cagra_parallel_for(n_threads, n, 256, select_range, &job,
								interrupt);
	}
	if (ok && rc == 0)
	{
		/* pass 2: the pass-1 list and the pass-1 edges into the node */
		cagra_reverse_lists(pruned, n, d, rev, n_rev);
		job.lists = pruned;
		job.width = d;
		job.list_kept = pruned_kept;
		job.rev = rev;
		job.n_rev = n_rev;
		job.out = graph;
		job.out_kept = NULL;
		rc = cagra_parallel_for(n_threads, n, 256, select_range, &job,
								interrupt);
	}

	for (int t = 0; t < n_threads && job.cands && job.kept && job.picked &&
		 job.rows && job.products; t++)
	{
		free(job.cands[t]);
		free(job.kept[t]);
		free(job.picked[t]);
		free(job.rows[t]);
		free(job.products[t]);
	}
	free(job.cands);
	free(job.kept);
	free(job.picked);
	free(job.rows);
	free(job.products);
	free(pruned);
	free(pruned_kept);
	free(order);
	free(rev);
	free(n_rev);
	free(rnorm);
	if (!ok)
		return cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
						   "out of memory for pruning %lld rows by distance",
						   (long long) n);
	if (rc == CAGRA_ERR_CANCELED)
		return cagra_error(CAGRA_ERR_CANCELED, errbuf, errlen,
						   "pruning canceled");
	return CAGRA_OK;
}

/* ---------------------------------------------------------------------- */

/*
 * The survey's rows: this many, evenly spaced.  Per row, the detour share
 * (what cagra_prune_graph decides by) is counted over all pairs of its
 * list, O(I^3) id comparisons; what the heuristic keeps and the local
 * intrinsic dimension are diagnostics for the driver.
 */
#define SURVEY_ROWS 256

void
cagra_prune_survey(const float *data, int64_t n, int dim, CagraMetric metric,
				   const int32_t *knn, int I, CagraPruneSurvey *survey)
{
	SelectJob	job = {0};
	SelectCandidate cands[CAGRA_MAX_DEGREE];
	unsigned char kept[CAGRA_MAX_DEGREE];
	int			picked[CAGRA_MAX_DEGREE];
	int32_t		out[CAGRA_MAX_DEGREE];
	const float *rows[CAGRA_MAX_DEGREE + 1];
	float		products[CAGRA_MAX_DEGREE];
	int64_t		n_rows = n < SURVEY_ROWS ? n : SURVEY_ROWS;
	double		pairs = 0,
				detours = 0,
				n_kept = 0,
				lid_sum = 0;
	int64_t		lid_rows = 0;

	cagra_kernels_ready();
	job.data = data;
	job.dim = dim;
	job.metric = metric;
	job.lists = knn;
	job.width = I;
	job.d = I;					/* no cap: count what the heuristic keeps */
	for (int64_t s = 0; s < n_rows; s++)
	{
		int64_t		node = s * n / n_rows;
		const int32_t *row = knn + node * I;
		int			n_cands = 0;
		double		log_sum = 0;
		int			n_log = 0;

		for (int r = 0; r < I; r++)
			select_add(node, row[r], false, cands, &n_cands);
		select_measure(&job, node, cands, n_cands, rows, products);
		qsort(cands, n_cands, sizeof(SelectCandidate), select_candidate_cmp);
		select_row(&job, cands, n_cands, kept, picked, out);
		for (int i = 0; i < n_cands; i++)
			n_kept += kept[i];
		/* closer neighbour a lists farther neighbour b */
		for (int a = 0; a < n_cands; a++)
		{
			const int32_t *via = knn + (int64_t) cands[a].id * I;

			for (int b = a + 1; b < n_cands; b++)
			{
				pairs++;
				for (int r = 0; r < I; r++)
					if (via[r] == cands[b].id)
					{
						detours++;
						break;
					}
			}
		}
		/*
		 * the local intrinsic dimension by maximum likelihood (Levina &
		 * Bickel, NIPS 2004) over the row's list
		 */
		if (metric != CAGRA_METRIC_INNER_PRODUCT && n_cands > 1)
		{
			/* L2 and cosine distances are squares of lengths (chords) */
			bool		squared = metric != CAGRA_METRIC_L1;
			double		far = squared ? sqrt(cands[n_cands - 1].dist) :
				cands[n_cands - 1].dist;

			for (int i = 0; i < n_cands - 1; i++)
			{
				double		near = squared ? sqrt(cands[i].dist) :
					cands[i].dist;

				if (near > 0 && far > near)
				{
					log_sum += log(far / near);
					n_log++;
				}
			}
			if (log_sum > 0)
			{
				lid_sum += n_log / log_sum;
				lid_rows++;
			}
		}
	}
	survey->rows = n_rows;
	survey->detour_share = pairs > 0 ? detours / pairs : 0;
	survey->heuristic_kept = n_rows > 0 ? n_kept / n_rows : 0;
	survey->lid = lid_rows > 0 ? lid_sum / lid_rows : -1;
}

/* Stages 2 and 3 by detour counts: cagra_prune, then cagra_merge_reverse. */
static CagraStatus
prune_by_detours(const int32_t *knn, int64_t n, const CagraParams *params,
				 int32_t *graph, CagraPruneStats *stats,
				 char *errbuf, size_t errlen)
{
	int			d = params->graph_degree;
	int32_t    *pruned = malloc((size_t) n * d * sizeof(int32_t));
	CagraStatus status;
	double		t = cagra_now();

	if (pruned == NULL)
		return cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
						   "out of memory for pruning %lld rows", (long long) n);
	status = cagra_prune(knn, n, params->intermediate_degree, d,
						 params->detour, params->n_threads, &params->interrupt,
						 pruned, errbuf, errlen);
	stats->detour_seconds = cagra_now() - t;
	if (status == CAGRA_OK)
	{
		t = cagra_now();
		status = cagra_merge_reverse(pruned, n, d, params->n_threads, graph,
									 errbuf, errlen);
		stats->merge_seconds = cagra_now() - t;
	}
	free(pruned);
	return status;
}

CagraStatus
cagra_prune_graph(const float *data, int64_t n, int dim,
				  const CagraParams *params, const int32_t *knn,
				  int32_t *graph, CagraPruneStats *stats,
				  char *errbuf, size_t errlen)
{
	CagraStatus status;
	double		t = cagra_now();

	memset(stats, 0, sizeof(CagraPruneStats));
	stats->pruning = params->pruning;
	if (params->pruning == CAGRA_PRUNE_AUTO)
	{
		cagra_prune_survey(data, n, dim, params->metric, knn,
						   params->intermediate_degree, &stats->survey);
		stats->pruning = params->metric != CAGRA_METRIC_INNER_PRODUCT &&
			stats->survey.detour_share < CAGRA_PRUNE_DISTANCE_SHARE ?
			CAGRA_PRUNE_DISTANCE : CAGRA_PRUNE_DETOUR;
		stats->survey_seconds = cagra_now() - t;
	}
	if (stats->pruning == CAGRA_PRUNE_DETOUR)
		return prune_by_detours(knn, n, params, graph, stats, errbuf, errlen);

	t = cagra_now();
	status = cagra_prune_distance(data, n, dim, params->metric, knn,
								  params->intermediate_degree,
								  params->graph_degree, params->n_threads,
								  &params->interrupt, graph, errbuf, errlen);
	stats->distance_seconds = cagra_now() - t;
	return status;
}
