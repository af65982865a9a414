/*
 * cagra_prune.c
 *		Stages 2 and 3 of CAGRA (Ootomo et al., ICDE 2024): rank-based
 *		pruning of the kNN graph, and the merge of reverse edges.
 *
 * Pruning works on ranks, not distances: for A's edge to B at rank b, a
 * detourable route is A -> D -> B through a closer neighbour D (rank a < b)
 * whose own list holds B.  The paper also asks that B rank below b in D's
 * list (max(w(A->D), w(D->B)) < w(A->B) with w the rank); cuVS counts B at
 * any rank of D's list.  Both are offered (CagraDetour).  The edges with the
 * fewest detours say most about the neighbourhood that the closer edges do
 * not already reach, so the d edges with the smallest (count, rank) stay.
 *
 * Each thread owns an array pos[] over all nodes holding "rank in A's list
 * + 1" for the row being pruned, so testing whether D's neighbour B is one
 * of A's is one load; only the entries set for A are cleared afterwards.
 * Rows are taken in breadth-first order of the kNN graph
 * (cagra_locality_order), as the pruning by distance takes them: the lists
 * of a row's neighbours are then mostly those the row before read.  On
 * the word vectors the counts took 0.21-0.33 s (median 0.26) against
 * 0.20-0.53 s (0.38) by id (bench/bin/cagra_build, seven pairs
 * alternating); a row's result does not depend on the order.
 */
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"
#include "vector/distance.h"

/*
 * For I <= 64, where the ranks of A's list fit one 64-bit word: bit b of
 * the result says that D (A's edge at rank a) lists B, A's edge at rank
 * b > a, as a detourable route (for CAGRA_DETOUR_RANK_BELOW also below rank
 * b in D's list).  Nothing here branches on the data: about half of D's
 * neighbours are A's too, a test no predictor learns.
 */
typedef uint64_t (*PruneRouteMaskFn) (const int32_t *via, int I, int a,
									  const int32_t *pos, bool rank_below);

typedef struct PruneJob
{
	const int32_t *knn;
	int64_t		n;
	int			I;
	int			d;
	CagraDetour detour;
	PruneRouteMaskFn route_mask;	/* the masks' kernel, for I <= 64 */
	const int32_t *order;		/* the rows in the order they are taken */
	int32_t    *pruned;
	/* per-thread scratch */
	int32_t   **pos;			/* n entries, zero between rows */
	int		  **work;			/* 3 * I + 1 ints: counts, buckets, order */
} PruneJob;

/*
 * Mark A's neighbours in pos[].  An id met again, the node itself and -1
 * are left unmarked: such entries are not edges and are never kept.
 */
static void
prune_mark_row(const int32_t *row, int I, int64_t self, int32_t *pos)
{
	for (int r = 0; r < I; r++)
		if (row[r] >= 0 && row[r] != self && pos[row[r]] == 0)
			pos[row[r]] = r + 1;
}

static inline bool
prune_is_edge(const int32_t *row, int r, const int32_t *pos)
{
	return row[r] >= 0 && pos[row[r]] == r + 1;
}

static uint64_t
prune_route_mask_scalar(const int32_t *via, int I, int a, const int32_t *pos,
						bool rank_below)
{
	uint64_t	mask = 0;

	for (int rank_in_d = 0; rank_in_d < I; rank_in_d++)
	{
		int32_t		b_node = via[rank_in_d];
		int			b;
		uint64_t	detour;

		if (b_node < 0)
			continue;
		b = pos[b_node] - 1;
		detour = (uint64_t) (b > a) & (uint64_t) (!rank_below | (rank_in_d < b));
		mask |= detour << (b & 63);
	}
	return mask;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PRUNE_HAVE_X86
#include <immintrin.h>

/* The same, 16 of D's neighbours at a time: one gather from pos[]. */
__attribute__((target("avx512f")))
static uint64_t
prune_route_mask_avx512(const int32_t *via, int I, int a, const int32_t *pos,
						bool rank_below)
{
	const __m512i one = _mm512_set1_epi64(1);
	const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
										   10, 11, 12, 13, 14, 15);
	__m512i		acc = _mm512_setzero_si512();

	for (int r0 = 0; r0 < I; r0 += 16)
	{
		__mmask16	in = I - r0 >= 16 ? 0xFFFF : (__mmask16) ((1u << (I - r0)) - 1);
		__m512i		ids = _mm512_maskz_loadu_epi32(in, via + r0);
		__mmask16	valid = _mm512_mask_cmpge_epi32_mask(in, ids, _mm512_setzero_si512());
		__m512i		b = _mm512_sub_epi32(_mm512_mask_i32gather_epi32(_mm512_setzero_si512(),
																	 valid, ids, pos, 4),
										 _mm512_set1_epi32(1));
		__mmask16	detour = _mm512_mask_cmpgt_epi32_mask(valid, b, _mm512_set1_epi32(a));

		if (rank_below)
			detour = _mm512_mask_cmpgt_epi32_mask(detour, b,
												  _mm512_add_epi32(lane, _mm512_set1_epi32(r0)));
		acc = _mm512_or_si512(acc,
							  _mm512_maskz_sllv_epi64((__mmask8) detour, one,
													  _mm512_cvtepi32_epi64(_mm512_castsi512_si256(b))));
		acc = _mm512_or_si512(acc,
							  _mm512_maskz_sllv_epi64((__mmask8) (detour >> 8), one,
													  _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(b, 1))));
	}
	return (uint64_t) _mm512_reduce_or_epi64(acc);
}

