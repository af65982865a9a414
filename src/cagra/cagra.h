/*
 * cagra.h
 *		CAGRA graph construction on the CPU: the PostgreSQL-free half of the
 *		CAGRA subsystem, shared by the index build, the unit tests and the
 *		standalone driver bench/bin/cagra_build.
 *
 * The algorithm is the one of Ootomo et al., "CAGRA: Highly Parallel Graph
 * Construction and Approximate Nearest Neighbor Search for GPUs" (ICDE 2024),
 * whose reference implementation is NVIDIA cuVS:
 *
 *	1. a kNN graph of degree I (intermediate_degree), rows sorted by
 *	   distance, no self edges: exact, by tiled GEMM (OpenBLAS) + per-row
 *	   top-k, or approximate, from k-means lists searched near each other
 *	   (cagra_partition.c) and refined by NN-descent (cagra_refine.c) when
 *	   n^2 is too much;
 *	2. rank-based pruning to degree d (graph_degree) by detourable-route
 *	   counts;
 *	3. reverse edges merged into the second half of every row;
 *	4. optionally, a repair that makes every node reachable from an entry.
 *
 * The result is an int32 neighbour array of n rows of d entries (row-major,
 * -1 in an empty slot), which the index writes as level 0 of an HNSW graph.
 * The same algorithm runs on the GPU (cuda/gnnvec_cuda.h), reached through
 * the loader declared at the end of this file.
 *
 * Every function reports failure by a CagraStatus and a message written into
 * the caller's buffer; nothing here exits, aborts or allocates with palloc.
 * Worker threads (pthreads) run only code of this folder, of
 * src/vector/distance.c and of OpenBLAS, with every signal blocked; a long
 * build can be stopped through CagraParams.interrupt.  The distance kernels
 * are initialised on first use (vec_distance_init), in the calling thread,
 * before any worker starts.
 *
 * Speed note: OpenBLAS chooses its GEMM kernels from the CPU model when it
 * loads; on virtual machines that report a generic model it falls back to
 * SSE3 ("Prescott"), 4-5x slower than its AVX-512 kernels.  Setting
 * OPENBLAS_CORETYPE=SkylakeX (AVX-512) or Haswell (AVX2) in the server's
 * environment fixes it; bench/bin/cagra_build does so by itself.
 */
#ifndef GNNVEC_CAGRA_H
#define GNNVEC_CAGRA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest intermediate degree accepted (bounds the GPU's shared memory). */
#define CAGRA_MAX_DEGREE 1024

typedef enum CagraMetric
{
	CAGRA_METRIC_L2 = 0,		/* squared Euclidean distance */
	CAGRA_METRIC_INNER_PRODUCT, /* negative inner product */
	CAGRA_METRIC_COSINE,		/* 1 - cosine similarity; zero vectors at 1 */
	CAGRA_METRIC_L1				/* Manhattan distance (no GEMM) */
} CagraMetric;

/*
 * What counts as a detourable route A -> D -> B for the edge A -> B of rank
 * b in A's list, D being one of A's closer neighbours (rank a < b):
 */
typedef enum CagraDetour
{
	CAGRA_DETOUR_ANY_RANK = 0,	/* cuVS: B is anywhere in D's list */
	CAGRA_DETOUR_RANK_BELOW		/* paper: B's rank in D's list is < b */
} CagraDetour;

/* How stage 2 chooses each node's d edges (cagra_select.c). */
typedef enum CagraPruning
{
	CAGRA_PRUNE_AUTO = 0,		/* by the survey's detour share
								 * (cagra_prune_graph) */
	CAGRA_PRUNE_DETOUR,			/* CAGRA's detour counts (cagra_prune) */
	CAGRA_PRUNE_DISTANCE		/* HNSW's heuristic (cagra_prune_distance) */
} CagraPruning;

typedef enum CagraStatus
{
	CAGRA_OK = 0,
	CAGRA_ERR_PARAM,			/* invalid parameter or input */
	CAGRA_ERR_NOMEM,			/* an allocation failed */
	CAGRA_ERR_DEVICE,			/* GPU module missing, or it failed */
	CAGRA_ERR_CANCELED			/* the caller's interrupt check said stop */
} CagraStatus;

/*
 * How a caller stops a long build: check(arg) is polled on the calling
 * thread between chunks of work, never on a worker thread; once it returns
 * true the stage winds down and returns CAGRA_ERR_CANCELED.  PostgreSQL
 * glue passes a function that reads InterruptPending, and runs
 * CHECK_FOR_INTERRUPTS() after the build has returned.  A NULL pointer or
 * a NULL check: never stop.
 */
typedef struct CagraInterrupt
{
	bool		(*check) (void *arg);
	void	   *arg;
} CagraInterrupt;

