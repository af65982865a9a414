/*
 * gnn_rerank.c
 *		GNN reranking: the score of gnn.h computed with a per-model cache of
 *		refined candidate embeddings, the scan plug-ins of the gnnhnsw AM,
 *		gnnvec_search, and the settings.
 *
 * Scoring (gnn.h, "The rerank scoring model"), for a query q with
 * candidates c_i at graph distances d_i:
 *	 c_i' = layer(c_i, level-0 neighbours of c_i, weights from d(c_i, u))
 *	 q'   = layer(q, {c_i : the 32 nearest}, weights from their d_i)
 *	 c~_i = mean(c_i, level-0 neighbours of c_i)
 *	 score_i = a * zscore(-d_i) + b * cos(q', c_i') + g * zscore(-d(q, c~_i))
 * c_i' and c~_i depend on the model, the candidate's vector and its
 * neighbour list only, so they are computed once per model version and
 * element and kept in the cached model (GnnCachedModel.cprime), checked
 * against the fingerprint of the neighbour list the scan's search read, or
 * else the LSN of the element's neighbour page (which changes whenever the
 * list does).  So is the element's projection (m, k, val of the layer,
 * gnn_layer_project), the per-vector half of q''s layer call: per query
 * only the query's own message and one node's attention, GRU and LayerNorm
 * are computed (gnn_layer_forward_projected), not the projections of 32
 * candidates.
 * This is the arithmetic of gnn_score_forward (inference, no dropout),
 * split so the candidate half can be cached; q' attends over the nearest
 * GNN_QUERY_CONTEXT candidates here as in training and validation.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "gnn/gnn.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"

bool		gnn_rerank_setting = false;
int			gnn_rerank_candidates = 100;
int			gnn_rerank_cache_mb = 64;

#define GNN_MAX_K 1000

void
gnn_init(void)
{
	DefineCustomBoolVariable("gnnvec.rerank",
							 "Rerank gnnhnsw index scans with the index's GNN model of scope Rerank.",
							 "Scans take max(gnnvec.ef_search, gnnvec.rerank_candidates) candidates and return them by model score; the ORDER BY value stays the true distance.",
							 &gnn_rerank_setting, false,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("gnnvec.rerank_candidates",
							"Candidates a reranked search scores.",
							NULL,
							&gnn_rerank_candidates, 100, 1, HNSW_MAX_EF_SEARCH,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("gnnvec.rerank_cache_mb",
							"Memory per model for cached refined candidate embeddings, per backend.",
							"The cache starts over when full.",
							&gnn_rerank_cache_mb, 64, 0, 16384,
							PGC_USERSET, GUC_UNIT_MB, NULL, NULL, NULL);
}

/* ---- scoring ------------------------------------------------------------- */

/*
 * What the cache keeps per element: c' / ||c'|| (H; the score only needs
 * its direction, and a unit c' turns each cosine into a dot product), the
 * element's projection (m, k, val: 3H, gnn_layer_project), which q' needs
 * for the nearest candidates, and its neighbourhood mean c~ (D).  The
 * projection depends on the element's vector only, c' and c~ on its
 * neighbour list too; all are renewed together when that changes.  Every
 * candidate's score reads c' and c~, only the nearest GNN_QUERY_CONTEXT
 * read the projection: c' and c~ come first, side by side.  They are kept
 * as bfloat16 (gnn.h): scoring is bound by the cache misses on the
 * entries (docs/gnn.md, "Rerank latency"), and an entry of 64-d floats
 * took 1.3 kB.  The first scoring of an element reads them back from
 * bfloat16 too, so that every scan scores alike.  An entry starts on a
 * cache line (CPRIME_ALIGN) with c' and c~: at 64-d they are four lines,
 * where a header before them and the allocator's chunk header made five or
 * six; what only a stale entry's check reads comes after them
 * (cprime_check).
 */
typedef struct CprimeCheck
{
	ItemPointerData nbrtid;		/* its neighbour tuple */
	XLogRecPtr	lsn;			/* of that tuple's page when computed */
} CprimeCheck;

#define CPRIME_ALIGN	64

/*
 * The map from element to entry is an open-addressing table of small slots
 * (lib/simplehash.h), the entries outside it: a reranked scan looks up
 * every candidate, and dynahash's chained buckets of whole entries (1.3 kB
 * each at 64-d) cost it about 190 ns a lookup in cache misses, a quarter of
 * the rerank's time (docs/gnn.md, "Rerank latency").  The slot holds the
 * fingerprint that validates the entry, so that a valid entry's lines are
 * read only for scoring, all asked for at once.
 */
typedef struct CprimeSlot
{
	uint64		key;			/* hnsw_tid_key of the element */
	uint64		nbr_sum;		/* hnsw_neighbors_fingerprint of its list */
	gnn_bf16   *emb;			/* the entry: unit c' (H), c~ (D), projection
								 * (3H), then its CprimeCheck */
	char		status;			/* simplehash's */
} CprimeSlot;

