/*
 * train.c
 *		gnnvec_train (supervised from (query, positive) pairs, or
 *		self-supervised from the graph), streamed in bounded memory.
 *
 * A training example is what the reranker sees at search time: the
 * query's candidates from the index's own graph search (hard negatives),
 * plus random rows of the index, with the positive among them (it replaces
 * the farthest candidate when the search missed it), less the candidates
 * that are likely relevant too (likely_relevant).  The loss is the InfoNCE
 * of the positive's similarity cos(q', c') (gnn_train_step).  A validation
 * split is held out and measured as a reranked index scan sees it
 * (validation_example: the scan's candidates, nothing injected or
 * removed); after each epoch the score's blend of raw distance,
 * similarity and neighbourhood mean is chosen on it (gnn.h), the epoch
 * with the best validation mean rank of the positives is kept, and when
 * no blend beats the plain index scan the model ranks by raw distance
 * alone, with a WARNING, so training cannot make ranking worse than the
 * plain scan on held-out pairs.  Progress: a NOTICE per epoch.
 *
 * Training streams (PairSource): pairs_sql is read through a cursor,
 * FETCH_ROWS rows at a time, once per pass; examples are built WINDOW at
 * a time, shuffled within the window and trained on in batches; random
 * negatives are elements drawn from the index pages.  Only the held-out
 * pairs stay for the whole call.  What a call holds is bounded by
 * maintenance_work_mem (TrainBudget): the elements read from the index
 * (GnnIndexView) are forgotten whenever they outgrow their share.
 *
 * With scope HnswScan the same examples train the index's MicroLoRA query
 * adapter instead of a GNN (train_hnsw_adapter; applied by lora_index.c).
 */
#include "postgres.h"

#include <math.h>

#include "access/relation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "gnn/gnn.h"
#include "lib/stringinfo.h"
#include "lora/lora.h"
#include "miscadmin.h"
#include "parser/parse_type.h"
#include "store/store.h"
#include "train/train.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#define BATCH_SIZE		8
#define FETCH_ROWS		64		/* pairs_sql rows per cursor fetch */
#define WINDOW			256		/* examples shuffled together */
#define SELF_SUPERVISED_MAX 1000
#define STATE_MAGIC		0x54534E47	/* "GNST" */
#define REPLAY_CAPACITY 512
#define FEEDBACK_CANDIDATES 32
#define FEEDBACK_RANDOM_NEGATIVES 4 /* gnnvec_train's default */
#define FEEDBACK_HIDDEN 64		/* a first model made by feedback: gnnvec_train's default */

typedef struct Example
{
	float	   *query;			/* dim */
	int			n;
	int		   *cand;			/* nodes */
	ItemPointerData *tid;		/* their elements, or NULL (example_copy) */
	float	   *dist;
	int			positive;
} Example;

/* malloc'd objects of one call, freed with its memory context */
typedef struct Owned
{
	GnnModel   *model;
	GnnTrainer	trainer;
	bool		trainer_live;
	GnnReplay	replay;
	bool		replay_live;
} Owned;

static void
free_owned(void *arg)
{
	Owned	   *o = (Owned *) arg;

	if (o->trainer_live)
		gnn_trainer_free(&o->trainer);
	if (o->replay_live)
		gnn_replay_free(&o->replay);
	gnn_model_free(o->model);
	o->model = NULL;
	o->trainer_live = o->replay_live = false;
}

/* ---- examples ------------------------------------------------------------ */

static bool
contains(const int *a, int n, int x)
{
	for (int i = 0; i < n; i++)
		if (a[i] == x)
			return true;
	return false;
}

static void
shuffle(int *a, int n, GnnRng *rng)
{
	for (int i = n - 1; i > 0; i--)
	{
		int			j = (int) gnn_rng_below(rng, i + 1);
		int			t = a[i];

		a[i] = a[j];
		a[j] = t;
	}
}

/*
 * Could node u be relevant too, so that it must not be a negative?  The
 * logged positive is one relevant item; the query's other candidates are
 * unlabelled, and the nearest of them are often relevant as well (on the
 * rerank benchmark's topics data 39% of an example's negatives, its 32
 * nearest candidates and 4 random rows, share the positive's topic).  As
 * negatives they teach the model to push apart exactly what should rank
 * together, and the InfoNCE can then only fall by flattening the scores.  Left out, as likely false negatives: the
 * positive's graph neighbours, and any node nearer to the positive than
 * the query is (it resembles the positive more than the query does, so it
 * is at least as likely to be relevant).  On the topics data (exact kNN
 * graph, outside PostgreSQL) the two rules take the share of same-topic
 * negatives from 39% to 34% (neighbours) and 30% (both), and the second
 * raised held-out recall@10 of the trained similarity by about 1 point;
 * hard negatives from further down the candidate list take their places.
 * The distance rule assumes what the GNN itself assumes, that relevance
 * is smooth around a relevant item, so it applies to GNN training
 * (near_positive) and not to the HnswScan adapter, which learns to map a
 * query onto its exact positive, and for which the rows around the
 * positive are the negatives that matter.
 */
static bool
likely_relevant(GnnIndexView *v, int u, int positive, const int *pos_nbrs,
				int npos_nbrs, bool near_positive, float query_to_positive)
{
	return contains(pos_nbrs, npos_nbrs, u) ||
		(near_positive &&
		 hnsw_distance(v->metric, v->vecs + (size_t) u * v->dim,
					   v->vecs + (size_t) positive * v->dim, v->dim) <
		 query_to_positive);
}

/*
 * Builds the example of (query, positive node): ncand candidates from the
 * graph search (without exclude, the query's own node when self-supervised,
 * and without likely false negatives, near_positive as for
 * likely_relevant), the positive among them, then nrandom random elements
 * drawn from the index pages (without the positive's graph neighbours).
 * query must not point into the view, which the search may grow.
 */
static bool
make_example(GnnIndexView *v, const float *query, int positive, int exclude,
			 int ncand, int nrandom, bool near_positive, GnnRng *rng,
			 Example *ex)
{
	int			ef = Max(ncand + 1, hnsw_ef_search);
	int		   *nodes = palloc(sizeof(int) * ef);
	float	   *dists = palloc(sizeof(float) * ef);
	int			nf = gnn_view_search(v, query, ef, nodes, dists, NULL);
	int			n = 0;
	int			i;
	const int  *pos_nbrs;
	int			npos_nbrs;
	float		query_to_positive = hnsw_distance(v->metric, query,
												  v->vecs + (size_t) positive * v->dim,
												  v->dim);

	ex->cand = palloc(sizeof(int) * (ncand + nrandom + 1));
	ex->tid = NULL;
	ex->dist = palloc(sizeof(float) * (ncand + nrandom + 1));
	ex->positive = -1;
	gnn_view_neighbors(v, positive);
	pos_nbrs = v->nbr + Max(v->nbr_start[positive], 0);
	npos_nbrs = v->nbr_count[positive];
	for (i = 0; i < nf && n < ncand; i++)
	{
		if (nodes[i] == exclude ||
			(nodes[i] != positive &&
			 likely_relevant(v, nodes[i], positive, pos_nbrs, npos_nbrs,
							 near_positive, query_to_positive)))
			continue;
		if (nodes[i] == positive)
			ex->positive = n;
		ex->cand[n] = nodes[i];
		ex->dist[n++] = dists[i];
	}
	if (ex->positive < 0)
	{
		if (n == ncand)
			n--;				/* the farthest candidate makes room */
		ex->positive = n;
		ex->cand[n] = positive;
		ex->dist[n++] = query_to_positive;
	}
	for (i = 0; i < nrandom; i++)
	{
		int			u = gnn_view_random_node(v, rng);

		/*
		 * Only the neighbour rule here: a random row is rarely relevant,
		 * and when the query lies at the edge of the data nearly every row
		 * is nearer to the positive than the query is.
		 */
		if (u < 0)
			break;
		if (u == exclude || contains(ex->cand, n, u) ||
			contains(pos_nbrs, npos_nbrs, u))
			continue;
		ex->cand[n] = u;
		ex->dist[n++] = hnsw_distance(v->metric, query,
									  v->vecs + (size_t) u * v->dim, v->dim);
	}
	ex->n = n;
	ex->query = palloc(sizeof(float) * v->dim);
	memcpy(ex->query, query, sizeof(float) * v->dim);
	pfree(nodes);
	pfree(dists);
	return n >= 2;
}

/*
 * A copy of src in the current memory context that names its candidates
 * by element, so that it outlives a reset of the view (example_resolve
 * finds their nodes again).
 */
static void
example_copy(GnnIndexView *v, const Example *src, Example *dst)
{
	dst->n = src->n;
	dst->positive = src->positive;
	dst->query = palloc(sizeof(float) * v->dim);
	memcpy(dst->query, src->query, sizeof(float) * v->dim);
	dst->cand = palloc(sizeof(int) * src->n);
	dst->tid = palloc(sizeof(ItemPointerData) * src->n);
	for (int i = 0; i < src->n; i++)
		dst->tid[i] = v->tid[src->cand[i]];
	dst->dist = palloc(sizeof(float) * src->n);
	memcpy(dst->dist, src->dist, sizeof(float) * src->n);
}

/*
 * The nodes of a copied example's candidates in the view as it is now;
 * false if one of them is no longer a live element.
 */
static bool
example_resolve(GnnIndexView *v, Example *ex)
{
	for (int i = 0; i < ex->n; i++)
	{
		ItemPointerData tid = ex->tid[i];

		if ((ex->cand[i] = gnn_view_node(v, &tid)) < 0)
			return false;
	}
	return true;
}

static Oid
vector_type_oid(void)
{
	return typenameTypeId(NULL, typeStringToTypeName("vector"));
}

