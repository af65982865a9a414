/*
 * hnswgraph.c
 *		The in-memory HNSW graph of a build, and the heaps and key set every
 *		search uses.  No server headers: unit-tested on its own and reused
 *		by the CAGRA build.
 *
 * Algorithms from Malkov & Yashunin, "Efficient and robust approximate
 * nearest neighbor search using Hierarchical Navigable Small World graphs"
 * (IEEE TPAMI 2018): INSERT (Alg. 1), SEARCH-LAYER (Alg. 2) and the
 * neighbour-selection heuristic SELECT-NEIGHBORS-HEURISTIC (Alg. 4, without
 * extendCandidates; with keepPrunedConnections, hnsw_select_keep_pruned).
 * A new node links to as many neighbours as its lists hold: 2m at level 0,
 * m above (Alg. 1 gives it M at every level; the reference implementation
 * keeps M at level 0 too).  With m at level 0, lists filled up only through
 * later nodes' back-links, to a mean of 24.7 of 32 on the TF-IDF set of
 * docs/benchmarks.md, and searches found less per ef and per distance
 * computed on TF-IDF and Fashion-MNIST (docs/gnnhnsw.md, Build).  A full
 * list is re-selected over its members plus the new one from the state the
 * last selection left (hnsw_list_add): each slot keeps its member's
 * distance, and only what the new one can change is recomputed, which
 * more than pays for the extra links.
 */
#define HNSW_PURE
#include "hnsw/hnsw.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------
 * Heaps
 * --------------------------------------------------------------------- */

static inline bool
heap_before(const HnswHeap *h, float a, float b)
{
	return h->max ? a > b : a < b;
}

void
hnsw_heap_init(HnswHeap *h, bool max, int cap, const HnswAllocator *a)
{
	if (cap < 16)
		cap = 16;
	h->items = a->alloc(a->ctx, sizeof(HnswHeapItem) * cap);
	h->n = 0;
	h->cap = cap;
	h->max = max;
	h->a = a;
}

void
hnsw_heap_free(HnswHeap *h)
{
	if (h->items)
		h->a->free(h->a->ctx, h->items);
	h->items = NULL;
	h->n = h->cap = 0;
}

void
hnsw_heap_push(HnswHeap *h, float dist, int32_t id)
{
	int			i;

	if (h->n == h->cap)
	{
		HnswHeapItem *items = h->a->alloc(h->a->ctx, sizeof(HnswHeapItem) * h->cap * 2);

		memcpy(items, h->items, sizeof(HnswHeapItem) * h->n);
		h->a->free(h->a->ctx, h->items);
		h->items = items;
		h->cap *= 2;
	}
	i = h->n++;
	while (i > 0)
	{
		int			parent = (i - 1) / 2;

		if (!heap_before(h, dist, h->items[parent].dist))
			break;
		h->items[i] = h->items[parent];
		i = parent;
	}
	h->items[i].dist = dist;
	h->items[i].id = id;
}

HnswHeapItem
hnsw_heap_pop(HnswHeap *h)
{
	HnswHeapItem top = h->items[0];
	HnswHeapItem last = h->items[--h->n];
	int			i = 0;

	for (;;)
	{
		int			child = 2 * i + 1;

		if (child >= h->n)
			break;
		if (child + 1 < h->n &&
			heap_before(h, h->items[child + 1].dist, h->items[child].dist))
			child++;
		if (!heap_before(h, h->items[child].dist, last.dist))
			break;
		h->items[i] = h->items[child];
		i = child;
	}
	if (h->n > 0)
		h->items[i] = last;
	return top;
}

/* ---------------------------------------------------------------------
 * Rank order (hnsw.h, HnswRank)
 * --------------------------------------------------------------------- */

static int
rank_leaves(int n)
{
	int			leaves = 1;

	while (leaves < n)
		leaves *= 2;
	return leaves;
}

size_t
hnsw_rank_size(int n)
{
	int			leaves = rank_leaves(n);

	return sizeof(double) * leaves + sizeof(int32_t) * 2 * leaves;
}

/*
 * The winner of a match: every position below a node's left child is
 * smaller than every one below its right child, so a tie goes left.
 */
static inline int32_t
rank_match(const double *key, int32_t left, int32_t right)
{
	return key[right] > key[left] ? right : left;
}

void
hnsw_rank_init(HnswRank *r, const double *scores, int n, void *space)
{
	int			leaves = rank_leaves(n);

	r->key = space;
	r->tree = (int32_t *) (r->key + leaves);
	r->leaves = leaves;
	r->n = n;
	for (int i = 0; i < leaves; i++)
	{
		/* NaN and -inf would tie with the leaves handed out (or lose) */
		r->key[i] = i >= n ? -INFINITY :
			scores[i] >= -DBL_MAX ? scores[i] : -DBL_MAX;
		r->tree[leaves + i] = i;
	}
	for (int k = leaves - 1; k >= 1; k--)
		r->tree[k] = rank_match(r->key, r->tree[2 * k], r->tree[2 * k + 1]);
}