static inline uint32
cprime_key_hash(uint64 key)
{
	return hash_combine(murmurhash32((uint32) key), murmurhash32((uint32) (key >> 32)));
}

#define SH_PREFIX cprime
#define SH_ELEMENT_TYPE CprimeSlot
#define SH_KEY_TYPE uint64
#define SH_KEY key
#define SH_HASH_KEY(tb, key) cprime_key_hash(key)
#define SH_EQUAL(tb, a, b) ((a) == (b))
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

/*
 * One model's cache: the map and the entries, all in cxt.  Entries are
 * never freed one by one (the cache starts over when full): they are cut
 * from blocks of CPRIME_BLOCK_ENTRIES, each entry's values at a multiple
 * of CPRIME_ALIGN.
 */
#define CPRIME_BLOCK_ENTRIES	64

struct GnnCprimeCache
{
	MemoryContext cxt;
	cprime_hash *map;
	int64		entries;
	char	   *block;			/* the block entries are cut from */
	int			block_left;		/* entries it has room for */
};

static int
cprime_floats(const GnnModel *m)
{
	return 4 * m->cfg.hidden_dim + m->cfg.in_dim;
}

/* The check of the entry whose values are at emb. */
static inline CprimeCheck *
cprime_check(const GnnModel *m, const gnn_bf16 *emb)
{
	return (CprimeCheck *) ((char *) emb + MAXALIGN(sizeof(gnn_bf16) * cprime_floats(m)));
}

/* Bytes an entry takes in a block: its values, then its check. */
static Size
cprime_entry_size(const GnnModel *m)
{
	return TYPEALIGN(CPRIME_ALIGN, MAXALIGN(sizeof(gnn_bf16) * cprime_floats(m)) +
					 sizeof(CprimeCheck));
}

/* A new entry (its values), on a cache line. */
static gnn_bf16 *
cprime_new_entry(GnnCprimeCache *c, const GnnModel *m)
{
	Size		size = cprime_entry_size(m);
	gnn_bf16   *emb;

	if (c->block_left == 0)
	{
		c->block = MemoryContextAlloc(c->cxt, size * CPRIME_BLOCK_ENTRIES +
									  CPRIME_ALIGN - 1);
		c->block = (char *) TYPEALIGN(CPRIME_ALIGN, c->block);
		c->block_left = CPRIME_BLOCK_ENTRIES;
	}
	emb = (gnn_bf16 *) c->block;
	c->block += size;
	c->block_left--;
	c->entries++;
	return emb;
}

void
gnn_rerank_cache_free(GnnCachedModel *cm)
{
	if (cm->cprime)
		MemoryContextDelete(cm->cprime->cxt);
	cm->cprime = NULL;
}

static GnnCprimeCache *
cprime_table(GnnCachedModel *cm)
{
	MemoryContext cxt;
	GnnCprimeCache *c;

	if (cm->cprime)
	{
		if (cm->cprime->entries * (int64) cprime_entry_size(cm->model) <
			(int64) gnn_rerank_cache_mb * 1024 * 1024)
			return cm->cprime;
		gnn_rerank_cache_free(cm);	/* full: start over */
	}
	cxt = AllocSetContextCreate(TopMemoryContext, "gnnvec refined embeddings",
								ALLOCSET_DEFAULT_SIZES);
	c = MemoryContextAlloc(cxt, sizeof(GnnCprimeCache));
	c->cxt = cxt;
	c->map = cprime_create(cxt, 1024, NULL);
	c->entries = 0;
	c->block = NULL;
	c->block_left = 0;
	cm->cprime = c;
	return c;
}

/*
 * c~ of node c (out: dim values): the mean of its vector and its
 * GNN_NEIGHBOURHOOD_K nearest among its level-0 neighbours and theirs.
 * The links alone are pruned for diversity (some lead far, on purpose);
 * measured on 64-d topics (docs/gnn.md) their mean scored 0.786 P@10
 * where the mean of the 32 exact nearest items scored 0.841, and the
 * nearest of the two-hop set come close to those.  A cached c~ is renewed
 * when c's own neighbour list changes, not when a neighbour's does: it may
 * lag the graph by a neighbour's edits until then.
 */
typedef struct NodeDist
{
	int			node;
	float		dist;
} NodeDist;

static int
node_dist_cmp(const void *a, const void *b)
{
	const NodeDist *x = a;
	const NodeDist *y = b;

	if (x->dist != y->dist)
		return x->dist < y->dist ? -1 : 1;
	return x->node - y->node;
}