/*
 * The held-out example of (query, positive node) as a reranked index scan
 * sees it: the first round of candidates of the scan (ef as
 * hnsw_scan_ef with gnnvec.rerank on), nothing injected or left out;
 * positive -1 when the search misses it.
 */
static void
validation_example(GnnIndexView *v, const float *query, int positive,
				   Example *ex)
{
	int			ef = Max(hnsw_ef_search, gnn_rerank_candidates);

	ex->cand = palloc(sizeof(int) * ef);
	ex->tid = NULL;
	ex->dist = palloc(sizeof(float) * ef);
	ex->n = gnn_view_search(v, query, ef, ex->cand, ex->dist, NULL);
	ex->positive = -1;
	for (int i = 0; i < ex->n && ex->positive < 0; i++)
		if (ex->cand[i] == positive)
			ex->positive = i;
	ex->query = palloc(sizeof(float) * v->dim);
	memcpy(ex->query, query, sizeof(float) * v->dim);
}

/* ---- state: EWC and the replay buffer, for online feedback ---------------- */

/*
 * The state column of a GNN model: what online learning continues from.
 *	 u32 magic "GNST", u32 version, u32 EWC bytes, u32 Adam bytes;
 *	 EWC (gnn_ewc_serialize);
 *	 Adam (version 2): i64 steps taken, u64 n, n x f32 first moment,
 *		 n x f32 second moment;
 *	 the replay buffer: i32 capacity, record length and count, i64 records
 *		 seen, u64 generator state, count x record length f32.
 * Version 1 (before Adam was kept) has no Adam part, and reads as a fresh
 * optimizer.
 */
#define STATE_VERSION	2

static bytea *
state_serialize(const GnnTrainer *tr, const GnnReplay *replay)
{
	const GnnEwc *ewc = &tr->ewc;
	const GnnAdam *adam = &tr->adam;
	size_t		ewc_len = gnn_ewc_serialized_size(ewc);
	size_t		adam_len = sizeof(int64) + sizeof(uint64) + 2 * sizeof(float) * adam->n;
	size_t		rep_len = sizeof(float) * (size_t) replay->count * replay->record_len;
	size_t		len = 4 * sizeof(uint32) + ewc_len + adam_len + 3 * sizeof(int32) +
		sizeof(int64) + sizeof(uint64) + rep_len;
	bytea	   *b = palloc(VARHDRSZ + len);
	char	   *p = VARDATA(b);
	uint32		hdr[4] = {STATE_MAGIC, STATE_VERSION, (uint32) ewc_len, (uint32) adam_len};
	int32		ints[3] = {replay->capacity, replay->record_len, replay->count};
	int64		steps = adam->t;
	uint64		n = adam->n;

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(p, hdr, sizeof(hdr));
	p += sizeof(hdr);
	gnn_ewc_serialize(ewc, (uint8_t *) p);
	p += ewc_len;
	memcpy(p, &steps, sizeof(int64));
	p += sizeof(int64);
	memcpy(p, &n, sizeof(uint64));
	p += sizeof(uint64);
	for (size_t i = 0; i < adam->n; i++, p += sizeof(float))
	{
		float		x = (float) adam->m[i];

		memcpy(p, &x, sizeof(float));
	}
	for (size_t i = 0; i < adam->n; i++, p += sizeof(float))
	{
		float		x = (float) adam->v[i];

		memcpy(p, &x, sizeof(float));
	}
	memcpy(p, ints, sizeof(ints));
	p += sizeof(ints);
	memcpy(p, &replay->seen, sizeof(int64));
	p += sizeof(int64);
	memcpy(p, &replay->rng.state, sizeof(uint64));
	p += sizeof(uint64);
	memcpy(p, replay->records, rep_len);
	return b;
}

/*
 * Restores EWC, Adam (when restore_adam) and replay from a state blob;
 * false if it is unusable.  Parts that do not fit this model are left as
 * they were.
 */
static bool
state_restore(bytea *b, size_t n_params, int record_len, GnnTrainer *tr,
			  bool restore_adam, GnnReplay *replay, bool *replay_live)
{
	size_t		len = VARSIZE_ANY_EXHDR(b);
	const char *p = VARDATA_ANY(b);
	const char *end = p + len;
	uint32		hdr[4];
	int32		ints[3];
	GnnEwc		restored;
	GnnError	err;

	if (len < sizeof(hdr))
		return false;
	memcpy(hdr, p, sizeof(hdr));
	p += sizeof(hdr);
	if (hdr[0] != STATE_MAGIC || hdr[1] < 1 || hdr[1] > STATE_VERSION ||
		hdr[2] > (size_t) (end - p))
		return false;
	if (gnn_ewc_deserialize((const uint8_t *) p, hdr[2], &restored, &err) != GNN_OK)
		return false;
	if (restored.n != n_params)
	{
		gnn_ewc_free(&restored);
		return false;
	}
	p += hdr[2];
	gnn_ewc_free(&tr->ewc);
	tr->ewc = restored;
	if (hdr[1] >= 2)
	{
		int64		steps;
		uint64		n;

		if (hdr[3] > (size_t) (end - p) || hdr[3] < sizeof(int64) + sizeof(uint64))
			return true;
		memcpy(&steps, p, sizeof(int64));
		memcpy(&n, p + sizeof(int64), sizeof(uint64));
		if (restore_adam && n == tr->adam.n && steps >= 0 &&
			hdr[3] == sizeof(int64) + sizeof(uint64) + 2 * sizeof(float) * n)
		{
			const char *q = p + sizeof(int64) + sizeof(uint64);

			tr->adam.t = steps;
			for (size_t i = 0; i < n; i++, q += sizeof(float))
			{
				float		x;

				memcpy(&x, q, sizeof(float));
				tr->adam.m[i] = x;
			}
			for (size_t i = 0; i < n; i++, q += sizeof(float))
			{
				float		x;

				memcpy(&x, q, sizeof(float));
				tr->adam.v[i] = x;
			}
		}
		p += hdr[3];
	}
	if ((size_t) (end - p) < sizeof(ints) + sizeof(int64) + sizeof(uint64))
		return true;
	memcpy(ints, p, sizeof(ints));
	p += sizeof(ints);
	if (ints[1] != record_len || ints[2] < 0 || ints[2] > ints[0] ||
		ints[0] != replay->capacity ||
		(size_t) (end - p) != sizeof(int64) + sizeof(uint64) +
		sizeof(float) * (size_t) ints[2] * record_len)
		return true;
	memcpy(&replay->seen, p, sizeof(int64));
	p += sizeof(int64);
	memcpy(&replay->rng.state, p, sizeof(uint64));
	p += sizeof(uint64);
	memcpy(replay->records, p, sizeof(float) * (size_t) ints[2] * record_len);
	replay->count = ints[2];
	return true;
}

/* An owned copy of the stored model of (index, scope), or NULL. */
static GnnModel *
stored_model_copy(Relation index, const char *scope)
{
	GnnCachedModel *cm = gnn_store_lookup(index, scope, GNN_KIND_GNN);
	size_t		size;
	uint8_t    *buf;
	GnnModel   *copy = NULL;
	GnnError	err;

	if (cm == NULL)
		return NULL;
	size = gnn_model_serialized_size(cm->model);
	buf = palloc(size);
	gnn_model_serialize(cm->model, buf);
	gnn_ereport_status(gnn_model_deserialize(buf, size, &copy, &err), &err);
	pfree(buf);
	return copy;
}

static void
replay_add_pair(GnnReplay *replay, const float *q, const float *p, int dim)
{
	float	   *rec = palloc(sizeof(float) * 2 * dim);

	memcpy(rec, q, sizeof(float) * dim);
	memcpy(rec + dim, p, sizeof(float) * dim);
	gnn_replay_add(replay, rec);
	pfree(rec);
}

/* ---- gnnvec_train ------------------------------------------------------ */

typedef struct TrainArgs
{
	Oid			indexoid;
	char	   *pairs_sql;
	const char *scope;
	int			epochs;
	int			hidden;
	double		lr;
	int			candidates;
	int			random_negatives;
	double		val_fraction;
	int64		seed;
} TrainArgs;

static void
require_arg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name)));
}

static void
check_range(const char *name, double value, double lo, double hi)
{
	if (!(value >= lo && value <= hi))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be between %g and %g, got %g", name, lo, hi, value)));
}

static void
train_args(FunctionCallInfo fcinfo, TrainArgs *a)
{
	static const char *names[] = {"index", "pairs_sql", "scope", "epochs",
		"hidden", "learning_rate", "candidates", "random_negatives",
	"validation_fraction", "seed"};

	for (int i = 0; i < 10; i++)
		if (i != 1)
			require_arg(fcinfo, i, names[i]);
	a->indexoid = PG_GETARG_OID(0);
	a->pairs_sql = PG_ARGISNULL(1) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(1));
	a->scope = train_scope_arg(text_to_cstring(PG_GETARG_TEXT_PP(2)));
	/* a model of any other scope would be stored and never read */
	if (strcmp(a->scope, GNN_RERANK_SCOPE) != 0 &&
		strcmp(a->scope, LORA_HNSW_SCOPE_NAME) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("gnnvec_train does not train scope \"%s\": nothing reads a model of that scope",
						a->scope),
				 errhint("Train scope Rerank (the GNN reranker, SET gnnvec.rerank = on) or HnswScan (the index's query adapter, SET gnnvec.adapt = on).")));
	a->epochs = PG_GETARG_INT32(3);
	a->hidden = PG_GETARG_INT32(4);
	a->lr = PG_GETARG_FLOAT8(5);
	a->candidates = PG_GETARG_INT32(6);
	a->random_negatives = PG_GETARG_INT32(7);
	a->val_fraction = PG_GETARG_FLOAT8(8);
	a->seed = PG_GETARG_INT64(9);
	check_range("epochs", a->epochs, 1, 1000);
	check_range("hidden", a->hidden, 4, 1024);
	if (a->hidden % 4 != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hidden must be a multiple of 4 (the attention heads), got %d",
						a->hidden)));
	check_range("learning_rate", a->lr, 1e-7, 1);
	check_range("candidates", a->candidates, 2, HNSW_MAX_EF_SEARCH);
	check_range("random_negatives", a->random_negatives, 0, 1000);
	check_range("validation_fraction", a->val_fraction, 0, 0.9);
}

