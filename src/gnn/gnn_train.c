/*
 * gnn_train.c
 *		gnnvec_train (supervised from (query, positive) pairs, or
 *		self-supervised from the graph) and gnnvec_feedback (online steps
 *		with a replay buffer and EWC).
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
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#define BATCH_SIZE		8
#define SELF_SUPERVISED_MAX 1000
#define STATE_MAGIC		0x54534E47	/* "GNST" */
#define REPLAY_CAPACITY 512
#define FEEDBACK_CANDIDATES 32
#define FEEDBACK_HIDDEN 64		/* a first model made by feedback: gnnvec_train's default */

typedef struct Example
{
	float	   *query;			/* dim */
	int			n;
	int		   *cand;			/* nodes */
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
 * likely_relevant), the positive among them, then nrandom random nodes of
 * all[] (without the positive's graph neighbours).
 */
static bool
make_example(GnnIndexView *v, const float *query, int positive, int exclude,
			 int ncand, int nrandom, const int *all, int nall,
			 bool near_positive, GnnRng *rng, Example *ex)
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
	for (i = 0; i < nrandom && nall > n + 1; i++)
	{
		int			u = all[gnn_rng_below(rng, nall)];

		/*
		 * Only the neighbour rule here: a random row is rarely relevant,
		 * and when the query lies at the edge of the data nearly every row
		 * is nearer to the positive than the query is.
		 */
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
 * The node holding exactly this vector, or -1 if the index has none: a
 * graph search first (ef at least 100), every element if it misses.
 */
static int
find_node(GnnIndexView *v, const float *vec)
{
	int			ef = Max(hnsw_ef_search, 100);
	int		   *nodes = palloc(sizeof(int) * ef);
	float	   *dists = palloc(sizeof(float) * ef);
	int			n = gnn_view_search(v, vec, ef, nodes, dists, NULL);
	int			found = -1;

	for (int i = 0; i < n && found < 0; i++)
		if (memcmp(v->vecs + (size_t) nodes[i] * v->dim, vec,
				   sizeof(float) * v->dim) == 0)
			found = nodes[i];
	pfree(nodes);
	pfree(dists);
	if (found < 0)
	{
		/* the approximate search missed it: a pass over every element */
		int		   *all;
		int			nall = gnn_view_all_elements(v, &all);

		for (int i = 0; i < nall && found < 0; i++)
			if (memcmp(v->vecs + (size_t) all[i] * v->dim, vec,
					   sizeof(float) * v->dim) == 0)
				found = all[i];
		pfree(all);
	}
	return found;
}

static Oid
vector_type_oid(void)
{
	return typenameTypeId(NULL, typeStringToTypeName("vector"));
}

/*
 * Runs pairs_sql and turns each (query, positive) row into an example.
 * Pairs whose positive is not an indexed vector are skipped, and so are
 * pairs left with no negative (both counted).
 */
static int
examples_from_sql(GnnIndexView *v, const char *sql, int ncand, int nrandom,
				  const int *all, int nall, bool near_positive, GnnRng *rng,
				  Example **out, int *skipped, int *no_negatives)
{
	Oid			vtype;
	uint64		nrows;
	Example    *ex;
	int			n = 0;
	float	   *q = palloc(sizeof(float) * v->dim);
	float	   *p = palloc(sizeof(float) * v->dim);
	MemoryContext outer = CurrentMemoryContext;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	vtype = vector_type_oid();
	if (SPI_execute(sql, true, 0) != SPI_OK_SELECT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("pairs_sql must be a query that returns rows"),
				 errhint("For example: SELECT query_embedding, clicked_embedding FROM clicks.")));
	if (SPI_tuptable->tupdesc->natts != 2 ||
		SPI_gettypeid(SPI_tuptable->tupdesc, 1) != vtype ||
		SPI_gettypeid(SPI_tuptable->tupdesc, 2) != vtype)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("pairs_sql must return two columns of type vector (query, positive)"),
				 SPI_tuptable->tupdesc->natts == 2 ?
				 errdetail("It returned columns of types %s and %s.",
						   format_type_be(SPI_gettypeid(SPI_tuptable->tupdesc, 1)),
						   format_type_be(SPI_gettypeid(SPI_tuptable->tupdesc, 2))) :
				 errdetail("It returned %d column(s).", SPI_tuptable->tupdesc->natts)));
	nrows = SPI_processed;
	ex = MemoryContextAlloc(outer, sizeof(Example) * Max(nrows, 1));
	*skipped = *no_negatives = 0;
	for (uint64 r = 0; r < nrows; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		bool		qnull,
					pnull;
		Datum		qd = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &qnull);
		Datum		pd = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &pnull);
		int			pos;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		if (qnull || pnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("pairs_sql returned a NULL vector in row " UINT64_FORMAT, r + 1)));
		old = MemoryContextSwitchTo(outer);
		gnn_view_query_vector(v, qd, q, "query vector of pairs_sql");
		gnn_view_query_vector(v, pd, p, "positive vector of pairs_sql");
		pos = find_node(v, p);
		if (pos < 0)
			(*skipped)++;
		else if (!make_example(v, q, pos, -1, ncand, nrandom, all, nall,
							   near_positive, rng, &ex[n]))
			(*no_negatives)++;
		else
			n++;
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	*out = ex;
	return n;
}