static void
compute_neighbourhood_mean(GnnIndexView *v, int c, float *out)
{
	int			deg;
	int		   *hop1;
	NodeDist   *pool;
	int			npool = 0;
	int			nkeep = 0;

	gnn_view_neighbors(v, c);
	deg = v->nbr_count[c];
	/* a copy: reading more lists may move v->nbr */
	hop1 = palloc(sizeof(int) * Max(deg, 1));
	memcpy(hop1, v->nbr + Max(v->nbr_start[c], 0), sizeof(int) * deg);
	for (int j = 0; j < deg; j++)
		gnn_view_neighbors(v, hop1[j]);
	npool = deg;
	for (int j = 0; j < deg; j++)
		npool += v->nbr_count[hop1[j]];
	pool = palloc(sizeof(NodeDist) * Max(npool, 1));
	npool = 0;
	for (int j = 0; j < deg; j++)
	{
		int			u = hop1[j];

		pool[npool++].node = u;
		for (int k = 0; k < v->nbr_count[u]; k++)
			if (v->nbr[v->nbr_start[u] + k] != c)
				pool[npool++].node = v->nbr[v->nbr_start[u] + k];
	}
	/* every node read now: v->vecs stays put */
	for (int j = 0; j < npool; j++)
		pool[j].dist = hnsw_distance(v->metric, v->vecs + (size_t) c * v->dim,
									 v->vecs + (size_t) pool[j].node * v->dim,
									 v->dim);
	qsort(pool, npool, sizeof(NodeDist), node_dist_cmp);
	memcpy(out, v->vecs + (size_t) c * v->dim, sizeof(float) * v->dim);
	for (int j = 0; j < npool && nkeep < GNN_NEIGHBOURHOOD_K; j++)
	{
		const float *u;

		if (j > 0 && pool[j].node == pool[j - 1].node)
			continue;			/* reached twice */
		u = v->vecs + (size_t) pool[j].node * v->dim;
		for (int k = 0; k < v->dim; k++)
			out[k] += u[k];
		nkeep++;
	}
	for (int k = 0; k < v->dim; k++)
		out[k] /= nkeep + 1;
	pfree(hop1);
	pfree(pool);
}

/*
 * c~ of node c into out, computed once per view: a training call scores
 * the same candidates in every epoch and validation pass.
 */
static void
neighbourhood_mean(GnnIndexView *v, int c, float *out)
{
	if (v->mean_slot[c] < 0)
	{
		float	   *mean = palloc(sizeof(float) * v->dim);

		/* computing may add nodes to the view; claim the slot after */
		compute_neighbourhood_mean(v, c, mean);
		if (v->means_used == v->means_cap)
		{
			v->means_cap *= 2;
			v->means = repalloc_huge(v->means, sizeof(float) * v->dim * v->means_cap);
		}
		v->mean_slot[c] = v->means_used++;
		memcpy(v->means + (size_t) v->mean_slot[c] * v->dim, mean,
			   sizeof(float) * v->dim);
		pfree(mean);
	}
	memcpy(out, v->means + (size_t) v->mean_slot[c] * v->dim,
		   sizeof(float) * v->dim);
}

/*
 * The score input of gnn.h for candidates (nodes of v): a compact vector
 * table of the candidates and their neighbours (neighbour lists read here)
 * and, with a query, the distances s_i to the candidates' neighbourhood
 * means.  Those means go to means (n x dim) when it is not NULL.
 */