/* ---- memory: what a training call may hold ------------------------------ */

/*
 * A training call holds, besides the model:
 *	- the held-out pairs, a query vector each: at most a quarter of what
 *	  maintenance_work_mem leaves after the model;
 *	- the view of the index (the elements met, their neighbour lists and
 *	  neighbourhood means): forgotten (gnn_view_reset) whenever it outgrows
 *	  half of what the model leaves, between examples;
 *	- the last quarter: a window of examples, a batch's scoring, the rows
 *	  of one cursor fetch, and what one example adds to the view.
 * The model, its Adam moments, its batch gradient and EWC's three arrays
 * are malloc'd by the core; they count as TRAINER_COPIES copies of the
 * parameters, plus the replay buffer.  A call whose model leaves less than
 * MIN_TRAIN_BYTES is refused.
 */
#define TRAINER_COPIES	10
#define MIN_TRAIN_BYTES ((Size) 4 * 1024 * 1024)

typedef struct TrainBudget
{
	Size		total;			/* maintenance_work_mem */
	Size		fixed;			/* the model and its optimiser state */
	Size		view;			/* the view is reset beyond this */
	int64		held_max;		/* held-out pairs that fit */
	MemoryContext cxt;			/* everything else the call holds */
	Size		peak;			/* the most cxt held, plus fixed */
	int			view_resets;
} TrainBudget;

static void
budget_init(TrainBudget *b, MemoryContext cxt, Size fixed, int dim)
{
	Size		rest;
	Size		held_bytes;

	b->total = (Size) maintenance_work_mem * 1024;
	b->fixed = fixed;
	b->cxt = cxt;
	b->peak = 0;
	b->view_resets = 0;
	if (fixed + MIN_TRAIN_BYTES > b->total)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("maintenance_work_mem is too small to train this model"),
				 errdetail("The model and its optimizer state take about %zu kB, training needs %zu kB more, and maintenance_work_mem is %zu kB.",
						   fixed / 1024, MIN_TRAIN_BYTES / 1024, b->total / 1024),
				 errhint("Raise maintenance_work_mem, or train a smaller model (hidden).")));
	rest = b->total - fixed;
	held_bytes = MAXALIGN(sizeof(float) * dim) + 16 + sizeof(float *) +
		sizeof(ItemPointerData);
	b->held_max = (int64) (rest / 4 / held_bytes);
	b->view = rest / 2;
}

/* Notes what the call holds now, for the peak it reports. */
static void
budget_note(TrainBudget *b)
{
	Size		now = MemoryContextMemAllocated(b->cxt, true) + b->fixed;

	b->peak = Max(b->peak, now);
}

/* Between examples: forgets the view's elements when they take too much. */
static void
budget_check_view(TrainBudget *b, GnnIndexView *v)
{
	budget_note(b);
	if (gnn_view_bytes(v) > b->view)
	{
		gnn_view_reset(v);
		b->view_resets++;
	}
}

/* ---- pairs: read pass after pass ----------------------------------------- */

/* A held-out pair: its query, and its positive by element */
typedef struct HeldPair
{
	float	   *query;
	ItemPointerData positive;
	ItemPointerData exclude;	/* the query's own element, or invalid */
} HeldPair;

typedef struct Pair
{
	const float *query;			/* dim: the source's buffer */
	int			positive;		/* node; -1: not in the index */
	int			exclude;		/* the query's own node, or -1 */
} Pair;

/*
 * The (query, positive) pairs of a call, read once per pass: from
 * pairs_sql through a cursor, or drawn from the graph (self-supervised: an
 * element's vector is the query, one of its neighbours the positive).
 * Which pairs are held out is decided row by row, with the number of rows
 * known from a first pass that only counts them: selection sampling
 * (Knuth, TAOCP vol. 2, 3.4.2, algorithm S) from a generator reseeded at
 * every pass, so each pass holds out the same rows of pairs_sql, and
 * exactly floor(rows * validation_fraction) of them.  That asks pairs_sql
 * to return the same rows in the same order every time it runs; a pass
 * that meets another number of rows is an ERROR.  Without a validation
 * split (holdout false), the first held_target pairs are also kept, for
 * choosing the blend, and still trained on.
 */
typedef struct PairSource
{
	GnnIndexView *v;
	bool		near_positive;	/* likely_relevant's distance rule */
	SPIPlanPtr	plan;			/* pairs_sql; NULL: self-supervised */
	Portal		portal;
	SPITupleTable *rows;		/* the rows of the last fetch */
	uint64		next;			/* the next of them */
	int64		nrows;			/* pairs of a pass */
	int64		row;			/* pairs met in this pass */
	bool		holdout;		/* held pairs are not trained on */
	int64		held_target;	/* pairs held of nrows */
	int64		held_taken;		/* held so far in this pass */
	uint64		split_seed;
	GnnRng		split;
	GnnRng	   *rng;			/* self-supervised draws */
	float	   *query;
	float	   *positive;
	bool		count_skips;
	int64		skipped;		/* positive not in the index */
	MemoryContext scratch;		/* a pair's searches: reset after each */
} PairSource;

/* Checks pairs_sql's columns: two of type vector. */
static void
check_pair_columns(TupleDesc desc)
{
	Oid			vtype = vector_type_oid();

	if (desc->natts != 2 ||
		SPI_gettypeid(desc, 1) != vtype || SPI_gettypeid(desc, 2) != vtype)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("pairs_sql must return two columns of type vector (query, positive)"),
				 desc->natts == 2 ?
				 errdetail("It returned columns of types %s and %s.",
						   format_type_be(SPI_gettypeid(desc, 1)),
						   format_type_be(SPI_gettypeid(desc, 2))) :
				 errdetail("It returned %d column(s).", desc->natts)));
}

static void
source_begin(PairSource *ps)
{
	ps->row = 0;
	ps->held_taken = 0;
	gnn_rng_seed(&ps->split, ps->split_seed);
	if (ps->plan)
	{
		MemoryContext mine = CurrentMemoryContext;

		ps->portal = SPI_cursor_open(NULL, ps->plan, NULL, NULL, true);
		MemoryContextSwitchTo(mine);
		check_pair_columns(ps->portal->tupDesc);
		ps->rows = NULL;
		ps->next = 0;
	}
}

static void
source_end(PairSource *ps)
{
	if (ps->plan)
	{
		MemoryContext mine = CurrentMemoryContext;

		if (ps->rows)
			SPI_freetuptable(ps->rows);
		ps->rows = NULL;
		SPI_cursor_close(ps->portal);
		MemoryContextSwitchTo(mine);
		if (ps->row != ps->nrows)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("pairs_sql returned " INT64_FORMAT " rows, then " INT64_FORMAT,
							ps->nrows, ps->row),
					 errhint("pairs_sql runs once per epoch and twice before them: it must return the same rows in the same order each time, for example with ORDER BY on a table that does not change meanwhile.")));
	}
}

/* Is the next row held out?  One call per row, in order. */
static bool
next_row_held(PairSource *ps)
{
	bool		held;

	if (ps->holdout)
		held = gnn_rng_uniform(&ps->split) * (ps->nrows - ps->row) <
			ps->held_target - ps->held_taken;
	else
		held = ps->held_taken < ps->held_target;
	ps->row++;
	if (held)
		ps->held_taken++;
	return held;
}

/* Reads the current row of pairs_sql into *pr. */
static void
read_sql_pair(PairSource *ps, Pair *pr)
{
	HeapTuple	tup = ps->rows->vals[ps->next - 1];
	TupleDesc	desc = ps->rows->tupdesc;
	bool		qnull,
				pnull;
	Datum		qd = SPI_getbinval(tup, desc, 1, &qnull);
	Datum		pd = SPI_getbinval(tup, desc, 2, &pnull);

	if (qnull || pnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("pairs_sql returned a NULL vector in row " INT64_FORMAT, ps->row)));
	gnn_view_query_vector(ps->v, qd, ps->query, "query vector of pairs_sql");
	gnn_view_query_vector(ps->v, pd, ps->positive, "positive vector of pairs_sql");
	pr->query = ps->query;
	pr->positive = gnn_view_find(ps->v, ps->positive);
	pr->exclude = -1;
}

/* Draws a self-supervised pair; false if the drawn element has no neighbour. */
static bool
draw_graph_pair(PairSource *ps, Pair *pr)
{
	GnnIndexView *v = ps->v;
	int			node = gnn_view_random_node(v, ps->rng);

	if (node < 0)
		return false;
	gnn_view_neighbors(v, node);
	if (v->nbr_count[node] == 0)
		return false;
	pr->positive = v->nbr[v->nbr_start[node] +
						  gnn_rng_below(ps->rng, v->nbr_count[node])];
	/* a copy: the view grows, and moves its vectors, as it searches */
	memcpy(ps->query, v->vecs + (size_t) node * v->dim, sizeof(float) * v->dim);
	pr->query = ps->query;
	pr->exclude = node;
	return true;
}

/*
 * The next pair of this pass: of the held-out ones when held, else of the
 * training ones (with holdout off, every pair is a training one too).
 * Pairs whose positive is not in the index are skipped (and counted).
 */
