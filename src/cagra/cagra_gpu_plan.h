/*
 * cagra_gpu_plan.h
 *		The device-memory plan of the GPU CAGRA build (cuda/cagra.cu): pure C,
 *		no CUDA, no PostgreSQL, unit-tested in test/unit/test_cagra_gpu_plan.c.
 *
 * Every device buffer the build allocates has an id below, and the build
 * asks cagra_gpu_buffer_bytes() for the size of each allocation, so that
 * what is planned and what is allocated cannot drift apart.  The build runs
 * in stages; the buffers alive during a stage are listed by
 * cagra_gpu_stage_buffers(), and a plan fits when the largest stage total
 * is within the budget.  The plan decides whether the data set stays on the
 * device (resident) or is streamed through it, and the block sizes of each
 * stage; it refuses (returns false) when not even the smallest blocks fit.
 *
 * Two kNN methods, as on the CPU (cagra.h):
 *	exact:		  query blocks of block_rows rows against column chunks of
 *				  block_cols rows, GEMM tiles, kc candidates per row re-ranked
 *				  by direct distances;
 *	partitioned:  k-means on a sample (Lloyd's iterations, GEMM assignments),
 *				  every row assigned to its nearest list, each list's rows
 *				  searched in blocks of list_queries rows among the rows of
 *				  its probed lists, list_candidates at a time.
 * Then pruning (the kNN graph and the pruned graph) and the reverse-edge
 * merge (four n x d edge arrays, the final graph, and the scratch of CUB's
 * radix sort, whose size the build queries from CUB before planning).
 */
#ifndef GNNVEC_CAGRA_GPU_PLAN_H
#define GNNVEC_CAGRA_GPU_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* The device buffers of the build. */
typedef enum CagraGpuBuffer
{
	/* every stage */
	CAGRA_GPU_BLAS_WORKSPACE,	/* given to cuBLAS (cublasSetWorkspace) */
	/* stage 1, both methods */
	CAGRA_GPU_KNN_GRAPH,		/* n x I ids */
	CAGRA_GPU_MEAN,				/* dim: the L2 centre */
	CAGRA_GPU_DATA,				/* n x dim, resident only */
	/* exact kNN */
	CAGRA_GPU_DATA_NORMS,		/* n: |y|^2, resident only */
	CAGRA_GPU_ROW_BLOCK,		/* R x dim, streamed only */
	CAGRA_GPU_COL_CHUNK,		/* C x dim, streamed only */
	CAGRA_GPU_COL_NORMS,		/* C, streamed only */
	CAGRA_GPU_GATHERED,			/* R x kc x dim candidates, streamed only */
	CAGRA_GPU_TILE,				/* R x C */
	CAGRA_GPU_TOP_DIST,			/* R x kc */
	CAGRA_GPU_TOP_IDS,			/* R x kc */
	/* partitioned kNN: k-means */
	CAGRA_GPU_CENTROIDS,		/* L x dim */
	CAGRA_GPU_CENTROID_NORMS,	/* L */
	CAGRA_GPU_SAMPLE,			/* S x dim */
	CAGRA_GPU_SAMPLE_NEAREST,	/* S: each sample row's centroid */
	CAGRA_GPU_SAMPLE_OFFSETS,	/* L + 1: the sample grouped by centroid */
	CAGRA_GPU_SAMPLE_MEMBERS,	/* S */
	/* partitioned kNN: rows to lists, lists to probes */
	CAGRA_GPU_ASSIGN_ROWS,		/* A x dim, streamed only */
	CAGRA_GPU_ASSIGN_TILE,		/* A x L: rows (or centroids) x centroids */
	CAGRA_GPU_ASSIGN_NEAREST,	/* A */
	CAGRA_GPU_PROBE_DIST,		/* A x pool */
	CAGRA_GPU_PROBE_IDS,		/* A x pool */
	/* partitioned kNN: the lists' searches */
	CAGRA_GPU_LIST_QUERY_IDS,	/* Q */
	CAGRA_GPU_LIST_QUERIES,		/* Q x dim */
	CAGRA_GPU_LIST_CAND_IDS,	/* P */
	CAGRA_GPU_LIST_CANDS,		/* P x dim */
	CAGRA_GPU_LIST_CAND_NORMS,	/* P */
	CAGRA_GPU_LIST_TILE,		/* Q x P */
	CAGRA_GPU_LIST_TOP_DIST,	/* Q x I */
	CAGRA_GPU_LIST_TOP_IDS,		/* Q x I */
	/* pruning and the reverse-edge merge */
	CAGRA_GPU_PRUNED,			/* n x d */
	CAGRA_GPU_EDGE_KEYS,		/* n x d, and the three below */
	CAGRA_GPU_EDGE_KEYS_SORTED,
	CAGRA_GPU_EDGE_SOURCES,
	CAGRA_GPU_EDGE_SOURCES_SORTED,
	CAGRA_GPU_FINAL_GRAPH,		/* n x d */
	CAGRA_GPU_SORT_SCRATCH,		/* CUB DeviceRadixSort temporary storage */
	CAGRA_GPU_N_BUFFERS
} CagraGpuBuffer;