/* How stage 1 finds the kNN graph. */
typedef enum CagraKnnMethod
{
	CAGRA_KNN_EXACT = 0,		/* all pairs, tiled GEMM */
	CAGRA_KNN_PARTITIONED		/* k-means lists, nearest lists probed */
} CagraKnnMethod;

typedef struct CagraParams
{
	CagraMetric metric;
	CagraKnnMethod knn_method;	/* CPU and GPU alike */
	int			list_rows;		/* partitioned: rows per k-means list, 0:
								 * CAGRA_LIST_ROWS */
	int			list_probes;	/* partitioned: lists searched per row, 0:
								 * chosen by a check on the CPU,
								 * CAGRA_LIST_PROBES on the GPU */
	int			refine_iterations;	/* partitioned: NN-descent iterations at
									 * most after the lists, 0: none */
	int			intermediate_degree;	/* I: degree of the kNN graph */
	int			graph_degree;	/* d: degree of the final graph, d <= I */
	CagraDetour detour;
	CagraPruning pruning;		/* CPU only: the GPU prunes by detours */
	bool		guarantee_connectivity;
	int32_t		entry;			/* node the graph must be reachable from; -1:
								 * the node closest to the mean */
	int			n_threads;		/* 0: every online CPU */
	CagraInterrupt interrupt;	/* CPU stages only; the GPU's is one call */
} CagraParams;

/* What NN-descent did (cagra_knn_refine): -1 recalls without a check. */
typedef struct CagraRefineStats
{
	int			iterations;
	double		recall_before;
	double		recall_after;
} CagraRefineStats;

/* What the kNN stage measured and chose (cagra_knn_partitioned). */
#define CAGRA_LIST_PROBES_MAX 64
typedef struct CagraKnnStats
{
	int			probes;			/* lists searched per row */
	int			n_lists;
	/* checked rows: share of exact neighbours within p probes, p = 0.. */
	int			n_probe_recall;
	double		probe_recall[CAGRA_LIST_PROBES_MAX + 1];
	double		check_seconds;	/* the brute force of the checked rows */
	double		list_seconds;	/* k-means and the lists' search */
	double		refine_seconds;
	CagraRefineStats refine;
} CagraKnnStats;

/* What cagra_prune_survey measured on a kNN graph. */
typedef struct CagraPruneSurvey
{
	int64_t		rows;			/* rows surveyed */
	double		detour_share;	/* pairs (closer a, farther b) of a list with b
								 * in a's list */
	double		heuristic_kept; /* candidates of I the heuristic keeps, mean */
	double		lid;			/* local intrinsic dimension (MLE), -1: none */
} CagraPruneSurvey;

/* What cagra_prune_graph measured and chose. */
typedef struct CagraPruneStats
{
	CagraPruning pruning;		/* the one used: DETOUR or DISTANCE */
	CagraPruneSurvey survey;	/* AUTO only */
	double		survey_seconds;
	double		detour_seconds; /* cagra_prune */
	double		merge_seconds;	/* cagra_merge_reverse */
	double		distance_seconds;	/* cagra_prune_distance */
} CagraPruneStats;

/* What cagra_build measured and decided. */
typedef struct CagraStats
{
	double		setup_seconds;	/* GPU only: device context, cuBLAS handle */
	double		knn_seconds;
	double		prune_seconds;
	double		reverse_seconds;
	double		connect_seconds;
	CagraKnnStats knn;			/* CPU only */
	CagraPruneStats prune;		/* CPU only */
	int32_t		entry;			/* the entry node used */
	int64_t		unreachable;	/* nodes unreachable from entry before repair */
	int64_t		repair_edges;	/* edges the connectivity repair added */
	bool		gpu_data_resident;	/* GPU only: data set stayed on the device */
	int64_t		gpu_row_blocks; /* GPU only: kNN row (or list query) blocks */
	int64_t		gpu_lists;		/* GPU only: k-means lists (0: exact kNN) */
	int64_t		gpu_planned_bytes;	/* GPU only: the memory plan's peak */
	int64_t		gpu_budget_bytes;	/* GPU only: the memory it had */
} CagraStats;

/* Defaults derived from HNSW's m, as the index uses them: I = 3m, d = 2m. */
extern void cagra_params_default(CagraParams *params, int m);

/*
 * Check params against a data set of n rows of dim floats: 1 <= d <= I < n,
 * I <= CAGRA_MAX_DEGREE, known metric and detour, n_threads >= 0, entry
 * -1 or a row.  CAGRA_OK or CAGRA_ERR_PARAM with a message.
 */
extern CagraStatus cagra_params_check(const CagraParams *params, int64_t n,
									  int dim, char *errbuf, size_t errlen);