static bool
source_next(PairSource *ps, bool held, Pair *pr)
{
	for (;;)
	{
		bool		is_held;

		CHECK_FOR_INTERRUPTS();
		if (ps->plan)
		{
			if (ps->rows == NULL || ps->next >= ps->rows->numvals)
			{
				MemoryContext mine = CurrentMemoryContext;

				if (ps->rows)
					SPI_freetuptable(ps->rows);
				SPI_cursor_fetch(ps->portal, true, FETCH_ROWS);
				MemoryContextSwitchTo(mine);
				ps->rows = SPI_tuptable;
				ps->next = 0;
				if (SPI_processed == 0)
					return false;
			}
			ps->next++;
		}
		else if (ps->row >= ps->nrows)
			return false;
		is_held = next_row_held(ps);
		if (held ? !is_held : (is_held && ps->holdout))
			continue;
		if (ps->plan)
			read_sql_pair(ps, pr);
		else if (!draw_graph_pair(ps, pr))
			continue;
		if (pr->positive >= 0)
			return true;
		if (ps->count_skips)
			ps->skipped++;
	}
}

/*
 * Prepares the pairs of a call: pairs_sql checked and its rows counted
 * (or SELF_SUPERVISED_MAX draws), and the held-out pairs read into *held
 * (at most what the budget allows: a NOTICE says when that cuts the split).
 * Returns how many were read.
 */
static int
source_init(PairSource *ps, GnnIndexView *v, const TrainArgs *a,
			GnnRng *rng, bool near_positive, TrainBudget *b, HeldPair **held)
{
	int64		want;
	int			n = 0;
	Pair		pr;

	memset(ps, 0, sizeof(*ps));
	ps->v = v;
	ps->near_positive = near_positive;
	ps->rng = rng;
	ps->query = palloc(sizeof(float) * v->dim);
	ps->positive = palloc(sizeof(float) * v->dim);
	ps->scratch = AllocSetContextCreate(b->cxt, "gnnvec_train pair",
										ALLOCSET_DEFAULT_SIZES);
	ps->split_seed = (uint64) a->seed ^ UINT64CONST(0x9E3779B97F4A7C15);
	if (a->pairs_sql)
	{
		MemoryContext mine = CurrentMemoryContext;

		ps->plan = SPI_prepare(a->pairs_sql, 0, NULL);
		MemoryContextSwitchTo(mine);
		if (ps->plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		if (!SPI_is_cursor_plan(ps->plan))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("pairs_sql must be a query that returns rows"),
					 errhint("For example: SELECT query_embedding, clicked_embedding FROM clicks.")));
		/* the counting pass */
		ps->portal = SPI_cursor_open(NULL, ps->plan, NULL, NULL, true);
		MemoryContextSwitchTo(mine);
		check_pair_columns(ps->portal->tupDesc);
		SPI_cursor_move(ps->portal, true, FETCH_ALL);
		ps->nrows = (int64) SPI_processed;
		SPI_cursor_close(ps->portal);
		MemoryContextSwitchTo(mine);
	}
	else
	{
		/* a query per element, up to SELF_SUPERVISED_MAX (drawn) */
		double		elements = v->index->rd_rel->reltuples;

		ps->nrows = elements > 0 ? Min((int64) elements, SELF_SUPERVISED_MAX) :
			SELF_SUPERVISED_MAX;
	}

	ps->holdout = a->val_fraction > 0 && ps->nrows >= 2;
	want = ps->holdout ? Max(1, (int64) floor(ps->nrows * a->val_fraction)) :
		Min(ps->nrows, SELF_SUPERVISED_MAX);
	ps->held_target = Min(want, b->held_max);
	if (ps->held_target < want)
		ereport(NOTICE,
				(errmsg("gnnvec_train: " INT64_FORMAT " pairs held out for validation instead of " INT64_FORMAT ", to stay within maintenance_work_mem",
						ps->held_target, want)));

	*held = palloc(sizeof(HeldPair) * Max(ps->held_target, 1));
	ps->count_skips = true;
	source_begin(ps);
	for (;;)
	{
		MemoryContext old = MemoryContextSwitchTo(ps->scratch);
		bool		got = source_next(ps, true, &pr);

		MemoryContextSwitchTo(old);
		budget_note(b);
		MemoryContextReset(ps->scratch);
		if (!got)
			break;
		(*held)[n].query = palloc(sizeof(float) * v->dim);
		memcpy((*held)[n].query, pr.query, sizeof(float) * v->dim);
		(*held)[n].positive = v->tid[pr.positive];
		if (pr.exclude >= 0)
			(*held)[n].exclude = v->tid[pr.exclude];
		else
			ItemPointerSetInvalid(&(*held)[n].exclude);
		n++;
		budget_check_view(b, v);
	}
	source_end(ps);
	return n;
}

/*
 * A learner's step on a window of examples: adds the sum of its losses to
 * *loss and its number of steps to *steps.
 */
typedef void (*LearnFn) (void *arg, Example **ex, int n, double *loss,
						 int *steps);

/*
 * One pass over the training pairs: windows of up to WINDOW examples, each
 * shuffled and handed to learn().  A window ends early when the view
 * outgrows its share, which is then reset (the window's node numbers die
 * with it).  Returns the mean loss per step; *ntrain gets the examples.
 */
static double
train_pass(PairSource *ps, const TrainArgs *a, TrainBudget *b, GnnRng *rng,
		   LearnFn learn, void *arg, int *ntrain)
{
	GnnIndexView *v = ps->v;
	MemoryContext wcxt = AllocSetContextCreate(b->cxt, "gnnvec_train window",
											   ALLOCSET_DEFAULT_SIZES);
	Example    *win = palloc(sizeof(Example) * WINDOW);
	Example   **order = palloc(sizeof(Example *) * WINDOW);
	int		   *perm = palloc(sizeof(int) * WINDOW);
	double		loss = 0;
	int			steps = 0;
	bool		more = true;

	*ntrain = 0;
	source_begin(ps);
	while (more)
	{
		int			n = 0;

		/*
		 * A pair's searches go with it; its example is copied out, naming
		 * its candidates by element, so the view may be reset after it.
		 */
		while (n < WINDOW)
		{
			MemoryContext old = MemoryContextSwitchTo(ps->scratch);
			Pair		pr;
			Example		ex;
			bool		made;

			more = source_next(ps, false, &pr);
			made = more && make_example(v, pr.query, pr.positive, pr.exclude,
										a->candidates, a->random_negatives,
										ps->near_positive, rng, &ex);
			MemoryContextSwitchTo(wcxt);
			if (made)
				example_copy(v, &ex, &win[n++]);
			MemoryContextSwitchTo(old);
			MemoryContextReset(ps->scratch);
			budget_check_view(b, v);
			if (!more)
				break;
		}
		for (int i = 0; i < n; i++)
			perm[i] = i;
		shuffle(perm, n, rng);
		for (int i = 0; i < n; i++)
			order[i] = &win[perm[i]];
		budget_note(b);
		if (n > 0)
			learn(arg, order, n, &loss, &steps);
		*ntrain += n;
		MemoryContextReset(wcxt);
		budget_check_view(b, v);
	}
	source_end(ps);
	MemoryContextDelete(wcxt);
	pfree(win);
	pfree(order);
	pfree(perm);
	return steps > 0 ? loss / steps : 0;
}

/* After the first pass: no pair at all is an ERROR; skipped ones a NOTICE. */
static void
report_pairs(PairSource *ps, int ntrain, int nheld)
{
	ps->count_skips = false;
	if (ntrain + nheld == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("no training data for index \"%s\"", RelationGetRelationName(ps->v->index)),
				 ps->skipped > 0 ?
				 errdetail(INT64_FORMAT " pair(s) were skipped: their positive vector is not in the index.", ps->skipped) : 0,
				 errhint("pairs_sql must return (query, positive) rows whose positive is an indexed vector.")));
	if (ps->skipped > 0)
		ereport(NOTICE,
				(errmsg("gnnvec_train: " INT64_FORMAT " pair(s) skipped: their positive vector is not in the index",
						ps->skipped)));
}

/* ---- training ------------------------------------------------------------ */

/*
 * How choose_blend builds its examples when there is no validation split:
 * as training does (the blend is then chosen on training pairs, whose
 * positive is always among the candidates).
 */
typedef struct AsTrained
{
	const TrainArgs *a;
	bool		near_positive;
	GnnRng	   *rng;
} AsTrained;

/*
 * Tallies, for every blend of gnn_blends, how many of the pairs put their
 * positive in the top 10 (gnn.h): the validation measure, and what the
 * blend is chosen by.  Each pair is searched again, as the scan would
 * (as_trained NULL), or made into a training example.
 */
static void
tally_at_10(GnnModel *model, GnnIndexView *v, const HeldPair *held, int n,
			const AsTrained *as_trained, TrainBudget *b, GnnBlendTally *tally,
			MemoryContext tmp)
{
	gnn_blend_tally_init(tally);
	for (int i = 0; i < n; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(tmp);
		ItemPointerData tid = held[i].positive;
		int			positive = gnn_view_node(v, &tid);
		Example		ex;
		GnnExample	gex;
		GnnError	err;
		bool		made = true;

		CHECK_FOR_INTERRUPTS();
		if (as_trained == NULL)
			validation_example(v, held[i].query, positive, &ex);
		else
		{
			int			exclude = -1;

			if (ItemPointerIsValid(&held[i].exclude))
			{
				tid = held[i].exclude;
				exclude = gnn_view_node(v, &tid);
			}
			made = positive >= 0 &&
				make_example(v, held[i].query, positive, exclude,
							 as_trained->a->candidates,
							 as_trained->a->random_negatives,
							 as_trained->near_positive, as_trained->rng, &ex);
		}
		if (made)
		{
			gnn_score_input(v, ex.query, ex.n, ex.cand, ex.dist, &gex.in, NULL);
			gex.positive = ex.positive;
			gnn_ereport_status(gnn_blend_tally_add(model, tally, &gex, 10, &err),
							   &err);
		}
		MemoryContextSwitchTo(old);
		budget_note(b);
		MemoryContextReset(tmp);
		budget_check_view(b, v);
	}
}