/* The stages, in order; each frees its buffers before the next starts. */
typedef enum CagraGpuStage
{
	CAGRA_GPU_STAGE_EXACT_KNN,
	CAGRA_GPU_STAGE_KMEANS,
	CAGRA_GPU_STAGE_ASSIGN,
	CAGRA_GPU_STAGE_LIST_SEARCH,
	CAGRA_GPU_STAGE_PRUNE,
	CAGRA_GPU_STAGE_REVERSE,
	CAGRA_GPU_N_STAGES
} CagraGpuStage;

/* cuBLAS gets this much workspace of ours (its own default on Hopper). */
#define CAGRA_GPU_BLAS_WORKSPACE_BYTES ((size_t) 32 << 20)
/* Lloyd's iterations and sample rows per centroid, as on the CPU. */
#define CAGRA_GPU_KMEANS_ITERATIONS 5
#define CAGRA_GPU_KMEANS_SAMPLE_PER_CENTROID 32
/* Nearest lists ranked per list beyond `probes`, for lists short of rows. */
#define CAGRA_GPU_PROBE_EXTRA 16

/* What the plan is made for. */
typedef struct CagraGpuPlanInput
{
	int64_t		n;
	int			dim;
	int			intermediate_degree;	/* I */
	int			graph_degree;	/* d */
	int			knn_candidates; /* kc (exact method) */
	bool		partitioned;
	int			list_rows;		/* partitioned: > 1 */
	int			probes;			/* partitioned: >= 1 */
	size_t		sort_scratch_bytes; /* CUB's answer for n x d pairs */
	size_t		budget;			/* device bytes the build may use */
	bool		stream;			/* stream the data even if it would fit */
} CagraGpuPlanInput;

typedef struct CagraGpuPlan
{
	bool		resident;		/* the data set stays on the device */
	int64_t		n_lists;		/* L (partitioned) */
	int64_t		sample_rows;	/* S (partitioned) */
	int			probes;			/* probed lists per list, <= L */
	int			probe_pool;		/* nearest lists ranked per list, <= L */
	int			block_rows;		/* exact: R */
	int			block_cols;		/* exact: C */
	int			assign_rows;	/* partitioned: A */
	int			list_queries;	/* partitioned: Q */
	int			list_candidates;	/* partitioned: P */
	size_t		stage_bytes[CAGRA_GPU_N_STAGES];	/* 0: stage not run */
	size_t		peak_bytes;
} CagraGpuPlan;

/* Bytes of one buffer under a plan (0 when the plan does not use it). */
extern size_t cagra_gpu_buffer_bytes(const CagraGpuPlanInput *in,
									 const CagraGpuPlan *plan,
									 CagraGpuBuffer buffer);

/*
 * The buffers alive during a stage (at most CAGRA_GPU_N_BUFFERS written to
 * out); returns their number, 0 for a stage the method does not run.
 */
extern int	cagra_gpu_stage_buffers(const CagraGpuPlanInput *in,
									CagraGpuStage stage,
									CagraGpuBuffer *out);

/* Sum of the stage's buffers under a plan. */
extern size_t cagra_gpu_stage_bytes(const CagraGpuPlanInput *in,
									const CagraGpuPlan *plan,
									CagraGpuStage stage);

/* Lists, sample rows and probes of a partitioned build (also sets them). */
extern void cagra_gpu_plan_lists(const CagraGpuPlanInput *in,
								 CagraGpuPlan *plan);

/*
 * Choose the mode and block sizes: resident when every stage fits with the
 * data on the device (and in->stream is false), streamed otherwise, blocks
 * halved until they fit.
 * false, with a message, when no plan fits the budget.
 */
extern bool cagra_gpu_plan(const CagraGpuPlanInput *in, CagraGpuPlan *plan,
						   char *errbuf, size_t errlen);

/*
 * The host half of the partitioned kNN, here to be unit-tested.
 *
 * offsets[0 .. n_keys] and members: the items 0 .. count - 1 grouped by
 * key[i] in 0 .. n_keys - 1 (a counting sort; items in increasing order
 * within a group).
 */
extern void cagra_gpu_group_by_key(const int32_t *key, int64_t count,
								   int n_keys, int32_t *offsets,
								   int32_t *members);

/*
 * The candidate rows of list l (lists as offsets/members over n_lists):
 * its own rows, then those of the lists of pool (the pool_len lists
 * nearest l's centroid, nearest first, entries out of range skipped) until
 * `probes` lists are taken, l included, as the CPU probes
 * (cagra_partition.c).  While fewer than need rows are taken, further
 * lists of the pool follow, then every list in order (the CPU searches
 * such rows exhaustively instead), so that a row can find need - 1 others.
 * stamp (n_lists entries, never l + 1 on entry for any list) marks the
 * lists taken with l + 1.  Returns the number of rows written to cands.
 */
extern int64_t cagra_gpu_list_candidates(const int32_t *offsets,
										 const int32_t *members,
										 int64_t n_lists, int32_t l,
										 const int32_t *pool, int pool_len,
										 int probes, int64_t need,
										 int32_t *stamp, int32_t *cands);

/* A buffer's name, for messages. */
extern const char *cagra_gpu_buffer_name(CagraGpuBuffer buffer);

#ifdef __cplusplus
}
#endif

#endif							/* GNNVEC_CAGRA_GPU_PLAN_H */
