/*
 * cagra_knn.c
 *		Stage 1 of CAGRA (Ootomo et al., ICDE 2024): the exact kNN graph,
 *		and the brute-force search it is built on.
 *
 * Queries go in blocks of up to QUERY_BLOCK rows, one block per task of
 * the thread pool (knn_query_chunk).  A block meets the base rows
 * BASE_BLOCK at a time: one
 * cblas_sgemm fills a tile with -2 x.y (L2) or -x.y (inner product, cosine
 * on normalised copies), and each tile row is scanned against the row's
 * pool of candidates.  For L2 the scan adds |y|^2; |x|^2 is the same along
 * a row and does not change its order.  L1 has no GEMM form, so its tile is
 * filled by the distance kernel directly.
 *
 * The tile value x.y comes out of a float GEMM whose rounding grows with
 * |x|^2 + |y|^2, while near neighbours in clustered data are much closer
 * than that.  For L2, which does not change under translation, the GEMM
 * works on copies centred on the mean of (a sample of) the query rows, so
 * that |x| is the spread of the data and not its offset from the origin.
 * Beyond that, for the exact search the pool keeps cagra_knn_candidates()
 * entries, a little more than k, whose distances are then recomputed
 * directly by the distance kernels and sorted by (distance, id): the exact
 * kNN under the same distance the search uses, ties broken by id.  The
 * partitioned stage's searches (cagra_knn_segments_serial) fill their
 * tiles from rows kept in panels, as 16-bit codes (knn_code_dot_avx2; L1
 * in floats) instead of by GEMM, and keep k candidates ranked by the
 * tile's own values: only near ties can come out in another order, and
 * the recomputation cost a tenth of the stage.
 *
 * A row's pool starts with a bound from its first tile (knn_first_bound),
 * so that a few more than cap values enter it instead of POOL_FACTOR x cap.
 *
 * OpenBLAS is told to use one thread while an exact search runs: the
 * parallelism is ours, one GEMM per task, and OpenBLAS threads would
 * oversubscribe the cores.  The previous setting is restored before
 * returning.
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

/*
 * OpenBLAS packs a tile's base rows once per call, so a block of q query
 * rows pays one packing per q x 2 x dim flops: at 128 rows, copying the
 * partitioned stage's gathered candidates (cold, megabytes a list) into
 * GEMM panels took a third as long as the GEMM itself on tf-idf.  A list's
 * rows (about 400) went in one block: the lists 25.5 -> 21.5 s on tf-idf
 * (bench/bin/cagra_build --index --cagra-only); that search now needs no
 * packing at all (its rows are kept in panels).  A tile of QUERY_BLOCK x
 * BASE_BLOCK floats stays at 1 MB.  Threads sharing few queries take
 * smaller blocks, not under QUERY_BLOCK_MIN rows.
 */
#define QUERY_BLOCK 512
#define QUERY_BLOCK_MIN 128
#define BASE_BLOCK 512
#define SCAN_CHUNK 256			/* tile values filtered at once */
#define POOL_FACTOR 4			/* a pool holds this many times cap */
#define BOUND_GROUPS 128		/* groups of a tile row for a first bound */
#define MEAN_SAMPLE 256			/* rows averaged for the L2 centre */

/* Positions c in [0, len) with row[c] + norms[c] <= bound (norms may be NULL). */
typedef int (*KnnFilterFn) (const float *row, const float *norms, int len,
							float bound, int32_t *hits);

/*
 * Folds row[c] + norms[c] into mins[c mod BOUND_GROUPS] for the whole
 * blocks of BOUND_GROUPS columns; returns the columns done.
 */
typedef int (*KnnMinimaFn) (const float *row, const float *norms, int len,
							float *mins);

/*
 * A list's search fills its tile from rows in panels (CAGRA_PANEL_ROWS rows
 * stored dimension after dimension): tile row i (BASE_BLOCK apart) gets
 * query i's values against panel rows 0 .. cols rounded up to whole panels,
 * scale x q.y, or the L1 distance.
 */
typedef void (*KnnPanelFn) (const float *queries, int n_queries, int dim,
							const float *panels, int cols, float *tile);

/*
 * The same from codes (cagra_code_row): queries (n_queries x
 * CAGRA_CODE_DIM(dim), their 1 / s in query_scales) against the panels'
 * codes (their rows' 1 / s in code_scales), scale x q.y.  The sums are
 * integers, so every version gives the same values to the bit.
 */
typedef void (*KnnCodeFn) (const int16_t *queries, const float *query_scales,
						   int n_queries, int dim, const int16_t *codes,
						   const float *code_scales, int cols, float scale,
						   float *tile);

/* A block's queries in a list's search: floats for L1, else codes. */
typedef struct KnnQueries
{
	float	   *rows;			/* L1: n x dim */
	int16_t    *codes;			/* else: n x CAGRA_CODE_DIM(dim) */
	float	   *scales;			/* else: n, each code row's 1 / s */
} KnnQueries;

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
	const float *gemm_queries;	/* the same of the queries, or NULL: made per
								 * block of queries (knn_block_queries) */
	const float *centre;		/* L2: what the GEMM's rows are centred on */
	const float *base_norms;	/* |y|^2 for L2, else NULL */
	int64_t		n;
	int64_t		nq;
	int			dim;
	CagraMetric metric;
	int			k;
	int			n_candidates;
	bool		exclude_self;	/* queries are base: skip row i in row i */
	const CagraKnnSegments *segments;	/* a list's search, ranked by the
										 * panel products' values (k
										 * candidates) without recomputing
										 * them; NULL: an exact search */
	KnnFilterFn filter;
	KnnMinimaFn minima;
	KnnPanelFn	panel;			/* L1 */
	KnnCodeFn	code_panel;		/* the other metrics */
	int32_t    *ids;
	float	   *dists;
	/* per-thread scratch */
	float	  **tiles;			/* QUERY_BLOCK x BASE_BLOCK */
	KnnCandidate **pools;		/* QUERY_BLOCK x POOL_FACTOR n_candidates */
	float	  **query_rows;		/* QUERY_BLOCK x dim; a list's search: two
								 * such blocks, w and its column terms
								 * (knn_segment_block) */
	int16_t   **query_codes;	/* a list's search: two blocks of
								 * QUERY_BLOCK + 1 rows of
								 * CAGRA_CODE_DIM(dim), and c_m's */
	float	  **query_scales;	/* and their 1 / s */
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

/*
 * The tile's factor on x.y: -2 for L2 (the scan adds |y|^2), -1 for cosine
 * and inner product; 1 for L1, whose tile holds the distances.
 */
static float
knn_tile_scale(CagraMetric metric)
{
	switch (metric)
	{
		case CAGRA_METRIC_L2:
			return -2.0f;
		case CAGRA_METRIC_L1:
			return 1.0f;
		case CAGRA_METRIC_COSINE:
		case CAGRA_METRIC_INNER_PRODUCT:
			break;
	}
	return -1.0f;
}

