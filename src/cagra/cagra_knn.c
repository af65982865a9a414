/*
 * cagra_knn.c
 *		Stage 1 of CAGRA (Ootomo et al., ICDE 2024): the exact kNN graph,
 *		and the brute-force search it is built on.
 *
 * Queries go in blocks of QUERY_BLOCK rows, one block per task of the
 * thread pool.  A block meets the base rows BASE_BLOCK at a time: one
 * cblas_sgemm fills a tile with -2 x.y (L2) or -x.y (inner product, cosine
 * on normalised copies), and each tile row is scanned against the row's
 * pool of candidates.  For L2 the scan adds |y|^2; |x|^2 is the same along
 * a row and does not change its order.  L1 has no GEMM form, so its tile is
 * filled by the distance kernel directly.
 *
 * The tile value x.y comes out of a float GEMM whose rounding grows with
 * |x|^2 + |y|^2, while near neighbours in clustered data are much closer
 * than that.  For L2, which does not change under translation, the GEMM
 * works on copies centred on the base's mean, so that |x| is the spread of
 * the data and not its offset from the origin.  Beyond that, the pool
 * keeps cagra_knn_candidates() entries, a little more than k, and their
 * distances are then recomputed directly by the distance kernels and
 * sorted by (distance, id).  That makes the result the exact kNN
 * under the same distance the search uses, ties broken by id.
 *
 * OpenBLAS is told to use one thread while this runs: the parallelism is
 * ours, one GEMM per task, and OpenBLAS threads would oversubscribe the
 * cores.  The previous setting is restored before returning.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define KNN_HAVE_X86
#include <immintrin.h>
#endif

#include "cagra/cagra.h"
#include "vector/distance.h"

#define QUERY_BLOCK 128
#define BASE_BLOCK 2048
#define SCAN_CHUNK 256			/* tile values filtered at once */
#define POOL_FACTOR 4			/* a pool holds this many times cap */

/* Positions c in [0, len) with row[c] + norms[c] <= bound (norms may be NULL). */
typedef int (*KnnFilterFn) (const float *row, const float *norms, int len,
							float bound, int32_t *hits);

typedef struct KnnCandidate
{
	float		dist;
	int32_t		id;
} KnnCandidate;

typedef struct KnnJob
{
	const float *base;			/* rows to find, as given */
	const float *queries;		/* rows to find them for, as given */
	const float *gemm_base;		/* what the GEMM sees (normalised for cosine) */
	const float *gemm_queries;
	const float *base_norms;	/* |y|^2 for L2, else NULL */
	int64_t		n;
	int64_t		nq;
	int			dim;
	CagraMetric metric;
	int			k;
	int			n_candidates;
	bool		exclude_self;	/* queries are base: skip row i in row i */
	KnnFilterFn filter;
	int32_t    *ids;
	float	   *dists;
	/* per-thread scratch */
	float	  **tiles;			/* QUERY_BLOCK x BASE_BLOCK */
	KnnCandidate **pools;		/* QUERY_BLOCK x POOL_FACTOR n_candidates */
} KnnJob;

int
cagra_knn_candidates(int k, int64_t n)
{
	int			slack = k / 4 > 8 ? k / 4 : 8;

	return (int64_t) k + slack < n ? k + slack : (int) n;
}

/* Candidate order: by distance, then id, so that results are reproducible. */
static inline bool
candidate_less(float da, int32_t ia, float db, int32_t ib)
{
	return da < db || (da == db && ia < ib);
}

static int
candidate_cmp(const void *a, const void *b)
{
	const KnnCandidate *ca = a;
	const KnnCandidate *cb = b;

	if (candidate_less(ca->dist, ca->id, cb->dist, cb->id))
		return -1;
	if (candidate_less(cb->dist, cb->id, ca->dist, ca->id))
		return 1;
	return 0;
}

/*
 * A row's candidates: values are appended while they beat the bound, and
 * when the pool is full (POOL_FACTOR cap entries) the best cap are selected
 * and the worst of them becomes the bound.  Appending is cheaper than
 * keeping a heap, and a selection (linear time) happens once per
 * (POOL_FACTOR - 1) cap accepted values.
 */