int
hnsw_rank_next(HnswRank *r)
{
	int32_t		top;

	if (r->n == 0)
		return -1;
	r->n--;
	top = r->tree[1];			/* with one leaf, the leaf */
	r->key[top] = -INFINITY;
	for (int k = (r->leaves + top) / 2; k >= 1; k /= 2)
		r->tree[k] = rank_match(r->key, r->tree[2 * k], r->tree[2 * k + 1]);
	return top;
}

/* ---------------------------------------------------------------------
 * Key set: open addressing, linear probing, load factor <= 1/2
 * --------------------------------------------------------------------- */

void
hnsw_keyset_init(HnswKeySet *s, uint64_t expected, const HnswAllocator *a)
{
	uint64_t	size = 64;

	while (size < expected * 2)
		size <<= 1;
	s->keys = a->alloc(a->ctx, sizeof(uint64_t) * size);
	memset(s->keys, 0, sizeof(uint64_t) * size);
	s->mask = size - 1;
	s->n = 0;
	s->a = a;
}

void
hnsw_keyset_free(HnswKeySet *s)
{
	if (s->keys)
		s->a->free(s->a->ctx, s->keys);
	s->keys = NULL;
}

static void
keyset_grow(HnswKeySet *s)
{
	uint64_t   *old = s->keys;
	uint64_t	oldsize = s->mask + 1;
	uint64_t	i;

	s->keys = s->a->alloc(s->a->ctx, sizeof(uint64_t) * oldsize * 2);
	memset(s->keys, 0, sizeof(uint64_t) * oldsize * 2);
	s->mask = oldsize * 2 - 1;
	for (i = 0; i < oldsize; i++)
	{
		if (old[i] != 0)
		{
			uint64_t	j = hnsw_key_hash(old[i]) & s->mask;

			while (s->keys[j] != 0)
				j = (j + 1) & s->mask;
			s->keys[j] = old[i];
		}
	}
	s->a->free(s->a->ctx, old);
}

bool
hnsw_keyset_test_and_add(HnswKeySet *s, uint64_t key)
{
	uint64_t	j;

	if ((s->n + 1) * 2 > s->mask + 1)
		keyset_grow(s);
	j = hnsw_key_hash(key) & s->mask;
	while (s->keys[j] != 0)
	{
		if (s->keys[j] == key)
			return true;
		j = (j + 1) & s->mask;
	}
	s->keys[j] = key;
	s->n++;
	return false;
}

bool
hnsw_keyset_contains(const HnswKeySet *s, uint64_t key)
{
	uint64_t	j = hnsw_key_hash(key) & s->mask;

	while (s->keys[j] != 0)
	{
		if (s->keys[j] == key)
			return true;
		j = (j + 1) & s->mask;
	}
	return false;
}

/* ---------------------------------------------------------------------
 * Graph
 * --------------------------------------------------------------------- */

size_t
hnsw_graph_node_bytes(int dim, int m, int level, bool packed)
{
	/* vector, slots and their distances, counts, the node, the visited tag */
	if (packed)
		return (sizeof(int32_t) + sizeof(float)) * (2 * m + level * m) +
			(size_t) 2 * (level + 1) + sizeof(HnswGraphNode) + sizeof(uint32_t) +
			48;					/* allocator overhead, three chunks */
	return sizeof(float) * dim +
		(sizeof(int32_t) + sizeof(float)) * (2 * m + level * m) +
		(size_t) 2 * (level + 1) + sizeof(HnswGraphNode) + sizeof(uint32_t) +
		64;						/* allocator overhead, four chunks */
}

void
hnsw_graph_pack_vectors(HnswGraph *g, int32_t expected_rows)
{
	const HnswAllocator *a = g->a;

	assert(g->n == 0 && g->vecs == NULL);
	g->vecs_cap = expected_rows > 1024 ? expected_rows : 1024;
	g->vecs = a->alloc(a->ctx, sizeof(float) * g->dim * (size_t) g->vecs_cap);
	g->mem += sizeof(float) * g->dim * (size_t) g->vecs_cap;
}

/*
 * Room for more rows in the packed array (hnsw_graph_vecs_grown); the
 * nodes point into the new one.
 */
static void
grow_vectors(HnswGraph *g)
{
	const HnswAllocator *a = g->a;
	int32_t		newcap = hnsw_graph_vecs_grown(g->vecs_cap);
	float	   *vecs = a->alloc(a->ctx, sizeof(float) * g->dim * (size_t) newcap);

	memcpy(vecs, g->vecs, sizeof(float) * g->dim * (size_t) g->n);
	a->free(a->ctx, g->vecs);
	g->vecs = vecs;
	for (int32_t i = 0; i < g->n; i++)
		g->nodes[i].vec = vecs + (size_t) i * g->dim;
	g->mem += sizeof(float) * g->dim * (size_t) (newcap - g->vecs_cap);
	g->vecs_cap = newcap;
}