/* Fill tile (rows x cols) with values ordered like the distances. */
static void
knn_fill_tile(const KnnJob *job, const float *queries, int rows, int64_t b0,
			  int cols, float *tile)
{
	int			dim = job->dim;

	if (job->metric == CAGRA_METRIC_L1)
	{
		for (int r = 0; r < rows; r++)
			for (int c = 0; c < cols; c++)
				tile[(int64_t) r * BASE_BLOCK + c] =
					vec_l1_distance(queries + r * dim,
									job->base + (b0 + c) * dim, dim);
		return;
	}
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, dim,
				knn_tile_scale(job->metric), queries, dim, job->gemm_base + b0 * dim, dim,
				0.0f, tile, BASE_BLOCK);
}

/* Positions c in [from, len) that pass, appended to hits[n ..]; the new n. */
static inline int
knn_filter_from(const float *row, const float *norms, int from, int len,
				float bound, int32_t *hits, int n)
{
	/* branch-free: the store is harmless when the value does not count */
	for (int c = from; c < len; c++)
	{
		hits[n] = c;
		n += row[c] + (norms ? norms[c] : 0.0f) <= bound;
	}
	return n;
}

static int
knn_filter_scalar(const float *row, const float *norms, int len, float bound,
				  int32_t *hits)
{
	return knn_filter_from(row, norms, 0, len, bound, hits, 0);
}

#ifdef KNN_HAVE_X86
/* The set bits of a SIMD comparison's mask, as positions from c. */
static inline int
knn_mask_hits(unsigned mask, int c, int32_t *hits, int n)
{
	while (mask)
	{
		hits[n++] = c + __builtin_ctz(mask);
		mask &= mask - 1;
	}
	return n;
}

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

		if (norms)
			v = _mm512_add_ps(v, _mm512_loadu_ps(norms + c));
		n = knn_mask_hits(_mm512_cmp_ps_mask(v, limit, _CMP_LE_OQ), c, hits, n);
	}
	return knn_filter_from(row, norms, c, len, bound, hits, n);
}

/* The same 8 values at a time: most chunks of 8 hold no hit at all. */
__attribute__((target("avx2")))
static int
knn_filter_avx2(const float *row, const float *norms, int len, float bound,
				int32_t *hits)
{
	__m256		limit = _mm256_set1_ps(bound);
	int			n = 0;
	int			c = 0;

	for (; c + 8 <= len; c += 8)
	{
		__m256		v = _mm256_loadu_ps(row + c);

		if (norms)
			v = _mm256_add_ps(v, _mm256_loadu_ps(norms + c));
		n = knn_mask_hits((unsigned) _mm256_movemask_ps(_mm256_cmp_ps(v, limit, _CMP_LE_OQ)),
						  c, hits, n);
	}
	return knn_filter_from(row, norms, c, len, bound, hits, n);
}
#endif

/*
 * The panel kernels.  Where a list's search called cblas_sgemm, OpenBLAS
 * packed the probed list's rows for every list probing it, and zeroed the
 * tile before adding into it: a third of the GEMM's time on the word
 * vectors, whose lists' rows meet about 83 queries at a time.  Rows kept in
 * panels need no packing: one load brings a dimension of 16 rows.  L1's
 * panels hold floats; the other metrics' hold codes (cagra_code_row).
 */
/* L1, inlined into each caller, so that each is vectorised for its target */
__attribute__((always_inline))
static inline void
knn_panel_l1(const float *queries, int n_queries, int dim,
			 const float *panels, int cols, float *tile)
{
	for (int c0 = 0; c0 < cols; c0 += CAGRA_PANEL_ROWS)
	{
		const float *panel = panels + (int64_t) c0 * dim;

		for (int i = 0; i < n_queries; i++)
		{
			const float *q = queries + (int64_t) i * dim;
			float		acc[CAGRA_PANEL_ROWS] = {0};

			for (int d = 0; d < dim; d++)
			{
				const float *y = panel + (int64_t) d * CAGRA_PANEL_ROWS;

				for (int r = 0; r < CAGRA_PANEL_ROWS; r++)
					acc[r] += fabsf(q[d] - y[r]);
			}
			memcpy(tile + (int64_t) i * BASE_BLOCK + c0, acc, sizeof(acc));
		}
	}
}

static void
knn_panel_l1_scalar(const float *queries, int n_queries, int dim,
					const float *panels, int cols, float *tile)
{
	knn_panel_l1(queries, n_queries, dim, panels, cols, tile);
}

/*
 * The largest code (cagra_code_row) for dim dimensions: dim x limit^2 must
 * stay below 2^31, the range of the sums; at most 32767.
 */
int
cagra_code_limit(int dim)
{
	int64_t		dims = CAGRA_CODE_DIM(dim);
	int64_t		limit = (int64_t) sqrt((double) INT32_MAX / (double) dims);

	while (limit > 0 && dims * limit * limit > INT32_MAX)
		limit--;
	return limit < INT16_MAX ? (int) limit : INT16_MAX;
}

/*
 * row's codes, CAGRA_CODE_DIM(dim) of them (an odd dim's last zero): each
 * value times s = limit / max |row_d|, rounded half away from zero (a
 * conversion the compiler vectorises, where lrint was a call a value: 3%
 * of Fashion-MNIST's build).  Returns 1 / s, 0 for a zero row.  s is a
 * double: limit / max overflows a float for rows of values near FLT_MIN.
 */
float
cagra_code_row(const float *row, int dim, int16_t *codes)
{
	int			limit = cagra_code_limit(dim);
	float		largest = 0.0f;
	double		s;

	for (int d = 0; d < dim; d++)
		largest = fabsf(row[d]) > largest ? fabsf(row[d]) : largest;
	codes[CAGRA_CODE_DIM(dim) - 1] = 0;
	if (largest == 0.0f)
	{
		memset(codes, 0, dim * sizeof(int16_t));
		return 0.0f;
	}
	s = (double) limit / largest;
	for (int d = 0; d < dim; d++)
	{
		double		v = row[d] * s;

		codes[d] = (int16_t) (int32_t) (v < 0.0 ? v - 0.5 : v + 0.5);
	}
	return (float) (largest / (double) limit);
}

/* The sum of a x b over two rows of codes, CAGRA_CODE_DIM(dim) each. */
static int32_t
knn_code_pair_scalar(const int16_t *a, const int16_t *b, int dim)
{
	int32_t		sum = 0;

	for (int d = 0; d < CAGRA_CODE_DIM(dim); d++)
		sum += a[d] * b[d];
	return sum;
}