/*
 * The whole build: graph receives n * graph_degree neighbour ids.
 * stats may be NULL.
 */
extern CagraStatus cagra_build(const float *data, int64_t n, int dim,
							   const CagraParams *params, int32_t *graph,
							   CagraStats *stats, char *errbuf, size_t errlen);

/*
 * Stage 1: the exact kNN graph.  knn receives n rows of k ids, each sorted by
 * (distance, id) and without the row itself; dists (may be NULL) the
 * distances.  Requires 1 <= k < n.
 */
extern CagraStatus cagra_knn_exact(const float *data, int64_t n, int dim,
								   CagraMetric metric, int k, int n_threads,
								   const CagraInterrupt *interrupt,
								   int32_t *knn, float *dists,
								   char *errbuf, size_t errlen);

typedef struct CagraKnnScratch CagraKnnScratch;
extern CagraKnnScratch *cagra_knn_scratch_create(void);
extern void cagra_knn_scratch_free(CagraKnnScratch *scratch);

/*
 * Rows in panels, for a list's search: CAGRA_PANEL_ROWS rows stored
 * dimension after dimension, so that one load brings one dimension of 16
 * rows to multiply a query's value into.  Value d of row r lies at
 * cagra_panel_index(r, dim) + d x CAGRA_PANEL_ROWS.
 */
#define CAGRA_PANEL_ROWS 16
#define CAGRA_PANEL_ROUND(rows) \
	(((rows) + CAGRA_PANEL_ROWS - 1) / CAGRA_PANEL_ROWS * CAGRA_PANEL_ROWS)

static inline int64_t
cagra_panel_index(int64_t row, int dim)
{
	return row / CAGRA_PANEL_ROWS * CAGRA_PANEL_ROWS * dim + row % CAGRA_PANEL_ROWS;
}

/*
 * Rows as 16-bit codes, for the products of a list's search: a row y
 * becomes round(y x s) with s = cagra_code_limit(dim) / max |y_d|, so that
 * a product of two codes, summed over the dimensions in 32-bit integers,
 * cannot overflow (dim x limit^2 < 2^31), and x.y is that sum divided by
 * both rows' s.  The rounding error of x.y is about 2e-5 |x| |y| at any
 * dimension (limit falls as 1 / sqrt(dim)), well below the gaps between
 * a row's neighbours.  Codes of a panel come in pairs of dimensions, each
 * pair of a row in 32 bits (what one multiply-add of 16-bit pairs takes):
 * the pair p of row r lies at cagra_code_index(r, dim) + p x 2
 * CAGRA_PANEL_ROWS; an odd dim gets a zero last dimension.
 */
#define CAGRA_CODE_DIM(dim) (((dim) + 1) / 2 * 2)

static inline int64_t
cagra_code_index(int64_t row, int dim)
{
	return row / CAGRA_PANEL_ROWS * CAGRA_PANEL_ROWS * CAGRA_CODE_DIM(dim) +
		row % CAGRA_PANEL_ROWS * 2;
}

extern int	cagra_code_limit(int dim);
extern float cagra_code_row(const float *row, int dim, int16_t *codes);

/*
 * The partitioned stage's search of one list (cagra_partition.c), where
 * each row probes lists of its own: the panels hold every row of the data
 * set, list after list, each list from a new panel (list m: panel rows
 * panel_offsets[m] .. on, offsets[m + 1] - offsets[m] of them; the rest of
 * its last panel zero), already in the search's form: unit length for
 * cosine, as given else, then (but under L1) less its list's centre
 * (centres: n_lists x dim, the lists' means in that form), under L2 with
 * its squared length in norms (norms: by position offsets[m] + j).  L1
 * keeps them in floats (panels);
 * the other metrics, whose values are products, as codes (codes, and
 * code_scales: each panel row's 1 / s, 0 for padding), which halve the copy
 * and take two dimensions a multiply-add.  The queries are query_list's
 * rows; the query at position q of the list is ranked against the rows of
 * list segment_list[s] when bit s of its mask (masks + q x mask_words) is
 * set.  Each probed list is met by the queries that probe it together,
 * a block of queries against a panel at a time, so that the rows of a
 * list, which mostly probe the same lists, share the loads of the probed
 * rows; under L2 a query's distance to another list's rows is taken as
 * that of the query moved to their centre, so that the rounding stays
 * that of near rows (cagra_knn.c).  knn and dists (nq x k) receive each
 * query's k best by those products' values, without recomputing them
 * through the distance kernels: the codes' rounding apart from exact
 * (near ties may come out in another order), and cheaper; the
 * ids are positions (offsets), and a query that meets fewer than k rows
 * gets -1 (and INFINITY) for the rest.  It runs on the calling thread
 * alone, for callers that run it inside their own worker threads, and
 * expects the distance kernels to be initialised already
 * (cagra_kernels_ready).  scratch (from
 * cagra_knn_scratch_create, one per thread) keeps its memory between
 * calls.  Returns false when out of memory.
 */