/* Self-supervised: a node's query is its own vector, a graph neighbour the positive. */
static int
examples_from_graph(GnnIndexView *v, int ncand, int nrandom, const int *all,
					int nall, bool near_positive, GnnRng *rng, Example **out)
{
	int			want = Min(nall, SELF_SUPERVISED_MAX);
	Example    *ex = palloc(sizeof(Example) * Max(want, 1));
	int			n = 0;

	for (int i = 0; i < want; i++)
	{
		int			node = all[gnn_rng_below(rng, nall)];
		int			pos;

		CHECK_FOR_INTERRUPTS();
		gnn_view_neighbors(v, node);
		if (v->nbr_count[node] == 0)
			continue;
		pos = v->nbr[v->nbr_start[node] + gnn_rng_below(rng, v->nbr_count[node])];
		if (make_example(v, v->vecs + (size_t) node * v->dim, pos, node, ncand,
						 nrandom, all, nall, near_positive, rng, &ex[n]))
			n++;
	}
	*out = ex;
	return n;
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
	ex->dist = palloc(sizeof(float) * ef);
	ex->n = gnn_view_search(v, query, ef, ex->cand, ex->dist, NULL);
	ex->positive = -1;
	for (int i = 0; i < ex->n && ex->positive < 0; i++)
		if (ex->cand[i] == positive)
			ex->positive = i;
	ex->query = palloc(sizeof(float) * v->dim);
	memcpy(ex->query, query, sizeof(float) * v->dim);
}

/* ---- training ------------------------------------------------------------ */

/*
 * Tallies, for every blend of gnn_blends, how many of the examples put
 * their positive in the top 10 (gnn.h): the validation measure, and what
 * the blend is chosen by.
 */
