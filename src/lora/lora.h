/*
 * lora.h
 *		MicroLoRA adapters scoped per planner operator type, and the
 *		trajectory buffer that records what each operator type costs.
 *
 * The first part of this header is PostgreSQL-free (microlora.c, scopes.c,
 * trajectory.c): unit-testable on its own.  The last part declares the entry
 * points of the PostgreSQL glue (lora_*.c) for the rest of the extension.
 *
 * MicroLoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
 * Models", arXiv:2106.09685) applied to a query vector x (a row vector):
 *
 *		y = x + alpha * (x A) B,	A: dim x rank,	B: rank x dim
 *
 * The frozen weight is the identity, so an untrained adapter passes vectors
 * through unchanged: A starts random, B starts at zero (as in the paper).
 *
 * Operator scopes are the 17 operator types of the seed
 * (seeds/microlora-scoped-adaptation.txt), in 7 categories.  Each scope has
 * its own adapter, and each category has one shared adapter; while a scope
 * has fewer than LORA_FALLBACK_ADAPTS adaptations its output is blended with
 * its category's (category fallback, switchable).
 *
 * Mapping from PostgreSQL plan nodes (lora_hook.c; see also
 * gnnvec_lora_scopes()):
 *		SeqScan			SeqScan
 *		IndexScan		IndexScan or IndexOnlyScan on any index but gnnhnsw/ivfflat,
 *						and BitmapHeapScan (with its BitmapIndexScans)
 *		HnswScan		IndexScan or IndexOnlyScan on a gnnhnsw index
 *		IvfFlatScan		IndexScan or IndexOnlyScan on an ivfflat (pgvector) index
 *		NestedLoopJoin	NestLoop
 *		HashJoin		HashJoin (with its Hash)
 *		MergeJoin		MergeJoin
 *		Aggregate		Agg with AGG_PLAIN (no grouping)
 *		GroupBy			Agg with AGG_SORTED, AGG_HASHED or AGG_MIXED, and Group
 *		Project			ProjectSet (the one node whose job is projection)
 *		Sort			Sort, IncrementalSort
 *		Limit			Limit
 *		Materialize		Material
 *		Result			Result
 *		Filter, VectorDistance, Rerank
 *						no plan node: PostgreSQL evaluates quals and distance
 *						expressions inside other nodes, and reranking happens
 *						inside the gnnhnsw scan.  These scopes are adapters
 *						usable from SQL, never recorded as trajectories.
 */
#ifndef GNNVEC_LORA_H
#define GNNVEC_LORA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------------
 * Scopes and categories (scopes.c)
 * ------------------------------------------------------------------------
 */
typedef enum LoraScope
{
	LORA_SEQ_SCAN = 0,
	LORA_INDEX_SCAN,
	LORA_HNSW_SCAN,
	LORA_IVFFLAT_SCAN,
	LORA_NESTED_LOOP_JOIN,
	LORA_HASH_JOIN,
	LORA_MERGE_JOIN,
	LORA_AGGREGATE,
	LORA_GROUP_BY,
	LORA_FILTER,
	LORA_PROJECT,
	LORA_SORT,
	LORA_LIMIT,
	LORA_VECTOR_DISTANCE,
	LORA_RERANK,
	LORA_MATERIALIZE,
	LORA_RESULT
} LoraScope;

#define LORA_NUM_SCOPES 17

typedef enum LoraCategory
{
	LORA_CAT_SCAN = 0,
	LORA_CAT_JOIN,
	LORA_CAT_AGGREGATION,
	LORA_CAT_TRANSFORM,
	LORA_CAT_ORDER,
	LORA_CAT_VECTOR,
	LORA_CAT_UTILITY
} LoraCategory;

#define LORA_NUM_CATEGORIES 7

/* lora_scope_parse results that are not scopes */
#define LORA_SCOPE_UNKNOWN		(-1)	/* not a scope name nor an integer */
#define LORA_SCOPE_OUT_OF_RANGE (-2)	/* an integer outside 0..16 */

extern const char *lora_scope_name(int scope);
extern LoraCategory lora_scope_category(int scope);
extern const char *lora_category_name(int category);

/* Where the scope comes from in a plan, in words (for gnnvec_lora_scopes). */
extern const char *lora_scope_plan_nodes(int scope);