HnswGraph *
hnsw_graph_create(int dim, int m, int ef_construction, HnswMetric metric,
				  int level_cap, uint64_t seed, const HnswAllocator *a)
{
	HnswGraph  *g = a->alloc(a->ctx, sizeof(HnswGraph));

	memset(g, 0, sizeof(HnswGraph));
	g->dim = dim;
	g->m = m;
	g->ef_construction = ef_construction;
	g->metric = metric;
	g->level_cap = level_cap;
	g->ml = 1.0 / log((double) m);
	g->rng = seed ? seed : 0x9E3779B97F4A7C15ULL;
	g->entry = -1;
	g->max_level = -1;
	g->cap = 1024;
	g->nodes = a->alloc(a->ctx, sizeof(HnswGraphNode) * g->cap);
	g->visited = a->alloc(a->ctx, sizeof(uint32_t) * g->cap);
	memset(g->visited, 0, sizeof(uint32_t) * g->cap);
	g->visit_tag = 0;
	g->a = a;
	hnsw_heap_init(&g->cand, false, ef_construction * 4, a);
	hnsw_heap_init(&g->res, true, ef_construction + 1, a);
	g->found = a->alloc(a->ctx, sizeof(HnswHeapItem) * (ef_construction + 1));
	/* laid out as a node's slots (hnsw_level_offset) */
	g->selected = a->alloc(a->ctx, sizeof(HnswHeapItem) * (2 * m + level_cap * m));
	g->scratch = a->alloc(a->ctx, sizeof(HnswHeapItem) * 2 * (2 * m + 1));
	return g;
}

void
hnsw_graph_free(HnswGraph *g)
{
	const HnswAllocator *a = g->a;
	int32_t		i;

	for (i = 0; i < g->n && !g->borrowed; i++)
	{
		if (g->vecs == NULL)
			a->free(a->ctx, g->nodes[i].vec);
		a->free(a->ctx, g->nodes[i].nbrs);
		a->free(a->ctx, g->nodes[i].dists);
		a->free(a->ctx, g->nodes[i].counts);
	}
	if (g->vecs != NULL)
		a->free(a->ctx, g->vecs);
	a->free(a->ctx, g->nodes);
	a->free(a->ctx, g->visited);
	hnsw_heap_free(&g->cand);
	hnsw_heap_free(&g->res);
	a->free(a->ctx, g->found);
	a->free(a->ctx, g->selected);
	a->free(a->ctx, g->scratch);
	a->free(a->ctx, g);
}

static inline uint64_t
rng_next(HnswGraph *g)
{
	uint64_t	x = g->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	g->rng = x;
	return x * 0x2545F4914F6CDD1DULL;
}

int
hnsw_graph_random_level(HnswGraph *g)
{
	/* uniform in (0, 1] */
	double		u = ((double) (rng_next(g) >> 11) + 1.0) / 9007199254740992.0;
	int			level = (int) floor(-log(u) * g->ml);

	return level > g->level_cap ? g->level_cap : level;
}

static inline float
node_dist(HnswGraph *g, const float *q, int32_t id)
{
	return hnsw_distance(g->metric, q, g->nodes[id].vec, g->dim);
}

int32_t
hnsw_graph_append(HnswGraph *g, const float *vec, int level)
{
	const HnswAllocator *a = g->a;
	HnswGraphNode *node;
	int			slots = 2 * g->m + level * g->m;

	if (g->n == g->cap)
	{
		int32_t		newcap = g->cap * 2;
		HnswGraphNode *nodes = a->alloc(a->ctx, sizeof(HnswGraphNode) * newcap);
		uint32_t   *visited = a->alloc(a->ctx, sizeof(uint32_t) * newcap);

		memcpy(nodes, g->nodes, sizeof(HnswGraphNode) * g->n);
		memcpy(visited, g->visited, sizeof(uint32_t) * g->n);
		memset(visited + g->n, 0, sizeof(uint32_t) * (newcap - g->n));
		a->free(a->ctx, g->nodes);
		a->free(a->ctx, g->visited);
		g->nodes = nodes;
		g->visited = visited;
		g->cap = newcap;
	}
	node = &g->nodes[g->n];
	if (g->vecs != NULL)
	{
		if (g->n == g->vecs_cap)
			grow_vectors(g);
		node->vec = g->vecs + (size_t) g->n * g->dim;
	}
	else
		node->vec = a->alloc(a->ctx, sizeof(float) * g->dim);
	memcpy(node->vec, vec, sizeof(float) * g->dim);
	node->nbrs = a->alloc(a->ctx, sizeof(int32_t) * slots);
	node->dists = a->alloc(a->ctx, sizeof(float) * slots);
	node->counts = a->alloc(a->ctx, 2 * (level + 1));
	memset(node->counts, 0, level + 1);
	node->nkept = node->counts + level + 1;
	memset(node->nkept, HNSW_KEPT_UNKNOWN, level + 1);
	node->level = (uint8_t) level;
	g->mem += hnsw_graph_node_bytes(g->dim, g->m, level, g->vecs != NULL);
	return g->n++;
}