void
gnn_score_input(GnnIndexView *v, const float *query, int n, const int *cand,
				const float *cand_dist, GnnScoreInput *in, float *means)
{
	int		   *row = palloc(sizeof(int) * v->n);
	int			nrows = 0;
	int			nedges = 0;
	int			i,
				j;
	float	   *vectors;
	int		   *rows;
	int		   *nbr_offset;
	int		   *nbr;
	float	   *nbr_dist;
	int		   *cand_rows;

	for (i = 0; i < n; i++)
	{
		gnn_view_neighbors(v, cand[i]);
		nedges += v->nbr_count[cand[i]];
	}
	/* neighbour reads may have added nodes: size the row map now */
	row = repalloc(row, sizeof(int) * v->n);
	for (i = 0; i < v->n; i++)
		row[i] = -1;
	rows = palloc(sizeof(int) * (n + nedges));
	cand_rows = palloc(sizeof(int) * n);
	nbr_offset = palloc(sizeof(int) * (n + 1));
	nbr = palloc(sizeof(int) * Max(nedges, 1));
	nbr_dist = palloc(sizeof(float) * Max(nedges, 1));
	nbr_offset[0] = 0;
	for (i = 0; i < n; i++)
	{
		int			c = cand[i];
		int			start = v->nbr_start[c];

		if (row[c] < 0)
		{
			row[c] = nrows;
			rows[nrows++] = c;
		}
		cand_rows[i] = row[c];
		nbr_offset[i + 1] = nbr_offset[i];
		for (j = 0; j < v->nbr_count[c]; j++)
		{
			int			u = v->nbr[start + j];
			int			e = nbr_offset[i + 1]++;

			if (row[u] < 0)
			{
				row[u] = nrows;
				rows[nrows++] = u;
			}
			nbr[e] = row[u];
			nbr_dist[e] = hnsw_distance(v->metric, v->vecs + (size_t) c * v->dim,
										v->vecs + (size_t) u * v->dim, v->dim);
		}
	}
	vectors = palloc(sizeof(float) * v->dim * Max(nrows, 1));
	for (i = 0; i < nrows; i++)
		memcpy(vectors + (size_t) i * v->dim, v->vecs + (size_t) rows[i] * v->dim,
			   sizeof(float) * v->dim);
	in->query = query;
	in->n_vectors = nrows;
	in->vectors = vectors;
	in->n_cand = n;
	in->cand = cand_rows;
	in->cand_dist = cand_dist;
	in->nbr_offset = nbr_offset;
	in->nbr = nbr;
	in->nbr_dist = nbr_dist;
	in->smooth_dist = NULL;
	if (query != NULL || means != NULL)
	{
		float	   *mean = means ? means : palloc(sizeof(float) * v->dim * n);
		float	   *smooth_dist = palloc(sizeof(float) * n);

		for (i = 0; i < n; i++)
		{
			neighbourhood_mean(v, cand[i], mean + (size_t) i * v->dim);
			if (query != NULL)
				smooth_dist[i] = hnsw_distance(v->metric, query,
											   mean + (size_t) i * v->dim, v->dim);
		}
		if (query != NULL)
			in->smooth_dist = smooth_dist;
	}
	pfree(row);
	pfree(rows);
}

/*
 * c' (out, n x H) and c~ (means, n x D) of the candidates not in the
 * cache: one layer call over them.
 */
static void
refine_candidates(GnnCachedModel *cm, GnnIndexView *v, int n, const int *cand,
				  float *out, float *means)
{
	GnnScoreInput in;
	GnnGraph	g;
	float	   *edge_w;
	GnnError	err;
	GnnStatus	rc;
	int			i;

	gnn_score_input(v, NULL, n, cand, NULL, &in, means);
	edge_w = palloc(sizeof(float) * Max(in.nbr_offset[n], 1));
	for (i = 0; i < n; i++)
		gnn_edge_weights_from_distances(in.nbr_dist + in.nbr_offset[i],
										in.nbr_offset[i + 1] - in.nbr_offset[i],
										edge_w + in.nbr_offset[i]);
	g.n_vectors = in.n_vectors;
	g.vectors = in.vectors;
	g.n_nodes = n;
	g.node = in.cand;
	g.nbr_offset = in.nbr_offset;
	g.nbr = in.nbr;
	g.edge_w = edge_w;
	rc = gnn_layer_forward(cm->model, &g, false, NULL, out, &err);
	gnn_ereport_status(rc, &err);
}

/* x / ||x|| in place; a zero vector stays zero (its cosines are 0). */
static void
unit_length(float *x, int n)
{
	double		sq = 0;

	for (int i = 0; i < n; i++)
		sq += (double) x[i] * x[i];
	if (sq > 0)
		for (int i = 0; i < n; i++)
			x[i] = (float) (x[i] / sqrt(sq));
}

/* The projections (n x 3H) of nodes of v: one layer half over their vectors. */
static void
project_nodes(GnnCachedModel *cm, GnnIndexView *v, int n, const int *nodes,
			  float *out)
{
	float	   *vectors = palloc(sizeof(float) * v->dim * Max(n, 1));
	GnnError	err;

	for (int i = 0; i < n; i++)
		memcpy(vectors + (size_t) i * v->dim, v->vecs + (size_t) nodes[i] * v->dim,
			   sizeof(float) * v->dim);
	gnn_ereport_status(gnn_layer_project(cm->model, vectors, n, out, &err), &err);
	pfree(vectors);
}

/*
 * q': the query attending over its nearest candidates (their
 * projections), weights from their d_i.
 */
static void
refine_query(GnnCachedModel *cm, const float *query,
			 const GnnProjections *cand_proj, const float *cand_dist, float *out)
{
	float	   *edge_w = palloc(sizeof(float) * Max(cand_proj->n, 1));
	GnnError	err;

	gnn_edge_weights_from_distances(cand_dist, cand_proj->n, edge_w);
	gnn_ereport_status(gnn_layer_forward_projected(cm->model, query, cand_proj,
												   edge_w, out, &err), &err);
	pfree(edge_w);
}

/* Is a score weight off (its log at the lower clamp, as gnnvec_train stores it)? */
static inline bool
weight_off(float lambda)
{
	return lambda <= -GNN_SCORE_LOG_LIMIT;
}