/*
 * A scope name (any case) or its number in decimal; returns the scope, or
 * LORA_SCOPE_UNKNOWN / LORA_SCOPE_OUT_OF_RANGE.
 */
extern int	lora_scope_parse(const char *text);

/* ------------------------------------------------------------------------
 * One adapter (microlora.c)
 * ------------------------------------------------------------------------
 */
#define LORA_MAX_RANK 8
#define LORA_DEFAULT_RANK 2
#define LORA_MAX_DIM 16000		/* the vector type's limit */

/* Adaptations after which a scope no longer leans on its category. */
#define LORA_FALLBACK_ADAPTS 10

/* Rewards are clipped to this magnitude so one call makes a bounded step. */
#define LORA_MAX_REWARD 1.0

typedef enum LoraStatus
{
	LORA_OK = 0,
	LORA_DIM_MISMATCH,			/* adapter initialised with another dimension */
	LORA_DIM_TOO_LARGE,			/* adapter storage cannot hold this dimension */
	LORA_NO_INPUT,				/* adapt/reward before any forward */
	LORA_DIVERGED,				/* an update overflowed; the adapter was reset */
	LORA_NOT_FINITE				/* the output overflowed (nothing was changed) */
} LoraStatus;

/*
 * Storage is owned by the caller (shared memory or backend memory) and
 * attached once; the maths never allocates.  Within mem, for the rank in
 * use: A transposed (rank rows of dim, so x A is rank dot products over
 * contiguous memory), then B (rank rows of dim).  The input an adaptation
 * applies to is the caller's: shared adapters serve many sessions, and each
 * adapts at its own last input.
 */
typedef struct LoraAdapter
{
	int			dim;			/* 0 until the first vector initialises it */
	int			rank;
	float		alpha;
	int			capacity;		/* largest dim that mem can hold */
	uint64_t	seed;			/* fixes A's initial values */
	uint64_t	forward_count;
	uint64_t	adapt_count;
	float	   *mem;
} LoraAdapter;

typedef struct LoraSettings
{
	int			rank;			/* for adapters initialised by this call */
	float		alpha;			/* likewise */
	float		learning_rate;	/* for this call's update */
} LoraSettings;

/* Floats of storage an adapter of this dimension needs (at any rank). */
extern size_t lora_adapter_floats(int dim);

/* Give an adapter its storage; leaves it uninitialised. */
extern void lora_adapter_attach(LoraAdapter *ad, float *mem, int capacity,
								uint64_t seed);

/* Drop what an adapter learned and its dimension; storage stays attached. */
extern void lora_adapter_reset(LoraAdapter *ad);

/*
 * Set dimension, rank and alpha; A uniform in +-1/sqrt(dim) from the
 * adapter's seed (the bound nn.Linear's default init gives, which the LoRA
 * reference code uses for A), B zero.
 */
extern LoraStatus lora_adapter_init(LoraAdapter *ad, int dim, int rank,
									float alpha);

static inline float *
lora_adapter_at(const LoraAdapter *ad)
{
	return ad->mem;
}

static inline float *
lora_adapter_b(const LoraAdapter *ad)
{
	return ad->mem + (size_t) ad->rank * ad->dim;
}

/* y += weight * alpha * (x A) B; y must not alias x. */
extern void lora_adapter_add_delta(const LoraAdapter *ad, const float *x,
								   float weight, float *y);

/*
 * One SGD step on the loss whose gradient with respect to this adapter's
 * output y is grad, taken at input x.  With h = x A and u = B grad^T:
 *		dL/dB[k][j] = alpha * h[k] * grad[j]
 *		dL/dA[i][k] = alpha * x[i] * u[k]
 * both computed from the parameters before the step.  Returns
 * LORA_DIVERGED (and resets the adapter) if a parameter overflows.
 */
extern LoraStatus lora_adapter_step(LoraAdapter *ad, const float *x,
									const float *grad, float learning_rate);

/* Frobenius norm of alpha * A B, in O(rank^2 dim) via the Gram matrices. */
extern double lora_adapter_delta_norm(const LoraAdapter *ad);

/* Trainable parameters: 2 * rank * dim (0 before initialisation). */
extern int64_t lora_adapter_param_count(const LoraAdapter *ad);

/* ------------------------------------------------------------------------
 * The scoped bank: one adapter per scope and per category (microlora.c)
 * ------------------------------------------------------------------------
 */
