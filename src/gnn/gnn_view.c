/*
 * gnn_view.c
 *		The GNN's view of a gnnhnsw index: element vectors and level-0
 *		neighbour lists read through the index's read API (hnswread.c),
 *		numbered as nodes and read once each until the view is reset
 *		(training does that to stay within its memory), graph searches
 *		that return nodes, and elements drawn at random or found by vector.
 */
#include "postgres.h"

#include "gnn/gnn.h"
#include "utils/memutils.h"
#include "utils/rel.h"

typedef struct ViewEntry
{
	uint64		key;			/* hnsw_tid_key of the element */
	int			node;
} ViewEntry;

void
gnn_view_init(GnnIndexView *v, Relation index, const HnswMetaPageData *meta)
{
	MemoryContext old;

	memset(v, 0, sizeof(GnnIndexView));
	v->index = index;
	v->cxt = AllocSetContextCreate(CurrentMemoryContext, "gnn index view",
								   ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(v->cxt);
	hnsw_reader_init(&v->reader, index, meta);
	v->metric = v->reader.metric;
	v->dim = v->reader.dim;
	v->nblocks = InvalidBlockNumber;
	MemoryContextSwitchTo(old);
}

/* The lookup table and the arrays, for the first node. */
static void
view_alloc(GnnIndexView *v)
{
	HASHCTL		ctl;
	MemoryContext old = MemoryContextSwitchTo(v->cxt);

	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(ViewEntry);
	ctl.hcxt = CurrentMemoryContext;
	v->lookup = hash_create("gnn index view", 256, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	v->cap = 256;
	v->vecs = palloc(sizeof(float) * v->dim * v->cap);
	v->tid = palloc(sizeof(ItemPointerData) * v->cap);
	v->nbrtid = palloc(sizeof(ItemPointerData) * v->cap);
	v->nbr_start = palloc(sizeof(int) * v->cap);
	v->nbr_count = palloc(sizeof(int) * v->cap);
	v->nbr_lsn = palloc(sizeof(XLogRecPtr) * v->cap);
	v->nbr_sum = palloc(sizeof(uint64) * v->cap);
	v->nbr_cap = 1024;
	v->nbr = palloc(sizeof(int) * v->nbr_cap);
	v->mean_slot = palloc(sizeof(int) * v->cap);
	v->means_cap = 64;
	v->means_used = 0;
	v->means = palloc(sizeof(float) * v->dim * v->means_cap);
	MemoryContextSwitchTo(old);
}

/*
 * Forgets every node (their numbers become invalid): what keeps a view
 * that met more elements than a memory budget allows within it.
 */
void
gnn_view_reset(GnnIndexView *v)
{
	Relation	index = v->index;
	MemoryContext parent = MemoryContextGetParent(v->cxt);
	MemoryContext old;

	MemoryContextDelete(v->cxt);
	old = MemoryContextSwitchTo(parent);
	gnn_view_init(v, index, NULL);
	MemoryContextSwitchTo(old);
}

static int
view_add(GnnIndexView *v, ItemPointer tid, const float *vec,
		 ItemPointer nbrtid)
{
	uint64		key = hnsw_tid_key(tid);
	bool		found;
	ViewEntry  *ent;
	int			node;

	if (v->lookup == NULL)
		view_alloc(v);
	ent = hash_search(v->lookup, &key, HASH_ENTER, &found);
	if (found)
		return ent->node;
	if (v->n == v->cap)
	{
		v->cap *= 2;
		v->vecs = repalloc_huge(v->vecs, sizeof(float) * v->dim * v->cap);
		v->tid = repalloc_huge(v->tid, sizeof(ItemPointerData) * v->cap);
		v->nbrtid = repalloc_huge(v->nbrtid, sizeof(ItemPointerData) * v->cap);
		v->nbr_start = repalloc_huge(v->nbr_start, sizeof(int) * v->cap);
		v->nbr_count = repalloc_huge(v->nbr_count, sizeof(int) * v->cap);
		v->nbr_lsn = repalloc_huge(v->nbr_lsn, sizeof(XLogRecPtr) * v->cap);
		v->nbr_sum = repalloc_huge(v->nbr_sum, sizeof(uint64) * v->cap);
		v->mean_slot = repalloc_huge(v->mean_slot, sizeof(int) * v->cap);
	}
	node = v->n++;
	ent->node = node;
	memcpy(v->vecs + (size_t) node * v->dim, vec, sizeof(float) * v->dim);
	v->tid[node] = *tid;
	v->nbrtid[node] = *nbrtid;
	v->nbr_start[node] = -1;
	v->nbr_count[node] = 0;
	v->nbr_lsn[node] = InvalidXLogRecPtr;
	v->nbr_sum[node] = 0;
	v->mean_slot[node] = -1;
	return node;
}

/* The node of the element at tid, read from its page if new; -1 if none. */
int
gnn_view_node(GnnIndexView *v, ItemPointer tid)
{
	uint64		key = hnsw_tid_key(tid);
	ViewEntry  *ent = v->lookup ? hash_search(v->lookup, &key, HASH_FIND, NULL) : NULL;
	float	   *vec;
	ItemPointerData nbrtid;
	int			node = -1;

	if (ent)
		return ent->node;
	vec = palloc(sizeof(float) * v->dim);
	if (hnsw_read_element(&v->reader, tid, vec, &nbrtid))
		node = view_add(v, tid, vec, &nbrtid);
	pfree(vec);
	return node;
}

/* The index's size in blocks, read the first time the view is asked. */
BlockNumber
gnn_view_nblocks(GnnIndexView *v)
{
	if (v->nblocks == InvalidBlockNumber)
		v->nblocks = RelationGetNumberOfBlocks(v->index);
	return v->nblocks;
}

/* LSN of the page of a node's neighbour tuple: changes with the list. */
XLogRecPtr
gnn_view_neighbor_lsn(GnnIndexView *v, int node)
{
	ItemPointerData nt = v->nbrtid[node];

	if (v->nbr_start[node] >= 0 || !ItemPointerIsValid(&nt))
		return v->nbr_lsn[node];
	return hnsw_read_neighbors_lsn(v->index, &nt);
}

/*
 * Reads a node's level-0 neighbour list (and the LSN of its page, which
 * changes whenever the list does), and each neighbour's vector.
 */
void
gnn_view_neighbors(GnnIndexView *v, int node)
{
	ItemPointerData *tids;
	ItemPointerData nt = v->nbrtid[node];
	int			n;
	int			i;

	if (v->nbr_start[node] >= 0 || !ItemPointerIsValid(&nt))
		return;
	tids = palloc(sizeof(ItemPointerData) * 2 * v->reader.m);
	n = hnsw_read_neighbors(&v->reader, &nt, tids, &v->nbr_lsn[node]);
	v->nbr_sum[node] = hnsw_neighbors_fingerprint(tids, n);

	if (v->nbr_used + n > v->nbr_cap)
	{
		v->nbr_cap = Max(v->nbr_cap * 2, v->nbr_used + n);
		v->nbr = repalloc_huge(v->nbr, sizeof(int) * v->nbr_cap);
	}
	/* reserve the range first: reading neighbours adds nodes, not lists */
	v->nbr_start[node] = v->nbr_used;
	v->nbr_count[node] = 0;
	v->nbr_used += n;
	for (i = 0; i < n; i++)
	{
		int			u = gnn_view_node(v, &tids[i]);

		if (u >= 0 && u != node)
			v->nbr[v->nbr_start[node] + v->nbr_count[node]++] = u;
	}
	pfree(tids);
}

/*
 * The graph search of a scan (greedy descent, then SEARCH-LAYER at level 0
 * with this ef): up to ef live nodes, nearest first, with graph distances
 * and, when cands is not NULL, their heap TIDs.
 */
typedef struct SearchResults
{
	GnnIndexView *v;
	int			n;
	int		   *nodes;
	float	   *dists;
	HnswCandidate *cands;		/* or NULL */
} SearchResults;

/* HnswReadFound of gnn_view_search: one more result, added as a node */
static void
search_found(void *arg, const HnswCandidate *cand, const float *vec,
			 ItemPointer neighbors)
{
	SearchResults *r = (SearchResults *) arg;

	r->nodes[r->n] = view_add(r->v, (ItemPointer) &cand->tid, vec, neighbors);
	r->dists[r->n] = cand->distance;
	if (r->cands)
		r->cands[r->n] = *cand;
	r->n++;
}

int
gnn_view_search(GnnIndexView *v, const float *query, int ef, int *nodes,
				float *dists, HnswCandidate *cands)
{
	SearchResults r;

	r.v = v;
	r.n = 0;
	r.nodes = nodes;
	r.dists = dists;
	r.cands = cands;
	return hnsw_read_search(&v->reader, query, ef, search_found, &r);
}

#define RANDOM_NODE_DRAWS 64

/*
 * A live element drawn at random from the pages (hnsw_random_element: near
 * uniform), added as a node; -1 when RANDOM_NODE_DRAWS draws met only
 * blocks without one (an index of very few elements).
 */
int
gnn_view_random_node(GnnIndexView *v, GnnRng *rng)
{
	for (int i = 0; i < RANDOM_NODE_DRAWS; i++)
	{
		ItemPointerData tid;
		uint64		r = gnn_rng_below(rng, UINT64_MAX);

		if (hnsw_random_element(v->index, gnn_view_nblocks(v), r, &tid))
		{
			int			node = gnn_view_node(v, &tid);

			if (node >= 0)
				return node;
		}
	}
	return -1;
}

/*
 * The node holding exactly this vector (as the index stores it), or -1 if
 * the index has none: a graph search first (ef at least 100), a pass over
 * the pages when it misses.
 */
int
gnn_view_find(GnnIndexView *v, const float *vec)
{
	int			ef = Max(hnsw_ef_search, 100);
	int		   *nodes = palloc(sizeof(int) * ef);
	float	   *dists = palloc(sizeof(float) * ef);
	int			n = gnn_view_search(v, vec, ef, nodes, dists, NULL);
	int			found = -1;
	ItemPointerData tid;

	for (int i = 0; i < n && found < 0; i++)
		if (memcmp(v->vecs + (size_t) nodes[i] * v->dim, vec,
				   sizeof(float) * v->dim) == 0)
			found = nodes[i];
	pfree(nodes);
	pfree(dists);
	if (found < 0 && hnsw_find_element(v->index, vec, v->dim, &tid))
		found = gnn_view_node(v, &tid);
	return found;
}

/* Bytes the view holds (its arrays, the lookup table, the means). */
Size
gnn_view_bytes(const GnnIndexView *v)
{
	return MemoryContextMemAllocated(v->cxt, true);
}

/*
 * A vector argument as the index sees it: dimension checked, normalised
 * for cosine.  what names the argument in the error.
 */
void
gnn_view_query_vector(GnnIndexView *v, Datum vec, float *out, const char *what)
{
	Vector	   *x = DatumGetVector(vec);

	if (x->dim != v->dim)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s has %d dimensions, but index \"%s\" has %d",
						what, x->dim, RelationGetRelationName(v->index), v->dim)));
	if (!hnsw_form_vector(vec, v->metric, v->dim, out))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("%s cannot be searched with this index's metric", what),
				 errhint("A zero vector has no cosine distance.")));
}