typedef struct CagraKnnSegments
{
	const float *panels;		/* L1: panel_offsets[n_lists] x dim */
	const int16_t *codes;		/* else: panel_offsets[n_lists] x
								 * CAGRA_CODE_DIM(dim) */
	const float *code_scales;	/* else: panel_offsets[n_lists] */
	const float *norms;			/* L2: each row's squared length, else NULL */
	const float *centres;		/* but L1: n_lists x dim, else NULL */
	const int64_t *offsets;		/* n_lists + 1: positions of the rows */
	const int64_t *panel_offsets;	/* n_lists + 1: of their panel rows */
	int			dim;
	CagraMetric metric;
	int32_t		query_list;
	int			n_segments;
	const int32_t *segment_list;	/* n_segments lists */
	const uint64_t *masks;		/* the query list's rows x mask_words */
	int64_t		mask_words;		/* CAGRA_SEGMENT_WORDS(n_segments) or more */
} CagraKnnSegments;

#define CAGRA_SEGMENT_WORDS(n_segments) (((int64_t) (n_segments) + 63) / 64)

extern bool cagra_knn_segments_serial(const CagraKnnSegments *segments, int k,
									  CagraKnnScratch *scratch,
									  int32_t *knn, float *dists);

/*
 * Rows whose exact kNN is known, to measure an approximate kNN graph by
 * (cagra_check.c): CAGRA_KNN_CHECK_ROWS evenly spaced rows (all rows of a
 * smaller set), their k nearest rows by brute force, the row itself left
 * out.  cagra_knn_check_recall gives the share of those neighbours that
 * the rows of knn (n x k) hold.
 */
typedef struct CagraKnnCheck
{
	int64_t		n_rows;
	int			k;
	int64_t    *rows;
	int32_t    *truth;			/* n_rows x k */
} CagraKnnCheck;

#define CAGRA_KNN_CHECK_ROWS 256
extern CagraStatus cagra_knn_check_prepare(CagraKnnCheck *check,
										   const float *data, int64_t n,
										   int dim, CagraMetric metric, int k,
										   int n_threads,
										   const CagraInterrupt *interrupt,
										   char *errbuf, size_t errlen);
extern double cagra_knn_check_recall(const CagraKnnCheck *check,
									 const int32_t *knn);
extern void cagra_knn_check_free(CagraKnnCheck *check);

/*
 * NN-descent refinement of a kNN graph (n rows of k ids, -1 allowed in
 * empty slots; dists: its distances on return, or NULL): at most
 * `iterations` local joins of `sample` new and old neighbours per node and
 * direction (cagra_refine.c).  It stops early when fewer than
 * CAGRA_REFINE_DELTA x n x k entries changed in an iteration, or, when
 * target_recall > 0, as soon as the rows of `check` (prepared here when
 * NULL) hold that share of their exact neighbours (no iteration at all
 * when they do from the start) or an iteration from the third on raised
 * that share by less than CAGRA_REFINE_MIN_GAIN.  The rows come back
 * sorted by (distance, id), distances computed afresh; the result does not
 * depend on n_threads.  stats (may be NULL) reports the iterations done and
 * the checked rows' recall before and after (-1 without a check).
 * `searched` (may be NULL) says which pairs the graph's rows were ranked
 * against already; they are not offered again (CagraSearchedPairs below).
 */
typedef struct CagraSearchedPairs CagraSearchedPairs;

typedef struct CagraRefineOptions
{
	int			iterations;
	int			sample;
	double		target_recall;	/* 0: no check */
	const CagraKnnCheck *check; /* NULL: prepared when target_recall > 0 */
	const CagraSearchedPairs *searched; /* NULL: no pair ranked before */
} CagraRefineOptions;

/*
 * Which rows the kNN graph's rows were already ranked against (the
 * partitioned stage's probed lists): row q was a candidate of row p when
 * bit list_of[p] x n_lists + list_of[q] of `searched` is set.  NN-descent
 * does not offer q to p's list then, since the list, whose worst distance
 * only falls, would reject it again (up to the rounding of the lists'
 * GEMM ranking), and skips the pair's distance when neither end needs it.
 * Most pairs of a node's neighbours lie in lists probed for each other:
 * on the word vectors (39 probes) two iterations took 0.65 s instead of
 * 2.0 s, to the same checked kNN recall.  The bits are kept only while
 * they cost at most CAGRA_SEARCHED_ROW_BYTES a row (n_lists^2 / 8 bytes in
 * all: up to about 2.5M rows at 400 rows a list); NN-descent then offers
 * every pair, to the same result.
 */