static void
tally_at_10(GnnModel *model, GnnIndexView *v, Example **ex, int n,
			GnnBlendTally *tally, MemoryContext tmp)
{
	MemoryContext old = MemoryContextSwitchTo(tmp);

	gnn_blend_tally_init(tally);
	for (int i = 0; i < n; i++)
	{
		GnnExample	gex;
		GnnError	err;

		CHECK_FOR_INTERRUPTS();
		gnn_score_input(v, ex[i]->query, ex[i]->n, ex[i]->cand, ex[i]->dist,
						&gex.in, NULL);
		gex.positive = ex[i]->positive;
		gnn_ereport_status(gnn_blend_tally_add(model, tally, &gex, 10, &err),
						   &err);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(tmp);
}

/*
 * Sets the model's blend to the best on these examples (its number goes
 * to *blend, the mean rank of their positives under it to *rank, what
 * the blend is chosen by); returns its hit rate at 10 and, in
 * *raw_recall, that of raw distance alone: the plain index scan's, on
 * validation examples.
 */
static double
choose_blend(GnnModel *model, GnnIndexView *v, Example **ex, int n,
			 double *raw_recall, int *blend, double *rank, MemoryContext tmp)
{
	GnnBlendTally tally;
	double		recall;

	tally_at_10(model, v, ex, n, &tally, tmp);
	*blend = gnn_blend_apply_best(model, &tally, &recall);
	*raw_recall = tally.n > 0 ? (double) tally.hits[0] / tally.n : 0;
	*rank = tally.n > 0 ? tally.rank_sum[*blend] / tally.n : 0;
	return recall;
}

static double
train_batch(GnnTrainer *tr, GnnIndexView *v, Example **batch, int n,
			MemoryContext tmp)
{
	GnnExample *gex;
	double		loss = 0;
	GnnError	err;
	MemoryContext old = MemoryContextSwitchTo(tmp);

	gex = palloc(sizeof(GnnExample) * n);
	for (int i = 0; i < n; i++)
	{
		gnn_score_input(v, batch[i]->query, batch[i]->n, batch[i]->cand,
						batch[i]->dist, &gex[i].in, NULL);
		gex[i].positive = batch[i]->positive;
	}
	gnn_ereport_status(gnn_train_step(tr, gex, n, &loss, &err), &err);
	MemoryContextSwitchTo(old);
	MemoryContextReset(tmp);
	return loss;
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

/* ---- state: EWC and the replay buffer, for online feedback ---------------- */

static bytea *
state_serialize(const GnnEwc *ewc, const GnnReplay *replay)
{
	size_t		ewc_len = gnn_ewc_serialized_size(ewc);
	size_t		rep_len = sizeof(float) * (size_t) replay->count * replay->record_len;
	size_t		len = 4 * sizeof(uint32) + ewc_len + 3 * sizeof(int32) +
		sizeof(int64) + sizeof(uint64) + rep_len;
	bytea	   *b = palloc(VARHDRSZ + len);
	char	   *p = VARDATA(b);
	uint32		hdr[4] = {STATE_MAGIC, 1, (uint32) ewc_len, 0};
	int32		ints[3] = {replay->capacity, replay->record_len, replay->count};

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(p, hdr, sizeof(hdr));
	p += sizeof(hdr);
	gnn_ewc_serialize(ewc, (uint8_t *) p);
	p += ewc_len;
	memcpy(p, ints, sizeof(ints));
	p += sizeof(ints);
	memcpy(p, &replay->seen, sizeof(int64));
	p += sizeof(int64);
	memcpy(p, &replay->rng.state, sizeof(uint64));
	p += sizeof(uint64);
	memcpy(p, replay->records, rep_len);
	return b;
}

/* Restores EWC and replay from a state blob; false if it is unusable. */
static bool
state_restore(bytea *b, size_t n_params, int record_len, GnnEwc *ewc,
			  GnnReplay *replay, bool *replay_live)
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
	if (hdr[0] != STATE_MAGIC || hdr[1] != 1 || hdr[2] > (size_t) (end - p))
		return false;
	if (gnn_ewc_deserialize((const uint8_t *) p, hdr[2], &restored, &err) != GNN_OK)
		return false;
	if (restored.n != n_params)
	{
		gnn_ewc_free(&restored);
		return false;
	}
	p += hdr[2];
	gnn_ewc_free(ewc);
	*ewc = restored;
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
	a->scope = gnn_scope_arg(text_to_cstring(PG_GETARG_TEXT_PP(2)));
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

/*
 * The examples of a training call (from pairs_sql, or from the graph when
 * it is NULL) in a seeded order whose last *nval are held out for
 * validation; returns how many.  Shared by the GNN and the adapter.
 */
static int
training_examples(GnnIndexView *v, const TrainArgs *a, GnnRng *rng,
				  Example **ex, int **order, int *nval)
{
	int			nall;
	int		   *all;
	int			nex;
	int			skipped = 0;
	int			no_negatives = 0;
	bool		near_positive = strcmp(a->scope, LORA_HNSW_SCOPE_NAME) != 0;

	/* every element: random negatives, and the self-supervised queries */
	nall = gnn_view_all_elements(v, &all);
	if (a->pairs_sql)
		nex = examples_from_sql(v, a->pairs_sql, a->candidates, a->random_negatives,
								all, nall, near_positive, rng, ex, &skipped,
								&no_negatives);
	else
		nex = examples_from_graph(v, a->candidates, a->random_negatives, all,
								  nall, near_positive, rng, ex);
	if (nex == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("no training data for index \"%s\"", RelationGetRelationName(v->index)),
				 skipped > 0 ?
				 errdetail("%d pair(s) were skipped: their positive vector is not in the index.", skipped) : 0,
				 errhint("pairs_sql must return (query, positive) rows whose positive is an indexed vector.")));
	if (skipped > 0)
		ereport(NOTICE,
				(errmsg("gnnvec_train: %d pair(s) skipped: their positive vector is not in the index",
						skipped)));
	if (no_negatives > 0)
		ereport(NOTICE,
				(errmsg("gnnvec_train: %d pair(s) skipped: no candidate was left to contrast the positive with",
						no_negatives),
				 errhint("Candidates likely relevant to the positive are not used as negatives; random_negatives adds others.")));

	/* the split: a seeded shuffle, then the last nval examples */
	*order = palloc(sizeof(int) * nex);
	for (int i = 0; i < nex; i++)
		(*order)[i] = i;
	shuffle(*order, nex, rng);
	*nval = (a->val_fraction > 0 && nex >= 2) ?
		Max(1, (int) floor(nex * a->val_fraction)) : 0;
	return nex;
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
 * Validation recall@10 is measured through the adapted search itself: the
 * share of held-out pairs whose positive is among the first 10 results of
 * the graph search (ef = gnnvec.ef_search) with the adapted query.  The
 * adapter of the best epoch is kept, and the adapter as it was before the
 * call (none: the identity) counts as epoch 0, so a training call never
 * leaves an adapter that does worse on held-out pairs than before it.
 */
#define LORA_TRAIN_TEMPERATURE 0.1

/* Did the search with the (adapted) query put the positive in its top 10? */
static bool
adapted_hit_at_10(GnnIndexView *v, const LoraAdapter *ad, const Example *ex)
{
	int			ef = Max(hnsw_ef_search, 10);
	int		   *nodes = palloc(sizeof(int) * ef);
	float	   *dists = palloc(sizeof(float) * ef);
	float	   *y = palloc(sizeof(float) * v->dim);
	int			positive = ex->cand[ex->positive];
	int			n;

	memcpy(y, ex->query, sizeof(float) * v->dim);
	if (ad != NULL)
		lora_index_apply(ad, y, v->metric == HNSW_METRIC_COSINE);
	n = gnn_view_search(v, y, ef, nodes, dists, NULL);
	for (int i = 0; i < Min(n, 10); i++)
		if (nodes[i] == positive)
			return true;
	return false;
}

static double
adapted_recall_at_10(GnnIndexView *v, const LoraAdapter *ad, Example **val,
					 int nval, MemoryContext tmp)
{
	int			hits = 0;
	MemoryContext old = MemoryContextSwitchTo(tmp);

	for (int i = 0; i < nval; i++)
	{
		CHECK_FOR_INTERRUPTS();
		hits += adapted_hit_at_10(v, ad, val[i]);
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(tmp);
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

/*
 * gnnvec_train(..., scope => 'HnswScan'): epochs of per-example SGD on the
 * index's adapter, a row per epoch, the best epoch saved as the next
 * version of (index, 'HnswScan', 'lora').
 */
static void
train_hnsw_adapter(ReturnSetInfo *rsinfo, GnnIndexView *v, const TrainArgs *a,
				   Example *ex, int *order, int ntrain, int nval, GnnRng *rng,
				   MemoryContext tmp)
{
	LoraAdapter ad;
	Example   **val = palloc(sizeof(Example *) * Max(nval, 1));
	size_t		nparams;
	float	   *best;
	double		start_recall;
	double		best_recall;
	int			best_epoch = 0;

	for (int i = 0; i < nval; i++)
		val[i] = &ex[order[ntrain + i]];
	(void) starting_adapter(v, a, &ad);
	nparams = (size_t) 2 * ad.rank * ad.dim;
	best = palloc(sizeof(float) * nparams);
	memcpy(best, lora_adapter_at(&ad), sizeof(float) * nparams);
	start_recall = best_recall = adapted_recall_at_10(v, &ad, val, nval, tmp);

	for (int e = 1; e <= a->epochs; e++)
	{
		double		loss = 0;
		double		recall;
		Datum		values[3];
		bool		nulls[3] = {false, false, nval == 0};
		MemoryContext old;

		shuffle(order, ntrain, rng);
		for (int i = 0; i < ntrain; i++)
		{
			CHECK_FOR_INTERRUPTS();
			/* an example's scratch (its negatives: n x dim) goes with it */
			old = MemoryContextSwitchTo(tmp);
			loss += adapter_step(v, &ad, &ex[order[i]], a->lr);
			MemoryContextSwitchTo(old);
			MemoryContextReset(tmp);
		}
		loss /= Max(ntrain, 1);
		recall = adapted_recall_at_10(v, &ad, val, nval, tmp);
		if (nval == 0 || recall > best_recall)
		{
			best_recall = recall;
			best_epoch = e;
			memcpy(best, lora_adapter_at(&ad), sizeof(float) * nparams);
		}
		ereport(NOTICE,
				(errmsg("gnnvec_train: HnswScan adapter epoch %d of %d: loss %.4f, validation recall@10 %.3f (before training %.3f)",
						e, a->epochs, loss, recall, start_recall)));
		values[0] = Int32GetDatum(e);
		values[1] = Float8GetDatum(loss);
		values[2] = Float8GetDatum(recall);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	memcpy(lora_adapter_at(&ad), best, sizeof(float) * nparams);
	gnn_store_save_blob(v->index, LORA_HNSW_SCOPE_NAME, LORA_KIND,
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
			 int best_epoch, int blend)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfo(&s, "{\"dim\": %d, \"hidden\": %d, \"heads\": %d, "
					 "\"self_supervised\": %s, \"epochs\": %d, \"best_epoch\": %d, "
					 "\"train_pairs\": %d, \"validation_pairs\": %d, "
					 "\"val_recall_at_10\": %.4f, \"raw_recall_at_10\": %.4f, "
					 "\"start_recall_at_10\": %.4f, \"blend\": %s, "
					 "\"raw_fallback\": %s, \"learning_rate\": %g, \"seed\": " INT64_FORMAT "}",
					 m->cfg.in_dim, m->cfg.hidden_dim, m->cfg.heads,
					 a->pairs_sql ? "false" : "true", a->epochs, best_epoch,
					 ntrain, nval, val_recall, raw_recall, start_recall,
					 blend_text(blend), blend == 0 ? "true" : "false", a->lr,
					 a->seed);
	return s.data;
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
 * on the training examples (one number, so the layer's fit to them
 * biases it little).
 */
PG_FUNCTION_INFO_V1(gnnvec_train);
Datum
gnnvec_train(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TrainArgs	a;
	Relation	index;
	GnnIndexView v;
	GnnRng		rng;
	Example    *ex;
	int			nex;
	int			nval,
				ntrain;
	int		   *order;
	Owned	   *o;
	GnnTrainConfig tcfg;
	GnnError	err;
	gnn_real   *best;
	double		best_recall = 0;
	double		start_recall = 0;
	double		raw_recall = 0;
	int			best_blend = 0;
	double		best_rank = 0;
	int			best_epoch = 0;
	bytea	   *state;
	MemoryContext tmp;

	train_args(fcinfo, &a);
	index = gnn_open_index(a.indexoid, true);
	gnn_store_begin_update(index, a.scope,
						   strcmp(a.scope, LORA_HNSW_SCOPE_NAME) == 0 ?
						   LORA_KIND : GNN_KIND_GNN);
	InitMaterializedSRF(fcinfo, 0);
	gnn_view_init(&v, index);
	gnn_rng_seed(&rng, (uint64_t) a.seed);
	tmp = AllocSetContextCreate(CurrentMemoryContext, "gnnvec_train step",
								ALLOCSET_DEFAULT_SIZES);
	nex = training_examples(&v, &a, &rng, &ex, &order, &nval);
	ntrain = nex - nval;
	if (strcmp(a.scope, LORA_HNSW_SCOPE_NAME) == 0)
	{
		train_hnsw_adapter(rsinfo, &v, &a, ex, order, ntrain, nval, &rng, tmp);
		gnn_store_end_update();
		relation_close(index, NoLock);
		PG_RETURN_VOID();
	}
	{
		Example   **val = palloc(sizeof(Example *) * Max(nval, 1));
		Example   **batch = palloc(sizeof(Example *) * BATCH_SIZE);
		size_t		nbytes;

		/* the shuffles below reorder only order[0 .. ntrain-1] */
		for (int i = 0; i < nval; i++)
		{
			Example    *held = &ex[order[ntrain + i]];

			val[i] = palloc(sizeof(Example));
			validation_example(&v, held->query, held->cand[held->positive],
							   val[i]);
		}

		o = palloc0(sizeof(Owned));
		gnn_on_context_reset(free_owned, o);
		o->model = stored_model_copy(index, a.scope);
		if (o->model && (o->model->cfg.in_dim != v.dim ||
						 o->model->cfg.hidden_dim != a.hidden))
		{
			gnn_model_free(o->model);	/* another shape: start over */
			o->model = NULL;
		}
		if (o->model == NULL)
		{
			GnnConfig	cfg;

			gnn_config_default(&cfg, v.dim, a.hidden);
			cfg.seed = (uint64_t) a.seed;
			gnn_ereport_status(gnn_model_create(&cfg, &o->model, &err), &err);
		}
		gnn_train_config_default(&tcfg);
		tcfg.lr = a.lr;
		gnn_ereport_status(gnn_trainer_init(&o->trainer, o->model, &tcfg, &err), &err);
		o->trainer_live = true;
		gnn_ereport_status(gnn_replay_init(&o->replay, REPLAY_CAPACITY, 2 * v.dim,
										   (uint64_t) a.seed, &err), &err);
		o->replay_live = true;
		state = gnn_store_state(index, a.scope, GNN_KIND_GNN);
		if (state)
			(void) state_restore(state, o->model->n_params, 2 * v.dim,
								 &o->trainer.ewc, &o->replay, &o->replay_live);

		nbytes = sizeof(gnn_real) * o->model->n_params;
		if (nval > 0)
			start_recall = best_recall =
				choose_blend(o->model, &v, val, nval, &raw_recall, &best_blend,
							 &best_rank, tmp);
		best = palloc(nbytes);
		memcpy(best, o->model->params, nbytes);
		for (int e = 1; e <= a.epochs; e++)
		{
			double		loss = 0;
			int			nb = 0;
			double		recall = 0;
			int			blend;
			double		rank;
			Datum		values[3];
			bool		nulls[3] = {false, false, nval == 0};

			shuffle(order, ntrain, &rng);
			for (int i = 0; i < ntrain; i += BATCH_SIZE)
			{
				int			n = Min(BATCH_SIZE, ntrain - i);

				CHECK_FOR_INTERRUPTS();
				for (int j = 0; j < n; j++)
					batch[j] = &ex[order[i + j]];
				loss += train_batch(&o->trainer, &v, batch, n, tmp);
				nb++;
			}
			loss /= Max(nb, 1);
			if (nval > 0)
			{
				recall = choose_blend(o->model, &v, val, nval, &raw_recall,
									  &blend, &rank, tmp);
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
								e, a.epochs, loss, recall, blend_text(blend),
								raw_recall, start_recall)));
			}
			else
			{
				best_epoch = e;
				memcpy(best, o->model->params, nbytes);
				ereport(NOTICE,
						(errmsg("gnnvec_train: epoch %d of %d: loss %.4f",
								e, a.epochs, loss)));
			}
			values[0] = Int32GetDatum(e);
			values[1] = Float8GetDatum(loss);
			values[2] = Float8GetDatum(recall);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		memcpy(o->model->params, best, nbytes);
		if (nval == 0)
		{
			double		unused;

			val = repalloc(val, sizeof(Example *) * Max(ntrain, 1));
			for (int i = 0; i < ntrain; i++)
				val[i] = &ex[order[i]];
			(void) choose_blend(o->model, &v, val, ntrain, &unused, &best_blend,
								&unused, tmp);
		}
		if (nval > 0 && best_blend == 0)
			ereport(WARNING,
					(errmsg("gnnvec_train: the model does not beat the plain index scan on the %d validation pairs; reranking keeps the distance order",
							nval),
					 errdetail("Validation hit rate at 10 (positive among the first 10 of the scan's %d candidates): plain index scan %.3f, best reranking %.3f.",
							   Max(hnsw_ef_search, gnn_rerank_candidates),
							   raw_recall, best_recall),
					 errhint("More or more varied training pairs may help; the model is stored with its GNN and neighbourhood terms off.")));
		/* what this training taught is what EWC protects from now on */
		gnn_ewc_consolidate(&o->trainer.ewc, o->model->params);
		for (int i = 0; i < nex; i++)
			replay_add_pair(&o->replay, ex[i].query,
							v.vecs + (size_t) ex[i].cand[ex[i].positive] * v.dim, v.dim);
		gnn_store_save(index, a.scope, GNN_KIND_GNN, o->model,
					   train_config(o->model, &a, ntrain, nval, best_recall,
									raw_recall, start_recall, best_epoch,
									best_blend),
					   state_serialize(&o->trainer.ewc, &o->replay));
	}
	free_owned(o);
	gnn_store_end_update();
	relation_close(index, NoLock);
	PG_RETURN_VOID();
}

/* ---- gnnvec_feedback --------------------------------------------------- */

PG_FUNCTION_INFO_V1(gnnvec_feedback);
Datum
gnnvec_feedback(PG_FUNCTION_ARGS)
{
	Relation	index = gnn_open_index(PG_GETARG_OID(0), true);
	GnnIndexView v;
	float	   *q;
	float	   *p;
	int			pos;
	Owned	   *o;
	GnnTrainConfig tcfg;
	GnnError	err;
	bytea	   *state;
	GnnRng		rng;
	int			slots[BATCH_SIZE - 1];
	int			nslots;
	Example    *batch;
	Example   **bp;
	int			n = 0;
	double		loss;
	int64		version;
	TupleDesc	tdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	MemoryContext tmp;

	if (get_call_result_type(fcinfo, NULL, &tdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	gnn_store_begin_update(index, GNN_RERANK_SCOPE, GNN_KIND_GNN);
	gnn_view_init(&v, index);
	q = palloc(sizeof(float) * v.dim);
	p = palloc(sizeof(float) * v.dim);
	gnn_view_query_vector(&v, PG_GETARG_DATUM(1), q, "query vector");
	gnn_view_query_vector(&v, PG_GETARG_DATUM(2), p, "positive vector");
	pos = find_node(&v, p);
	if (pos < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the positive vector is not in index \"%s\"",
						RelationGetRelationName(index)),
				 errhint("Feedback names a row of the indexed table by its vector.")));

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
	state = gnn_store_state(index, GNN_RERANK_SCOPE, GNN_KIND_GNN);
	if (state)
		(void) state_restore(state, o->model->n_params, 2 * v.dim,
							 &o->trainer.ewc, &o->replay, &o->replay_live);

	/* this pair and up to BATCH_SIZE - 1 replayed ones, one step */
	gnn_rng_seed(&rng, (uint64_t) o->replay.seen + 1);
	nslots = gnn_replay_sample(&o->replay, BATCH_SIZE - 1, slots);
	batch = palloc(sizeof(Example) * (nslots + 1));
	bp = palloc(sizeof(Example *) * (nslots + 1));
	if (make_example(&v, q, pos, -1, FEEDBACK_CANDIDATES, 0, NULL, 0, true, &rng,
					 &batch[n]))
		n++;
	for (int i = 0; i < nslots; i++)
	{
		const gnn_real *rec = gnn_replay_record(&o->replay, slots[i]);
		int			rp = find_node(&v, rec + v.dim);

		if (rp >= 0 && make_example(&v, rec, rp, -1, FEEDBACK_CANDIDATES, 0,
									NULL, 0, true, &rng, &batch[n]))
			n++;
	}
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("index \"%s\" has too few rows to learn from", RelationGetRelationName(index))));
	for (int i = 0; i < n; i++)
		bp[i] = &batch[i];
	tmp = AllocSetContextCreate(CurrentMemoryContext, "gnnvec_feedback step",
								ALLOCSET_DEFAULT_SIZES);
	loss = train_batch(&o->trainer, &v, bp, n, tmp);
	replay_add_pair(&o->replay, q, p, v.dim);
	version = gnn_store_save(index, GNN_RERANK_SCOPE, GNN_KIND_GNN, o->model,
							 "{\"online\": true}",
							 state_serialize(&o->trainer.ewc, &o->replay));
	free_owned(o);
	gnn_store_end_update();
	relation_close(index, NoLock);
	values[0] = Int64GetDatum(version);
	values[1] = Float8GetDatum(loss);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tdesc), values, nulls)));
}