/*
 * Sets the model's blend by these pairs (gnn_blend_apply_best: its number
 * goes to *blend, the best blend's mean rank of their positives to *rank,
 * what an epoch is kept by); returns the chosen blend's hit rate at 10
 * and, in *raw_recall, that of raw distance alone: the plain index scan's,
 * on validation pairs.
 */
static double
choose_blend(GnnModel *model, GnnIndexView *v, const HeldPair *held, int n,
			 const AsTrained *as_trained, TrainBudget *b, double *raw_recall,
			 int *blend, double *rank, MemoryContext tmp)
{
	GnnBlendTally tally;
	double		recall;

	tally_at_10(model, v, held, n, as_trained, b, &tally, tmp);
	*blend = gnn_blend_apply_best(model, &tally, &recall, rank);
	*raw_recall = tally.n > 0 ? (double) tally.hits[0] / tally.n : 0;
	return recall;
}

/*
 * One Adam step on a batch; returns its loss, or -1 when none of its
 * examples is left (copied examples whose elements went meanwhile).  A
 * scoring input holds copies of the vectors it needs, so with a budget
 * the view may be reset between the examples of a batch (their
 * neighbourhoods are what makes it grow).
 */
static double
train_batch(GnnTrainer *tr, GnnIndexView *v, Example **batch, int n,
			TrainBudget *b, MemoryContext tmp)
{
	GnnExample *gex;
	double		loss = 0;
	GnnError	err;
	int			m = 0;
	MemoryContext old = MemoryContextSwitchTo(tmp);

	gex = palloc(sizeof(GnnExample) * n);
	for (int i = 0; i < n; i++)
	{
		if (batch[i]->tid && !example_resolve(v, batch[i]))
			continue;
		gnn_score_input(v, batch[i]->query, batch[i]->n, batch[i]->cand,
						batch[i]->dist, &gex[m].in, NULL);
		gex[m++].positive = batch[i]->positive;
		if (b)
			budget_check_view(b, v);
	}
	if (m > 0)
		gnn_ereport_status(gnn_train_step(tr, gex, m, &loss, &err), &err);
	MemoryContextSwitchTo(old);
	if (b)
		budget_note(b);
	MemoryContextReset(tmp);
	return m > 0 ? loss : -1;
}

/* ---- HnswScan: the index's MicroLoRA query adapter ----------------------- */

/*
 * The adapter y = x + alpha (x A) B (Hu et al. 2021) is trained so that
 * the adapted query finds its positive: the loss is the InfoNCE (van den
 * Oord et al. 2018, gnn_infonce_loss) of the cosine similarities of y to
 * the positive and to the example's negatives (the query's graph
 * candidates and random rows, as for the GNN), at temperature tau:
 *		L = -log( exp(cos(y,p)/tau) / sum_c exp(cos(y,c)/tau) )
 * gnn_infonce_loss gives g = dL/dy; with h = x A and u = B g^T the chain
 * rule through y gives
 *		dL/dB[k][j] = alpha h[k] g[j],		dL/dA[i][k] = alpha x[i] u[k],
 * which is the SGD step lora_adapter_step takes (one example at a time).
 * Cosine similarity ignores the norm of y, so the loss is the same for
 * the renormalised query a cosine index searches with; for L2 and inner
 * product indexes it trains the direction of the query, and validation
 * (below) measures the effect with the index's own metric.
 *
 * Validation is measured through the adapted search itself (ef =
 * gnnvec.ef_search): the share of held-out positives among the first 10
 * results of the graph search with the adapted query (recall@10).  The
 * adapter as it was before the call (none: the identity) is epoch 0.  An
 * epoch replaces it only when its recall@10 is higher significantly: of
 * the positives that enter or leave the top 10 against epoch 0, more
 * enter by the sign test of gnn_significantly_better (gnn.h); of those
 * epochs the highest recall@10 is kept.  So a training call never leaves
 * an adapter that does worse on held-out pairs than before it, nor one
 * that differs from it by chance: measured on Fashion-MNIST (docs/gnn.md),
 * the epoch with the best recall@10 without the test (0.130 against 0.113
 * on 399 pairs) lowered class P@10 of the scan by 1.9 points.  (The sign
 * test on the positives' full ranks, as for blends, rejects good
 * adapters: one that lifts recall@10 from 0.55 to 0.80 in sql_tests/
 * lora_index.sql also moves positives already near the top by a place or
 * two, either way, and ranked 17 higher and 12 lower.)
 */
#define LORA_TRAIN_TEMPERATURE 0.1

/* Did the search with the (adapted) query put the positive in its top 10? */
static bool
adapted_hit_at_10(GnnIndexView *v, const LoraAdapter *ad, const float *query,
				  int positive)
{
	int			ef = Max(hnsw_ef_search, 10);
	int		   *nodes = palloc(sizeof(int) * ef);
	float	   *dists = palloc(sizeof(float) * ef);
	float	   *y = palloc(sizeof(float) * v->dim);
	int			n;

	memcpy(y, query, sizeof(float) * v->dim);
	if (ad != NULL)
		lora_index_apply(ad, y, v->metric == HNSW_METRIC_COSINE);
	n = gnn_view_search(v, y, ef, nodes, dists, NULL);
	for (int i = 0; i < Min(n, 10); i++)
		if (nodes[i] == positive)
			return true;
	return false;
}

/*
 * Whether each held-out positive is in the adapted search's top 10 (into
 * hit[]); returns the share that is.
 */
static double
adapted_recall_at_10(GnnIndexView *v, const LoraAdapter *ad,
					 const HeldPair *held, int nval, bool *hit,
					 TrainBudget *b, MemoryContext tmp)
{
	int			hits = 0;

	for (int i = 0; i < nval; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(tmp);
		ItemPointerData tid = held[i].positive;
		int			positive = gnn_view_node(v, &tid);

		CHECK_FOR_INTERRUPTS();
		hit[i] = positive >= 0 && adapted_hit_at_10(v, ad, held[i].query, positive);
		hits += hit[i];
		MemoryContextSwitchTo(old);
		MemoryContextReset(tmp);
		budget_check_view(b, v);
	}
	return nval > 0 ? (double) hits / nval : 0;
}

/* One SGD step of the adapter on one example; returns its InfoNCE loss. */
static double
adapter_step(GnnIndexView *v, LoraAdapter *ad, const Example *ex, double lr)
{
	int			dim = v->dim;
	float	   *y = palloc(sizeof(float) * dim);
	gnn_real   *anchor = palloc(sizeof(gnn_real) * dim);
	gnn_real   *pos = palloc(sizeof(gnn_real) * dim);
	gnn_real   *neg = palloc(sizeof(gnn_real) * (size_t) dim * (ex->n - 1));
	gnn_real   *d_anchor = palloc0(sizeof(gnn_real) * dim);
	float	   *grad = palloc(sizeof(float) * dim);
	int			nneg = 0;
	double		loss;

	memcpy(y, ex->query, sizeof(float) * dim);
	lora_adapter_add_delta(ad, ex->query, 1.0f, y);
	for (int j = 0; j < dim; j++)
		anchor[j] = y[j];
	for (int i = 0; i < ex->n; i++)
	{
		const float *c = v->vecs + (size_t) ex->cand[i] * dim;
		gnn_real   *to = (i == ex->positive) ? pos : neg + (size_t) dim * nneg++;

		for (int j = 0; j < dim; j++)
			to[j] = c[j];
	}
	loss = gnn_infonce_loss(anchor, pos, neg, nneg, dim, LORA_TRAIN_TEMPERATURE,
							d_anchor, NULL, NULL);
	for (int j = 0; j < dim; j++)
		grad[j] = (float) d_anchor[j];
	if (lora_adapter_step(ad, ex->query, grad, (float) lr) != LORA_OK)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("training the HnswScan adapter of index \"%s\" diverged",
						RelationGetRelationName(v->index)),
				 errhint("Use a smaller learning_rate.")));
	return loss;
}

/*
 * The adapter training starts from: a copy of the stored one (its rank and
 * alpha kept), or a new one with gnnvec.lora_rank and gnnvec.lora_alpha.
 * Returns whether one was stored.
 */
static bool
starting_adapter(GnnIndexView *v, const TrainArgs *a, LoraAdapter *ad)
{
	const LoraAdapter *stored = lora_index_adapter(v->index, v->dim);
	LoraSettings settings;

	lora_adapter_attach(ad, palloc0(sizeof(float) * lora_adapter_floats(v->dim)),
						v->dim, (uint64_t) a->seed);
	if (stored != NULL && stored->dim == v->dim)
	{
		(void) lora_adapter_init(ad, stored->dim, stored->rank, stored->alpha);
		memcpy(lora_adapter_at(ad), lora_adapter_at(stored),
			   sizeof(float) * 2 * stored->rank * stored->dim);
		return true;
	}
	lora_settings(&settings);
	(void) lora_adapter_init(ad, v->dim, settings.rank, settings.alpha);
	return false;
}

static char *
adapter_config(const LoraAdapter *ad, const TrainArgs *a, int ntrain, int nval,
			   double start_recall, double best_recall, int best_epoch)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfo(&s, "{\"dim\": %d, \"rank\": %d, \"alpha\": %g, "
					 "\"self_supervised\": %s, \"epochs\": %d, \"best_epoch\": %d, "
					 "\"train_pairs\": %d, \"validation_pairs\": %d, "
					 "\"val_recall_at_10\": %.4f, \"start_recall_at_10\": %.4f, "
					 "\"learning_rate\": %g, \"seed\": " INT64_FORMAT "}",
					 ad->dim, ad->rank, ad->alpha,
					 a->pairs_sql ? "false" : "true", a->epochs, best_epoch,
					 ntrain, nval, best_recall, start_recall, a->lr, a->seed);
	return s.data;
}