/* exp(lambda) with lambda clamped, as gnn_score_forward does */
static double
score_weight(float lambda)
{
	return exp(Max(-GNN_SCORE_LOG_LIMIT, Min(GNN_SCORE_LOG_LIMIT, (double) lambda)));
}

/* Asks for the cache lines of len bytes at p. */
static inline void
prefetch_bytes(const void *p, Size len)
{
	for (Size off = 0; off < len; off += 64)
		hnsw_prefetch((const char *) p + off);
}

/* LSN of the page holding the tuple at tid (a neighbour tuple). */
static XLogRecPtr
page_lsn(GnnIndexView *v, ItemPointer tid)
{
	/* a REINDEX may have made the file shorter than when it was cached */
	if (!ItemPointerIsValid(tid) || ItemPointerGetBlockNumber(tid) >= gnn_view_nblocks(v))
		return InvalidXLogRecPtr;
	return hnsw_read_neighbors_lsn(v->index, tid);
}

/*
 * Scores n candidates (element TIDs, nearest first, at graph distances
 * cand_dist).  cand[i] is the candidate's node in v, or -1 when not read
 * yet: a candidate whose c' and projection are cached is not read at all.
 * nbr_sum[i] (nbr_sum may be NULL, an entry 0: unknown) is the
 * fingerprint of the candidate's level-0 neighbour list as the search read
 * it: when it is the one the cached c' was computed from, the entry is
 * valid without reading the page of the list again (a list that changes
 * while its page's LSN stays the same cannot happen; the fingerprint may
 * also match after a change with probability 2^-64).  A candidate whose element is gone (deleted, or without
 * rows: a scan reranks before it reads its candidates' pages) scores
 * -DBL_MAX and takes no part in the others' scores.  Returns how many
 * candidates were scored (not gone).
 */