#ifdef KNN_HAVE_X86
__attribute__((target("avx2")))
static int32_t
knn_code_dot_pair_avx2(const int16_t *a, const int16_t *b, int dim)
{
	int			width = CAGRA_CODE_DIM(dim);
	__m256i		acc = _mm256_setzero_si256();
	__m128i		half;
	int			d = 0;
	int32_t		sum;

	for (; d + 16 <= width; d += 16)
		acc = _mm256_add_epi32(acc,
							   _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *) (a + d)),
												 _mm256_loadu_si256((const __m256i *) (b + d))));
	half = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
	half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4e));
	half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0xb1));
	sum = _mm_cvtsi128_si32(half);
	for (; d < width; d++)
		sum += a[d] * b[d];
	return sum;
}
#endif

/* a.b of two rows' codes in integers: exact, the same on every CPU. */
static int32_t
knn_code_dot(const int16_t *a, const int16_t *b, int dim)
{
#ifdef KNN_HAVE_X86
	if (vec_kernels.isa != VEC_ISA_SCALAR)
		return knn_code_dot_pair_avx2(a, b, dim);
#endif
	return knn_code_pair_scalar(a, b, dim);
}

/*
 * Codes against a panel's rows, one query at a time: the plain version, for
 * CPUs without AVX2 and the tests' forced-scalar runs.  A pair of 16-bit
 * products fits a 32-bit sum exactly, as in AVX2's multiply-add.
 */
static void
knn_code_dot_scalar(const int16_t *queries, const float *query_scales,
					int n_queries, int dim, const int16_t *codes,
					const float *code_scales, int cols, float scale,
					float *tile)
{
	int			pairs = CAGRA_CODE_DIM(dim) / 2;

	for (int c0 = 0; c0 < cols; c0 += CAGRA_PANEL_ROWS)
	{
		const int16_t *panel = codes + (int64_t) c0 * CAGRA_CODE_DIM(dim);

		for (int i = 0; i < n_queries; i++)
		{
			const int16_t *q = queries + (int64_t) i * CAGRA_CODE_DIM(dim);
			float		factor = scale * query_scales[i];
			int32_t		acc[CAGRA_PANEL_ROWS] = {0};

			for (int p = 0; p < pairs; p++)
			{
				const int16_t *y = panel + (int64_t) p * 2 * CAGRA_PANEL_ROWS;

				for (int r = 0; r < CAGRA_PANEL_ROWS; r++)
					acc[r] += q[2 * p] * y[2 * r] + q[2 * p + 1] * y[2 * r + 1];
			}
			for (int r = 0; r < CAGRA_PANEL_ROWS; r++)
				tile[(int64_t) i * BASE_BLOCK + c0 + r] =
					(float) acc[r] * factor * code_scales[c0 + r];
		}
	}
}

#ifdef KNN_HAVE_X86
/*
 * L1: the plain loop, which the compiler vectorises over a panel's 16
 * rows, compiled for AVX2.  Compiled for SSE only, the words' lists took
 * twice as long as with the distance kernel that served L1 before panels
 * (21-24 s against 10-11 s); compiled for AVX2, 7.6 s (driver, L1).
 */
__attribute__((target("avx2")))
static void
knn_panel_l1_avx2(const float *queries, int n_queries, int dim,
				  const float *panels, int cols, float *tile)
{
	knn_panel_l1(queries, n_queries, dim, panels, cols, tile);
}

/*
 * Queries a code kernel's step takes: 10 accumulators, 2 rows' halves, a
 * query's pair and a product fill 14 of AVX2's 16 registers.  With 6 (12
 * accumulators, as with floats, whose FMA needs no product register) GCC
 * spilled two of them: 35% of tf-idf's build then.
 */
#define CODE_QUERIES 5

/* A pair of a query's codes times a pair of a panel's 16 rows, added. */
__attribute__((always_inline, target("avx2")))
static inline void
knn_code_madd(const int16_t *pair, __m256i y0, __m256i y1, __m256i *acc0,
			  __m256i *acc1)
{
	int32_t		both;
	__m256i		x;

	memcpy(&both, pair, sizeof(both));
	x = _mm256_set1_epi32(both);
	*acc0 = _mm256_add_epi32(*acc0, _mm256_madd_epi16(x, y0));
	*acc1 = _mm256_add_epi32(*acc1, _mm256_madd_epi16(x, y1));
}

/* (sum x factor) x the rows' 1 / s, as knn_code_dot_scalar rounds it. */
__attribute__((always_inline, target("avx2")))
static inline void
knn_code_store(float *dst, __m256i acc0, __m256i acc1, float factor,
			   const float *code_scales)
{
	__m256		f = _mm256_set1_ps(factor);

	_mm256_storeu_ps(dst, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc0), f),
										_mm256_loadu_ps(code_scales)));
	_mm256_storeu_ps(dst + 8, _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc1), f),
											_mm256_loadu_ps(code_scales + 8)));
}

/*
 * CODE_QUERIES queries against 16 rows at a time, all in registers: per
 * pair of dimensions two loads of the panel and a broadcast per query for
 * 10 multiply-adds of 16-bit pairs, which take two dimensions in the time
 * an FMA takes one.  Its float twin (rows in float panels, 12 FMAs a
 * dimension) ran at 66 GFLOPS on the word vectors' shapes, against 41 for
 * cblas_sgemm.  A throwaway microbenchmark of this kernel with 6 queries
 * a step (one core of an AMD EPYC; the words', tf-idf's and a 128-d
 * shape) ran at 138, 140 and 122 GFLOPS-equivalent, against 85, 83 and 76
 * for the float kernel; in the build, the words' lists took a fifth less
 * time and tf-idf's a third less (bench/bin/cagra_build).
 */
__attribute__((target("avx2")))
static void
knn_code_dot_avx2(const int16_t *queries, const float *query_scales,
				  int n_queries, int dim, const int16_t *codes,
				  const float *code_scales, int cols, float scale, float *tile)
{
	int			width = CAGRA_CODE_DIM(dim);
	int			pairs = width / 2;

	for (int i0 = 0; i0 < n_queries; i0 += CODE_QUERIES)
	{
		int			n = n_queries - i0 < CODE_QUERIES ? n_queries - i0 : CODE_QUERIES;
		const int16_t *q[CODE_QUERIES];
		float		factor[CODE_QUERIES];
		float	   *out = tile + (int64_t) i0 * BASE_BLOCK;

		for (int i = 0; i < CODE_QUERIES; i++)
		{
			int			at = i0 + (i < n ? i : 0);

			q[i] = queries + (int64_t) at * width;
			factor[i] = scale * query_scales[at];
		}
		for (int c0 = 0; c0 < cols; c0 += CAGRA_PANEL_ROWS)
		{
			const int16_t *y = codes + (int64_t) c0 * width;
			const int16_t *q0 = q[0],
					   *q1 = q[1],
					   *q2 = q[2],
					   *q3 = q[3],
					   *q4 = q[4];
			__m256i		a0 = _mm256_setzero_si256(),
						b0 = a0,
						a1 = a0,
						b1 = a0,
						a2 = a0,
						b2 = a0,
						a3 = a0,
						b3 = a0,
						a4 = a0,
						b4 = a0;

			for (int p = 0; p < pairs; p++, y += 2 * CAGRA_PANEL_ROWS)
			{
				__m256i		y0 = _mm256_loadu_si256((const __m256i *) y);
				__m256i		y1 = _mm256_loadu_si256((const __m256i *) (y + CAGRA_PANEL_ROWS));

				knn_code_madd(q0 + 2 * p, y0, y1, &a0, &b0);
				knn_code_madd(q1 + 2 * p, y0, y1, &a1, &b1);
				knn_code_madd(q2 + 2 * p, y0, y1, &a2, &b2);
				knn_code_madd(q3 + 2 * p, y0, y1, &a3, &b3);
				knn_code_madd(q4 + 2 * p, y0, y1, &a4, &b4);
			}
			knn_code_store(out + c0, a0, b0, factor[0], code_scales + c0);
			if (n > 1)
				knn_code_store(out + BASE_BLOCK + c0, a1, b1, factor[1], code_scales + c0);
			if (n > 2)
				knn_code_store(out + 2 * BASE_BLOCK + c0, a2, b2, factor[2], code_scales + c0);
			if (n > 3)
				knn_code_store(out + 3 * BASE_BLOCK + c0, a3, b3, factor[3], code_scales + c0);
			if (n > 4)
				knn_code_store(out + 4 * BASE_BLOCK + c0, a4, b4, factor[4], code_scales + c0);
		}
	}
}
#endif