typedef struct AdapterLearner
{
	GnnIndexView *v;
	LoraAdapter *ad;
	double		lr;
	TrainBudget *b;
	MemoryContext tmp;
} AdapterLearner;

/* LearnFn of the adapter: per-example SGD */
static void
adapter_learn(void *arg, Example **ex, int n, double *loss, int *steps)
{
	AdapterLearner *l = (AdapterLearner *) arg;

	for (int i = 0; i < n; i++)
	{
		/* an example's scratch (its negatives: n x dim) goes with it */
		MemoryContext old = MemoryContextSwitchTo(l->tmp);

		CHECK_FOR_INTERRUPTS();
		if (example_resolve(l->v, ex[i]))
		{
			*loss += adapter_step(l->v, l->ad, ex[i], l->lr);
			(*steps)++;
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(l->tmp);
		budget_check_view(l->b, l->v);
	}
}

/*
 * gnnvec_train(..., scope => 'HnswScan'): epochs of per-example SGD on the
 * index's adapter, a row per epoch, the best epoch saved as the next
 * version of (index, 'HnswScan', 'lora').
 */
static void
train_hnsw_adapter(ReturnSetInfo *rsinfo, GnnIndexView *v, const TrainArgs *a,
				   GnnRng *rng, MemoryContext cxt, MemoryContext tmp)
{
	LoraAdapter ad;
	AdapterLearner learner;
	TrainBudget b;
	PairSource ps;
	HeldPair   *held;
	int			nheld;
	int			nval;
	int			ntrain = 0;
	size_t		nparams;
	float	   *best;
	bool	   *start_hit;
	bool	   *hit;
	double		start_recall;
	double		best_recall;
	int			best_epoch = 0;

	(void) starting_adapter(v, a, &ad);
	nparams = (size_t) 2 * ad.rank * ad.dim;
	budget_init(&b, cxt, 3 * sizeof(float) * lora_adapter_floats(v->dim), v->dim);
	nheld = source_init(&ps, v, a, rng, false, &b, &held);
	nval = ps.holdout ? nheld : 0;
	best = palloc(sizeof(float) * nparams);
	memcpy(best, lora_adapter_at(&ad), sizeof(float) * nparams);
	start_hit = palloc(sizeof(bool) * Max(nval, 1));
	hit = palloc(sizeof(bool) * Max(nval, 1));
	start_recall = best_recall = adapted_recall_at_10(v, &ad, held, nval, start_hit,
													  &b, tmp);
	learner.v = v;
	learner.ad = &ad;
	learner.lr = a->lr;
	learner.b = &b;
	learner.tmp = tmp;

	for (int e = 1; e <= a->epochs; e++)
	{
		double		loss;
		double		recall;
		int			entered = 0;
		int			left = 0;
		Datum		values[3];
		bool		nulls[3] = {false, false, nval == 0};

		loss = train_pass(&ps, a, &b, rng, adapter_learn, &learner, &ntrain);
		if (e == 1)
			report_pairs(&ps, ntrain, nheld);
		recall = adapted_recall_at_10(v, &ad, held, nval, hit, &b, tmp);
		for (int i = 0; i < nval; i++)
		{
			entered += hit[i] && !start_hit[i];
			left += !hit[i] && start_hit[i];
		}
		if (nval == 0 ||
			(recall > best_recall && gnn_significantly_better(entered, left, 1)))
		{
			best_recall = recall;
			best_epoch = e;
			memcpy(best, lora_adapter_at(&ad), sizeof(float) * nparams);
		}
		ereport(NOTICE,
				(errmsg("gnnvec_train: HnswScan adapter epoch %d of %d: loss %.4f, validation recall@10 %.3f (before training %.3f: %d positive(s) entered the top 10, %d left)",
						e, a->epochs, loss, recall, start_recall, entered, left)));
		values[0] = Int32GetDatum(e);
		values[1] = Float8GetDatum(loss);
		values[2] = Float8GetDatum(recall);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	if (nval > 0 && best_epoch == 0)
		ereport(WARNING,
				(errmsg("gnnvec_train: no epoch of the HnswScan adapter beats the adapter before training on the %d validation pairs; it is kept",
						nval),
				 errdetail("An epoch must raise recall@10 (before training %.3f) significantly: more held-out positives entering the top 10 than leaving it, by the sign test.",
						   start_recall)));
	memcpy(lora_adapter_at(&ad), best, sizeof(float) * nparams);
	store_save_blob(v->index, LORA_HNSW_SCOPE_NAME, LORA_KIND,
					lora_index_serialize(&ad),
					adapter_config(&ad, a, ntrain, nval, start_recall,
								   nval > 0 ? best_recall : 0, best_epoch),
					NULL);
}

/* A blend's weights, as a JSON object for the stored config and NOTICEs */
static const char *
blend_text(int blend)
{
	const GnnBlend *b = &gnn_blends[blend];

	return psprintf("{\"raw\": %g, \"gnn\": %g, \"neighbourhood\": %g}",
					b->raw, b->gnn, b->smooth);
}

static char *
train_config(const GnnModel *m, const TrainArgs *a, int ntrain, int nval,
			 double val_recall, double raw_recall, double start_recall,
			 int best_epoch, int blend, const TrainBudget *b)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfo(&s, "{\"dim\": %d, \"hidden\": %d, \"heads\": %d, "
					 "\"self_supervised\": %s, \"epochs\": %d, \"best_epoch\": %d, "
					 "\"train_pairs\": %d, \"validation_pairs\": %d, "
					 "\"val_recall_at_10\": %.4f, \"raw_recall_at_10\": %.4f, "
					 "\"start_recall_at_10\": %.4f, \"blend\": %s, "
					 "\"raw_fallback\": %s, \"learning_rate\": %g, \"seed\": " INT64_FORMAT ", "
					 "\"memory_peak_kb\": %zu, \"memory_budget_kb\": %zu, \"view_resets\": %d}",
					 m->cfg.in_dim, m->cfg.hidden_dim, m->cfg.heads,
					 a->pairs_sql ? "false" : "true", a->epochs, best_epoch,
					 ntrain, nval, val_recall, raw_recall, start_recall,
					 blend_text(blend), blend == 0 ? "true" : "false", a->lr,
					 a->seed, b->peak / 1024, b->total / 1024, b->view_resets);
	return s.data;
}

typedef struct GnnLearner
{
	GnnIndexView *v;
	GnnTrainer *trainer;
	GnnReplay  *replay;			/* the first pass's pairs go in; or NULL */
	TrainBudget *b;
	MemoryContext tmp;
} GnnLearner;

/* LearnFn of the GNN: batches of BATCH_SIZE, an Adam step each */
static void
gnn_learn(void *arg, Example **ex, int n, double *loss, int *steps)
{
	GnnLearner *l = (GnnLearner *) arg;
	GnnIndexView *v = l->v;

	for (int i = 0; i < n; i += BATCH_SIZE)
	{
		double		batch_loss;

		CHECK_FOR_INTERRUPTS();
		batch_loss = train_batch(l->trainer, v, ex + i, Min(BATCH_SIZE, n - i),
								 l->b, l->tmp);
		if (batch_loss >= 0)
		{
			*loss += batch_loss;
			(*steps)++;
		}
	}
	if (l->replay)
		for (int i = 0; i < n; i++)
		{
			ItemPointerData tid = ex[i]->tid[ex[i]->positive];
			int			positive = gnn_view_node(v, &tid);

			if (positive >= 0)
				replay_add_pair(l->replay, ex[i]->query,
								v->vecs + (size_t) positive * v->dim, v->dim);
		}
}

/* Bytes the core mallocs for a model in training (TrainBudget) */
static Size
trainer_bytes(const GnnModel *model, int dim)
{
	return TRAINER_COPIES * sizeof(gnn_real) * model->n_params +
		sizeof(gnn_real) * REPLAY_CAPACITY * 2 * (Size) dim;
}

/*
 * gnnvec_train for a GNN scope: epochs of batched Adam steps on the
 * training examples' similarity InfoNCE (gnn_train_step).  With a
 * validation split, after every epoch the blend (a, b, g) is chosen on it and
 * the epoch (with its blend) of the best validation mean rank is kept;
 * the model as it was before the call counts as epoch 0, so a call never
 * leaves a model that does worse on its validation pairs than before it,
 * and a blend that does not beat raw distance becomes raw distance alone
 * (gnn.h).  Without one, the last epoch is kept and the blend is chosen
 * on the first (up to SELF_SUPERVISED_MAX) training pairs, made into
 * examples as training makes them (one number, so the layer's fit to them
 * biases it little).
 */
static void
train_gnn(ReturnSetInfo *rsinfo, GnnIndexView *v, const TrainArgs *a,
		  GnnRng *rng, MemoryContext cxt, MemoryContext tmp)
{
	Relation	index = v->index;
	Owned	   *o;
	GnnTrainConfig tcfg;
	GnnError	err;
	TrainBudget b;
	PairSource	ps;
	GnnLearner	learner;
	HeldPair   *held;
	int			nheld;
	int			nval;
	int			ntrain = 0;
	gnn_real   *best;
	size_t		nbytes;
	double		best_recall = 0;
	double		start_recall = 0;
	double		raw_recall = 0;
	int			best_blend = 0;
	double		best_rank = 0;
	int			best_epoch = 0;
	bytea	   *state;

	o = palloc0(sizeof(Owned));
	gnn_on_context_reset(free_owned, o);
	o->model = stored_model_copy(index, a->scope);
	if (o->model && (o->model->cfg.in_dim != v->dim ||
					 o->model->cfg.hidden_dim != a->hidden))
	{
		gnn_model_free(o->model);	/* another shape: start over */
		o->model = NULL;
	}
	if (o->model == NULL)
	{
		GnnConfig	cfg;

		gnn_config_default(&cfg, v->dim, a->hidden);
		cfg.seed = (uint64_t) a->seed;
		gnn_ereport_status(gnn_model_create(&cfg, &o->model, &err), &err);
	}
	gnn_train_config_default(&tcfg);
	tcfg.lr = a->lr;
	gnn_ereport_status(gnn_trainer_init(&o->trainer, o->model, &tcfg, &err), &err);
	o->trainer_live = true;
	gnn_ereport_status(gnn_replay_init(&o->replay, REPLAY_CAPACITY, 2 * v->dim,
									   (uint64_t) a->seed, &err), &err);
	o->replay_live = true;
	state = store_state(index, a->scope, GNN_KIND_GNN);
	if (state)
		(void) state_restore(state, o->model->n_params, 2 * v->dim,
							 &o->trainer, false, &o->replay, &o->replay_live);

	budget_init(&b, cxt, trainer_bytes(o->model, v->dim), v->dim);
	nheld = source_init(&ps, v, a, rng, true, &b, &held);
	nval = ps.holdout ? nheld : 0;
	nbytes = sizeof(gnn_real) * o->model->n_params;
	if (nval > 0)
		start_recall = best_recall =
			choose_blend(o->model, v, held, nval, NULL, &b, &raw_recall,
						 &best_blend, &best_rank, tmp);
	best = palloc(nbytes);
	memcpy(best, o->model->params, nbytes);
	learner.v = v;
	learner.trainer = &o->trainer;
	learner.replay = &o->replay;
	learner.b = &b;
	learner.tmp = tmp;
	for (int e = 1; e <= a->epochs; e++)
	{
		double		loss;
		double		recall = 0;
		int			blend;
		double		rank;
		Datum		values[3];
		bool		nulls[3] = {false, false, nval == 0};

		loss = train_pass(&ps, a, &b, rng, gnn_learn, &learner, &ntrain);
		if (e == 1)
		{
			report_pairs(&ps, ntrain, nheld);
			learner.replay = NULL;
			/* without a split the held pairs were trained on, and added */
			for (int i = 0; i < (ps.holdout ? nheld : 0); i++)
			{
				ItemPointerData tid = held[i].positive;
				int			node = gnn_view_node(v, &tid);

				if (node >= 0)
					replay_add_pair(&o->replay, held[i].query,
									v->vecs + (size_t) node * v->dim, v->dim);
			}
		}
		if (nval > 0)
		{
			recall = choose_blend(o->model, v, held, nval, NULL, &b,
								  &raw_recall, &blend, &rank, tmp);
			if (rank < best_rank)
			{
				best_rank = rank;
				best_recall = recall;
				best_blend = blend;
				best_epoch = e;
				memcpy(best, o->model->params, nbytes);
			}
			ereport(NOTICE,
					(errmsg("gnnvec_train: epoch %d of %d: loss %.4f, validation hit rate at 10 %.3f at blend %s (plain index scan %.3f, before training %.3f)",
							e, a->epochs, loss, recall, blend_text(blend),
							raw_recall, start_recall)));
		}
		else
		{
			best_epoch = e;
			memcpy(best, o->model->params, nbytes);
			ereport(NOTICE,
					(errmsg("gnnvec_train: epoch %d of %d: loss %.4f",
							e, a->epochs, loss)));
		}
		values[0] = Int32GetDatum(e);
		values[1] = Float8GetDatum(loss);
		values[2] = Float8GetDatum(recall);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	memcpy(o->model->params, best, nbytes);
	if (nval == 0)
	{
		AsTrained	as_trained = {a, true, rng};
		double		unused;

		(void) choose_blend(o->model, v, held, nheld, &as_trained, &b, &unused,
							&best_blend, &unused, tmp);
	}
	if (nval > 0 && best_blend == 0)
		ereport(WARNING,
				(errmsg("gnnvec_train: the model does not beat the plain index scan on the %d validation pairs; reranking keeps the distance order",
						nval),
				 errdetail("Validation hit rate at 10 (positive among the first 10 of the scan's %d candidates): plain index scan %.3f, best reranking %.3f.",
						   Max(hnsw_ef_search, gnn_rerank_candidates),
						   raw_recall, best_recall),
				 errhint("More or more varied training pairs may help; the model is stored with its GNN and neighbourhood terms off.")));
	ereport(NOTICE,
			(errmsg("gnnvec_train: held at most %zu kB of maintenance_work_mem's %zu kB; the index view was reset %d time(s)",
					b.peak / 1024, b.total / 1024, b.view_resets)));
	/* what this training taught is what EWC protects from now on */
	gnn_ewc_consolidate(&o->trainer.ewc, o->model->params);
	gnn_store_save(index, a->scope, GNN_KIND_GNN, o->model,
				   train_config(o->model, a, ntrain, nval, best_recall,
								raw_recall, start_recall, best_epoch,
								best_blend, &b),
				   state_serialize(&o->trainer, &o->replay));
	free_owned(o);
}

PG_FUNCTION_INFO_V1(gnnvec_train);
Datum
gnnvec_train(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TrainArgs	a;
	Relation	index;
	GnnIndexView v;
	GnnRng		rng;
	MemoryContext cxt;
	MemoryContext tmp;
	MemoryContext old;
	bool		adapter;

	train_args(fcinfo, &a);
	adapter = strcmp(a.scope, LORA_HNSW_SCOPE_NAME) == 0;
	index = store_open_index(a.indexoid, true);
	store_begin_update(index, a.scope, lora_scope_parse(a.scope),
					   adapter ? LORA_KIND : GNN_KIND_GNN);
	InitMaterializedSRF(fcinfo, 0);
	cxt = AllocSetContextCreate(CurrentMemoryContext, "gnnvec_train",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(cxt);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	MemoryContextSwitchTo(cxt);
	gnn_view_init(&v, index, NULL);
	gnn_rng_seed(&rng, (uint64_t) a.seed);
	tmp = AllocSetContextCreate(cxt, "gnnvec_train step", ALLOCSET_DEFAULT_SIZES);
	if (adapter)
		train_hnsw_adapter(rsinfo, &v, &a, &rng, cxt, tmp);
	else
		train_gnn(rsinfo, &v, &a, &rng, cxt, tmp);
	SPI_finish();
	MemoryContextSwitchTo(old);
	MemoryContextDelete(cxt);
	store_end_update();
	relation_close(index, NoLock);
	PG_RETURN_VOID();
}

/* ---- online feedback ----------------------------------------------------- */

#define FEEDBACK_ROLE	"gnnvec_feedback"
#define FEEDBACK_EVENTS_PER_STEP 4	/* and as many replayed pairs: a batch */
#define FEEDBACK_HOLDOUT_EVERY 5	/* every 5th usable event validates */
#define FEEDBACK_MIN_VALIDATION 20	/* fewer held-out events keep the blend */

/*
 * gnnvec_feedback(index, query, positive): logs one event in
 * gnnvec_feedback_events for gnnvec_feedback_train.  Callers: the owner
 * of the index's table, and roles with the privileges of role
 * gnnvec_feedback; either needs SELECT on the table.  Cheap: the vectors
 * are checked against the index's dimensions and metric, nothing is
 * searched, and the model row is not touched.  Returns the event's id.
 */
PG_FUNCTION_INFO_V1(gnnvec_feedback);
Datum
gnnvec_feedback(PG_FUNCTION_ARGS)
{
	Relation	index = store_open_index(PG_GETARG_OID(0), false);
	Oid			heapoid = index->rd_index->indrelid;
	Oid			role = get_role_oid(FEEDBACK_ROLE, true);
	GnnIndexView v;
	float	   *buf;
	int64		id;

	if (!pg_class_ownercheck(heapoid, GetUserId()) &&
		!(OidIsValid(role) && has_privs_of_role(GetUserId(), role)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to log feedback for index %s",
						RelationGetRelationName(index)),
				 errdetail("Only the owner of table %s and roles with the privileges of role \"%s\" may log feedback.",
						   get_rel_name(heapoid), FEEDBACK_ROLE),
				 errhint("GRANT %s TO the role that logs feedback.", FEEDBACK_ROLE)));
	gnn_view_init(&v, index, NULL);
	buf = palloc(sizeof(float) * v.dim);
	gnn_view_query_vector(&v, PG_GETARG_DATUM(1), buf, "query vector");
	gnn_view_query_vector(&v, PG_GETARG_DATUM(2), buf, "positive vector");
	id = store_log_feedback(index, get_fn_expr_argtype(fcinfo->flinfo, 1),
							PG_GETARG_DATUM(1), PG_GETARG_DATUM(2));
	relation_close(index, NoLock);
	PG_RETURN_INT64(id);
}

/* An event's vector as the index sees it; false if it no longer fits. */
static bool
event_vector(GnnIndexView *v, Datum d, float *out)
{
	return DatumGetVector(d)->dim == v->dim &&
		hnsw_form_vector(d, v->metric, v->dim, out);
}

/*
 * The stored config with the feedback counters updated and, when patch
 * (a JSON object) is not NULL, its keys replaced: the training's metadata
 * stays.
 */
static char *
feedback_config(const char *config, const char *patch, int64 events, int64 steps)
{
	Oid			types[4] = {TEXTOID, TEXTOID, INT8OID, INT8OID};
	Datum		args[4];
	char		nulls[4] = {config ? ' ' : 'n', patch ? ' ' : 'n', ' ', ' '};
	MemoryContext caller = CurrentMemoryContext;
	char	   *merged;
	bool		isnull;

	args[0] = config ? CStringGetTextDatum(config) : (Datum) 0;
	args[1] = patch ? CStringGetTextDatum(patch) : (Datum) 0;
	args[2] = Int64GetDatum(events);
	args[3] = Int64GetDatum(steps);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute_with_args("SELECT (coalesce($1::pg_catalog.jsonb, '{}') || "
							  "coalesce($2::pg_catalog.jsonb, '{}') || "
							  "pg_catalog.jsonb_build_object('feedback_events', "
							  "coalesce(($1::pg_catalog.jsonb ->> 'feedback_events')::bigint, 0) + $3, "
							  "'optimizer_steps', $4))::text",
							  4, types, args, nulls, true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "updating the model's config failed");
	merged = MemoryContextStrdup(caller,
								 TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
																   SPI_tuptable->tupdesc,
																   1, &isnull)));
	SPI_finish();
	return merged;
}