int
gnn_rerank_score(GnnCachedModel *cm, GnnIndexView *v, const float *query,
				 int n, const ItemPointerData *tids, const uint64 *nbr_sum,
				 int *cand, const float *cand_dist, double *scores)
{
	int			h = cm->model->cfg.hidden_dim;
	int			d = cm->model->cfg.in_dim;
	int			nemb = cprime_floats(cm->model);
	const gnn_bf16 **emb = palloc(sizeof(gnn_bf16 *) * n); /* of each */
	int		   *live = palloc(sizeof(int) * n);	/* positions not gone */
	float	   *live_dist = palloc(sizeof(float) * n);
	float	   *qp = palloc(sizeof(float) * h);
	int		   *miss = palloc(sizeof(int) * n);
	int		   *miss_at = palloc(sizeof(int) * n);
	const gnn_bf16 **ents = palloc(sizeof(gnn_bf16 *) * n); /* cached */
	bool	   *checked = palloc(sizeof(bool) * n);	/* by its slot */
	uint32	   *hashes = palloc(sizeof(uint32) * n);
	XLogRecPtr *miss_lsn = palloc(sizeof(XLogRecPtr) * n);
	int			nmiss = 0;
	int			nchecked = 0;
	int			nlive = 0;
	int			nq;
	float	   *cpf;			/* c' and c~ of a live candidate */
	float	   *projf;			/* m, k and val of the nq nearest */
	GnnProjections proj;
	GnnCprimeCache *cache = cprime_table(cm);
	const float *mix = gnn_model_tensor(cm->model, GNN_MIX);
	double		a = score_weight(mix[0]);
	double		b = score_weight(mix[1]);
	double		g = score_weight(mix[2]);

	/*
	 * A blend with the neighbourhood term and without the GNN term
	 * (gnnvec_train keeps the cheapest blend of those about as good as the
	 * best, gnn.h) needs no q': the layer's forward is most of what a
	 * reranked scan adds.  A model at raw distance, which scans do not
	 * score, still breaks gnnvec_search's ties with its layer.
	 */
	bool		gnn_on = !weight_off(mix[1]) || weight_off(mix[2]);
	float	   *rho = palloc(sizeof(float) * n);
	float	   *sigma = palloc(sizeof(float) * n);
	float	   *cos_q = palloc(sizeof(float) * n);	/* cos(q', c') */
	int			i;

	/*
	 * The map's slots and the entries are scattered, each a cache miss:
	 * ask for all the slots, then look them all up, checking each entry by
	 * the fingerprint in its slot, and ask for the lines of the valid
	 * entries, before reading any, so that the misses overlap.
	 */
	for (i = 0; i < n; i++)
	{
		uint64		key = hnsw_tid_key((ItemPointer) &tids[i]);

		hashes[i] = cprime_key_hash(key);
		hnsw_prefetch(&cache->map->data[hashes[i] & cache->map->sizemask]);
	}
	for (i = 0; i < n; i++)
	{
		CprimeSlot *slot = cprime_lookup_hash(cache->map,
											  hnsw_tid_key((ItemPointer) &tids[i]),
											  hashes[i]);

		ents[i] = slot ? slot->emb : NULL;
		checked[i] = slot != NULL && cand[i] < 0 && nbr_sum != NULL &&
			nbr_sum[i] != 0 && slot->nbr_sum == nbr_sum[i];
		/* the nearest live ones read their projection too */
		if (checked[i])
			prefetch_bytes(ents[i], sizeof(gnn_bf16) *
						   (nchecked++ < GNN_QUERY_CONTEXT ? nemb : h + d));
	}
	for (i = 0; i < n; i++)
	{
		const gnn_bf16 *ent = ents[i];
		bool		valid;

		if (cand[i] < 0 && ent == NULL &&
			(cand[i] = gnn_view_node(v, (ItemPointer) &tids[i])) < 0)
		{
			scores[i] = -DBL_MAX;	/* gone */
			continue;
		}
		if (ent == NULL)
			valid = false;
		else if (cand[i] >= 0)
			valid = cprime_check(cm->model, ent)->lsn == gnn_view_neighbor_lsn(v, cand[i]) &&
				ItemPointerEquals(&cprime_check(cm->model, ent)->nbrtid,
								  &v->nbrtid[cand[i]]);
		else if (nbr_sum != NULL && nbr_sum[i] != 0)
			valid = checked[i];
		else
			valid = cprime_check(cm->model, ent)->lsn ==
				page_lsn(v, &cprime_check(cm->model, ent)->nbrtid);
		if (valid)
		{
			emb[i] = ent;
			live_dist[nlive] = cand_dist[i];
			live[nlive++] = i;
			continue;
		}
		/* stale or missing: read the element (if not yet) and refine it */
		if (cand[i] < 0 && (cand[i] = gnn_view_node(v, (ItemPointer) &tids[i])) < 0)
		{
			scores[i] = -DBL_MAX;
			continue;
		}
		live_dist[nlive] = cand_dist[i];
		live[nlive++] = i;
		miss_at[nmiss] = i;
		miss_lsn[nmiss] = gnn_view_neighbor_lsn(v, cand[i]);
		miss[nmiss++] = cand[i];
	}
	if (nmiss > 0)
	{
		float	   *fresh = palloc(sizeof(float) * h * nmiss);
		float	   *fresh_proj = palloc(sizeof(float) * 3 * h * nmiss);
		float	   *fresh_mean = palloc(sizeof(float) * d * nmiss);

		refine_candidates(cm, v, nmiss, miss, fresh, fresh_mean);
		project_nodes(cm, v, nmiss, miss, fresh_proj);
		for (i = 0; i < nmiss; i++)
		{
			bool		found;
			CprimeSlot *slot;
			CprimeCheck *check;
			gnn_bf16   *e;

			if (gnn_rerank_cache_mb == 0)
				e = palloc(sizeof(gnn_bf16) * nemb);
			else
			{
				slot = cprime_insert(cache->map, hnsw_tid_key(&v->tid[miss[i]]),
									 &found);
				if (!found)
					slot->emb = cprime_new_entry(cache, cm->model);
				/* the list read for c' (refine_candidates read it) */
				slot->nbr_sum = v->nbr_sum[miss[i]];
				e = slot->emb;
				check = cprime_check(cm->model, e);
				check->lsn = miss_lsn[i];
				check->nbrtid = v->nbrtid[miss[i]];
			}
			unit_length(fresh + (size_t) i * h, h);
			gnn_bf16_from_floats(fresh + (size_t) i * h, h, e);
			gnn_bf16_from_floats(fresh_mean + (size_t) i * d, d, e + h);
			gnn_bf16_from_floats(fresh_proj + (size_t) i * 3 * h, 3 * h,
								 e + h + d);
			emb[miss_at[i]] = e;
		}
	}
	if (nlive == 0)
		return 0;
	if (gnn_on)
	{
		/* q' attends over the nearest live candidates */
		nq = Min(nlive, GNN_QUERY_CONTEXT);
		projf = palloc(sizeof(float) * 3 * h * nq);
		proj.n = nq;
		proj.msg = projf;
		proj.key = projf + (size_t) nq * h;
		proj.val = projf + (size_t) 2 * nq * h;
		for (i = 0; i < nq; i++)
			for (int part = 0; part < 3; part++)
				gnn_bf16_to_floats(emb[live[i]] + h + d + part * h, h,
								   projf + ((size_t) part * nq + i) * h);
		refine_query(cm, query, &proj, live_dist, qp);
		unit_length(qp, h);
	}

	/* one candidate's c' and c~ at a time, read after q' (its prefetches) */
	cpf = palloc(sizeof(float) * (h + d));
	for (i = 0; i < nlive; i++)
	{
		gnn_bf16_to_floats(emb[live[i]], h + d, cpf);
		cos_q[i] = gnn_on ? vec_inner_product(qp, cpf, h) : 0;
		sigma[i] = hnsw_distance(v->metric, query, cpf + h, d);
	}
	gnn_distance_zscores(live_dist, nlive, rho);
	gnn_distance_zscores(sigma, nlive, sigma);
	for (i = 0; i < nlive; i++)
		scores[live[i]] = a * rho[i] + b * cos_q[i] + g * sigma[i];
	return nlive;
}