typedef struct LoraBank
{
	bool		category_fallback;
	LoraAdapter op[LORA_NUM_SCOPES];
	LoraAdapter cat[LORA_NUM_CATEGORIES];
} LoraBank;

/* Adapter index for seeds and storage: scopes 0..16, categories 17..23. */
#define LORA_NUM_ADAPTERS (LORA_NUM_SCOPES + LORA_NUM_CATEGORIES)

/*
 * Attach every adapter to storage of capacity dims from one arena of
 * LORA_NUM_ADAPTERS * lora_adapter_floats(capacity) floats (shared memory);
 * with arena NULL, adapters are left without storage for the caller to
 * attach one by one.  Fallback starts enabled.
 */
extern void lora_bank_init(LoraBank *bank, float *arena, int capacity);

/* Adapter by index 0..LORA_NUM_ADAPTERS-1. */
extern LoraAdapter *lora_bank_adapter(LoraBank *bank, int index);

/* Weight of the scope's own adapter in its output: min(adapts/10, 1). */
extern double lora_bank_scope_weight(const LoraBank *bank, int scope);

/*
 * The adapters a call on this scope would use and initialise: the scope's,
 * and its category's when fallback is on.  Returns how many (1 or 2).
 */
extern int	lora_bank_adapters_for(LoraBank *bank, int scope,
								   LoraAdapter **out);

/*
 * y = w * y_op + (1 - w) * y_cat, w = lora_bank_scope_weight(), or y_op
 * alone with fallback off.  Initialises adapters on their first vector.
 * LORA_NOT_FINITE (input so large that the output overflows) leaves the
 * counts as they were.  The caller keeps x if it means to adapt at it.
 */
extern LoraStatus lora_bank_forward(LoraBank *bank, int scope, const float *x,
									int dim, const LoraSettings *settings,
									float *y);

/*
 * Adapt by gradient: grad is dL/dy at input x (both of dim entries; x NULL:
 * LORA_NO_INPUT), normally the caller's last input to the scope.  Each
 * adapter in use (the scope's, and its category's with fallback on) takes
 * an SGD step as if it alone produced y: the blend only decides whose output
 * is trusted, both learn the same target.
 */
extern LoraStatus lora_bank_adapt(LoraBank *bank, int scope, const float *x,
								  const float *grad, int dim,
								  const LoraSettings *settings);

/*
 * Adapt by reward: improvement r (clipped to +-LORA_MAX_REWARD) scores the
 * output at input x (dim entries; x NULL: LORA_NO_INPUT), normally the
 * caller's last input to the scope.  The surrogate loss L = -r <y, x/|x|>
 * has gradient -r x/|x|: a positive reward moves the adapter's output
 * further along the input it was given, a negative one pulls it back.
 */
extern LoraStatus lora_bank_reward(LoraBank *bank, int scope, const float *x,
								   int dim, double improvement,
								   const LoraSettings *settings);

/* Reset the scope's adapter (its category adapter keeps what it learned). */
extern void lora_bank_reset_scope(LoraBank *bank, int scope);
extern void lora_bank_reset_all(LoraBank *bank);

/* ------------------------------------------------------------------------
 * Trajectories (trajectory.c)
 * ------------------------------------------------------------------------
 */
typedef struct LoraTrajectory
{
	uint64_t	id;				/* 1, 2, ... in recording order */
	int			op;				/* a LoraScope */
	int			emb_dim;		/* 0: no query embedding */
	double		exec_ms;		/* node's total time over all loops */
	double		baseline_ms;	/* mean exec_ms of the op type before this */
	double		improvement;	/* (baseline - exec) / baseline */
	double		rows;			/* rows the node returned over all loops */
	double		loops;
	int64_t		recorded_at;	/* the caller's timestamp */
} LoraTrajectory;

/*
 * A ring of capacity records, each with room for an embedding of max_dim
 * floats; record and embedding storage come from one block of
 * lora_ring_size() bytes owned by the caller.
 */
typedef struct LoraRing
{
	int			capacity;
	int			max_dim;
	uint64_t	total;			/* recorded since the last reset */
	uint64_t	embeddings_dropped; /* embeddings wider than max_dim */
	double		op_ms_sum[LORA_NUM_SCOPES];
	uint64_t	op_count[LORA_NUM_SCOPES];
	LoraTrajectory *slots;
	float	   *embeddings;
} LoraRing;