/*
 * Chooses the blend of a model trained by feedback on the held-out events
 * (choose_blend, as the scan sees them), warns when it falls back to raw
 * distance, and returns the validation figures for the stored config.
 */
static char *
feedback_blend(GnnModel *model, GnnIndexView *v, const HeldPair *held,
			   int nheld, MemoryContext tmp)
{
	TrainBudget b;
	double		raw_recall;
	double		recall;
	double		rank;
	int			blend;

	budget_init(&b, tmp, trainer_bytes(model, v->dim), v->dim);
	recall = choose_blend(model, v, held, nheld, NULL, &b, &raw_recall,
						  &blend, &rank, tmp);
	if (blend == 0)
		ereport(WARNING,
				(errmsg("gnnvec_feedback_train: the model does not beat the plain index scan on the %d held-out events; reranking keeps the distance order",
						nheld),
				 errdetail("Validation hit rate at 10: plain index scan %.3f, best reranking %.3f.",
						   raw_recall, recall)));
	return psprintf("{\"feedback_validation_events\": %d, \"val_recall_at_10\": %.4f, "
					"\"raw_recall_at_10\": %.4f, \"blend\": %s, \"raw_fallback\": %s}",
					nheld, recall, raw_recall, blend_text(blend),
					blend == 0 ? "true" : "false");
}