/* ---- ordering ------------------------------------------------------------ */

/* Positions 0..n-1 by descending score, ties in distance order (order: n). */
static void
order_by_score(const double *scores, int n, int *order)
{
	void	   *space = palloc(hnsw_rank_size(n));
	HnswRank	rank;

	hnsw_rank_init(&rank, scores, n, space);
	for (int i = 0; i < n; i++)
		order[i] = hnsw_rank_next(&rank);
	pfree(space);
}

/* ---- scan plug-ins (hnsw.h) --------------------------------------------- */

/*
 * Is the model kept at raw distance (its GNN and neighbourhood weights at
 * the lower clamp, as gnnvec_train stores a model that does not beat the
 * plain scan)?  Its scores would only break exact distance ties, so the
 * scan does not rerank and keeps the distance order at the plain scan's
 * cost.
 */
static bool
raw_distance_only(GnnModel *model)
{
	const float *mix = gnn_model_tensor(model, GNN_MIX);

	return weight_off(mix[1]) && weight_off(mix[2]);
}

/*
 * The index's Rerank model, when scans are to be reordered by it: NULL
 * when gnnvec.rerank is off, the index has none, or it is kept at raw
 * distance.
 */
static GnnCachedModel *
scan_model(Relation index)
{
	GnnCachedModel *cm;

	if (!gnn_rerank_setting)
		return NULL;
	cm = gnn_store_lookup(index, GNN_RERANK_SCOPE, GNN_KIND_GNN);
	return cm == NULL || raw_distance_only(cm->model) ? NULL : cm;
}

int
hnsw_scan_ef(Relation index)
{
	return gnn_rerank_setting ? Max(hnsw_ef_search, gnn_rerank_candidates) :
		hnsw_ef_search;
}

/*
 * Only a scan its model reorders reads all its candidates' pages up front
 * (hnswscan.c); the others read them as rows are asked for, like a plain
 * scan: measured on Fashion-MNIST and WordNet with models at raw distance
 * (docs/gnn.md), reading them all cost 9-17% of the plain scan's time.
 */
bool
hnsw_scan_reranks(Relation index)
{
	return scan_model(index) != NULL;
}

/*
 * The model scores of one round of scan candidates when gnnvec.rerank is
 * on and the index has a Rerank model of its dimension; otherwise false
 * (distance order).  Candidates whose element is gone score lowest.
 */
bool
hnsw_scan_rerank(Relation index, const HnswMetaPageData *meta,
				 const float *query, const HnswCandidate *cands, int ncands,
				 double *scores)
{
	GnnCachedModel *cm;
	GnnIndexView v;
	int		   *nodes;
	float	   *dists;
	ItemPointerData *tids;
	uint64	   *sums;
	int			i;

	if (ncands < 2)
		return false;
	cm = scan_model(index);
	if (cm == NULL || cm->model->cfg.in_dim != (int) meta->dims)
		return false;
	/* the scan's metapage: reading it again was 2% of the rerank's time */
	gnn_view_init(&v, index, meta);
	nodes = palloc(sizeof(int) * ncands);
	dists = palloc(sizeof(float) * ncands);
	tids = palloc(sizeof(ItemPointerData) * ncands);
	sums = palloc(sizeof(uint64) * ncands);
	for (i = 0; i < ncands; i++)
	{
		nodes[i] = -1;			/* read only when needed */
		dists[i] = cands[i].distance;
		tids[i] = cands[i].tid;
		sums[i] = cands[i].nbr_sum;
	}
	return gnn_rerank_score(cm, &v, query, ncands, tids, sums, nodes, dists,
							scores) > 0;
}

/* ---- gnnvec_search --------------------------------------------------- */

/* The SQL operator's distance from the graph distance (hnsw_distance). */
static double
sql_distance(HnswMetric metric, float graph_distance)
{
	switch (metric)
	{
		case HNSW_METRIC_L2:
			return sqrt(Max(graph_distance, 0.0f));
		case HNSW_METRIC_COSINE:
			return 1.0 + graph_distance;
		case HNSW_METRIC_IP:
		case HNSW_METRIC_L1:
			break;
	}
	return graph_distance;
}