static int
knn_minima_scalar(const float *row, const float *norms, int len, float *mins)
{
	int			c0 = 0;

	for (; c0 + BOUND_GROUPS <= len; c0 += BOUND_GROUPS)
		for (int g = 0; g < BOUND_GROUPS; g++)
		{
			float		v = row[c0 + g] + (norms ? norms[c0 + g] : 0.0f);

			mins[g] = v < mins[g] ? v : mins[g];
		}
	return c0;
}

#ifdef KNN_HAVE_X86
__attribute__((target("avx512f")))
static int
knn_minima_avx512(const float *row, const float *norms, int len, float *mins)
{
	__m512		m[BOUND_GROUPS / 16];
	int			c0 = 0;

	for (int v = 0; v < BOUND_GROUPS / 16; v++)
		m[v] = _mm512_loadu_ps(mins + 16 * v);
	for (; c0 + BOUND_GROUPS <= len; c0 += BOUND_GROUPS)
		for (int v = 0; v < BOUND_GROUPS / 16; v++)
		{
			__m512		x = _mm512_loadu_ps(row + c0 + 16 * v);

			if (norms)
				x = _mm512_add_ps(x, _mm512_loadu_ps(norms + c0 + 16 * v));
			m[v] = _mm512_min_ps(m[v], x);
		}
	for (int v = 0; v < BOUND_GROUPS / 16; v++)
		_mm512_storeu_ps(mins + 16 * v, m[v]);
	return c0;
}
#endif

/*
 * The k-th smallest (0-based) of the BOUND_GROUPS values, without branches
 * on the data: a binary search over the values' bit patterns, mapped to
 * unsigned integers of the same order, counting all values at each step
 * (a loop the compiler vectorises).  A selection of (value, id) pairs took
 * 4% of the words' build on an AVX2 machine.
 */
static float
knn_rank(const float *values, int k)
{
	uint32_t	keys[BOUND_GROUPS];
	uint32_t	lo = 0,
				hi = UINT32_MAX;
	uint32_t	bits;
	float		result;

	for (int g = 0; g < BOUND_GROUPS; g++)
	{
		memcpy(&bits, values + g, sizeof(bits));
		/* negative: all bits flipped; positive: the sign bit set */
		keys[g] = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
	}
	while (lo < hi)
	{
		uint32_t	mid = lo + (hi - lo) / 2;
		int			count = 0;

		for (int g = 0; g < BOUND_GROUPS; g++)
			count += keys[g] <= mid;
		if (count > k)
			hi = mid;
		else
			lo = mid + 1;
	}
	bits = (lo & 0x80000000u) ? lo ^ 0x80000000u : ~lo;
	memcpy(&result, &bits, sizeof(result));
	return result;
}

/*
 * The scan's kernels: AVX-512 when the distance kernels are, the AVX2
 * filter when they are AVX2, the AVX2 panel kernels on both (there is no
 * AVX-512 one); the unit tests force the scalar ones through
 * vec_distance_init.
 */
static void
knn_choose_kernels(KnnJob *job)
{
	job->filter = knn_filter_scalar;
	job->minima = knn_minima_scalar;
	job->panel = knn_panel_l1_scalar;
	job->code_panel = knn_code_dot_scalar;
#ifdef KNN_HAVE_X86
	if (vec_kernels.isa != VEC_ISA_SCALAR)
	{
		job->panel = knn_panel_l1_avx2;
		job->code_panel = knn_code_dot_avx2;
	}
	if (vec_kernels.isa == VEC_ISA_AVX2)
		job->filter = knn_filter_avx2;
	if (vec_kernels.isa == VEC_ISA_AVX512)
	{
		job->filter = knn_filter_avx512;
		job->minima = knn_minima_avx512;
	}
#endif
}

/*
 * A first bound for a row's empty pool, from its first tile row: split the
 * values into BOUND_GROUPS groups (column c in group c mod BOUND_GROUPS)
 * and take the smallest value of each.  The (cap + 1)-th smallest of these
 * minima has cap + 1 distinct values at or below it, so at least cap of
 * them other than the row itself: the cap-th best candidate can be no
 * worse.  Only a few values more than cap pass it, where an empty pool
 * would take POOL_FACTOR x cap values and then select.  Returns INFINITY
 * when the tile is too narrow for the argument.
 */
static float
knn_first_bound(const KnnJob *job, const float *row, const float *norms,
				int cols, int cap)
{
	float		mins[BOUND_GROUPS];
	int			c0;

	if (cols < BOUND_GROUPS || cap + 1 > BOUND_GROUPS)
		return INFINITY;
	for (int g = 0; g < BOUND_GROUPS; g++)
		mins[g] = INFINITY;
	c0 = job->minima(row, norms, cols, mins);
	for (int g = 0; c0 + g < cols; g++)
	{
		float		v = row[c0 + g] + (norms ? norms[c0 + g] : 0.0f);

		mins[g] = v < mins[g] ? v : mins[g];
	}
	return knn_rank(mins, cap);
}

/*
 * Offer one tile row (columns b0 ..) to the row's pool, each value plus
 * norms[c] (L2: the column's squared length, or NULL) and offset (a list's
 * search under L2: the query's squared length, which differs from list to
 * list).  Nearly every value loses against the bound, so a chunk of values
 * is first filtered against it (16 at a time with AVX-512); the few that
 * pass are checked again against the bound as it tightens, and appended.
 */