#define CAGRA_SEARCHED_ROW_BYTES 2
struct CagraSearchedPairs
{
	int			n_lists;
	const int32_t *list_of;		/* n */
	const uint64_t *searched;	/* n_lists x n_lists bits */
};

#define CAGRA_SEARCHED_WORDS(n_lists) \
	(((uint64_t) (n_lists) * (n_lists) + 63) / 64)

/* Whether every row of list lp ranked the rows of list lq. */
static inline bool
cagra_lists_searched(const CagraSearchedPairs *pairs, int32_t lp, int32_t lq)
{
	uint64_t	bit = (uint64_t) lp * pairs->n_lists + lq;

	return (pairs->searched[bit >> 6] >> (bit & 63)) & 1;
}

static inline bool
cagra_pair_searched(const CagraSearchedPairs *pairs, int32_t p, int32_t q)
{
	return cagra_lists_searched(pairs, pairs->list_of[p], pairs->list_of[q]);
}

#define CAGRA_REFINE_ITERATIONS 20	/* a bound: the checked gain stops first */
#define CAGRA_REFINE_SAMPLE 10
#define CAGRA_REFINE_DELTA 0.001
#define CAGRA_REFINE_TARGET_RECALL 0.95
#define CAGRA_REFINE_MIN_GAIN 0.01
#define CAGRA_REFINE_MIN_GAIN_FROM 2	/* iteration (from 0) the gain rule
										 * starts at */

/* Bytes per row cagra_knn_refine allocates on top of the kNN graph and dists. */
extern size_t cagra_knn_refine_row_bytes(int k, int sample);
extern CagraStatus cagra_knn_refine(const float *data, int64_t n, int dim,
									CagraMetric metric, int k,
									const CagraRefineOptions *options,
									int n_threads,
									const CagraInterrupt *interrupt,
									int32_t *knn, float *dists,
									CagraRefineStats *stats,
									char *errbuf, size_t errlen);

/*
 * Approximate kNN graph from k-means lists, for data sets where the exact
 * O(n^2) stage is too slow: one centroid per about list_rows rows (0:
 * CAGRA_LIST_ROWS), every row in the list of its nearest centroid, and
 * each row searched among the rows of the `probes` lists whose centroids
 * are nearest the row, its own list first.  probes 0: chosen from the data
 * set by the rows of a CagraKnnCheck: the share of their exact neighbours
 * that p probed lists hold is known for every p without a search
 * (cagra_list_choose_probes).  Same output contract as cagra_knn_exact,
 * except that rows are ranked by the products' values
 * (cagra_knn_segments_serial; for L2 on copies centred on the lists'
 * centres); rows whose probed lists hold fewer than k other rows get an
 * exact search.  Besides the graph it holds a copy of the rows (n x (dim +
 * 1) floats, and up to CAGRA_PANEL_ROWS - 1 rows of padding a list) and
 * each row's probed lists while the lists are searched.
 * Then at most refine_iterations (0: none) of cagra_knn_refine, aiming at
 * CAGRA_REFINE_TARGET_RECALL on the same checked rows and told which pairs
 * of lists were searched by all their rows (CagraSearchedPairs); refined
 * rows' distances are recomputed and the rows sorted by (distance, id).
 * stats (may be NULL) says what was measured and chosen.
 */
#define CAGRA_LIST_ROWS 400
#define CAGRA_LIST_PROBES 5		/* the GPU's fixed number (no check there) */
#define CAGRA_LIST_TARGET_RECALL 0.95
#define CAGRA_LIST_MIN_GAIN 0.002
#define CAGRA_LIST_GAIN_WINDOW 4

extern CagraStatus cagra_knn_partitioned(const float *data, int64_t n, int dim,
										 CagraMetric metric, int k,
										 int list_rows, int probes,
										 int refine_iterations,
										 int n_threads,
										 const CagraInterrupt *interrupt,
										 int32_t *knn, float *dists,
										 CagraKnnStats *stats,
										 char *errbuf, size_t errlen);