typedef struct KnnPool
{
	KnnCandidate *items;
	int			count;
	float		bound_dist;		/* INFINITY until the first selection */
	int32_t		bound_id;
} KnnPool;

/* Rearrange items so that items[k] has rank k (Wirth's selection). */
static void
candidates_select(KnnCandidate *items, int n, int k)
{
	int			lo = 0,
				hi = n - 1;

	while (lo < hi)
	{
		KnnCandidate pivot = items[k];
		int			i = lo,
					j = hi;

		do
		{
			while (candidate_less(items[i].dist, items[i].id, pivot.dist, pivot.id))
				i++;
			while (candidate_less(pivot.dist, pivot.id, items[j].dist, items[j].id))
				j--;
			if (i <= j)
			{
				KnnCandidate tmp = items[i];

				items[i] = items[j];
				items[j] = tmp;
				i++;
				j--;
			}
		} while (i <= j);
		if (j < k)
			lo = i;
		if (k < i)
			hi = j;
	}
}

/* Keep the best cap candidates; the worst of them bounds what comes next. */
static void
pool_shrink(KnnPool *pool, int cap)
{
	candidates_select(pool->items, pool->count, cap - 1);
	pool->count = cap;
	pool->bound_dist = pool->items[cap - 1].dist;
	pool->bound_id = pool->items[cap - 1].id;
}

/* Fill tile (rows x cols) with values ordered like the distances. */
static void
knn_fill_tile(const KnnJob *job, int64_t q0, int rows, int64_t b0, int cols,
			  float *tile)
{
	int			dim = job->dim;

	if (job->metric == CAGRA_METRIC_L1)
	{
		for (int r = 0; r < rows; r++)
			for (int c = 0; c < cols; c++)
				tile[(int64_t) r * BASE_BLOCK + c] =
					vec_l1_distance(job->queries + (q0 + r) * dim,
									job->base + (b0 + c) * dim, dim);
		return;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, dim,
				job->metric == CAGRA_METRIC_L2 ? -2.0f : -1.0f,
				job->gemm_queries + q0 * dim, dim,
				job->gemm_base + b0 * dim, dim,
				0.0f, tile, BASE_BLOCK);
}

static int
knn_filter_scalar(const float *row, const float *norms, int len, float bound,
				  int32_t *hits)
{
	int			n = 0;

	/* branch-free: the store is harmless when the value does not count */
	for (int c = 0; c < len; c++)
	{
		hits[n] = c;
		n += row[c] + (norms ? norms[c] : 0.0f) <= bound;
	}
	return n;
}

#ifdef KNN_HAVE_X86
__attribute__((target("avx512f")))
static int
knn_filter_avx512(const float *row, const float *norms, int len, float bound,
				  int32_t *hits)
{
	__m512		limit = _mm512_set1_ps(bound);
	int			n = 0;
	int			c = 0;

	for (; c + 16 <= len; c += 16)
	{
		__m512		v = _mm512_loadu_ps(row + c);
		__mmask16	mask;

		if (norms)
			v = _mm512_add_ps(v, _mm512_loadu_ps(norms + c));
		mask = _mm512_cmp_ps_mask(v, limit, _CMP_LE_OQ);
		while (mask)
		{
			hits[n++] = c + __builtin_ctz(mask);
			mask &= mask - 1;
		}
	}
	for (; c < len; c++)
		if (row[c] + (norms ? norms[c] : 0.0f) <= bound)
			hits[n++] = c;
	return n;
}
#endif

static KnnFilterFn
knn_choose_filter(void)
{
#ifdef KNN_HAVE_X86
	if (__builtin_cpu_supports("avx512f"))
		return knn_filter_avx512;
#endif
	return knn_filter_scalar;
}

/*
 * Offer one tile row to the row's pool.  Nearly every value loses against
 * the bound, so a chunk of values is first filtered against it (16 at a
 * time with AVX-512); the few that pass are checked again against the bound
 * as it tightens, and appended.
 */