static void
knn_scan_row(const KnnJob *job, const float *tile_row, const float *norms,
			 int64_t b0, int cols, int64_t self, float offset, KnnPool *pool)
{
	int			cap = job->n_candidates;
	int32_t		hits[SCAN_CHUNK];

	if (pool->count == 0 && pool->bound_dist == INFINITY)
		pool->bound_dist = knn_first_bound(job, tile_row, norms, cols, cap) + offset;
	for (int c0 = 0; c0 < cols; c0 += SCAN_CHUNK)
	{
		int			len = cols - c0 < SCAN_CHUNK ? cols - c0 : SCAN_CHUNK;
		int			n_hits = job->filter(tile_row + c0, norms ? norms + c0 : NULL,
										 len, pool->bound_dist - offset, hits);

		for (int h = 0; h < n_hits; h++)
		{
			int			c = c0 + hits[h];
			float		v = tile_row[c] + (norms ? norms[c] : 0.0f) + offset;
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

/* The distance of a list's search's value (knn_segment_block). */
static float
knn_segment_distance(const KnnJob *job, float value)
{
	switch (job->metric)
	{
		case CAGRA_METRIC_L2:
			/* value = |x|^2 + |y|^2 - 2 x.y on centred copies */
			return value > 0.0f ? value : 0.0f;
		case CAGRA_METRIC_COSINE:
			/* value = -x.y on unit-length copies */
			return 1.0f + value;
		case CAGRA_METRIC_INNER_PRODUCT:
		case CAGRA_METRIC_L1:
			break;
	}
	return value;
}

/*
 * The row's best k candidates, by (distance, id).  Exact jobs recompute the
 * distances directly first; a list's search keeps the tile's values.
 */
static void
knn_finish_row(const KnnJob *job, int64_t q, KnnPool *pool)
{
	const float *query = job->segments ? NULL : job->queries + q * job->dim;
	int			k = job->k;
	KnnCandidate *cand = pool->items;
	int			size;

	if (pool->count > job->n_candidates)
		pool_shrink(pool, job->n_candidates);
	size = pool->count;

	/* insertion sort: size is about k, and qsort's calls cost more */
	for (int i = 0; i < size; i++)
	{
		KnnCandidate c = {
			job->segments ? knn_segment_distance(job, cand[i].dist) :
			cagra_distance(job->metric, query,
						   job->base + (int64_t) cand[i].id * job->dim, job->dim),
			cand[i].id
		};
		int			j = i;

		for (; j > 0 && candidate_less(c.dist, c.id, cand[j - 1].dist, cand[j - 1].id); j--)
			cand[j] = cand[j - 1];
		cand[j] = c;
	}
	for (int j = 0; j < k; j++)
	{
		job->ids[q * k + j] = j < size ? cand[j].id : -1;
		if (job->dists)
			job->dists[q * k + j] = j < size ? cand[j].dist : INFINITY;
	}
}

/*
 * The GEMM's forms of n rows of dim floats, into dst (n x dim): centred
 * (rows - centre) for L2, scaled to unit length for cosine (zero rows stay
 * zero).
 */
static void
knn_centre(const float *rows, int64_t n, int dim, const float *centre, float *dst)
{
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < dim; j++)
			dst[i * dim + j] = rows[i * dim + j] - centre[j];
}

static void
knn_normalise(const float *rows, int64_t n, int dim, float *dst)
{
	for (int64_t i = 0; i < n; i++)
	{
		const float *src = rows + i * dim;
		float		norm = sqrtf(vec_inner_product(src, src, dim));
		float		scale = norm > 0.0f ? 1.0f / norm : 0.0f;

		for (int j = 0; j < dim; j++)
			dst[i * dim + j] = src[j] * scale;
	}
}

/*
 * The GEMM's rows of queries begin .. begin + rows: the job's, or made in
 * the thread's buffer when the queries are not the base, so that a search
 * of many queries never holds a transformed copy of them all.
 */
static const float *
knn_block_queries(const KnnJob *job, int thread_no, int64_t begin, int rows)
{
	const float *queries = job->queries + begin * job->dim;
	float	   *buf = job->query_rows[thread_no];

	if (job->gemm_queries != NULL)
		return job->gemm_queries + begin * job->dim;
	if (job->metric == CAGRA_METRIC_L2)
		knn_centre(queries, rows, job->dim, job->centre, buf);
	else
		knn_normalise(queries, rows, job->dim, buf);
	return buf;
}

/* Empty pools for rows queries, in the thread's scratch. */
static void
knn_pools_init(const KnnJob *job, int thread_no, int rows, KnnPool *pools)
{
	for (int r = 0; r < rows; r++)
	{
		pools[r].items = job->pools[thread_no] +
			(int64_t) r * POOL_FACTOR * job->n_candidates;
		pools[r].count = 0;
		pools[r].bound_dist = INFINITY;
		pools[r].bound_id = INT32_MAX;
	}
}

static int
knn_query_block(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const KnnJob *job = arg;
	float	   *tile = job->tiles[thread_no];
	int			rows = (int) (end - begin);
	const float *gemm_queries = knn_block_queries(job, thread_no, begin, rows);
	KnnPool		pools[QUERY_BLOCK];

	knn_pools_init(job, thread_no, rows, pools);

	for (int64_t b0 = 0; b0 < job->n; b0 += BASE_BLOCK)
	{
		int			cols = (int) (job->n - b0 < BASE_BLOCK ? job->n - b0 : BASE_BLOCK);

		knn_fill_tile(job, gemm_queries, rows, b0, cols, tile);
		for (int r = 0; r < rows; r++)
			knn_scan_row(job, tile + (int64_t) r * BASE_BLOCK,
						 job->base_norms ? job->base_norms + b0 : NULL, b0, cols,
						 job->exclude_self ? begin + r : -1, 0.0f, &pools[r]);
	}
	for (int r = 0; r < rows; r++)
		knn_finish_row(job, begin + r, &pools[r]);
	return 0;
}

/*
 * Panel rows first .. first + rows - 1 (first: a panel's first row), row
 * after row into dst, reading each panel in order; units: the 32-bit units
 * of a row (a float, or a pair of codes).  A list's search takes its
 * queries from here once per block: copied out of the panels for every
 * probed list, dimension by dimension (a cache line a value at 784
 * dimensions), they had made Fashion-MNIST's CAGRA build a tenth slower
 * than with the GEMM.
 */
static void
knn_panel_unpack(const void *panels, int64_t first, int rows, int units,
				 void *dst)
{
	const char *src = panels;
	char	   *out = dst;

	for (int r0 = 0; r0 < rows; r0 += CAGRA_PANEL_ROWS)
	{
		const char *panel = src + (first + r0) * units * 4;
		int			lanes = rows - r0 < CAGRA_PANEL_ROWS ? rows - r0 : CAGRA_PANEL_ROWS;

		for (int u = 0; u < units; u++)
			for (int r = 0; r < lanes; r++)
				memcpy(out + ((int64_t) (r0 + r) * units + u) * 4,
					   panel + ((int64_t) u * CAGRA_PANEL_ROWS + r) * 4, 4);
	}
}

/* The queries begin .. begin + rows of the query list, out of its panels. */
static void
knn_segment_queries(const KnnJob *job, int64_t begin, int rows, KnnQueries *own)
{
	const CagraKnnSegments *seg = job->segments;
	int64_t		first = seg->panel_offsets[seg->query_list] + begin;

	if (job->metric == CAGRA_METRIC_L1)
	{
		knn_panel_unpack(seg->panels, first, rows, job->dim, own->rows);
		return;
	}
	knn_panel_unpack(seg->codes, first, rows, CAGRA_CODE_DIM(job->dim) / 2,
					 own->codes);
	memcpy(own->scales, seg->code_scales + first, rows * sizeof(float));
}

/* The picked queries of own, copied together into dst. */
static void
knn_segment_pick(const KnnJob *job, const KnnQueries *own, const int32_t *picked,
				 int n_picked, KnnQueries *dst)
{
	int			dim = job->dim;
	int			width = CAGRA_CODE_DIM(dim);

	for (int i = 0; i < n_picked; i++)
	{
		int64_t		at = picked[i];

		if (job->metric == CAGRA_METRIC_L1)
			memcpy(dst->rows + i * dim, own->rows + at * dim, dim * sizeof(float));
		else
		{
			memcpy(dst->codes + i * width, own->codes + at * width,
				   width * sizeof(int16_t));
			dst->scales[i] = own->scales[at];
		}
	}
}

/*
 * a.b by the plain kernel whatever the CPU: the SIMD kernels round by their
 * width, and the search should add the same floats on every CPU.
 */
static float
knn_dot_plain(const float *a, const float *b, int dim)
{
	return vec_kernels_for(VEC_ISA_SCALAR)->inner_product(a, b, dim);
}

/*
 * The rows are coded centred on their list's centre (cagra_partition.c):
 * a query x = c_l + u of list l meets the rows y = c_m + v of list m.
 * Under L2, with delta = c_l - c_m, |x - y|^2 = (|u|^2 + 2 u.delta +
 * |delta|^2) + (|v|^2 - 2 delta.v) - 2 u.v; else x.y = (u.c_m + c_l.c_m)
 * + c_l.v + u.v.  The first term is the query's offset, the second a
 * column term (w.v, with w = delta under L2, c_l else, is one more query
 * row of the panels' products, knn_segment_block), and u.v, the only term
 * per pair, comes from the codes, which round it relative to |u| |v|: the
 * rows' spread around their centres, not a component all rows share.  The
 * products with w are taken from w's codes, in integers, so that the
 * search adds the same floats on every CPU.
 */
static float
knn_segment_w_dot(const int16_t *codes, float scale, const int16_t *w_codes,
				  float w_scale, int dim)
{
	return (float) knn_code_dot(codes, w_codes, dim) * scale * w_scale;
}

/*
 * The queries begin .. begin + rows of a list's search (CagraKnnSegments;
 * q0: the list's first position) against the lists each of them probes:
 * per probed list, the queries that probe it, copied together when only
 * some do (a query's codes a list, against the list's rows x dim
 * multiply-adds), meet its panels.  The values come from rows centred on
 * their lists' centres (knn_segment_w_dot).
 */
static void
knn_segment_block(const KnnJob *job, int64_t q0, int64_t begin, int rows,
				  KnnPool *pools)
{
	const CagraKnnSegments *seg = job->segments;
	int64_t		words = seg->mask_words;
	int			dim = job->dim;
	int			width = CAGRA_CODE_DIM(dim);
	bool		l2 = job->metric == CAGRA_METRIC_L2;
	float		scale = knn_tile_scale(job->metric);
	float	   *tile = job->tiles[0];
	float	   *w = job->query_rows[0] + 2 * QUERY_BLOCK * (int64_t) dim;
	float	   *terms = w + dim;
	const float *cl = seg->centres ? seg->centres + (int64_t) seg->query_list * dim : NULL;
	KnnQueries	own = {job->query_rows[0], job->query_codes[0], job->query_scales[0]};
	KnnQueries	some = {job->query_rows[0] + (int64_t) QUERY_BLOCK * dim,
		job->query_codes[0] + (int64_t) (QUERY_BLOCK + 1) * width,
	job->query_scales[0] + QUERY_BLOCK + 1};
	int16_t    *cm_codes = job->query_codes[0] + (int64_t) 2 * (QUERY_BLOCK + 1) * width;
	int32_t		picked[QUERY_BLOCK];
	float		offset[QUERY_BLOCK];

	knn_segment_queries(job, begin, rows, &own);
	for (int s = 0; s < seg->n_segments; s++)
	{
		int32_t		m = seg->segment_list[s];
		const float *cm = seg->centres ? seg->centres + (int64_t) m * dim : NULL;
		bool		moves = l2 && m != seg->query_list;
		bool		products = cl != NULL && !l2;	/* inner product, cosine */
		int64_t		size = seg->offsets[m + 1] - seg->offsets[m];
		const KnnQueries *queries = &own;
		float		constant = 0.0f;
		int			n_picked = 0;

		for (int r = 0; r < rows; r++)
		{
			picked[n_picked] = r;
			n_picked += (seg->masks[(begin + r) * words + s / 64] >> (s % 64)) & 1;
		}
		if (n_picked == 0)
			continue;
		if (n_picked < rows)
		{
			knn_segment_pick(job, &own, picked, n_picked, &some);
			queries = &some;
		}
		if (moves || products)
		{
			/*
			 * w after the picked queries, whose panel products then give
			 * the column terms; under inner product and cosine c_m's codes
			 * too, for the offsets' u.c_m
			 */
			int16_t    *w_codes = queries->codes + (int64_t) n_picked * width;
			float		w_scale;
			float		cm_scale = 0.0f;

			for (int j = 0; j < dim; j++)
				w[j] = moves ? cl[j] - cm[j] : cl[j];
			w_scale = queries->scales[n_picked] = cagra_code_row(w, dim, w_codes);
			if (products)
				cm_scale = cagra_code_row(cm, dim, cm_codes);
			constant = knn_dot_plain(w, moves ? w : cm, dim);
			for (int i = 0; i < n_picked; i++)
			{
				const int16_t *codes = queries->codes + (int64_t) i * width;

				offset[i] = moves ?
					seg->norms[q0 + begin + picked[i]] + constant + 2.0f *
					knn_segment_w_dot(codes, queries->scales[i], w_codes, w_scale, dim) :
					-(constant + knn_segment_w_dot(codes, queries->scales[i],
												   cm_codes, cm_scale, dim));
			}
		}
		else
			for (int i = 0; i < n_picked; i++)
				offset[i] = l2 ? seg->norms[q0 + begin + picked[i]] : 0.0f;
		for (int64_t b0 = 0; b0 < size; b0 += BASE_BLOCK)
		{
			int			cols = (int) (size - b0 < BASE_BLOCK ? size - b0 : BASE_BLOCK);
			int64_t		at = seg->panel_offsets[m] + b0;
			const float *norms = l2 ? seg->norms + seg->offsets[m] + b0 : NULL;

			if (job->metric == CAGRA_METRIC_L1)
				job->panel(queries->rows, n_picked, dim, seg->panels + at * dim,
						   cols, tile);
			else
				job->code_panel(queries->codes, queries->scales,
								n_picked + (moves || products), dim,
								seg->codes + at * width, seg->code_scales + at,
								cols, scale, tile);
			if (products)
				norms = tile + (int64_t) n_picked * BASE_BLOCK; /* - c_l.v */
			else if (moves)
			{
				/* |v|^2 - 2 delta.v */
				const float *w_row = tile + (int64_t) n_picked * BASE_BLOCK;

				for (int c = 0; c < cols; c++)
					terms[c] = norms[c] + w_row[c];
				norms = terms;
			}
			for (int i = 0; i < n_picked; i++)
				knn_scan_row(job, tile + (int64_t) i * BASE_BLOCK, norms,
							 seg->offsets[m] + b0, cols, q0 + begin + picked[i],
							 offset[i], &pools[picked[i]]);
		}
	}
}

/*
 * Memory of the searches: knn_run's for one call, a worker thread's tiles
 * and pools kept between its calls of cagra_knn_segments_serial (a
 * partitioned build runs hundreds of small searches, and fresh allocations
 * of that size come from mmap every time, so that zeroing new pages cost
 * more than a fifth of the search).
 */
struct CagraKnnScratch
{
	float	   *gemm_base;		/* n x dim */
	float	   *norms;			/* n */
	double	   *sum;			/* dim */
	float	   *mean;			/* dim */
	int			n_threads;		/* tiles, pools and query rows */
	int			pool_cap;		/* n_candidates the pools were made for */
	int			query_dim;		/* dim the query rows were made for */
	int			query_blocks;	/* QUERY_BLOCK x query_dim blocks of them */
	float	  **tiles;			/* QUERY_BLOCK + 1 x BASE_BLOCK */
	KnnCandidate **pools;		/* QUERY_BLOCK x POOL_FACTOR pool_cap */
	float	  **query_rows;		/* query_blocks x QUERY_BLOCK x query_dim;
								 * a list's search: query_dim + BASE_BLOCK
								 * more */
	int16_t   **query_codes;	/* a list's search: 2 x (QUERY_BLOCK + 1) + 1
								 * rows of CAGRA_CODE_DIM(query_dim) */
	float	  **query_scales;	/* a list's search: their 1 / s */
};

CagraKnnScratch *
cagra_knn_scratch_create(void)
{
	return calloc(1, sizeof(CagraKnnScratch));
}

static void
knn_scratch_free_threads(CagraKnnScratch *scratch)
{
	for (int t = 0; t < scratch->n_threads; t++)
	{
		if (scratch->tiles)
			free(scratch->tiles[t]);
		if (scratch->pools)
			free(scratch->pools[t]);
		if (scratch->query_rows)
			free(scratch->query_rows[t]);
		if (scratch->query_codes)
			free(scratch->query_codes[t]);
		if (scratch->query_scales)
			free(scratch->query_scales[t]);
	}
	free(scratch->tiles);
	free(scratch->pools);
	free(scratch->query_rows);
	free(scratch->query_codes);
	free(scratch->query_scales);
	scratch->tiles = NULL;
	scratch->pools = NULL;
	scratch->query_rows = NULL;
	scratch->query_codes = NULL;
	scratch->query_scales = NULL;
	scratch->n_threads = 0;
}

void
cagra_knn_scratch_free(CagraKnnScratch *scratch)
{
	if (scratch == NULL)
		return;
	knn_scratch_free_threads(scratch);
	free(scratch->gemm_base);
	free(scratch->norms);
	free(scratch->sum);
	free(scratch->mean);
	free(scratch);
}

/*
 * Room in scratch for job's tiles, pools and query rows on n_threads
 * threads; false when out of memory.
 */
static bool
knn_scratch_reserve_threads(CagraKnnScratch *scratch, const KnnJob *job,
							int n_threads)
{
	/*
	 * a list's search: its block's rows, and those picked for a list (floats
	 * for L1, else codes, each with a row more for w), c_m's codes, w and a
	 * tile row's column terms (knn_segment_block)
	 */
	int			blocks = job->segments ? 2 : 1;
	int			code_rows = job->segments ? 2 * (QUERY_BLOCK + 1) + 1 : 0;

	if (scratch->n_threads >= n_threads && scratch->pool_cap >= job->n_candidates &&
		scratch->query_dim >= job->dim && scratch->query_blocks >= blocks)
		return true;
	knn_scratch_free_threads(scratch);
	scratch->tiles = calloc(n_threads, sizeof(float *));
	scratch->pools = calloc(n_threads, sizeof(KnnCandidate *));
	scratch->query_rows = calloc(n_threads, sizeof(float *));
	scratch->query_codes = calloc(n_threads, sizeof(int16_t *));
	scratch->query_scales = calloc(n_threads, sizeof(float *));
	if (scratch->tiles == NULL || scratch->pools == NULL ||
		scratch->query_rows == NULL || scratch->query_codes == NULL ||
		scratch->query_scales == NULL)
		return false;
	scratch->n_threads = n_threads;
	scratch->pool_cap = job->n_candidates;
	scratch->query_dim = job->dim;
	scratch->query_blocks = blocks;
	for (int t = 0; t < n_threads; t++)
	{
		scratch->tiles[t] = malloc((size_t) (QUERY_BLOCK + 1) * BASE_BLOCK * sizeof(float));
		scratch->pools[t] = malloc((size_t) QUERY_BLOCK * POOL_FACTOR *
								   job->n_candidates * sizeof(KnnCandidate));
		scratch->query_rows[t] = malloc(((size_t) blocks * QUERY_BLOCK + 1) *
										job->dim * sizeof(float) +
										(job->segments ? BASE_BLOCK * sizeof(float) : 0));
		if (code_rows > 0)
		{
			scratch->query_codes[t] = malloc((size_t) code_rows *
											 CAGRA_CODE_DIM(job->dim) * sizeof(int16_t));
			scratch->query_scales[t] = malloc((size_t) code_rows * sizeof(float));
			if (scratch->query_codes[t] == NULL || scratch->query_scales[t] == NULL)
				return false;
		}
		if (scratch->tiles[t] == NULL || scratch->pools[t] == NULL ||
			scratch->query_rows[t] == NULL)
			return false;
	}
	return true;
}

/* A new scratch's room for job on n_threads threads; false when out of memory. */
static bool
knn_scratch_reserve(CagraKnnScratch *scratch, const KnnJob *job, int n_threads)
{
	scratch->gemm_base = malloc((size_t) job->n * job->dim * sizeof(float));
	scratch->norms = malloc((size_t) job->n * sizeof(float));
	scratch->sum = malloc(job->dim * sizeof(double));
	scratch->mean = malloc(job->dim * sizeof(float));
	if (!scratch->gemm_base || !scratch->norms || !scratch->sum || !scratch->mean)
		return false;
	return knn_scratch_reserve_threads(scratch, job, n_threads);
}

/*
 * The mean of at most MEAN_SAMPLE evenly spaced rows: the centre only has
 * to lie among the data for the GEMM's rounding to shrink, and summing
 * every row of a small search cost as much as a tenth of it.
 */
static void
knn_mean(const float *rows, int64_t n, int dim, double *sum, float *mean)
{
	int64_t		n_sample = n < MEAN_SAMPLE ? n : MEAN_SAMPLE;

	memset(sum, 0, dim * sizeof(double));
	for (int64_t s = 0; s < n_sample; s++)
	{
		const float *row = rows + (s * n / n_sample) * dim;

		for (int j = 0; j < dim; j++)
			sum[j] += row[j];
	}
	for (int j = 0; j < dim; j++)
		mean[j] = (float) (sum[j] / (double) n_sample);
}

/*
 * What the GEMM sees, in scratch: a copy of the base centred for L2 (with
 * its squared norms), normalised for cosine, the rows as given for inner
 * product and L1.  Queries that are the base (the exact kNN) share its copy;
 * others are transformed a block at a time (knn_block_queries).
 */
static void
knn_gemm_inputs(KnnJob *job, CagraKnnScratch *scratch)
{
	const float *rows = scratch->gemm_base;

	job->gemm_base = job->base;
	job->gemm_queries = job->queries;
	job->base_norms = NULL;
	if (job->metric == CAGRA_METRIC_COSINE)
		knn_normalise(job->base, job->n, job->dim, scratch->gemm_base);
	else if (job->metric == CAGRA_METRIC_L2)
	{
		/*
		 * Centred on the base, where the queries' nearest neighbours lie,
		 * so that the values that pick the candidates are precise.
		 */
		knn_mean(job->base, job->n, job->dim, scratch->sum, scratch->mean);
		knn_centre(job->base, job->n, job->dim, scratch->mean, scratch->gemm_base);
		for (int64_t i = 0; i < job->n; i++)
			scratch->norms[i] = vec_inner_product(rows + i * job->dim,
												  rows + i * job->dim, job->dim);
		job->base_norms = scratch->norms;
		job->centre = scratch->mean;
	}
	else
		return;
	job->gemm_base = scratch->gemm_base;
	job->gemm_queries = job->exclude_self ? scratch->gemm_base : NULL;
}

/*
 * Query rows per task: QUERY_BLOCK for one thread; for more, about a
 * quarter of each thread's share (so that the tasks even out), within
 * QUERY_BLOCK_MIN .. QUERY_BLOCK.
 */
static int64_t
knn_query_chunk(int64_t nq, int n_threads)
{
	int64_t		chunk = (nq + 4 * n_threads - 1) / (4 * n_threads);

	if (n_threads == 1 || chunk > QUERY_BLOCK)
		return QUERY_BLOCK;
	return chunk < QUERY_BLOCK_MIN ? QUERY_BLOCK_MIN : chunk;
}

/* Everything but argument checks: shared by the entry points. */
static CagraStatus
knn_run(KnnJob *job, int n_threads, const CagraInterrupt *interrupt,
		char *errbuf, size_t errlen)
{
	CagraStatus status = CAGRA_OK;
	CagraKnnScratch *scratch = cagra_knn_scratch_create();
	int			blas_threads = openblas_get_num_threads();

	cagra_kernels_ready();
	knn_choose_kernels(job);
	if (scratch == NULL || !knn_scratch_reserve(scratch, job, n_threads))
	{
		cagra_knn_scratch_free(scratch);
		return cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
						   "out of memory for the kNN of %lld rows", (long long) job->nq);
	}
	knn_gemm_inputs(job, scratch);
	job->tiles = scratch->tiles;
	job->pools = scratch->pools;
	job->query_rows = scratch->query_rows;

	openblas_set_num_threads(1);
	if (cagra_parallel_for(n_threads, job->nq, knn_query_chunk(job->nq, n_threads),
						   knn_query_block, job, interrupt) == CAGRA_ERR_CANCELED)
		status = cagra_error(CAGRA_ERR_CANCELED, errbuf, errlen,
							 "kNN search canceled");
	openblas_set_num_threads(blas_threads);
	cagra_knn_scratch_free(scratch);
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

CagraStatus
cagra_knn_exact(const float *data, int64_t n, int dim, CagraMetric metric,
				int k, int n_threads, const CagraInterrupt *interrupt,
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
	return knn_run(&job, cagra_thread_count(n_threads), interrupt, errbuf, errlen);
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

CagraStatus
cagra_knn(const float *data, int64_t n, int dim, const CagraParams *params,
		  int32_t *knn, CagraKnnStats *stats, char *errbuf, size_t errlen)
{
	if (params->knn_method == CAGRA_KNN_PARTITIONED)
		return cagra_knn_partitioned(data, n, dim, params->metric,
									 params->intermediate_degree,
									 params->list_rows, params->list_probes,
									 params->refine_iterations,
									 params->n_threads, &params->interrupt,
									 knn, NULL, stats, errbuf, errlen);
	if (stats != NULL)
		memset(stats, 0, sizeof(CagraKnnStats));
	return cagra_knn_exact(data, n, dim, params->metric,
						   params->intermediate_degree, params->n_threads,
						   &params->interrupt, knn, NULL, errbuf, errlen);
}

bool
cagra_knn_segments_serial(const CagraKnnSegments *segments, int k,
						  CagraKnnScratch *scratch, int32_t *knn, float *dists)
{
	KnnJob		job = {0};
	int64_t		q0 = segments->offsets[segments->query_list];
	int64_t		nq = segments->offsets[segments->query_list + 1] - q0;
	KnnPool		pools[QUERY_BLOCK];

	job.base_norms = segments->norms;
	job.nq = nq;
	job.dim = segments->dim;
	job.metric = segments->metric;
	job.k = job.n_candidates = k;
	job.exclude_self = true;
	job.segments = segments;
	job.ids = knn;
	job.dists = dists;
	knn_choose_kernels(&job);
	if (!knn_scratch_reserve_threads(scratch, &job, 1))
		return false;
	job.tiles = scratch->tiles;
	job.pools = scratch->pools;
	job.query_rows = scratch->query_rows;
	job.query_codes = scratch->query_codes;
	job.query_scales = scratch->query_scales;
	for (int64_t begin = 0; begin < nq; begin += QUERY_BLOCK)
	{
		int			rows = (int) (nq - begin < QUERY_BLOCK ? nq - begin : QUERY_BLOCK);

		knn_pools_init(&job, 0, rows, pools);
		knn_segment_block(&job, q0, begin, rows, pools);
		for (int r = 0; r < rows; r++)
			knn_finish_row(&job, begin + r, &pools[r]);
	}
	return true;
}