/*
 * The probes for a recall curve (recall[p]: share of the checked rows'
 * exact neighbours within p probed lists, p = 0 .. max_probes): the fewest
 * p >= 1 with recall[p] >= target, or the first p whose next
 * CAGRA_LIST_GAIN_WINDOW probes would add less than min_gain each on
 * average (a window, because one probe's gain on the checked rows is
 * noisy) unless the target lies within that window (then the probes that
 * reach it: cheaper than NN-descent, whose setup alone costs about as much
 * as a probe or two), or max_probes.
 *
 * Why min_gain: each probe costs every row products with list_rows more
 * rows, and NN-descent, which takes over from the lists, costs more per
 * point of recall than a probe that adds 0.2 point: on the word vectors 8,
 * 16, 26, 39 and 64 probes (then NN-descent to 0.95) cost 1.43, 1.45,
 * 1.31, 0.99 and 0.94 times the HNSW build's CPU time; on tf-idf, where
 * NN-descent from 12 probes stalls at 0.48, 64 probes start it at 0.41
 * and it reaches 0.66 (bench/bin/cagra_build --index --probes N).  Those
 * were probes per list; with probes per row, 8, 12, 16, 20 and 31 (the
 * chosen) probes, then NN-descent, built the words' graph in 4.36, 3.89,
 * 2.92, 3.16 and 3.64 s: 16 was cheaper than the chosen count, 8 and 12
 * dearer, and the rule was not fitted again (docs/cagra.md, eleventh
 * pass).
 */
extern int	cagra_list_choose_probes(const double *recall, int max_probes,
									 double target, double min_gain);

/* Stage 1 as params say (exact or partitioned); stats may be NULL. */
extern CagraStatus cagra_knn(const float *data, int64_t n, int dim,
							 const CagraParams *params, int32_t *knn,
							 CagraKnnStats *stats, char *errbuf, size_t errlen);

/*
 * Exact k nearest rows of base for each of nq queries (ground truth for
 * benchmarks, and the engine of cagra_knn_exact).  Requires 1 <= k <= n.
 */
extern CagraStatus cagra_brute_force(const float *base, int64_t n,
									 const float *queries, int64_t nq, int dim,
									 CagraMetric metric, int k, int n_threads,
									 const CagraInterrupt *interrupt,
									 int32_t *ids, float *dists,
									 char *errbuf, size_t errlen);

/*
 * The GEMM selects this many candidates per row before their distances are
 * recomputed directly and the best k kept: the slack absorbs the rounding
 * of |x|^2 + |y|^2 - 2 x.y.  The GPU module is given the same number.
 */
extern int	cagra_knn_candidates(int k, int64_t n);

/*
 * Stage 2: rank-based pruning of a kNN graph (n rows of I ids sorted by
 * distance; -1 entries allowed and ignored) to n rows of d ids, each row in
 * increasing (detour count, rank) order.
 */
extern CagraStatus cagra_prune(const int32_t *knn, int64_t n, int knn_degree,
							   int d, CagraDetour detour, int n_threads,
							   const CagraInterrupt *interrupt,
							   int32_t *pruned, char *errbuf, size_t errlen);

/*
 * Stages 2 and 3 by distance (cagra_select.c): graph (n x d) receives each
 * node's list selected by HNSW's neighbour heuristic among its kNN list
 * (n x I, -1 allowed), then again among that list and the nodes whose
 * selected lists hold it.  The result does not depend on n_threads.
 */
extern CagraStatus cagra_prune_distance(const float *data, int64_t n, int dim,
										CagraMetric metric, const int32_t *knn,
										int knn_degree, int d, int n_threads,
										const CagraInterrupt *interrupt,
										int32_t *graph,
										char *errbuf, size_t errlen);

/* Measure a kNN graph (n x I) on evenly spaced rows, to choose the pruning. */
extern void cagra_prune_survey(const float *data, int64_t n, int dim,
							   CagraMetric metric, const int32_t *knn,
							   int knn_degree, CagraPruneSurvey *survey);

/*
 * Stages 2 and 3 as params->pruning says, from the kNN graph (n x I) into
 * graph (n x d): DETOUR, cagra_prune and cagra_merge_reverse; DISTANCE,
 * cagra_prune_distance; AUTO, DISTANCE when the survey's detour share is
 * below CAGRA_PRUNE_DISTANCE_SHARE, except under inner product (whose
 * "distance" is no metric: the heuristic's geometry does not hold), and
 * DETOUR otherwise.  At most 3 d + 1 ints per row of scratch.  The result
 * does not depend on n_threads.
 *
 * The share says how much the counts can tell: an edge at rank b has about
 * share x b detourable routes, so at share 0.2 and d = 32 the edges around
 * the cut average fewer than 7, a count whose chance variation (Poisson,
 * about its square root) is as large as the differences the pruning ranks
 * by.  Measured (bench/cagra_bench.sh, docs/cagra.md): 0.07 on random
 * rows, 0.09 on tf-idf, 0.11 on the demo's topics, where distance pruning
 * gains up to 5 points at ef 10 or loses within noise; 0.24 on the word
 * vectors and 0.32 on Fashion-MNIST, where it loses 0.5-1 point and costs
 * CPU time; 0.5-0.8 on the clustered sets.
 */