/*
 * The same 8 at a time with AVX2, whose gathers have no mask register: a
 * lane past I or holding -1 gathers pos[0] and is dropped by valid.  The
 * scalar loop took 9% of the word vectors' build on an AVX2 machine.
 */
__attribute__((target("avx2")))
static uint64_t
prune_route_mask_avx2(const int32_t *via, int I, int a, const int32_t *pos,
					  bool rank_below)
{
	const __m256i one = _mm256_set1_epi64x(1);
	const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
	const __m256i zero = _mm256_setzero_si256();
	__m256i		acc = zero;

	for (int r0 = 0; r0 < I; r0 += 8)
	{
		__m256i		index = _mm256_add_epi32(lane, _mm256_set1_epi32(r0));
		__m256i		in = _mm256_cmpgt_epi32(_mm256_set1_epi32(I), index);
		__m256i		ids = _mm256_maskload_epi32(via + r0, in);
		__m256i		valid = _mm256_andnot_si256(_mm256_cmpgt_epi32(zero, ids), in);
		__m256i		b = _mm256_sub_epi32(_mm256_mask_i32gather_epi32(zero, pos, ids, valid, 4),
										 _mm256_set1_epi32(1));
		__m256i		detour = _mm256_and_si256(valid,
											  _mm256_cmpgt_epi32(b, _mm256_set1_epi32(a)));

		if (rank_below)
			detour = _mm256_and_si256(detour, _mm256_cmpgt_epi32(b, index));
		/* b > a >= 0 where detour is set, so the shifts stay in 0 .. 63 */
		acc = _mm256_or_si256(acc,
							  _mm256_and_si256(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(detour)),
											   _mm256_sllv_epi64(one, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(b)))));
		acc = _mm256_or_si256(acc,
							  _mm256_and_si256(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(detour, 1)),
											   _mm256_sllv_epi64(one, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(b, 1)))));
	}
	return (uint64_t) _mm256_extract_epi64(acc, 0) | (uint64_t) _mm256_extract_epi64(acc, 1) |
		(uint64_t) _mm256_extract_epi64(acc, 2) | (uint64_t) _mm256_extract_epi64(acc, 3);
}
#endif

/* The distance kernels' level (tests can force scalar ones). */
static PruneRouteMaskFn
prune_choose_route_mask(void)
{
	cagra_kernels_ready();
#ifdef PRUNE_HAVE_X86
	if (vec_kernels.isa == VEC_ISA_AVX512)
		return prune_route_mask_avx512;
	if (vec_kernels.isa == VEC_ISA_AVX2)
		return prune_route_mask_avx2;
#endif
	return prune_route_mask_scalar;
}

/* prune_count_detours for I <= 64: the counts are the masks' column sums. */
static void
prune_count_detours_masks(const PruneJob *job, const int32_t *row,
						  const int32_t *pos, int *count)
{
	int			I = job->I;
	bool		rank_below = job->detour == CAGRA_DETOUR_RANK_BELOW;
	uint64_t	masks[64];

	for (int a = 0; a < I - 1; a++)
		masks[a] = prune_is_edge(row, a, pos) ?
			job->route_mask(job->knn + (int64_t) row[a] * I, I, a, pos, rank_below) : 0;
	for (int b = 0; b < I; b++)
	{
		int			c = 0;

		for (int a = 0; a < b; a++)
			c += (masks[a] >> b) & 1;
		count[b] = c;
	}
}