typedef struct LoraTrajectoryStats
{
	uint64_t	total;
	int			buffered;
	double		mean_improvement;
	double		best_improvement;
	double		success_rate;	/* share with improvement > 0 */
	double		variance;		/* population variance of improvement */
	int			high_quality;	/* improvement > threshold */
	uint64_t	embeddings_dropped;
	int			by_op[LORA_NUM_SCOPES];
} LoraTrajectoryStats;

extern size_t lora_ring_size(int capacity, int max_dim);
extern void lora_ring_init(LoraRing *ring, void *storage, int capacity,
						   int max_dim);
extern void lora_ring_reset(LoraRing *ring);

/*
 * Record one executed node.  The baseline is the running mean of exec_ms
 * over every earlier record of this op type since the last reset (the
 * first record of a type is its own baseline); embedding may be NULL.
 */
extern void lora_ring_record(LoraRing *ring, int op, double exec_ms,
							 double rows, double loops, const float *embedding,
							 int emb_dim, int64_t recorded_at);

/* Records held, and the i-th oldest (0 <= i < count). */
extern int	lora_ring_count(const LoraRing *ring);
extern const LoraTrajectory *lora_ring_get(const LoraRing *ring, int i);
extern const float *lora_ring_embedding(const LoraRing *ring, int i);

/* Statistics over the records held (total counts everything recorded). */
extern void lora_ring_stats(const LoraRing *ring, double threshold,
							LoraTrajectoryStats *stats);

/* ------------------------------------------------------------------------
 * PostgreSQL glue (lora_*.c)
 * ------------------------------------------------------------------------
 */

/* From _PG_init: settings, shared memory (when preloaded), executor hooks. */
extern void lora_init(void);

/*
 * Pass a query vector through a scope's adapter (with category fallback),
 * under the right lock in shared mode; ERRORs as the SQL functions do.
 * This is what gnnvec_lora_forward runs.  Index scans do not use the bank:
 * they use the index's own adapter (lora_index.c, below).
 */
extern void lora_apply(int scope, const float *x, float *y, int dim);

/* Settings (lora_shmem.c) */
extern void lora_settings(LoraSettings *settings);
extern bool lora_recording(void);
extern int	lora_max_dim(void);

/* The NOTICE that state is per backend, once per backend (not preloaded). */
extern void lora_notice_if_local(void);

/*
 * The bank and the ring: begin returns the shared one with its LWLock held
 * (exclusive or shared) or this backend's, end releases the lock.  An ERROR
 * in between is fine: aborting releases every LWLock.
 */
extern LoraBank *lora_bank_begin(bool exclusive);
extern void lora_bank_end(void);
extern LoraRing *lora_ring_begin(bool exclusive);
extern void lora_ring_end(void);

/* Storage for a backend-local scope's adapters about to see dim. */
extern void lora_bank_reserve(LoraBank *bank, int scope, int dim);

/* Executor hooks that record trajectories (lora_hook.c). */
extern void lora_hook_install(void);

/*
 * Per-index HnswScan adapters (lora_index.c), for files that include
 * postgres.h first.  Each gnnhnsw index may have its own adapter, trained
 * by gnnvec_train(..., scope => 'HnswScan') and stored in gnnvec_models
 * (kind "lora"); with gnnvec.adapt on, a scan of the index passes its query
 * through it.  These adapters are separate from the scoped bank above,
 * which is global per scope and serves the gnnvec_lora_* functions: an
 * adapter maps one index's queries towards its rows, in its dimension.
 */
#ifdef PG_VERSION_NUM
#include "utils/relcache.h"

#define LORA_KIND			"lora"
#define LORA_HNSW_SCOPE_NAME "HnswScan"

extern bool lora_adapt_setting;
extern void lora_index_init(void);
extern const LoraAdapter *lora_index_adapter(Relation index, int dim);
extern void lora_index_apply(const LoraAdapter *ad, float *query,
							 bool unit_norm);
extern bytea *lora_index_serialize(const LoraAdapter *ad);
extern void lora_index_deserialize(bytea *blob, LoraAdapter *ad,
								   const char *indexname);
#endif							/* PG_VERSION_NUM */

#endif							/* GNNVEC_LORA_H */