static void
knn_scan_row(const KnnJob *job, const float *tile_row, int64_t b0, int cols,
			 int64_t self, KnnPool *pool)
{
	const float *norms = job->base_norms ? job->base_norms + b0 : NULL;
	int			cap = job->n_candidates;
	int32_t		hits[SCAN_CHUNK];

	for (int c0 = 0; c0 < cols; c0 += SCAN_CHUNK)
	{
		int			len = cols - c0 < SCAN_CHUNK ? cols - c0 : SCAN_CHUNK;
		int			n_hits = job->filter(tile_row + c0, norms ? norms + c0 : NULL,
										 len, pool->bound_dist, hits);

		for (int h = 0; h < n_hits; h++)
		{
			int			c = c0 + hits[h];
			float		v = tile_row[c] + (norms ? norms[c] : 0.0f);
			int32_t		id = (int32_t) (b0 + c);

			if (id == self ||
				!candidate_less(v, id, pool->bound_dist, pool->bound_id))
				continue;
			pool->items[pool->count].dist = v;
			pool->items[pool->count].id = id;
			if (++pool->count == POOL_FACTOR * cap)
				pool_shrink(pool, cap);
		}
	}
}

/* Recompute the candidates' distances directly and keep the best k. */
static void
knn_finish_row(const KnnJob *job, int64_t q, KnnPool *pool)
{
	const float *query = job->queries + q * job->dim;
	int			k = job->k;
	KnnCandidate *cand = pool->items;
	int			size;

	if (pool->count > job->n_candidates)
		pool_shrink(pool, job->n_candidates);
	size = pool->count;

	for (int i = 0; i < size; i++)
		cand[i].dist = cagra_distance(job->metric, query,
									  job->base + (int64_t) cand[i].id * job->dim,
									  job->dim);
	qsort(cand, size, sizeof(KnnCandidate), candidate_cmp);
	for (int j = 0; j < k; j++)
	{
		job->ids[q * k + j] = j < size ? cand[j].id : -1;
		if (job->dists)
			job->dists[q * k + j] = j < size ? cand[j].dist : INFINITY;
	}
}

static int
knn_query_block(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const KnnJob *job = arg;
	float	   *tile = job->tiles[thread_no];
	int			rows = (int) (end - begin);
	KnnPool		pools[QUERY_BLOCK];

	for (int r = 0; r < rows; r++)
	{
		pools[r].items = job->pools[thread_no] +
			(int64_t) r * POOL_FACTOR * job->n_candidates;
		pools[r].count = 0;
		pools[r].bound_dist = INFINITY;
		pools[r].bound_id = INT32_MAX;
	}

	for (int64_t b0 = 0; b0 < job->n; b0 += BASE_BLOCK)
	{
		int			cols = (int) (job->n - b0 < BASE_BLOCK ? job->n - b0 : BASE_BLOCK);

		knn_fill_tile(job, begin, rows, b0, cols, tile);
		for (int r = 0; r < rows; r++)
			knn_scan_row(job, tile + (int64_t) r * BASE_BLOCK, b0, cols,
						 job->exclude_self ? begin + r : -1, &pools[r]);
	}
	for (int r = 0; r < rows; r++)
		knn_finish_row(job, begin + r, &pools[r]);
	return 0;
}

/* A unit-length copy of rows (zero rows stay zero), or NULL. */
static float *
knn_normalised_copy(const float *rows, int64_t n, int dim)
{
	float	   *copy = malloc((size_t) n * dim * sizeof(float));

	if (copy == NULL)
		return NULL;
	for (int64_t i = 0; i < n; i++)
	{
		const float *src = rows + i * dim;
		float	   *dst = copy + i * dim;
		float		norm = sqrtf(vec_inner_product(src, src, dim));
		float		scale = norm > 0.0f ? 1.0f / norm : 0.0f;

		for (int j = 0; j < dim; j++)
			dst[j] = src[j] * scale;
	}
	return copy;
}

/* rows - centre, or NULL. */
static float *
knn_centred_copy(const float *rows, int64_t n, int dim, const float *centre)
{
	float	   *copy = malloc((size_t) n * dim * sizeof(float));

	if (copy == NULL)
		return NULL;
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < dim; j++)
			copy[i * dim + j] = rows[i * dim + j] - centre[j];
	return copy;
}

static float *
knn_mean(const float *rows, int64_t n, int dim)
{
	double	   *sum = calloc(dim, sizeof(double));
	float	   *mean = malloc(dim * sizeof(float));

	if (sum == NULL || mean == NULL)
	{
		free(sum);
		free(mean);
		return NULL;
	}
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < dim; j++)
			sum[j] += rows[i * dim + j];
	for (int j = 0; j < dim; j++)
		mean[j] = (float) (sum[j] / (double) n);
	free(sum);
	return mean;
}