/*
 * gnnvec_search returns rows of the table, so it reads them by the rules of
 * a query.  Row-level security: its policies are expressions for the
 * executor to evaluate, which a function returning TIDs cannot apply, so a
 * table whose policies apply to the caller is refused.
 */
static void
check_no_row_security(Relation index)
{
	Oid			heapoid = index->rd_index->indrelid;

	if (check_enable_rls(heapoid, InvalidOid, false) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("gnnvec_search cannot apply the row-level security policies of table \"%s\"",
						get_rel_name(heapoid)),
				 errhint("Use SELECT ... ORDER BY column <-> query LIMIT k with SET gnnvec.rerank = on instead: the index scan reranks the same way, under the policies.")));
}

/*
 * Visibility: the index holds the TIDs of deleted rows until VACUUM, and of
 * rows whose inserting transaction has not committed; like an index scan,
 * gnnvec_search returns a row only when the caller's snapshot sees a version
 * of it (through its HOT chain: the TID returned is that version's).
 */
static void
emit_visible(ReturnSetInfo *rsinfo, GnnIndexView *v, HnswCandidate *cands,
			 const int *order, int n, const double *scores, int k)
{
	Relation	heap = table_open(v->index->rd_index->indrelid, AccessShareLock);
	IndexFetchTableData *fetch = table_index_fetch_begin(heap);
	TupleTableSlot *slot = table_slot_create(heap, NULL);
	Snapshot	snap = GetActiveSnapshot();
	int			emitted = 0;

	for (int i = 0; i < n && emitted < k; i++)
	{
		HnswCandidate *c = &cands[order[i]];

		for (int j = 0; j < c->nheaptids && emitted < k; j++)
		{
			ItemPointerData tid = c->heaptids[j];
			bool		call_again = false;
			bool		all_dead = false;
			Datum		values[3];
			bool		nulls[3] = {false, false, scores == NULL};

			if (!table_index_fetch_tuple(fetch, &tid, snap, slot, &call_again,
										 &all_dead))
				continue;
			values[0] = PointerGetDatum(&slot->tts_tid);
			values[1] = Float8GetDatum(sql_distance(v->metric, c->distance));
			values[2] = Float8GetDatum(scores ? scores[order[i]] : 0);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			emitted++;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	table_index_fetch_end(fetch);
	table_close(heap, AccessShareLock);
}

PG_FUNCTION_INFO_V1(gnnvec_search);
Datum
gnnvec_search(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	index = store_open_index(PG_GETARG_OID(0), false);
	int			k = PG_GETARG_INT32(2);
	bool		rerank = PG_GETARG_BOOL(3);
	GnnIndexView v;
	GnnCachedModel *cm = NULL;
	float	   *query;
	int			ef;
	int			n;
	int		   *nodes;
	float	   *dists;
	HnswCandidate *cands;
	double	   *scores = NULL;
	int		   *order;
	int			i;

	if (k < 1 || k > GNN_MAX_K)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("k must be between 1 and %d, got %d", GNN_MAX_K, k)));
	check_no_row_security(index);
	InitMaterializedSRF(fcinfo, 0);
	gnn_view_init(&v, index, NULL);
	query = palloc(sizeof(float) * v.dim);
	gnn_view_query_vector(&v, PG_GETARG_DATUM(1), query, "query vector");
	ef = Max(Max(hnsw_ef_search, gnn_rerank_candidates), k);
	nodes = palloc(sizeof(int) * ef);
	dists = palloc(sizeof(float) * ef);
	cands = palloc(sizeof(HnswCandidate) * ef);
	n = gnn_view_search(&v, query, ef, nodes, dists, cands);
	order = palloc(sizeof(int) * Max(n, 1));
	for (i = 0; i < n; i++)
		order[i] = i;
	if (rerank && n > 0)
		cm = gnn_store_lookup(index, GNN_RERANK_SCOPE, GNN_KIND_GNN);
	if (cm)
	{
		ItemPointerData *tids = palloc(sizeof(ItemPointerData) * Max(n, 1));

		if (cm->model->cfg.in_dim != v.dim)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("the Rerank model of index \"%s\" has %d dimensions, the index %d",
							RelationGetRelationName(index), cm->model->cfg.in_dim, v.dim),
					 errhint("gnnvec_model_reset() removes it; train again.")));
		for (i = 0; i < n; i++)
			tids[i] = cands[i].tid;
		scores = palloc(sizeof(double) * n);
		if (gnn_rerank_score(cm, &v, query, n, tids, NULL, nodes, dists, scores) < n)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("an element of index \"%s\" changed during the search",
							RelationGetRelationName(index))));
		order_by_score(scores, n, order);
	}
	emit_visible(rsinfo, &v, cands, order, n, scores, k);
	relation_close(index, NoLock);
	PG_RETURN_VOID();
}