#define CAGRA_PRUNE_DISTANCE_SHARE 0.2
extern CagraStatus cagra_prune_graph(const float *data, int64_t n, int dim,
									 const CagraParams *params,
									 const int32_t *knn, int32_t *graph,
									 CagraPruneStats *stats,
									 char *errbuf, size_t errlen);

/*
 * The reverse lists of a graph (n x d): rev (n x d) receives, for each
 * node, the nodes whose rows hold it, by the edge's place in its source's
 * row, then by source id, at most d; n_rev (n) how many.
 */
extern void cagra_reverse_lists(const int32_t *graph, int64_t n, int d,
								int32_t *rev, int *n_rev);

/*
 * Stage 3: graph (n x d) = the first d/2 edges of each pruned row, then the
 * reverse edges of the pruned graph (sources in order of the edge's rank in
 * the source's row, then of source id), then the remaining pruned edges;
 * duplicates skipped, -1 where nothing is left.  The rows are merged on
 * n_threads threads (0: every online CPU).
 */
extern CagraStatus cagra_merge_reverse(const int32_t *pruned, int64_t n, int d,
									   int n_threads, int32_t *graph,
									   char *errbuf, size_t errlen);

/*
 * Stage 4: make every node reachable from entry by replacing edges that no
 * node depends on (see cagra_connect.c).  data and metric place the new
 * edges.  unreachable and repair_edges (may be NULL) report what was done.
 */
extern CagraStatus cagra_guarantee_connectivity(int32_t *graph, int64_t n,
												int d, const float *data,
												int dim, CagraMetric metric,
												int32_t entry,
												int64_t *unreachable,
												int64_t *repair_edges,
												char *errbuf, size_t errlen);

/*
 * Stage 4 for a graph built by stages 1-3 (here or on the GPU): choose the
 * entry (params->entry, or cagra_entry_node), then repair connectivity if
 * params ask for it, else count the unreachable nodes.  Fills the entry,
 * unreachable, repair_edges and connect_seconds fields of stats.
 */
extern CagraStatus cagra_finish(const float *data, int64_t n, int dim,
								const CagraParams *params, int32_t *graph,
								CagraStats *stats, char *errbuf, size_t errlen);

/* The node closest (L2; cosine for cosine) to the mean of the rows: the default entry. */
extern int32_t cagra_entry_node(const float *data, int64_t n, int dim,
								CagraMetric metric);

/* Number of nodes reachable from entry over graph (n x d). */
extern int64_t cagra_count_reachable(const int32_t *graph, int64_t n, int d,
									 int32_t entry, char *errbuf, size_t errlen);

/* Distance between two vectors under metric, as the graph builder sees it. */
extern float cagra_distance(CagraMetric metric, const float *a,
							const float *b, int dim);

/*
 * out[r * ld + c] = a[r] . b[c], or |a[r] - b[c]|^2 with squared_difference,
 * for na x nb rows given by pointer, in register tiles
 * (cagra_products.c).  A pair gives the same float from any call and in
 * either order.  With upper (a and b the same rows), only c > r is
 * guaranteed to be filled.
 */
extern void cagra_row_products(const float *const *a, int na,
							   const float *const *b, int nb, int dim,
							   bool squared_difference, bool upper,
							   float *out, int ld);

/*
 * Greedy beam search (HNSW's search-layer on one level) over a graph of
 * degree d from entry: the k closest nodes found with a beam of ef >= k.
 * Entries outside 0..n-1 are skipped, like -1.
 * A search context holds the visited marks and heaps for one thread.
 */
typedef struct CagraSearch CagraSearch;

extern CagraSearch *cagra_search_create(int64_t n, int max_ef);
extern void cagra_search_free(CagraSearch *search);

/* Returns the number of results (<= k), or -1 on bad arguments. */
extern int	cagra_search(CagraSearch *search, const int32_t *graph, int64_t n,
						 int d, const float *data, int dim, CagraMetric metric,
						 const float *query, int32_t entry, int ef, int k,
						 int32_t *ids, float *dists);


/* Seconds since an arbitrary point (monotonic clock), for stage timings. */
extern double cagra_now(void);

/* Run fn(arg, thread_no, begin, end) over [0, n_items) in chunks. */
typedef int (*CagraRangeFn) (void *arg, int thread_no,
							 int64_t begin, int64_t end);

/*
 * Split [0, n_items) into chunks handed out to n_threads threads (the caller
 * is thread 0); returns the first non-zero value fn returned, 0 if none, or
 * CAGRA_ERR_CANCELED when interrupt (may be NULL) said stop.  Fewer threads
 * run when some cannot be started (the caller alone at worst); thread_no
 * stays < n_threads, so per-thread scratch indexed by it is safe.  Workers
 * start with every signal blocked, so that signal handlers (PostgreSQL's)
 * only ever run on the calling thread.
 */