/*
 * The copies the GEMM works on: centred for L2, normalised for cosine,
 * none for inner product and L1.  False when out of memory.
 */
static bool
knn_gemm_inputs(KnnJob *job, float **gemm_base, float **gemm_queries)
{
	float	   *mean = NULL;

	*gemm_base = *gemm_queries = NULL;
	if (job->metric == CAGRA_METRIC_COSINE)
	{
		*gemm_base = knn_normalised_copy(job->base, job->n, job->dim);
		*gemm_queries = job->exclude_self ? *gemm_base :
			knn_normalised_copy(job->queries, job->nq, job->dim);
	}
	else if (job->metric == CAGRA_METRIC_L2)
	{
		mean = knn_mean(job->base, job->n, job->dim);
		if (mean == NULL)
			return false;
		*gemm_base = knn_centred_copy(job->base, job->n, job->dim, mean);
		*gemm_queries = job->exclude_self ? *gemm_base :
			knn_centred_copy(job->queries, job->nq, job->dim, mean);
		free(mean);
	}
	else
	{
		job->gemm_base = job->base;
		job->gemm_queries = job->queries;
		return true;
	}
	job->gemm_base = *gemm_base;
	job->gemm_queries = *gemm_queries;
	return *gemm_base != NULL && *gemm_queries != NULL;
}

static float *
knn_squared_norms(const float *rows, int64_t n, int dim)
{
	float	   *norms = malloc((size_t) n * sizeof(float));

	if (norms == NULL)
		return NULL;
	for (int64_t i = 0; i < n; i++)
		norms[i] = vec_inner_product(rows + i * dim, rows + i * dim, dim);
	return norms;
}

/* Per-thread tiles and pools; false when out of memory. */
static bool
knn_alloc_scratch(KnnJob *job, int n_threads)
{
	job->tiles = calloc(n_threads, sizeof(float *));
	job->pools = calloc(n_threads, sizeof(KnnCandidate *));
	if (job->tiles == NULL || job->pools == NULL)
		return false;
	for (int t = 0; t < n_threads; t++)
	{
		job->tiles[t] = malloc((size_t) QUERY_BLOCK * BASE_BLOCK * sizeof(float));
		job->pools[t] = malloc((size_t) QUERY_BLOCK * POOL_FACTOR * job->n_candidates *
							   sizeof(KnnCandidate));
		if (job->tiles[t] == NULL || job->pools[t] == NULL)
			return false;
	}
	return true;
}

static void
knn_free_scratch(KnnJob *job, int n_threads)
{
	for (int t = 0; t < n_threads; t++)
	{
		if (job->tiles)
			free(job->tiles[t]);
		if (job->pools)
			free(job->pools[t]);
	}
	free(job->tiles);
	free(job->pools);
}

/*
 * Everything but argument checks: shared by the entry points.  n_threads 0
 * means the caller is itself a worker thread: run serially and leave
 * OpenBLAS's (process-wide) thread setting and the kernels alone.
 */
static CagraStatus
knn_run(KnnJob *job, int n_threads, const CagraInterrupt *interrupt,
		char *errbuf, size_t errlen)
{
	CagraStatus status = CAGRA_OK;
	float	   *gemm_base;
	float	   *gemm_queries;
	float	   *base_norms = NULL;
	bool		in_worker = n_threads == 0;
	int			blas_threads = in_worker ? 1 : openblas_get_num_threads();

	if (in_worker)
		n_threads = 1;
	else
		cagra_kernels_ready();
	job->filter = knn_choose_filter();
	if (!knn_gemm_inputs(job, &gemm_base, &gemm_queries))
		status = CAGRA_ERR_NOMEM;
	else if (job->metric == CAGRA_METRIC_L2)
	{
		base_norms = knn_squared_norms(job->gemm_base, job->n, job->dim);
		if (base_norms == NULL)
			status = CAGRA_ERR_NOMEM;
	}
	job->base_norms = base_norms;
	if (status == CAGRA_OK && !knn_alloc_scratch(job, n_threads))
		status = CAGRA_ERR_NOMEM;

	if (status == CAGRA_OK && in_worker)
		cagra_parallel_for(1, job->nq, QUERY_BLOCK, knn_query_block, job, NULL);
	else if (status == CAGRA_OK)
	{
		openblas_set_num_threads(1);
		if (cagra_parallel_for(n_threads, job->nq, QUERY_BLOCK, knn_query_block,
							   job, interrupt) == CAGRA_ERR_CANCELED)
			status = cagra_error(CAGRA_ERR_CANCELED, errbuf, errlen,
								 "kNN search canceled");
		openblas_set_num_threads(blas_threads);
	}
	else
		cagra_error(status, errbuf, errlen,
					"out of memory for the kNN of %lld rows", (long long) job->nq);

	knn_free_scratch(job, n_threads);
	if (gemm_queries != gemm_base)
		free(gemm_queries);
	free(gemm_base);
	free(base_norms);
	return status;
}