/* Next visit tag; clears the visited array when the tag wraps. */
static uint32_t
next_visit_tag(HnswGraph *g)
{
	if (++g->visit_tag == 0)
	{
		memset(g->visited, 0, sizeof(uint32_t) * g->cap);
		g->visit_tag = 1;
	}
	return g->visit_tag;
}

/*
 * Greedy search at one level with ef = 1 (Alg. 1, lines 5-7): moves to the
 * closest neighbour until none is closer.
 */
static int32_t
greedy_closest(HnswGraph *g, const float *q, int32_t ep, float *epdist,
			   int level)
{
	bool		changed = true;

	while (changed)
	{
		HnswGraphNode *node = &g->nodes[ep];
		int32_t    *nb = node->nbrs + hnsw_level_offset(g->m, level);
		int			cnt = node->counts[level];
		int			i;

		changed = false;
		for (i = 0; i < cnt; i++)
		{
			float		d = node_dist(g, q, nb[i]);

			if (d < *epdist)
			{
				*epdist = d;
				ep = nb[i];
				changed = true;
			}
		}
	}
	return ep;
}

int
hnsw_graph_neighbors_of(void *arg, int32_t id, int level, const int32_t **list)
{
	HnswGraph  *g = (HnswGraph *) arg;
	HnswGraphNode *node = &g->nodes[id];

	*list = node->nbrs + hnsw_level_offset(g->m, level);
	return node->counts[level];
}

const float *
hnsw_graph_vector_of(void *arg, int32_t id)
{
	return ((HnswGraph *) arg)->nodes[id].vec;
}

/* SEARCH-LAYER (Alg. 2, hnsw_layer_search) over this graph. */
static int
search_layer(HnswGraph *g, const float *q, int32_t ep, float epdist, int ef,
			 int level, HnswHeapItem *out)
{
	HnswLayerSearch ls = {g->metric, g->dim, hnsw_graph_neighbors_of, hnsw_graph_vector_of, g,
	&g->cand, &g->res, g->visited, next_visit_tag(g)};

	return hnsw_layer_search(&ls, q, ep, epdist, ef, level, out);
}

/* Whether c is nearer to one of kept[0..n) than to the list's owner. */
static bool
pruned_by(HnswMetric metric, int dim, const HnswHeapItem *c,
		  const HnswHeapItem *kept, int n, HnswVectorOf vector_of, void *arg)
{
	const float *cv = vector_of(arg, c->id);

	for (int j = 0; j < n; j++)
		if (hnsw_distance(metric, cv, vector_of(arg, kept[j].id), dim) < c->dist)
			return true;
	return false;
}

int
hnsw_heuristic_select(HnswMetric metric, int dim, const HnswHeapItem *cands,
					  int ncands, int max, HnswVectorOf vector_of, void *arg,
					  HnswHeapItem *out)
{
	int			nout = 0;

	for (int i = 0; i < ncands && nout < max; i++)
		if (!pruned_by(metric, dim, &cands[i], out, nout, vector_of, arg))
			out[nout++] = cands[i];
	return nout;
}