/* count[b] = number of detourable routes for A's edge at rank b. */
static void
prune_count_detours(const PruneJob *job, const int32_t *row,
					const int32_t *pos, int *count)
{
	int			I = job->I;

	if (I <= 64)
	{
		prune_count_detours_masks(job, row, pos, count);
		return;
	}
	memset(count, 0, I * sizeof(int));
	for (int a = 0; a < I - 1; a++)
	{
		const int32_t *via;

		if (!prune_is_edge(row, a, pos))
			continue;
		via = job->knn + (int64_t) row[a] * I;
		for (int rank_in_d = 0; rank_in_d < I; rank_in_d++)
		{
			int32_t		b_node = via[rank_in_d];
			int			b;

			if (b_node < 0)
				continue;
			b = pos[b_node] - 1;
			/* B must be one of A's edges, farther than D */
			if (b <= a)
				continue;
			if (job->detour == CAGRA_DETOUR_RANK_BELOW && rank_in_d >= b)
				continue;
			count[b]++;
		}
	}
}

/*
 * Write A's kept edges in increasing (count, rank) order: a counting sort
 * on count (< I), stable in rank.
 */
static void
prune_select(const PruneJob *job, const int32_t *row, const int32_t *pos,
			 const int *count, int *bucket, int *order, int32_t *out)
{
	int			I = job->I;
	int			kept = 0;

	memset(bucket, 0, (I + 1) * sizeof(int));
	for (int r = 0; r < I; r++)
		bucket[count[r] + 1]++;
	for (int c = 1; c <= I; c++)
		bucket[c] += bucket[c - 1];
	for (int r = 0; r < I; r++)
		order[bucket[count[r]]++] = r;

	for (int i = 0; i < I && kept < job->d; i++)
		if (prune_is_edge(row, order[i], pos))
			out[kept++] = row[order[i]];
	while (kept < job->d)
		out[kept++] = -1;
}

static int
prune_range(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const PruneJob *job = arg;
	int32_t    *pos = job->pos[thread_no];
	int		   *count = job->work[thread_no];
	int		   *bucket = count + job->I;
	int		   *order = bucket + job->I + 1;

	for (int64_t at = begin; at < end; at++)
	{
		int64_t		a_node = job->order[at];
		const int32_t *row = job->knn + a_node * job->I;

		prune_mark_row(row, job->I, a_node, pos);
		prune_count_detours(job, row, pos, count);
		prune_select(job, row, pos, count, bucket, order,
					 job->pruned + a_node * job->d);
		for (int r = 0; r < job->I; r++)
			if (row[r] >= 0)
				pos[row[r]] = 0;
	}
	return 0;
}

static void
prune_free_scratch(PruneJob *job, int n_threads)
{
	for (int t = 0; t < n_threads; t++)
	{
		if (job->pos)
			free(job->pos[t]);
		if (job->work)
			free(job->work[t]);
	}
	free(job->pos);
	free(job->work);
}

CagraStatus
cagra_prune(const int32_t *knn, int64_t n, int I, int d, CagraDetour detour,
			int n_threads, const CagraInterrupt *interrupt, int32_t *pruned,
			char *errbuf, size_t errlen)
{
	PruneJob	job = {0};
	int32_t    *order;
	bool		ok;
	int			rc = 0;

	if (n < 1 || n > INT32_MAX || I < 1 || d < 1 || d > I)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "cannot prune %lld rows of degree %d to degree %d",
						   (long long) n, I, d);
	if ((unsigned) detour > CAGRA_DETOUR_RANK_BELOW || n_threads < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "invalid detour definition %d or thread count %d",
						   (int) detour, n_threads);
	if (cagra_graph_check(knn, n, I, "kNN graph", errbuf, errlen) != CAGRA_OK)
		return CAGRA_ERR_PARAM;

	n_threads = cagra_thread_count(n_threads);
	job.knn = knn;
	job.n = n;
	job.I = I;
	job.d = d;
	job.detour = detour;
	job.route_mask = prune_choose_route_mask();
	job.pruned = pruned;
	job.pos = calloc(n_threads, sizeof(int32_t *));
	job.work = calloc(n_threads, sizeof(int *));
	order = malloc(n * sizeof(int32_t));
	ok = job.pos != NULL && job.work != NULL && order != NULL &&
		cagra_locality_order(knn, n, I, order);
	job.order = order;
	for (int t = 0; ok && t < n_threads; t++)
	{
		job.pos[t] = calloc(n, sizeof(int32_t));
		job.work[t] = malloc((3 * I + 1) * sizeof(int));
		ok = job.pos[t] != NULL && job.work[t] != NULL;
	}
	if (ok)
		rc = cagra_parallel_for(n_threads, n, 1024, prune_range, &job, interrupt);
	prune_free_scratch(&job, n_threads);
	free(order);
	if (!ok)
		return cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
						   "out of memory for pruning %lld rows", (long long) n);
	if (rc == CAGRA_ERR_CANCELED)
		return cagra_error(CAGRA_ERR_CANCELED, errbuf, errlen, "pruning canceled");
	return CAGRA_OK;
}