static CagraStatus
knn_check(int64_t n, int64_t nq, int dim, CagraMetric metric, int k,
		  int64_t k_max, int n_threads, char *errbuf, size_t errlen)
{
	if (n < 1 || n > INT32_MAX || nq < 0 || dim < 1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "invalid data shape: %lld base rows, %lld queries, dimension %d",
						   (long long) n, (long long) nq, dim);
	if ((unsigned) metric > CAGRA_METRIC_L1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "unknown metric %d", (int) metric);
	if (k < 1 || k > k_max)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "k = %d is out of range 1..%lld", k, (long long) k_max);
	if (n_threads < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "n_threads %d must not be negative", n_threads);
	return CAGRA_OK;
}

/* The exact kNN graph on `threads` workers (0: the calling thread only). */
static CagraStatus
knn_exact(const float *data, int64_t n, int dim, CagraMetric metric, int k,
		  int n_threads, int threads, const CagraInterrupt *interrupt,
		  int32_t *knn, float *dists, char *errbuf, size_t errlen)
{
	KnnJob		job = {0};
	CagraStatus status;

	status = knn_check(n, n, dim, metric, k, n - 1, n_threads, errbuf, errlen);
	if (status != CAGRA_OK)
		return status;
	job.base = job.queries = data;
	job.n = job.nq = n;
	job.dim = dim;
	job.metric = metric;
	job.k = k;
	job.n_candidates = cagra_knn_candidates(k, n - 1);
	job.exclude_self = true;
	job.ids = knn;
	job.dists = dists;
	return knn_run(&job, threads, interrupt, errbuf, errlen);
}

CagraStatus
cagra_knn_exact(const float *data, int64_t n, int dim, CagraMetric metric,
				int k, int n_threads, const CagraInterrupt *interrupt,
				int32_t *knn, float *dists, char *errbuf, size_t errlen)
{
	return knn_exact(data, n, dim, metric, k, n_threads,
					 cagra_thread_count(n_threads), interrupt,
					 knn, dists, errbuf, errlen);
}

CagraStatus
cagra_knn_exact_serial(const float *data, int64_t n, int dim,
					   CagraMetric metric, int k, int32_t *knn, float *dists,
					   char *errbuf, size_t errlen)
{
	return knn_exact(data, n, dim, metric, k, 0, 0, NULL, knn, dists,
					 errbuf, errlen);
}

CagraStatus
cagra_brute_force(const float *base, int64_t n, const float *queries,
				  int64_t nq, int dim, CagraMetric metric, int k,
				  int n_threads, const CagraInterrupt *interrupt,
				  int32_t *ids, float *dists, char *errbuf, size_t errlen)
{
	KnnJob		job = {0};
	CagraStatus status;

	status = knn_check(n, nq, dim, metric, k, n, n_threads, errbuf, errlen);
	if (status != CAGRA_OK)
		return status;
	job.base = base;
	job.queries = queries;
	job.n = n;
	job.nq = nq;
	job.dim = dim;
	job.metric = metric;
	job.k = k;
	job.n_candidates = cagra_knn_candidates(k, n);
	job.exclude_self = false;
	job.ids = ids;
	job.dists = dists;
	return knn_run(&job, cagra_thread_count(n_threads), interrupt, errbuf, errlen);
}