extern int	cagra_parallel_for(int n_threads, int64_t n_items, int64_t chunk,
							   CagraRangeFn fn, void *arg,
							   const CagraInterrupt *interrupt);

/*
 * fn(arg) on a thread of its own, every signal blocked, while the caller
 * goes on; NULL when no thread could be started (the caller then runs fn
 * itself).  fn must be PostgreSQL-free code that neither allocates from a
 * shared allocator nor raises errors.  cagra_thread_join waits for it
 * (NULL: nothing to wait for).
 */
typedef struct CagraThread CagraThread;
extern CagraThread *cagra_thread_start(void (*fn) (void *arg), void *arg);
extern void cagra_thread_join(CagraThread *t);

/* n_threads as given, or the number of online CPUs when 0. */
extern int	cagra_thread_count(int n_threads);

/* Format a message into errbuf (if any) and return status. */
extern CagraStatus cagra_error(CagraStatus status, char *errbuf, size_t errlen,
							   const char *fmt,...)
			__attribute__((format(printf, 4, 5)));

/*
 * graph's rows (n x width ids, -1 allowed) in breadth-first order into
 * order (n): the order for stages that read each row's neighbours' vectors
 * (cache locality).  false when out of memory (n bytes).
 */
extern bool cagra_locality_order(const int32_t *graph, int64_t n, int width,
								 int32_t *order);

/*
 * CAGRA_ERR_PARAM with a message naming the graph (name) unless every entry
 * of graph (n rows of degree ids) is -1 or a node 0..n-1.
 */
extern CagraStatus cagra_graph_check(const int32_t *graph, int64_t n,
									 int degree, const char *name,
									 char *errbuf, size_t errlen);

/* Pick the distance kernels if nobody has yet (call before threads start). */
extern void cagra_kernels_ready(void);

/*
 * Level 0 of an HNSW build graph (hnsw.h) from a CAGRA graph of g->n rows
 * of degree ids, made navigable by long edges through the graph's upper
 * levels (cagra_hnsw.c), which must be linked already
 * (hnsw_graph_link_upper); with drop_covered_long_edges (for graphs pruned
 * by distance) only those whose direction no CAGRA edge of the row covers.
 * dropped receives the number of CAGRA edges dropped (out of range, or
 * beyond 2m), connected the number of edges added so that every node is
 * reachable from the entry point (hnsw_graph_connect's pass, its searches
 * on the threads).  Runs on n_threads threads (0: every online CPU).
 */
struct HnswGraph;
extern CagraStatus cagra_hnsw_level0(struct HnswGraph *g, const int32_t *graph,
									 int degree, bool drop_covered_long_edges,
									 int n_threads,
									 const CagraInterrupt *interrupt,
									 int64_t *dropped, int64_t *connected,
									 char *errbuf, size_t errlen);

/* ------------------------------------------------------------------------
 * The GPU module (cuda/gnnvec_cuda.so), loaded with dlopen.
 */
typedef struct CagraGpu CagraGpu;

/* Load the module at path; NULL with a message when it cannot be used. */
extern CagraGpu *cagra_gpu_open(const char *path, char *errbuf, size_t errlen);
extern void cagra_gpu_close(CagraGpu *gpu);

/* Number of CUDA devices (0 when the driver sees none). */
extern CagraStatus cagra_gpu_device_count(CagraGpu *gpu, int *count,
										  char *errbuf, size_t errlen);
extern CagraStatus cagra_gpu_device_info(CagraGpu *gpu, int device,
										 char *name, size_t name_len,
										 size_t *total_bytes,
										 char *errbuf, size_t errlen);

/*
 * Stages 1-3 on a GPU (device_bytes caps the device memory used, 0: what is
 * free; stream_data streams the data set through the device even when it
 * would fit, to test that path), then stage 4 on the CPU when asked.  knn (may be NULL) receives the
 * kNN graph (n x I) for comparisons.  stats->connect_seconds covers stage 4.
 */
extern CagraStatus cagra_gpu_build(CagraGpu *gpu, int device,
								   size_t device_bytes, bool stream_data,
								   const float *data,
								   int64_t n, int dim, const CagraParams *params,
								   int32_t *knn, int32_t *graph,
								   CagraStats *stats,
								   char *errbuf, size_t errlen);

/*
 * PostgreSQL glue (cagra_sql.c), visible only after postgres.h: the module
 * at $pkglibdir/gnnvec_cuda.so, opened once per backend; NULL with a message
 * when it cannot be used.
 */
#ifdef PG_VERSION_NUM
extern CagraGpu *cagra_gpu_module_try(char *errbuf, size_t errlen);
#endif

#endif							/* GNNVEC_CAGRA_H */