/*
 * gnnvec_feedback_train(index, max_events): learns from up to max_events
 * logged events of index, oldest first, and consumes them.  Each step
 * takes FEEDBACK_EVENTS_PER_STEP events and as many pairs replayed from
 * earlier training (reservoir sampling keeps old data in the batches),
 * made into examples as gnnvec_train makes them (its default numbers of
 * candidates and random negatives), one Adam step on the batch, with the
 * EWC penalty of the last training.
 * Adam's moments and step count come from the model's state and go back
 * into it, so successive calls continue one optimisation; the stored
 * config (the training's metadata) is kept, with feedback_events and
 * optimizer_steps updated.  The model row is written once per call.
 * Events whose positive is not in the index, or that leave no negative,
 * are consumed and counted as skipped.
 *
 * Every FEEDBACK_HOLDOUT_EVERY-th usable event is not trained on but held
 * out; with at least FEEDBACK_MIN_VALIDATION of them the blend is chosen
 * again on them after the steps, as gnnvec_train chooses it (the scan's
 * candidates, nothing injected; raw distance unless a blend beats it), so
 * feedback can switch a model kept at raw distance in, and out again.
 * With fewer the stored blend stays (a call on a few events, the usual
 * online case, says nothing).
 */
PG_FUNCTION_INFO_V1(gnnvec_feedback_train);
Datum
gnnvec_feedback_train(PG_FUNCTION_ARGS)
{
	int			max_events = PG_GETARG_INT32(1);
	Relation	index;
	GnnIndexView v;
	Owned	   *o;
	GnnTrainConfig tcfg;
	GnnError	err;
	bytea	   *state;
	GnnRng		rng;
	MemoryContext tmp;
	MemoryContext step;
	float	   *q;
	float	   *p;
	int			taken = 0;
	int			skipped = 0;
	int			steps = 0;
	double		loss = 0;
	int64		version = 0;
	HeldPair   *held;
	int			nheld = 0;
	int			usable = 0;
	char	   *patch = NULL;
	TupleDesc	tdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	check_range("max_events", max_events, 1, 100000000);
	index = store_open_index(PG_GETARG_OID(0), true);
	if (get_call_result_type(fcinfo, NULL, &tdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	store_begin_update(index, GNN_RERANK_SCOPE, LORA_RERANK, GNN_KIND_GNN);
	gnn_view_init(&v, index, NULL);
	q = palloc(sizeof(float) * v.dim);
	p = palloc(sizeof(float) * v.dim);
	held = palloc(sizeof(HeldPair) * (max_events / FEEDBACK_HOLDOUT_EVERY + 1));

	o = palloc0(sizeof(Owned));
	gnn_on_context_reset(free_owned, o);
	o->model = stored_model_copy(index, GNN_RERANK_SCOPE);
	if (o->model && o->model->cfg.in_dim != v.dim)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("the Rerank model of index \"%s\" has %d dimensions, the index %d",
						RelationGetRelationName(index), o->model->cfg.in_dim, v.dim),
				 errhint("gnnvec_model_reset() removes it.")));
	if (o->model == NULL)
	{
		GnnConfig	cfg;

		gnn_config_default(&cfg, v.dim, FEEDBACK_HIDDEN);
		gnn_ereport_status(gnn_model_create(&cfg, &o->model, &err), &err);
	}
	gnn_train_config_default(&tcfg);
	gnn_ereport_status(gnn_trainer_init(&o->trainer, o->model, &tcfg, &err), &err);
	o->trainer_live = true;
	gnn_ereport_status(gnn_replay_init(&o->replay, REPLAY_CAPACITY, 2 * v.dim, 42, &err),
					   &err);
	o->replay_live = true;
	state = store_state(index, GNN_RERANK_SCOPE, GNN_KIND_GNN);
	if (state)
		(void) state_restore(state, o->model->n_params, 2 * v.dim,
							 &o->trainer, true, &o->replay, &o->replay_live);
	gnn_rng_seed(&rng, (uint64) o->replay.seen + 1);
	tmp = AllocSetContextCreate(CurrentMemoryContext, "gnnvec_feedback_train batch",
								ALLOCSET_DEFAULT_SIZES);
	step = AllocSetContextCreate(CurrentMemoryContext, "gnnvec_feedback_train step",
								 ALLOCSET_DEFAULT_SIZES);

	while (taken < max_events)
	{
		int			want = Min(FEEDBACK_EVENTS_PER_STEP, max_events - taken);
		Datum		queries[FEEDBACK_EVENTS_PER_STEP];
		Datum		positives[FEEDBACK_EVENTS_PER_STEP];
		int			slots[FEEDBACK_EVENTS_PER_STEP];
		Example		batch[2 * FEEDBACK_EVENTS_PER_STEP];
		Example    *bp[2 * FEEDBACK_EVENTS_PER_STEP];
		int			n = 0;
		int			nevents;
		int			got;
		int			nslots;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(tmp);
		got = store_take_feedback(index, want, queries, positives);
		taken += got;
		for (int i = 0; i < got; i++)
		{
			int			pos;

			if (!event_vector(&v, queries[i], q) ||
				!event_vector(&v, positives[i], p) ||
				(pos = gnn_view_find(&v, p)) < 0)
				skipped++;
			else if (++usable % FEEDBACK_HOLDOUT_EVERY == 0)
			{
				held[nheld].query = MemoryContextAlloc(old, sizeof(float) * v.dim);
				memcpy(held[nheld].query, q, sizeof(float) * v.dim);
				held[nheld].positive = v.tid[pos];
				ItemPointerSetInvalid(&held[nheld].exclude);
				nheld++;
			}
			else if (!make_example(&v, q, pos, -1, FEEDBACK_CANDIDATES,
								   FEEDBACK_RANDOM_NEGATIVES, true, &rng, &batch[n]))
				skipped++;
			else
				n++;
		}
		nevents = n;
		nslots = nevents > 0 ?
			gnn_replay_sample(&o->replay, FEEDBACK_EVENTS_PER_STEP, slots) : 0;
		for (int i = 0; i < nslots; i++)
		{
			const gnn_real *rec = gnn_replay_record(&o->replay, slots[i]);
			int			rp;

			memcpy(q, rec, sizeof(float) * v.dim);
			rp = gnn_view_find(&v, rec + v.dim);
			if (rp >= 0 && make_example(&v, q, rp, -1, FEEDBACK_CANDIDATES,
										FEEDBACK_RANDOM_NEGATIVES, true, &rng,
										&batch[n]))
				n++;
		}
		MemoryContextSwitchTo(old);
		if (nevents > 0)
		{
			for (int i = 0; i < n; i++)
				bp[i] = &batch[i];
			loss += train_batch(&o->trainer, &v, bp, n, NULL, step);
			steps++;
			for (int i = 0; i < nevents; i++)
				replay_add_pair(&o->replay, batch[i].query,
								v.vecs + (size_t) batch[i].cand[batch[i].positive] * v.dim,
								v.dim);
		}
		MemoryContextReset(tmp);
		/* the elements met stay within half of maintenance_work_mem */
		if (gnn_view_bytes(&v) > (Size) maintenance_work_mem * 1024 / 2)
			gnn_view_reset(&v);
		if (got < want)
			break;
	}
	if (steps > 0 && nheld >= FEEDBACK_MIN_VALIDATION)
		patch = feedback_blend(o->model, &v, held, nheld, tmp);
	if (steps > 0)
		version = gnn_store_save(index, GNN_RERANK_SCOPE, GNN_KIND_GNN, o->model,
								 feedback_config(store_config(index, GNN_RERANK_SCOPE,
															  GNN_KIND_GNN),
												 patch, taken, o->trainer.adam.t),
								 state_serialize(&o->trainer, &o->replay));
	values[0] = Int32GetDatum(taken);
	values[1] = Int32GetDatum(skipped);
	values[2] = Int64GetDatum(version);
	nulls[2] = steps == 0;
	values[3] = Float8GetDatum(steps > 0 ? loss / steps : 0);
	nulls[3] = steps == 0;
	values[4] = Int64GetDatum(o->trainer.adam.t);
	free_owned(o);
	store_end_update();
	relation_close(index, NoLock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tdesc), values, nulls)));
}