/* ---------------------------------------------------------------------- */

/*
 * In order of the edge's rank in its source, then of the source: edges
 * their source ranks high come first.
 */
void
cagra_reverse_lists(const int32_t *graph, int64_t n, int d, int32_t *rev,
					int *n_rev)
{
	memset(n_rev, 0, n * sizeof(int));
	for (int k = 0; k < d; k++)
		for (int64_t src = 0; src < n; src++)
		{
			int32_t		dst = graph[src * d + k];

			if (dst >= 0 && dst != src && n_rev[dst] < d)
				rev[(int64_t) dst * d + n_rev[dst]++] = (int32_t) src;
		}
}

static bool
row_contains(const int32_t *row, int len, int32_t id)
{
	for (int i = 0; i < len; i++)
		if (row[i] == id)
			return true;
	return false;
}

/* Append id to out (length *len, capacity d) unless it is no edge or known. */
static void
merge_append(int32_t *out, int *len, int64_t self, int32_t id)
{
	if (id < 0 || id == self || row_contains(out, *len, id))
		return;
	out[(*len)++] = id;
}

static void
merge_row(const int32_t *fwd, const int32_t *rev, int n_rev, int d,
		  int64_t self, int32_t *out)
{
	int			len = 0;
	int			protected_edges = d / 2;

	for (int k = 0; k < protected_edges; k++)
		merge_append(out, &len, self, fwd[k]);
	for (int j = 0; j < n_rev && len < d; j++)
		merge_append(out, &len, self, rev[j]);
	for (int k = protected_edges; k < d && len < d; k++)
		merge_append(out, &len, self, fwd[k]);
	while (len < d)
		out[len++] = -1;
}

typedef struct MergeJob
{
	const int32_t *pruned;
	const int32_t *rev;
	const int  *n_rev;
	int			d;
	int32_t    *graph;
} MergeJob;

static int
merge_range(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const MergeJob *job = arg;
	int			d = job->d;

	(void) thread_no;			/* no per-thread scratch */
	for (int64_t i = begin; i < end; i++)
		merge_row(job->pruned + i * d, job->rev + i * d, job->n_rev[i], d, i,
				  job->graph + i * d);
	return 0;
}

CagraStatus
cagra_merge_reverse(const int32_t *pruned, int64_t n, int d, int n_threads,
					int32_t *graph, char *errbuf, size_t errlen)
{
	MergeJob	job;

	int32_t    *rev;
	int		   *n_rev;

	if (n < 1 || n > INT32_MAX || d < 1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "cannot merge reverse edges of %lld rows of degree %d",
						   (long long) n, d);
	if (cagra_graph_check(pruned, n, d, "pruned graph", errbuf, errlen) != CAGRA_OK)
		return CAGRA_ERR_PARAM;
	rev = malloc((size_t) n * d * sizeof(int32_t));
	n_rev = malloc(n * sizeof(int));
	if (rev == NULL || n_rev == NULL)
	{
		free(rev);
		free(n_rev);
		return cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
						   "out of memory for reverse edges of %lld rows",
						   (long long) n);
	}

	/* d reverse edges suffice: at most d/2 repeat a protected forward edge */
	cagra_reverse_lists(pruned, n, d, rev, n_rev);
	/* the rows are independent from here on */
	job.pruned = pruned;
	job.rev = rev;
	job.n_rev = n_rev;
	job.d = d;
	job.graph = graph;
	cagra_parallel_for(cagra_thread_count(n_threads), n, 4096, merge_range,
					   &job, NULL);
	free(rev);
	free(n_rev);
	return CAGRA_OK;
}