static int
cmp_item(const void *a, const void *b)
{
	const HnswHeapItem *x = a;
	const HnswHeapItem *y = b;

	if (x->dist < y->dist)
		return -1;
	if (x->dist > y->dist)
		return 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

int
hnsw_select_list(HnswMetric metric, int dim, const HnswHeapItem *cands,
				 int ncands, int max, HnswVectorOf vector_of, void *arg,
				 HnswHeapItem *out, int *nheuristic)
{
	int			n = hnsw_heuristic_select(metric, dim, cands, ncands, max,
										  vector_of, arg, out);

	*nheuristic = n;
	for (int i = 0; i < ncands && n < max; i++)
	{
		bool		kept = false;

		for (int j = 0; j < *nheuristic && !kept; j++)
			kept = out[j].id == cands[i].id;
		if (!kept)
			out[n++] = cands[i];
	}
	return n;
}

int
hnsw_select_keep_pruned(HnswMetric metric, int dim, const HnswHeapItem *cands,
						int ncands, int max, HnswVectorOf vector_of, void *arg,
						HnswHeapItem *out)
{
	int			nheuristic;

	return hnsw_select_list(metric, dim, cands, ncands, max, vector_of, arg,
							out, &nheuristic);
}

static inline bool
item_before(const HnswHeapItem *x, const HnswHeapItem *y)
{
	return x->dist < y->dist || (x->dist == y->dist && x->id < y->id);
}

int
hnsw_list_add(HnswMetric metric, int dim, int32_t *ids, float *dists,
			  uint8_t *nkept, int cnt, int max, int32_t id, float dist,
			  HnswVectorOf vector_of, void *arg, HnswHeapItem *scratch)
{
	HnswHeapItem *cands = scratch;
	HnswHeapItem *out = scratch + max + 1;
	HnswHeapItem x = {dist, id};
	bool		kept[256];
	HnswHeapItem added[256];	/* kept now, not before */
	int			n,
				nh = 0,
				nadded = 0;

	if (cnt < max)
	{
		ids[cnt] = id;
		dists[cnt] = dist;
		*nkept = HNSW_KEPT_UNKNOWN;
		return cnt + 1;
	}

	if (*nkept == HNSW_KEPT_UNKNOWN)
	{
		for (int i = 0; i < cnt; i++)
		{
			cands[i].id = ids[i];
			cands[i].dist = dists[i];
		}
		cands[cnt] = x;
		qsort(cands, cnt + 1, sizeof(HnswHeapItem), cmp_item);
		n = hnsw_select_list(metric, dim, cands, cnt + 1, max, vector_of, arg,
							 out, &nh);
	}
	else
	{
		int			a = 0,
					b = *nkept,
					xpos = -1;
		bool		xkept = false,
					dropped = false;

		/* members and candidate in ascending order, with what was kept */
		for (int i = 0; i <= cnt; i++)
		{
			HnswHeapItem next;
			bool		takeA;

			if (a < *nkept && b < cnt)
			{
				HnswHeapItem ha = {dists[a], ids[a]},
							hb = {dists[b], ids[b]};

				takeA = item_before(&ha, &hb);
			}
			else
				takeA = a < *nkept;
			if (takeA)
				next = (HnswHeapItem) {dists[a], ids[a]};
			else if (b < cnt)
				next = (HnswHeapItem) {dists[b], ids[b]};
			if (xpos < 0 && ((!takeA && b >= cnt) || item_before(&x, &next)))
			{
				xpos = i;
				cands[i] = x;
				kept[i] = false;
				continue;
			}
			cands[i] = next;
			kept[i] = takeA;
			if (takeA)
				a++;
			else
				b++;
		}

		/*
		 * The heuristic again, skipping what cannot change: before the
		 * candidate nothing does.  After it, when it is kept, a member kept
		 * before can only be pruned by what is newly kept (the candidate,
		 * and members that a dropped one had pruned), and a member pruned
		 * before stays pruned until one is dropped (its pruner may be).
		 */
		for (int i = 0; i <= cnt; i++)
		{
			bool		keep;

			if (nh == max)
				keep = false;
			else if (i < xpos || (i > xpos && !xkept))
				keep = kept[i];
			else if (i == xpos)
				keep = xkept = !pruned_by(metric, dim, &cands[i], out, nh,
										  vector_of, arg);
			else if (kept[i])
			{
				keep = !pruned_by(metric, dim, &cands[i], added, nadded,
								  vector_of, arg);
				dropped |= !keep;
			}
			else if (dropped &&
					 !pruned_by(metric, dim, &cands[i], out, nh, vector_of, arg))
				keep = true;
			else
				keep = false;
			if (keep && (i == xpos || (i > xpos && !kept[i])))
				added[nadded++] = cands[i];
			kept[i] = keep;
			if (keep)
				out[nh++] = cands[i];
		}
		n = nh;
		for (int i = 0; i <= cnt && n < max; i++)
			if (!kept[i])
				out[n++] = cands[i];
	}
	for (int i = 0; i < n; i++)
	{
		ids[i] = out[i].id;
		dists[i] = out[i].dist;
	}
	*nkept = (uint8_t) nh;
	return n;
}

/*
 * Add the edge src -> dst at a level; when src's list is full, re-select
 * it over the old list plus dst (hnsw_list_add).
 */
static void
add_link(HnswGraph *g, int32_t src, int32_t dst, float dist, int level)
{
	HnswGraphNode *node = &g->nodes[src];
	int32_t    *nb = node->nbrs + hnsw_level_offset(g->m, level);
	float	   *nd = node->dists + hnsw_level_offset(g->m, level);
	int			max = hnsw_level_slots(g->m, level);
	int			cnt = node->counts[level];
	int			i;

	for (i = 0; i < cnt; i++)
		if (nb[i] == dst)
			return;
	for (i = 0; i < cnt && cnt == max; i++)
		if (isnan(nd[i]))
			nd[i] = node_dist(g, node->vec, nb[i]);
	node->counts[level] = hnsw_list_add(g->metric, g->dim, nb, nd,
										&node->nkept[level], cnt, max, dst,
										dist, hnsw_graph_vector_of, g, g->scratch);
}

/*
 * Link node q (already appended) into levels min_level..its level: the
 * body of INSERT (Alg. 1) once the node exists.  Returns false without
 * linking when dup_ok accepts an identical nearest vector (*dup set).
 * Works in the graph's scratch arrays: nothing is allocated here except
 * by the candidate heap growing (see hnsw_graph_reserve_search).
 */
static bool
link_node(HnswGraph *g, int32_t q, int min_level,
		  bool (*dup_ok) (void *arg, int32_t id), void *arg, int32_t *dup)
{
	HnswGraphNode *node = &g->nodes[q];
	const float *v = node->vec;
	int			level = node->level;
	int			ef = g->ef_construction;
	int32_t		ep = g->entry;
	float		epdist;
	int			lc;
	int			top;
	int			nselected[HNSW_PURE_MAX_LEVELS];
	int			nheuristic[HNSW_PURE_MAX_LEVELS];

	if (ep < 0)
		return true;
	epdist = node_dist(g, v, ep);
	for (lc = g->max_level; lc > level; lc--)
		ep = greedy_closest(g, v, ep, &epdist, lc);

	top = level < g->max_level ? level : g->max_level;
	for (lc = top; lc >= min_level; lc--)
	{
		int			nfound = search_layer(g, v, ep, epdist, ef, lc, g->found);

		if (lc == 0 && dup_ok && nfound > 0 && g->found[0].dist <= 0.0f &&
			memcmp(g->nodes[g->found[0].id].vec, v, sizeof(float) * g->dim) == 0 &&
			dup_ok(arg, g->found[0].id))
		{
			*dup = g->found[0].id;
			return false;
		}
		nselected[lc] = hnsw_select_list(g->metric, g->dim, g->found, nfound,
										 hnsw_level_slots(g->m, lc),
										 hnsw_graph_vector_of, g,
										 g->selected + hnsw_level_offset(g->m, lc),
										 &nheuristic[lc]);
		ep = g->found[0].id;
		epdist = g->found[0].dist;
	}

	/* connect (Alg. 1, lines 10-16) */
	for (lc = top; lc >= min_level; lc--)
	{
		int32_t    *nb = node->nbrs + hnsw_level_offset(g->m, lc);
		float	   *nd = node->dists + hnsw_level_offset(g->m, lc);
		const HnswHeapItem *selected = g->selected + hnsw_level_offset(g->m, lc);
		int			i;

		for (i = 0; i < nselected[lc]; i++)
		{
			nb[i] = selected[i].id;
			nd[i] = selected[i].dist;
			add_link(g, selected[i].id, q, selected[i].dist, lc);
		}
		node->counts[lc] = nselected[lc];
		/* a full list's state for hnsw_list_add */
		node->nkept[lc] = nselected[lc] == hnsw_level_slots(g->m, lc) ?
			(uint8_t) nheuristic[lc] : HNSW_KEPT_UNKNOWN;
	}
	return true;
}

int32_t
hnsw_graph_insert(HnswGraph *g, const float *vec, int level,
				  bool (*dup_ok) (void *arg, int32_t id), void *arg,
				  bool *is_dup)
{
	int32_t		q;
	int32_t		dup = -1;

	*is_dup = false;
	q = hnsw_graph_append(g, vec, level);
	if (!link_node(g, q, 0, dup_ok, arg, &dup))
	{
		/* take the node back off the end */
		HnswGraphNode *node = &g->nodes[q];

		g->mem -= hnsw_graph_node_bytes(g->dim, g->m, node->level,
										g->vecs != NULL);
		if (g->vecs == NULL)
			g->a->free(g->a->ctx, node->vec);
		g->a->free(g->a->ctx, node->nbrs);
		g->a->free(g->a->ctx, node->dists);
		g->a->free(g->a->ctx, node->counts);
		g->n--;
		*is_dup = true;
		return dup;
	}
	if (level > g->max_level)
	{
		g->max_level = level;
		g->entry = q;
	}
	return q;
}

/*
 * The candidate heap of a search at the upper levels holds at most every
 * node of level >= 1 once: grown to that here, hnsw_graph_link_upper can no
 * longer allocate (link_node allocates nothing else).
 */
void
hnsw_graph_reserve_search(HnswGraph *g)
{
	HnswHeap   *h = &g->cand;
	int32_t		upper = 0;

	for (int32_t i = 0; i < g->n; i++)
		upper += g->nodes[i].level > 0;
	if (h->cap <= upper)
	{
		HnswHeapItem *items = g->a->alloc(g->a->ctx,
										  sizeof(HnswHeapItem) * (upper + 1));

		memcpy(items, h->items, sizeof(HnswHeapItem) * h->n);
		g->a->free(g->a->ctx, h->items);
		h->items = items;
		h->cap = upper + 1;
	}
}

void
hnsw_graph_link_upper(HnswGraph *g)
{
	int32_t		i;

	g->entry = -1;
	g->max_level = -1;
	for (i = 0; i < g->n; i++)
	{
		int			level = g->nodes[i].level;
		int32_t		dup;

		if (g->entry < 0)
		{
			g->entry = i;
			g->max_level = level;
			continue;
		}
		if (level == 0)
			continue;
		link_node(g, i, 1, NULL, NULL, &dup);
		if (level > g->max_level)
		{
			g->max_level = level;
			g->entry = i;
		}
	}
}

int64_t
hnsw_graph_set_level0(HnswGraph *g, const int32_t *neighbours, int degree)
{
	int64_t		dropped = 0;
	int32_t		i;

	for (i = 0; i < g->n; i++)
	{
		HnswGraphNode *node = &g->nodes[i];
		int			cnt = 0;
		int			j;

		for (j = 0; j < degree; j++)
		{
			int32_t		nb = neighbours[(int64_t) i * degree + j];
			int			k;
			bool		seen = false;

			if (nb < 0)
				continue;
			if (nb >= g->n || nb == i || cnt >= 2 * g->m)
			{
				dropped++;
				continue;
			}
			for (k = 0; k < cnt; k++)
				if (node->nbrs[k] == nb)
					seen = true;
			if (!seen)
			{
				node->dists[cnt] = NAN;
				node->nbrs[cnt++] = nb;
			}
		}
		node->counts[0] = (uint8_t) cnt;
		node->nkept[0] = HNSW_KEPT_UNKNOWN;
	}
	return dropped;
}

int
hnsw_graph_search(HnswGraph *g, const float *q, int k, int ef, int32_t *ids,
				  float *dists)
{
	int32_t		ep = g->entry;
	float		epdist;
	int			lc;
	int			n,
				i;
	HnswHeapItem *found;

	if (ep < 0)
		return 0;
	if (ef < k)
		ef = k;
	epdist = node_dist(g, q, ep);
	for (lc = g->max_level; lc > 0; lc--)
		ep = greedy_closest(g, q, ep, &epdist, lc);
	found = g->a->alloc(g->a->ctx, sizeof(HnswHeapItem) * (ef + 1));
	n = search_layer(g, q, ep, epdist, ef, 0, found);
	if (n > k)
		n = k;
	for (i = 0; i < n; i++)
	{
		ids[i] = found[i].id;
		dists[i] = found[i].dist;
	}
	g->a->free(g->a->ctx, found);
	return n;
}

/*
 * Mark everything reachable from start (all levels); returns how many new.
 * With indeg, count each newly reached node's edges into their targets.
 */
static int64_t
mark_reachable(HnswGraph *g, int32_t start, uint8_t *reached, int32_t *queue,
			   int32_t *indeg)
{
	int64_t		head = 0,
				tail = 0;

	if (reached[start])
		return 0;
	reached[start] = 1;
	queue[tail++] = start;
	while (head < tail)
	{
		HnswGraphNode *node = &g->nodes[queue[head++]];
		int			l;

		for (l = 0; l <= node->level; l++)
		{
			int32_t    *nb = node->nbrs + hnsw_level_offset(g->m, l);
			int			i;

			for (i = 0; i < node->counts[l]; i++)
			{
				if (indeg)
					indeg[nb[i]]++;
				if (!reached[nb[i]])
				{
					reached[nb[i]] = 1;
					queue[tail++] = nb[i];
				}
			}
		}
	}
	return tail;
}

/*
 * Give unreachable node i an in-edge from the search's nf results (ids, in
 * ascending distance), and mark what i now reaches.  The nearest reachable
 * node v with a free slot links to i; else the nearest reachable v gives
 * i the slot of its member w with the most in-edges, and w moves into i's
 * list (a free slot, else i's last, lowest-priority one): v -> i -> w.
 * Nothing reachable becomes unreachable that way, where taking w's slot
 * outright left rows unreachable under inner product (1,657 of 60,000 on
 * Fashion-MNIST after the rounds of searches, docs/cagra.md).  i was
 * unreachable, so nothing reachable depended on the slot of i's it
 * overwrites.  Returns whether an edge was added.
 */
static bool
connect_node(HnswGraph *g, int32_t i, const int32_t *ids, int nf,
			 uint8_t *reached, int32_t *queue, int32_t *indeg)
{
	HnswGraphNode *node = &g->nodes[i];
	int32_t		v = -1;
	int32_t		moved = -1;
	int			slot = -1;
	int			j;

	/* the nearest reachable node with a free slot */
	for (j = 0; j < nf && v < 0; j++)
		if (ids[j] != i && reached[ids[j]] &&
			g->nodes[ids[j]].counts[0] < 2 * g->m)
			v = ids[j];
	/* else the nearest reachable one, its most linked-to member moving */
	for (j = 0; j < nf && v < 0; j++)
	{
		HnswGraphNode *cand = &g->nodes[ids[j]];

		if (ids[j] == i || !reached[ids[j]] || cand->counts[0] == 0)
			continue;
		v = ids[j];
		slot = 0;
		for (int s = 1; s < cand->counts[0]; s++)
			if (indeg[cand->nbrs[s]] > indeg[cand->nbrs[slot]])
				slot = s;
		moved = cand->nbrs[slot];
	}
	if (v < 0)
		return false;
	if (slot < 0)
		slot = g->nodes[v].counts[0]++;
	else
		indeg[moved]--;
	g->nodes[v].nbrs[slot] = i;
	g->nodes[v].dists[slot] = node_dist(g, g->nodes[v].vec, i);
	g->nodes[v].nkept[0] = HNSW_KEPT_UNKNOWN;
	indeg[i]++;
	if (moved >= 0 && !hnsw_list_has(node->nbrs, node->counts[0], moved))
	{
		int			t = node->counts[0] < 2 * g->m ? node->counts[0]++ :
			node->counts[0] - 1;

		node->nbrs[t] = moved;
		node->dists[t] = node_dist(g, node->vec, moved);
		node->nkept[0] = HNSW_KEPT_UNKNOWN;
	}
	mark_reachable(g, i, reached, queue, indeg);
	return true;
}

/* Unreached nodes searched at once by hnsw_graph_connect_batched, at most. */
#define CONNECT_BATCH 4096

/*
 * Both forms of the pass: with search_batch NULL each unreachable node is
 * searched just before it is connected (hnsw_graph_connect); else the
 * nodes still unreachable are searched CONNECT_BATCH at a time by
 * search_batch, then connected in id order.
 */
static int
connect_passes(HnswGraph *g, HnswSearchBatchFn search_batch, void *arg,
			   int64_t *added_out, int64_t *unreached)
{
	const HnswAllocator *a = g->a;
	int			k = g->ef_construction;
	int			batch = search_batch ? CONNECT_BATCH : 1;
	uint8_t    *reached = a->alloc(a->ctx, g->n);
	int32_t    *queue = a->alloc(a->ctx, sizeof(int32_t) * g->n);
	int32_t    *indeg = a->alloc(a->ctx, sizeof(int32_t) * g->n);
	int32_t    *nodes = a->alloc(a->ctx, sizeof(int32_t) * batch);
	int32_t    *ids = a->alloc(a->ctx, sizeof(int32_t) * k * batch);
	int		   *found = a->alloc(a->ctx, sizeof(int) * batch);
	float	   *dists = a->alloc(a->ctx, sizeof(float) * k);
	int64_t		added = 0;
	int			rc = 0;
	int32_t		i;
	bool		all_reached = false;

	for (int pass = 0; pass < 4 && rc == 0; pass++)
	{
		int64_t		before = added;

		memset(reached, 0, g->n);
		memset(indeg, 0, sizeof(int32_t) * g->n);
		all_reached = mark_reachable(g, g->entry, reached, queue, indeg) == g->n;
		if (all_reached)
			break;
		for (i = 0; i < g->n && rc == 0;)
		{
			int			count = 0;

			for (; i < g->n && count < batch; i++)
				if (!reached[i])
					nodes[count++] = i;
			if (search_batch != NULL && count > 0)
				rc = search_batch(arg, g, nodes, count, k, ids, found);
			for (int b = 0; b < count && rc == 0; b++)
			{
				if (reached[nodes[b]])
					continue;
				if (search_batch == NULL)
					found[b] = hnsw_graph_search(g, g->nodes[nodes[b]].vec, k,
												 k, ids + (int64_t) b * k, dists);
				added += connect_node(g, nodes[b], ids + (int64_t) b * k,
									  found[b], reached, queue, indeg);
			}
		}
		if (added == before)
			break;
	}
	if (!all_reached)
	{
		memset(reached, 0, g->n);
		*unreached = g->n - mark_reachable(g, g->entry, reached, queue, NULL);
	}
	*added_out = added;
	a->free(a->ctx, reached);
	a->free(a->ctx, queue);
	a->free(a->ctx, indeg);
	a->free(a->ctx, nodes);
	a->free(a->ctx, ids);
	a->free(a->ctx, found);
	a->free(a->ctx, dists);
	return rc;
}

int64_t
hnsw_graph_connect(HnswGraph *g, int64_t *unreached)
{
	int64_t		added;

	hnsw_graph_connect_batched(g, NULL, NULL, &added, unreached);
	return added;
}

int
hnsw_graph_connect_batched(HnswGraph *g, HnswSearchBatchFn search_batch,
						   void *arg, int64_t *added, int64_t *unreached)
{
	*added = 0;
	*unreached = 0;
	if (g->n == 0 || g->entry < 0)
		return 0;
	return connect_passes(g, search_batch, arg, added, unreached);
}
