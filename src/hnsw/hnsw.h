/*
 * hnsw.h
 *		The gnnhnsw index access method: an HNSW graph (Malkov & Yashunin,
 *		"Efficient and robust approximate nearest neighbor search using
 *		Hierarchical Navigable Small World graphs", TPAMI 2018) stored in
 *		ordinary PostgreSQL pages.
 *
 * The header has two halves.  The first is PostgreSQL-free (define
 * HNSW_PURE before including it): the in-memory graph used by builds, the
 * heaps and the TID set shared by every search.  hnswgraph.c implements it
 * and is unit-tested on its own (test/unit/test_hnswgraph.c); the CAGRA
 * build reuses it.  The second half is the access method proper.
 *
 * Page format (version 1)
 * -----------------------
 * Block 0 is the metapage (HnswMetaPageData in the page contents).  Every
 * other block holds tuples of three kinds, told apart by their first byte:
 *
 *	element tuple (HnswElementTupleData): level, deleted flag, up to
 *		HNSW_HEAPTIDS heap TIDs (rows with identical vectors share one
 *		element), the TID of the element's neighbour tuple, the vector (or
 *		its first HNSW_ELEMENT_INLINE_MAX floats) and, for vectors too large
 *		for one page, the TID of the first data tuple holding the rest.
 *	data tuple (HnswDataTupleData): a run of floats continuing a vector and
 *		the TID of the next data tuple.  How a vector is split depends only
 *		on its dimension count, so every element of an index has the same
 *		shape; this is what lets vectors of up to VECTOR_MAX_DIM (16000)
 *		dimensions be indexed, beyond pgvector's 2000.
 *	neighbour tuple (HnswNeighborTupleData): index TIDs of the element's
 *		neighbours: 2m slots for level 0, then m for each upper level.
 *		Unused slots hold an invalid TID.  Its size is fixed by the level
 *		the element was created with, so it is always updated in place.
 *
 * Every page has an HnswPageOpaqueData special space.  A page that
 * PageIsNew() belongs to the backend that just extended the relation,
 * unless that backend failed or crashed before initialising it: inserts
 * take such an abandoned page over (hnswinsert.c, new_page_abandoned).
 *
 * Locking: inserts hold the HNSW_UPDATE_LOCK page lock in share mode
 * (exclusive when they may change the entry point; VACUUM takes it
 * exclusively to move the entry point).  Buffer locks are taken one at a
 * time, except when an insert takes over a deleted element whose neighbour
 * tuple is on a later page (both locked, in block order).  WAL: GenericXLog
 * for every change after the build; the build writes its pages without WAL
 * and then logs them all with log_newpage_range.
 *
 * Files: hnsw.c (handler, options, settings, cost, opclass validation,
 * scan plug-ins), hnswgraph.c (pure graph), hnswbuild.c (build, page
 * writer), hnswparallel.c (parallel build in shared memory), hnswinsert.c,
 * hnswscan.c, hnswvacuum.c, hnswutils.c (pages, WAL, searches over pages),
 * hnswread.c (reads for learners), hnswcheck.c (gnnvec_index_info,
 * gnnvec_index_check).
 */
#ifndef GNNVEC_HNSW_H
#define GNNVEC_HNSW_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>

#include "vector/distance.h"

/* ======================================================================
 * PostgreSQL-free part
 * ====================================================================== */

/* Levels 0..HNSW_PURE_MAX_LEVELS-1 at most (the page format's limit). */
#define HNSW_PURE_MAX_LEVELS	17

typedef enum HnswMetric
{
	HNSW_METRIC_L2 = 1,			/* squared Euclidean distance */
	HNSW_METRIC_IP = 2,			/* negative inner product */
	HNSW_METRIC_COSINE = 3,		/* negative inner product of normalised
								 * vectors */
	HNSW_METRIC_L1 = 4			/* taxicab distance */
} HnswMetric;

/*
 * The distance the graph works with.  It is monotone in the SQL operator's
 * distance for every metric, and a sum over dimensions, so a vector split
 * over several tuples can be compared piece by piece (hnsw_distance_part).
 */
static inline float
hnsw_distance(HnswMetric metric, const float *a, const float *b, int dim)
{
	switch (metric)
	{
		case HNSW_METRIC_L2:
			return vec_l2_squared(a, b, dim);
		case HNSW_METRIC_IP:
		case HNSW_METRIC_COSINE:
			return -vec_inner_product(a, b, dim);
		case HNSW_METRIC_L1:
			return vec_l1_distance(a, b, dim);
	}
	return 0.0f;
}

/* Memory for the pure code: palloc in the server, malloc in unit tests. */
typedef struct HnswAllocator
{
	void	   *(*alloc) (void *ctx, size_t size);
	void		(*free) (void *ctx, void *ptr);
	void	   *ctx;
} HnswAllocator;

/* Binary heap of (distance, id); min-heap or max-heap by distance. */
typedef struct HnswHeapItem
{
	float		dist;
	int32_t		id;
} HnswHeapItem;

typedef struct HnswHeap
{
	HnswHeapItem *items;
	int			n;
	int			cap;
	bool		max;			/* true: top is the largest distance */
	const HnswAllocator *a;
} HnswHeap;

extern void hnsw_heap_init(HnswHeap *h, bool max, int cap, const HnswAllocator *a);
extern void hnsw_heap_free(HnswHeap *h);
extern void hnsw_heap_push(HnswHeap *h, float dist, int32_t id);
extern HnswHeapItem hnsw_heap_pop(HnswHeap *h);
static inline HnswHeapItem *
hnsw_heap_top(HnswHeap *h)
{
	return h->n > 0 ? &h->items[0] : NULL;
}

/*
 * Positions 0..n-1 by descending score, ties by position, handed out one
 * at a time: a winner tree (a knockout tournament over the positions,
 * Knuth, TAOCP vol. 3, 5.4.1) built with n - 1 comparisons, each next in
 * log2 n, replaying only the matches of the position just handed out.  A
 * reranked scan returns the first rows of its rerank's order and the
 * executor stops after LIMIT k of ef (10 of 100): sorting all 100 scores
 * was 2-3% of its time, a binary heap still 1% (docs/gnn.md).  A match is
 * one comparison whose result picks an index, without a branch to
 * mispredict.  Scores below -DBL_MAX (and NaN) count as -DBL_MAX.  The
 * caller gives hnsw_rank_size(n) bytes of space.
 */
typedef struct HnswRank
{
	double	   *key;			/* leaves' scores; -inf once handed out */
	int32_t    *tree;			/* tree[k]: winner below node k; leaves at
								 * leaves + position */
	int			leaves;			/* a power of two >= n */
	int			n;				/* not handed out yet */
} HnswRank;

extern size_t hnsw_rank_size(int n);
extern void hnsw_rank_init(HnswRank *r, const double *scores, int n,
						   void *space);
/* The next position in the order, or -1 when all are handed out. */
extern int	hnsw_rank_next(HnswRank *r);

#define hnsw_prefetch(p) vec_prefetch(p)

/*
 * Prefetch a vector's first four cache lines: enough to start its distance
 * while the hardware prefetcher streams the rest of a long one.
 */
static inline void
hnsw_prefetch_vector(const float *v, int dim)
{
	for (int off = 0; off < dim && off < 64; off += 16)
		hnsw_prefetch(v + off);
}

/* The hash of the key sets and maps below (a 64-bit finaliser). */
static inline uint64_t
hnsw_key_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return k;
}

/* Set of 64-bit keys (index TIDs packed by the caller; 0 is not a key). */
typedef struct HnswKeySet
{
	uint64_t   *keys;
	uint64_t	mask;
	uint64_t	n;
	const HnswAllocator *a;
} HnswKeySet;

extern void hnsw_keyset_init(HnswKeySet *s, uint64_t expected, const HnswAllocator *a);
extern void hnsw_keyset_free(HnswKeySet *s);
/* Adds key; returns true if it was already present. */
extern bool hnsw_keyset_test_and_add(HnswKeySet *s, uint64_t key);
extern bool hnsw_keyset_contains(const HnswKeySet *s, uint64_t key);

/*
 * The in-memory graph of a build.  Nodes are numbered 0..n-1 in insertion
 * order; node i's neighbours at level l are nbrs[offset(l) .. +count[l]],
 * with 2m slots at level 0 and m at each upper level (the on-disk shape).
 */
typedef struct HnswGraphNode
{
	float	   *vec;			/* dim floats (normalised for cosine) */
	int32_t    *nbrs;			/* 2m + level * m slots */
	float	   *dists;			/* each slot's distance to vec, NaN where
								 * not known (lists set from elsewhere) */
	uint8_t    *counts;			/* level + 1 neighbour counts */
	uint8_t    *nkept;			/* level + 1 (hnsw_list_add), after counts */
	uint8_t		level;
} HnswGraphNode;

typedef struct HnswGraph
{
	int			dim;
	int			m;
	int			ef_construction;
	HnswMetric	metric;
	int			level_cap;		/* no node gets a level above this */
	double		ml;				/* level multiplier 1/ln(m) */
	uint64_t	rng;			/* xorshift64* state for levels */

	int32_t		n;
	int32_t		cap;
	HnswGraphNode *nodes;
	int32_t		entry;			/* -1 while empty */
	int			max_level;

	size_t		mem;			/* bytes allocated for nodes */
	bool		borrowed;		/* node storage belongs to someone else */

	/* hnsw_graph_pack_vectors: every vector in one n x dim array */
	float	   *vecs;			/* NULL: one allocation per node */
	int32_t		vecs_cap;		/* rows it has room for */

	/* scratch for searches and links (one at a time) */
	uint32_t   *visited;
	uint32_t	visit_tag;
	HnswHeap	cand;
	HnswHeap	res;
	HnswHeapItem *found;		/* ef_construction + 1 */
	HnswHeapItem *selected;		/* (level_cap + 1) x m */
	HnswHeapItem *scratch;		/* 2m + 1, twice */

	const HnswAllocator *a;
} HnswGraph;

static inline int
hnsw_level_offset(int m, int level)
{
	return level == 0 ? 0 : 2 * m + (level - 1) * m;
}

static inline int
hnsw_level_slots(int m, int level)
{
	return level == 0 ? 2 * m : m;
}

/* Whether id is among list[0 .. n) (a neighbour list, a few dozen ids). */
static inline bool
hnsw_list_has(const int32_t *list, int n, int32_t id)
{
	for (int j = 0; j < n; j++)
		if (list[j] == id)
			return true;
	return false;
}

/*
 * Bytes one node of a given level costs (memory accounting); packed: its
 * vector lies in the graph's array (hnsw_graph_pack_vectors), counted there.
 */
extern size_t hnsw_graph_node_bytes(int dim, int m, int level, bool packed);

extern HnswGraph *hnsw_graph_create(int dim, int m, int ef_construction,
									HnswMetric metric, int level_cap,
									uint64_t seed, const HnswAllocator *a);
extern void hnsw_graph_free(HnswGraph *g);

/* A random level, -ln(U) * ml capped at level_cap (Alg. 1, line 4). */
extern int	hnsw_graph_random_level(HnswGraph *g);

/*
 * Insert a vector (copied) with the HNSW insert algorithm (Alg. 1 with the
 * neighbour-selection heuristic of Alg. 4).  If dup_ok is not NULL and the
 * nearest node found at level 0 holds exactly the same vector and dup_ok
 * accepts it, nothing is inserted and that node's id is returned with
 * *is_dup set.  Otherwise returns the new node's id.
 */
extern int32_t hnsw_graph_insert(HnswGraph *g, const float *vec, int level,
								 bool (*dup_ok) (void *arg, int32_t id),
								 void *arg, bool *is_dup);

/* Append a node without linking it (for hnsw_graph_set_level0). */
extern int32_t hnsw_graph_append(HnswGraph *g, const float *vec, int level);

/*
 * From now on (the graph still empty), keep the vectors of appended nodes
 * in one n x dim array, g->vecs, room for expected_rows first, instead of
 * one allocation each: a build whose level 0 comes from CAGRA reads them
 * as that array and needs no copy.  When full, the array grows to
 * hnsw_graph_vecs_grown(g->vecs_cap) rows: by a quarter, not double, so
 * that a row estimate a little short does not cost a build near its
 * memory limit twice the vectors.
 */
extern void hnsw_graph_pack_vectors(HnswGraph *g, int32_t expected_rows);

static inline int32_t
hnsw_graph_vecs_grown(int32_t cap)
{
	return cap <= (INT32_MAX - 1024) / 5 * 4 ? cap + cap / 4 + 1024 : INT32_MAX;
}

/*
 * A graph whose level 0 comes from elsewhere (CAGRA), in two independent
 * halves.  hnsw_graph_link_upper links the appended nodes of level >= 1
 * into the upper levels by ordinary HNSW insertion restricted to levels
 * >= 1, and sets the entry point; it touches nothing of level 0 and
 * allocates nothing (after hnsw_graph_reserve_search, which must come
 * first), so it may run on a thread of its own while level 0 is being
 * computed from a copy of the vectors.  hnsw_graph_set_level0 makes row i
 * of neighbours (n x degree, entries < 0 ignored, at most 2m used) node i's
 * level-0 list; it returns the number of level-0 edges dropped because
 * they were out of range or beyond 2m.
 */
extern void hnsw_graph_reserve_search(HnswGraph *g);
extern void hnsw_graph_link_upper(HnswGraph *g);
extern int64_t hnsw_graph_set_level0(HnswGraph *g, const int32_t *neighbours,
									 int degree);

/*
 * Make every node reachable from the entry point.  Pruning can leave nodes
 * without in-edges (most of all for inner product, where small-norm vectors
 * are nobody's nearest neighbour).  Each unreachable node gets a level-0
 * in-edge from the nearest reachable node with a free slot, or, failing
 * that, takes the slot of the nearest reachable node's most linked-to
 * member, which moves into the node's own list: nothing reachable becomes
 * unreachable.  Returns the number of edges added; unreached counts what
 * is still unreachable.
 */
extern int64_t hnsw_graph_connect(HnswGraph *g, int64_t *unreached);

/*
 * The same with the searches done in batches by the caller (the CAGRA
 * build runs them on its threads): search_batch fills, for each of count
 * nodes, found[b] and ids[b * k ..] with the ids of the node's k nearest
 * nodes (ascending distance) found by a search from the entry point at
 * ef k, reading the graph only; a nonzero return stops the pass and is
 * returned.  The nodes are connected in id order after their batch is
 * searched, so the result depends on search_batch's results alone.  The
 * edges added go to *added.  With search_batch NULL, each node is searched
 * just before it is connected: hnsw_graph_connect.
 */
typedef int (*HnswSearchBatchFn) (void *arg, HnswGraph *g,
								  const int32_t *nodes, int count, int k,
								  int32_t *ids, int *found);
extern int	hnsw_graph_connect_batched(HnswGraph *g,
									   HnswSearchBatchFn search_batch,
									   void *arg, int64_t *added,
									   int64_t *unreached);

/* k nearest nodes of q (ids and distances ascending); returns how many. */
extern int	hnsw_graph_search(HnswGraph *g, const float *q, int k, int ef,
							  int32_t *ids, float *dists);

/*
 * SELECT-NEIGHBORS-HEURISTIC (Alg. 4), the one implementation behind every
 * build and update path: walk the candidates (ascending distance to the
 * base element) and keep one when it is nearer to the base than to every
 * candidate kept so far, until max are kept.  vector_of(arg, id) gives a
 * candidate's vector.  out gets the kept candidates in order; returns how
 * many.
 */
typedef const float *(*HnswVectorOf) (void *arg, int32_t id);
extern int	hnsw_heuristic_select(HnswMetric metric, int dim,
								  const HnswHeapItem *cands, int ncands, int max,
								  HnswVectorOf vector_of, void *arg,
								  HnswHeapItem *out);

/*
 * SEARCH-LAYER (Alg. 2) over a graph held in memory, for the serial build
 * (HnswGraph) and the parallel build (the shared graph, whose lists are read
 * under a lock): the ef nearest nodes of q at one level from ep, written to
 * out in ascending order; returns how many.  neighbors_of(arg, id, level,
 * &list) gives a node's list (valid until the next call), vector_of its
 * vector.  visited[] is marked with tag, a value no earlier search used.
 * Static inline so that each caller's callbacks are inlined.
 */
typedef struct HnswLayerSearch
{
	HnswMetric	metric;
	int			dim;
	int			(*neighbors_of) (void *arg, int32_t id, int level,
								 const int32_t **list);
	HnswVectorOf vector_of;
	void	   *arg;
	HnswHeap   *cand;			/* scratch min-heap */
	HnswHeap   *res;			/* scratch max-heap, room for ef + 1 */
	uint32_t   *visited;
	uint32_t	tag;
} HnswLayerSearch;

#define HNSW_LAYER_BATCH 64		/* list members prefetched at once */

static inline int
hnsw_layer_search(const HnswLayerSearch *ls, const float *q, int32_t ep,
				  float epdist, int ef, int level, HnswHeapItem *out)
{
	HnswHeap   *cand = ls->cand;
	HnswHeap   *res = ls->res;
	int			n;

	cand->n = 0;
	res->n = 0;
	ls->visited[ep] = ls->tag;
	hnsw_heap_push(cand, epdist, ep);
	hnsw_heap_push(res, epdist, ep);
	while (cand->n > 0)
	{
		HnswHeapItem c = hnsw_heap_pop(cand);
		const int32_t *list;
		int			cnt;

		if (c.dist > hnsw_heap_top(res)->dist && res->n >= ef)
			break;
		cnt = ls->neighbors_of(ls->arg, c.id, level, &list);
		for (int start = 0; start < cnt; start += HNSW_LAYER_BATCH)
		{
			int32_t		fresh[HNSW_LAYER_BATCH];
			const float *vecs[HNSW_LAYER_BATCH];
			int			nfresh = 0;

			/*
			 * Mark the unvisited members first and prefetch their vectors,
			 * so that their cache misses overlap instead of coming one per
			 * distance.
			 */
			for (int i = start; i < cnt && i < start + HNSW_LAYER_BATCH; i++)
			{
				int32_t		e = list[i];

				if (ls->visited[e] == ls->tag)
					continue;
				ls->visited[e] = ls->tag;
				vecs[nfresh] = ls->vector_of(ls->arg, e);
				hnsw_prefetch_vector(vecs[nfresh], ls->dim);
				fresh[nfresh++] = e;
			}
			for (int i = 0; i < nfresh; i++)
			{
				int32_t		e = fresh[i];
				float		d = hnsw_distance(ls->metric, q, vecs[i], ls->dim);

				if (res->n < ef || d < hnsw_heap_top(res)->dist)
				{
					hnsw_heap_push(cand, d, e);
					hnsw_heap_push(res, d, e);
					if (res->n > ef)
						hnsw_heap_pop(res);
				}
			}
		}
	}
	/* drain the max-heap from the back: ascending order */
	n = res->n;
	while (res->n > 0)
	{
		HnswHeapItem it = hnsw_heap_pop(res);

		out[res->n] = it;
	}
	return n;
}

/*
 * hnsw_heuristic_select, then the nearest candidates it passed over until
 * max are kept (Alg. 4 with keepPrunedConnections): the builds' lists.  On
 * tightly clustered data the heuristic alone keeps a handful of
 * neighbours per element (a mean level-0 degree of 6.7 of 32 on 1,000
 * clusters of 20,000 x 64), too few to leave a cluster by.
 */
extern int	hnsw_select_keep_pruned(HnswMetric metric, int dim,
									const HnswHeapItem *cands, int ncands,
									int max, HnswVectorOf vector_of, void *arg,
									HnswHeapItem *out);

/*
 * hnsw_select_keep_pruned that also says how many of the out[] it returns
 * the heuristic kept (they come first).
 */
extern int	hnsw_select_list(HnswMetric metric, int dim,
							 const HnswHeapItem *cands, int ncands, int max,
							 HnswVectorOf vector_of, void *arg,
							 HnswHeapItem *out, int *nheuristic);

/* A list whose hnsw_list_add state is not known. */
#define HNSW_KEPT_UNKNOWN	0xFF

/*
 * Add the candidate (id, dist) to a build's list: ids[] and their
 * distances to the list's owner, cnt members of at most max (<= 254), id
 * not among them.  A list with room takes it at the end.  A full list is
 * re-selected over its members and the candidate: exactly
 * hnsw_select_keep_pruned over them in ascending (distance, id) order,
 * which drops one.  The list is then the heuristic's choice (*nkept
 * members) followed by the others, each part ascending: from that state
 * the next re-selection computes only the distances whose outcome the
 * candidate can change (the candidate's to the kept members before it, then
 * one per kept member after it, or more when one of those is dropped).
 * *nkept is HNSW_KEPT_UNKNOWN where the state is not known (after an append
 * or a list set from elsewhere): that re-selection computes them all.
 * scratch: room for 2 * (max + 1).  Returns the new count.
 */
extern int	hnsw_list_add(HnswMetric metric, int dim, int32_t *ids,
						  float *dists, uint8_t *nkept, int cnt, int max,
						  int32_t id, float dist, HnswVectorOf vector_of,
						  void *arg, HnswHeapItem *scratch);

/*
 * The in-memory graph's lists and vectors as HnswLayerSearch and
 * hnsw_heuristic_select read them (arg is the HnswGraph).
 */
extern int	hnsw_graph_neighbors_of(void *arg, int32_t id, int level,
									const int32_t **list);
extern const float *hnsw_graph_vector_of(void *arg, int32_t id);

/*
 * hnswcache.c: vectors by 64-bit key (an element's TID), each with one
 * 64-bit word for the caller (its neighbour tuple's TID), in memory that
 * grows in chunks up to a byte budget shared by every cache that points at
 * the same counter, or (a fixed cache, hnsw_vcache_init_fixed) in memory
 * of the caller's that several processes share.  Once the budget or the
 * capacity is spent, puts are refused: what was cached first stays (a scan
 * meets the upper levels' elements first).
 *
 * A cache holds either the float vectors, whose distances are exact, or
 * 8-bit codes (scalar quantisation per vector: x[i] ~ offset + scale *
 * code[i], with the exact squared norm kept), four times as many in the
 * same budget, whose distances are approximations the caller must check.
 */
typedef struct HnswVecCacheEntry
{
	uint64_t	key;			/* 0 = empty; stored after slot */
	uint32_t	slot;			/* 1 + the slot; 0 = not taken */
} HnswVecCacheEntry;

/*
 * A fixed cache's level-0 neighbour list of an element, before its word:
 * the element's key, then its neighbours' slots, valid for tag and above.
 */
typedef struct HnswVecLinks
{
	uint64_t	key;			/* the element's */
	uint64_t	htag;			/* of heap, as tag is of the list */
	uint64_t	heap;			/* its one heap TID's key, for htag */
	uint64_t	tag;			/* 0: none; HNSW_LINKS_WRITING: being written */
	uint64_t	nbr_sum;		/* the list's hnsw_neighbors_fingerprint */
	int32_t		n;
	int32_t		slots[];
} HnswVecLinks;

#define HNSW_LINKS_WRITING	UINT64_MAX

typedef struct HnswVecCache
{
	int			dim;
	int			nlinks;			/* fixed: room for a list of so many, or 0 */
	bool		codes;			/* 8-bit codes, not float vectors */
	bool		fixed;			/* in memory of the caller's, never grows */
	HnswVecCacheEntry *map;		/* open addressing */
	uint64_t	mask;
	int32_t		n;				/* slots taken (fixed: may pass capacity) */
	int32_t		capacity;		/* fixed: most slots */
	char	  **chunks;			/* HNSW_VCACHE_CHUNK slots each */
	char	   *slots;			/* fixed: all of them, slot_size bytes each */
	size_t		slot_size;		/* fixed */
	size_t		links_size;		/* of a slot's list, before its word (0: no lists) */
	int			nchunks;
	int			capchunks;
	size_t		bytes;			/* what this cache holds */
	size_t	   *used;			/* shared by the caches of one budget */
	size_t		limit;
	const HnswAllocator *a;
} HnswVecCache;

/* The header of an 8-bit code, before its dim bytes. */
typedef struct HnswVecCode
{
	float		offset;
	float		scale;
	float		norm2;			/* the float vector's squared norm */
	float		sum;			/* and the sum of its coordinates */
} HnswVecCode;

/*
 * A query as cached distances need it: its squared norm and its own 8-bit
 * code (x ~ offset + scale * codes[i], codes in -127..127).
 */
typedef struct HnswVecQuery
{
	const float *x;
	float		norm2;
	int8_t	   *codes;			/* dim bytes, the caller's */
	float		offset;
	float		scale;
	int32_t		codesum;		/* sum of codes */
	float		absdev;			/* sum |x[i] - offset| */
} HnswVecQuery;

#define HNSW_VCACHE_CHUNK	256

extern void hnsw_vcache_init(HnswVecCache *c, int dim, bool codes,
							 size_t *used, size_t limit,
							 const HnswAllocator *a);
/*
 * A cache of at most capacity entries in the bytes at mem (aligned to 16,
 * hnsw_vcache_fixed_bytes of them), for memory several processes map at
 * the same address: gets and puts may run in any number of them at once
 * (a put publishes its entry with atomic operations, after its slot is
 * written), a clear in none but one.
 */
extern size_t hnsw_vcache_fixed_bytes(int dim, bool codes, int nlinks,
									  int64_t capacity);
/* The largest capacity whose hnsw_vcache_fixed_bytes are at most bytes. */
extern int64_t hnsw_vcache_fixed_capacity(int dim, bool codes, int nlinks,
										  size_t bytes);
/* nlinks > 0: with room for a neighbour list of so many per entry. */
extern void hnsw_vcache_init_fixed(HnswVecCache *c, int dim, bool codes,
								   int nlinks, int64_t capacity, void *mem);
/* Entries held (a fixed cache's n may pass its capacity). */
extern int64_t hnsw_vcache_count(const HnswVecCache *c);
/* Forget every entry (and give the memory back, unless fixed). */
extern void hnsw_vcache_clear(HnswVecCache *c);
/* Bring key's map entry towards the CPU before a get. */
extern void hnsw_vcache_prefetch(const HnswVecCache *c, uint64_t key);
/*
 * The entry under key (a float vector or a code), or NULL.  Only the map
 * is read: the entry and its word (hnsw_vcache_word) may be prefetched,
 * hnsw_vcache_entry_bytes of them, before they are used.
 */
extern const void *hnsw_vcache_get(const HnswVecCache *c, uint64_t key);
/* The same, with the entry's slot (out), for neighbour lists. */
extern const void *hnsw_vcache_lookup(const HnswVecCache *c, uint64_t key,
									  int32_t *slot);
extern size_t hnsw_vcache_entry_bytes(const HnswVecCache *c);

/*
 * Neighbour lists (caches with nlinks > 0).  hnsw_vcache_links copies the
 * list of an entry into out (nlinks slots) and its fingerprint (of its
 * TIDs, as the search records for the rerank) into *nbr_sum (if not NULL)
 * and returns its length, or -1
 * when it has none valid for tag (one written with tag or a higher one);
 * hnsw_vcache_slot_entry gives a slot's entry and key (prefetch its slot
 * first: the key is at its start).  hnsw_vcache_set_links stores a list
 * for tag (> 0) unless one for tag or higher is there or being written.
 */
extern int	hnsw_vcache_links(const HnswVecCache *c, const void *entry,
							  uint64_t tag, int32_t *out, uint64_t *nbr_sum);

static inline void
hnsw_vcache_prefetch_slot(const HnswVecCache *c, int32_t slot)
{
	hnsw_prefetch(c->slots + (size_t) slot * c->slot_size);
}

static inline const void *
hnsw_vcache_slot_entry(const HnswVecCache *c, int32_t slot, uint64_t *key)
{
	const char *p = c->slots + (size_t) slot * c->slot_size;

	*key = ((const HnswVecLinks *) p)->key;
	return p + c->links_size + sizeof(uint64_t);
}
extern void hnsw_vcache_set_links(HnswVecCache *c, const void *entry,
								  uint64_t tag, const int32_t *slots, int n,
								  uint64_t nbr_sum);
/*
 * The same for an element's one heap TID (as a key, never 0): 0 when none
 * is kept for tag.
 */
extern uint64_t hnsw_vcache_heap(const HnswVecCache *c, const void *entry,
								 uint64_t tag);
extern void hnsw_vcache_set_heap(HnswVecCache *c, const void *entry,
								 uint64_t tag, uint64_t heap);

/* The caller's word of an entry hnsw_vcache_get returned. */
static inline uint64_t
hnsw_vcache_word(const void *entry)
{
	uint64_t	w;

	memcpy(&w, (const char *) entry - sizeof(uint64_t), sizeof(uint64_t));
	return w;
}
/* Add key with a copy (or the code) of vec; false when the budget is spent. */
extern bool hnsw_vcache_put(HnswVecCache *c, uint64_t key, const float *vec,
							uint64_t aux);
extern void hnsw_vcache_query(HnswVecQuery *q, const float *x, int dim,
							  int8_t *codes);
/*
 * hnsw_distance of the query to an entry: exact for float vectors, an
 * approximation for codes (metrics L2, IP and cosine; codes are not made
 * for L1).
 */
extern float hnsw_vcache_distance(const HnswVecCache *c, HnswMetric metric,
								  const HnswVecQuery *q, const void *entry);
/*
 * Whether an entry stands for vec (dim floats): a float vector bit for bit;
 * a code within half a step of every coordinate, with the squared norm
 * and the sum kept to float rounding.
 */
extern bool hnsw_vcache_matches(const HnswVecCache *c, const void *entry,
								const float *vec);
/* A bound on the error of a code's dot product with q (L2: twice that). */
extern float hnsw_vcache_error(const HnswVecCache *c, const HnswVecQuery *q,
							   const void *entry);

/*
 * hnswreach.c: a breadth-first walk over line-pointer slots (block,
 * offset >= 1) in bounded memory: two bits per slot of nblocks x
 * slots_per_block, and a FIFO of at most queue_cap slots to expand (slots
 * reached while it is full wait in the bitmap and are queued when it
 * drains).  Slots past the bitmap count as reached and are never queued.
 */
typedef struct HnswReachWalk
{
	uint8_t    *bits;
	uint32_t	nblocks;
	int			slots_per_block;
	int64_t    *queue;
	int			qcap;
	int			qhead;
	int			qlen;
	int64_t		waiting;		/* flagged, not queued */
	const HnswAllocator *a;
} HnswReachWalk;

extern size_t hnsw_reach_bitmap_bytes(uint32_t nblocks, int slots_per_block);
extern void hnsw_reach_init(HnswReachWalk *w, uint32_t nblocks,
							int slots_per_block, int queue_cap,
							const HnswAllocator *a);
extern void hnsw_reach_free(HnswReachWalk *w);
extern bool hnsw_reach_contains(const HnswReachWalk *w, uint32_t blk,
								uint16_t off);
/* Mark a slot reached and queue it, unless it was reached before. */
extern void hnsw_reach_add(HnswReachWalk *w, uint32_t blk, uint16_t off);
/* The next slot to expand; false when the walk is over. */
extern bool hnsw_reach_next(HnswReachWalk *w, uint32_t *blk, uint16_t *off);

#ifndef HNSW_PURE

/* ======================================================================
 * The access method (PostgreSQL side)
 * ====================================================================== */

#include "postgres.h"

#include "access/amapi.h"
#include "access/generic_xlog.h"
#include "access/reloptions.h"
#include "nodes/execnodes.h"
#include "port/atomics.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "utils/relcache.h"
#include "vector/vector.h"

#define HNSW_MAGIC				0x474E4857	/* "GNNW" */
#define HNSW_FORMAT_VERSION		1
#define HNSW_METAPAGE_BLKNO		0
#define HNSW_PAGE_ID			0xFF91

#define HNSW_HEAPTIDS			10	/* rows sharing one element */
#define HNSW_MAX_LEVEL			16

#define HNSW_DEFAULT_M			16
#define HNSW_MIN_M				2
#define HNSW_MAX_M				100
#define HNSW_DEFAULT_EF_CONSTRUCTION 64
#define HNSW_MIN_EF_CONSTRUCTION 4
#define HNSW_MAX_EF_CONSTRUCTION 1000
#define HNSW_DEFAULT_EF_SEARCH	40
#define HNSW_MIN_EF_SEARCH		1
#define HNSW_MAX_EF_SEARCH		1000

/* Support function 1 of every opclass: returns the HnswMetric. */
#define HNSW_METRIC_PROC		1

/* Heavyweight page lock (on a block number no page has) for inserts. */
#define HNSW_UPDATE_LOCK		0

/* Tuple kinds (first byte of every tuple). */
#define HNSW_ELEMENT_TUPLE		1
#define HNSW_NEIGHBOR_TUPLE		2
#define HNSW_DATA_TUPLE			3

/* Build phases for pg_stat_progress_create_index. */
#define PROGRESS_HNSW_PHASE_LOAD	2
#define PROGRESS_HNSW_PHASE_WRITE	3
#define PROGRESS_HNSW_PHASE_CAGRA_KNN	4
#define PROGRESS_HNSW_PHASE_CAGRA_PRUNE	5
#define PROGRESS_HNSW_PHASE_CAGRA_MERGE	6
#define PROGRESS_HNSW_PHASE_CAGRA_GPU	7
#define PROGRESS_HNSW_PHASE_CAGRA_UPPER	8

typedef struct HnswMetaPageData
{
	uint32		magic;
	uint32		version;
	uint32		dims;
	uint16		m;
	uint16		efConstruction;
	uint16		metric;			/* HnswMetric */
	int16		entryLevel;		/* -1: empty index */
	BlockNumber entryBlkno;
	OffsetNumber entryOffno;
	BlockNumber insertPage;		/* first page worth trying for inserts */
	uint32		generation;		/* bumped when VACUUM frees elements for
								 * reuse: scan caches of an older one are
								 * stale (0 in indexes built before it) */
} HnswMetaPageData;

typedef HnswMetaPageData *HnswMetaPage;

typedef struct HnswPageOpaqueData
{
	BlockNumber nextblkno;		/* reserved (InvalidBlockNumber) */
	uint16		flags;
	uint16		page_id;		/* HNSW_PAGE_ID */
} HnswPageOpaqueData;

typedef HnswPageOpaqueData *HnswPageOpaque;

typedef struct HnswElementTupleData
{
	uint8		type;			/* HNSW_ELEMENT_TUPLE */
	uint8		level;
	uint8		deleted;		/* 1: free for reuse */
	uint8		nheaptids;
	ItemPointerData heaptids[HNSW_HEAPTIDS];
	ItemPointerData neighbortid;
	ItemPointerData datatid;	/* first data tuple, invalid if none */
	uint16		dim;			/* dimensions of the whole vector */
	uint16		ninline;		/* floats stored here */
	float		x[FLEXIBLE_ARRAY_MEMBER];
} HnswElementTupleData;

typedef HnswElementTupleData *HnswElementTuple;

typedef struct HnswDataTupleData
{
	uint8		type;			/* HNSW_DATA_TUPLE */
	uint8		unused;
	uint16		count;			/* floats stored here */
	ItemPointerData next;		/* next data tuple, invalid if last */
	float		x[FLEXIBLE_ARRAY_MEMBER];
} HnswDataTupleData;

typedef HnswDataTupleData *HnswDataTuple;

typedef struct HnswNeighborTupleData
{
	uint8		type;			/* HNSW_NEIGHBOR_TUPLE */
	uint8		level;			/* levels 0..level have slots */
	uint16		count;			/* slots: 2m + level * m */
	ItemPointerData tids[FLEXIBLE_ARRAY_MEMBER];
} HnswNeighborTupleData;

typedef HnswNeighborTupleData *HnswNeighborTuple;

/* Largest item a page takes (MAXALIGNed, one line pointer). */
#define HNSW_MAX_ITEM_SIZE \
	MAXALIGN_DOWN(BLCKSZ - MAXALIGN(SizeOfPageHeaderData) - \
				  MAXALIGN(sizeof(HnswPageOpaqueData)) - sizeof(ItemIdData))
#define HNSW_ELEMENT_INLINE_MAX \
	((int) ((HNSW_MAX_ITEM_SIZE - offsetof(HnswElementTupleData, x)) / sizeof(float)))
#define HNSW_DATA_MAX \
	((int) ((HNSW_MAX_ITEM_SIZE - offsetof(HnswDataTupleData, x)) / sizeof(float)))

#define HNSW_ELEMENT_TUPLE_SIZE(ninline) \
	MAXALIGN(offsetof(HnswElementTupleData, x) + sizeof(float) * (ninline))
#define HNSW_DATA_TUPLE_SIZE(count) \
	MAXALIGN(offsetof(HnswDataTupleData, x) + sizeof(float) * (count))
#define HNSW_NEIGHBOR_TUPLE_SIZE(m, level) \
	MAXALIGN(offsetof(HnswNeighborTupleData, tids) + \
			 sizeof(ItemPointerData) * (2 * (m) + (level) * (m)))

#define HnswPageGetOpaque(page) ((HnswPageOpaque) PageGetSpecialPointer(page))
#define HnswPageGetMeta(page)	((HnswMetaPage) PageGetContents(page))

/* How a vector of dim floats is split: inline floats, then data tuples. */
static inline int
hnsw_inline_floats(int dim)
{
	return dim <= HNSW_ELEMENT_INLINE_MAX ? dim : HNSW_ELEMENT_INLINE_MAX;
}

static inline int
hnsw_data_tuples(int dim)
{
	int			rest = dim - hnsw_inline_floats(dim);

	return (rest + HNSW_DATA_MAX - 1) / HNSW_DATA_MAX;
}

/* Highest level whose neighbour tuple fits in a page, for this m. */
static inline int
hnsw_level_cap(int m)
{
	int			cap = HNSW_MAX_LEVEL;

	while (cap > 0 && HNSW_NEIGHBOR_TUPLE_SIZE(m, cap) > HNSW_MAX_ITEM_SIZE)
		cap--;
	return cap;
}

/* How CREATE INDEX makes the graph (reloption build_method). */
typedef enum HnswBuildMethod
{
	HNSW_BUILD_HNSW,			/* HNSW insertion, serial or parallel */
	HNSW_BUILD_CAGRA			/* level 0 by CAGRA (src/cagra/cagra_index.c) */
} HnswBuildMethod;

/* Where a CAGRA build runs (reloption device). */
typedef enum HnswDevice
{
	HNSW_DEVICE_AUTO,			/* the GPU when there is one, else the CPU */
	HNSW_DEVICE_CPU,
	HNSW_DEVICE_GPU
} HnswDevice;

/*
 * Reloptions (varlena).  String options are offsets from the start of the
 * struct, 0 when not given; the CAGRA degrees are 0 when not given (their
 * defaults derive from m: graph_degree 2m, intermediate_graph_degree 3m).
 */
typedef struct HnswOptions
{
	int32		vl_len_;
	int			m;
	int			efConstruction;
	int			buildMethodOffset;
	int			deviceOffset;
	int			graphDegree;
	int			intermediateDegree;
} HnswOptions;

/* The CAGRA options of an index, with the defaults filled in. */
typedef struct HnswCagraOptions
{
	HnswBuildMethod method;
	HnswDevice	device;
	int			graphDegree;
	int			intermediateDegree;
} HnswCagraOptions;

/* Settings. */
typedef enum HnswIterativeScan
{
	HNSW_ITERATIVE_SCAN_OFF,
	HNSW_ITERATIVE_SCAN_RELAXED,
	HNSW_ITERATIVE_SCAN_STRICT
} HnswIterativeScan;

extern int	hnsw_ef_search;
extern int	hnsw_iterative_scan;
extern int	hnsw_max_scan_tuples;
extern int	hnsw_scan_cache_kb;

/* An element as the on-disk searches see it. */
typedef struct HnswElement
{
	ItemPointerData tid;		/* the element tuple */
	ItemPointerData neighbortid;
	uint8		level;
	bool		deleted;
	uint8		nheaptids;
	uint64		nbr_sum;		/* hnsw_neighbors_fingerprint of its level-0
								 * list when the search read it, if it
								 * records them (nbr_sums); else 0 */
	ItemPointerData heaptids[HNSW_HEAPTIDS];
	float		dist;			/* to the query of the search */
	float	   *vec;			/* loaded only when asked */
	const void *centry;			/* its scan-cache entry, if met through it */
	XLogRecPtr	lsn;			/* of the element's page when it was read */
	bool		verified;		/* read from its page; false: only tid,
								 * neighbortid and dist are known (from the
								 * scan cache) */
} HnswElement;

/*
 * Search state for searches over the pages: the elements met (heap ids
 * index into elems), a visited set of element TIDs and the query.
 */
typedef struct HnswSearch
{
	Relation	index;
	HnswMetric	metric;
	int			dim;
	int			m;
	const float *query;
	HnswElement *elems;
	int			nelems;
	int			capelems;
	HnswKeySet	visited;
	HnswAllocator alloc;		/* the context of hnsw_search_init */
	bool		load_vectors;	/* keep each element's vector */
	bool		nbr_sums;		/* record the elements' nbr_sum (a reranked
								 * scan's, for the rerank plug-in) */
	int64		ntuples_read;	/* elements met (max_scan_tuples) */
	HnswVecCache *cache;		/* scans: vectors by element, or NULL */
	pg_atomic_uint64 *list_changes;	/* its shared cache's change counts
									 * (hnsw_list_tag), or NULL: no lists */
	uint32	   *seen;			/* with lists: per cache slot, seen_epoch
								 * when the level-0 search met it there */
	uint32		seen_epoch;
	HnswVecQuery cquery;		/* the query, as cached distances need it */
	float	   *cachebuf;		/* dim floats, for filling the cache */
} HnswSearch;

/*
 * A search at one level over the pages, in rounds (hnswutils.c): plain
 * searches are one round, iterative scans resume it round after round.
 */
typedef struct HnswLevelSearch
{
	HnswSearch *s;
	int			level;
	int			ef;
	bool		resumable;		/* keep what a round leaves for the next */
	HnswHeap	cand;			/* min-heap: met, neighbours not read yet */
	HnswHeap	res;			/* max-heap: the current round's ef nearest */
	int			extra;			/* the next nearest a round also returns */
	HnswHeap	spill;			/* max-heap: those */
	HnswHeap	left;			/* min-heap: met, returned by no round yet */
	ItemPointerData *nbrs;		/* scratch, 2m each */
	int32	   *slots;
	ItemPointerData *todo;
	Buffer	   *bufs;
} HnswLevelSearch;

/* A result handed to the rerank plug-in (one per element). */
typedef struct HnswCandidate
{
	ItemPointerData tid;		/* element tuple */
	float		distance;		/* graph distance (see hnsw_distance) */
	uint8		nheaptids;
	ItemPointerData heaptids[HNSW_HEAPTIDS];
	XLogRecPtr	lsn;			/* of the element's page when the search read
								 * it */
	uint64		nbr_sum;		/* hnsw_neighbors_fingerprint of its level-0
								 * list when the search read it, or 0 (for
								 * the rerank plug-in) */
} HnswCandidate;

/* Build state (also what the CAGRA build drives). */
typedef struct HnswBuildState
{
	Relation	heap;
	Relation	index;
	IndexInfo  *indexInfo;
	ForkNumber	forkNum;

	int			dim;
	int			m;
	int			efConstruction;
	HnswMetric	metric;

	double		reltuples;		/* rows seen */
	double		indtuples;		/* rows indexed */

	HnswGraph  *graph;
	ItemPointerData *heaptids;	/* node i: heaptids[i * HNSW_HEAPTIDS ..] */
	uint8	   *nheaptids;
	int32		captids;
	size_t		memLimit;
	bool		onDisk;			/* graph flushed; inserting on pages */
	bool		unlinked;		/* collecting rows without linking them */
	size_t		unlinkedRowBytes;	/* what the CAGRA stages will need per
									 * row collected unlinked */
	int32	   *unlinkedSlots;	/* rows collected unlinked: node ids by
								 * vector hash, -1 where empty */
	uint32		unlinkedMask;	/* slots - 1, a power of two; 0: none yet */
	bool		pagesWritten;	/* the parallel build wrote the pages */
	int			parallelWorkers;	/* workers asked for */

	MemoryContext graphCtx;
	MemoryContext tmpCtx;
	HnswAllocator alloc;
} HnswBuildState;

/* hnsw.c */
extern void hnsw_init(void);
extern HnswMetric hnsw_get_metric(Relation index);
extern void hnsw_get_options(Relation index, int *m, int *efConstruction);
extern void hnsw_get_cagra_options(Relation index, HnswCagraOptions *opts);

/*
 * One page change: WAL-logged with GenericXLog, or (during a build, whose
 * pages are logged at the end) just marked dirty.
 */
typedef struct HnswEdit
{
	Relation	index;
	GenericXLogState *state;
	Buffer		buf;
	Page		page;
} HnswEdit;

/* hnswutils.c */
/* An allocator that pallocs in the memory context current at this call. */
extern void hnsw_bind_allocator(HnswAllocator *a);
extern Page hnsw_edit_start(HnswEdit *ed, Relation index, Buffer buf,
							bool building, bool fullImage);
extern void hnsw_edit_finish(HnswEdit *ed);
extern void hnsw_set_insert_page(Relation index, BlockNumber blkno,
								 bool onlyLower, bool building);
extern HnswElementTuple hnsw_get_element(Page page, OffsetNumber off);
extern HnswNeighborTuple hnsw_get_neighbors(Page page, OffsetNumber off);
extern Buffer hnsw_new_buffer(Relation index, ForkNumber forkNum);
extern void hnsw_init_page(Page page);
extern void hnsw_read_meta(Relation index, HnswMetaPageData *meta);
extern void hnsw_fill_meta(Page page, int dims, int m, int efConstruction,
						   HnswMetric metric);
extern bool hnsw_form_vector(Datum value, HnswMetric metric, int dims,
							 float *out);
extern void hnsw_normalize(float *x, int dim);
extern int	hnsw_search_add(HnswSearch *s, ItemPointer tid);
extern void hnsw_search_verify(HnswSearch *s, HnswElement *e);
extern void hnsw_search_init(HnswSearch *s, Relation index, HnswMetric metric,
							 int dim, int m, const float *query);
extern void hnsw_search_use_cache(HnswSearch *s, HnswVecCache *cache);
extern void hnsw_search_reset(HnswSearch *s);
extern void hnsw_load_element(HnswSearch *s, HnswElement *e);
extern void hnsw_load_vector(Relation index, ItemPointer tid, float *out);
extern int	hnsw_load_neighbors(Relation index, ItemPointer neighbortid,
								int m, int level, ItemPointerData *out);
extern uint64 hnsw_neighbors_fingerprint(const ItemPointerData *tids, int n);
extern int	hnsw_search_layer(HnswSearch *s, int *entries, int nentries,
							  int ef, int level, HnswHeapItem *out);
extern void hnsw_level_search_begin(HnswLevelSearch *ls, HnswSearch *s,
									int *entries, int nentries, int ef,
									int extra, int level, bool resumable);
extern int	hnsw_level_search_round(HnswLevelSearch *ls, int64 maxRead,
									HnswHeapItem *out);
extern void hnsw_level_search_end(HnswLevelSearch *ls);
extern int	hnsw_select_heuristic(HnswMetric metric, int dim, float **vecs,
								  const float *dists, int n, int max,
								  bool *keep);
extern int	hnsw_search_to_level(HnswSearch *s, HnswMetaPageData *meta,
								 int level, int *ep);
extern char *hnsw_meta_problem(Relation index, const HnswMetaPageData *meta);
static inline uint64
hnsw_tid_key(ItemPointer tid)
{
	return ((uint64) ItemPointerGetBlockNumberNoCheck(tid) << 16) |
		ItemPointerGetOffsetNumberNoCheck(tid);
}

/* The TID of a key hnsw_tid_key made. */
static inline void
hnsw_key_tid(uint64 key, ItemPointer tid)
{
	ItemPointerSet(tid, (BlockNumber) (key >> 16), (OffsetNumber) (key & 0xFFFF));
}

/*
 * hnswread.c: reading an index for learners (the GNN's view of an index,
 * training), one element at a time, so that nothing copies the whole
 * index and the page format stays inside src/hnsw.  Elements are named by
 * the TIDs of their element tuples; an element's level-0 neighbour list
 * is found through the location hnsw_read_element gives (its neighbour
 * tuple), and hnsw_read_neighbors_lsn tells whether the list may have
 * changed since it was read: the LSN of that location's page moves with
 * every change to the list.
 */
typedef struct HnswReader
{
	Relation	index;
	HnswMetric	metric;
	int			dim;
	int			m;
	HnswMetaPageData meta;		/* the entry point searches start from */
} HnswReader;

/* meta: the index's metapage as the caller just read it, or NULL to read it */
extern void hnsw_reader_init(HnswReader *r, Relation index,
							 const HnswMetaPageData *meta);

/*
 * The vector of the element at tid (vec: dim floats, as the index stores
 * it: normalised for cosine) and where its neighbour list is; false, with
 * nothing written, when the element is deleted or holds no heap row.
 */
extern bool hnsw_read_element(const HnswReader *r, ItemPointer tid,
							  float *vec, ItemPointer neighbors);

/*
 * The level-0 neighbours (element TIDs, up to 2m) of the list at
 * neighbors, and in *lsn the LSN of its page when read; returns how many.
 */
extern int	hnsw_read_neighbors(const HnswReader *r, ItemPointer neighbors,
								ItemPointerData *tids, XLogRecPtr *lsn);
extern XLogRecPtr hnsw_read_neighbors_lsn(Relation index,
										  ItemPointer neighbors);

/*
 * The graph search of a scan (greedy descent, then SEARCH-LAYER at level 0
 * with this ef): calls found(arg, ...) for each of up to ef live elements,
 * nearest first, with its vector and the location of its neighbour list
 * (valid during the call); returns how many.
 */
typedef void (*HnswReadFound) (void *arg, const HnswCandidate *cand,
							   const float *vec, ItemPointer neighbors);
extern int	hnsw_read_search(const HnswReader *r, const float *query, int ef,
							 HnswReadFound found, void *arg);

/*
 * A live element drawn with the random number r from the first nblocks
 * blocks, or the live element holding exactly vec (dim floats, as the
 * index stores them); false when there is none.
 */
extern bool hnsw_random_element(Relation index, BlockNumber nblocks,
								uint64 r, ItemPointer tid);
extern bool hnsw_find_element(Relation index, const float *vec, int dim,
							  ItemPointer tid);

/*
 * hnswbuild.c.  An HNSW build (ambuild) is
 *		hnsw_build_init(&bs, heap, index, indexInfo, MAIN_FORKNUM);
 *		hnsw_build_collect(&bs, true);		-- scan the table, insert each row
 *		return hnsw_build_finish(&bs);		-- write pages, WAL, free
 */
extern IndexBuildResult *hnswbuild(Relation heap, Relation index,
								   IndexInfo *indexInfo);
extern void hnswbuildempty(Relation index);
extern void hnsw_build_init(HnswBuildState *bs, Relation heap, Relation index,
							IndexInfo *indexInfo, ForkNumber forkNum);
extern void hnsw_build_collect(HnswBuildState *bs, bool link);
extern void hnsw_build_add(HnswBuildState *bs, const float *vec,
						   ItemPointer heaptid);
extern void hnsw_build_write(HnswBuildState *bs);
extern IndexBuildResult *hnsw_build_finish(HnswBuildState *bs);

/* hnswparallel.c: a parallel build; false if it did not run */
extern bool hnsw_build_parallel(HnswBuildState *bs);

/*
 * Level-0 providers.  HNSW insertion links each row as the table scan
 * collects it (hnsw_build_collect(&bs, true)).  A provider that needs every
 * row first (CAGRA) is called by hnswbuild, never the other way round:
 *
 *		bs.unlinkedRowBytes = provider->prepare(&bs, &state);
 *		hnsw_build_collect(&bs, false);		-- rows only: no graph edges
 *		provider->link(&bs, state);			-- if any row was collected
 *		return hnsw_build_finish(&bs);
 *
 * prepare checks what the provider needs before the scan (a GPU, say),
 * and returns the bytes per row it will need besides the build graph,
 * which collection counts against maintenance_work_mem (unlinked rows do
 * not spill to disk).  link makes every level of bs.graph from the rows,
 * bs.graph->nodes[i].vec for i < bs.graph->n (dim bs.dim, normalised for
 * cosine; hnsw_distance() is the metric), with the pure graph functions
 * (hnsw_graph_link_upper, hnsw_graph_set_level0); hnsw_build_finish then
 * makes every node reachable from the entry point (hnsw_graph_connect)
 * and writes the pages through the same page writer as an HNSW build.
 */
typedef struct HnswLevel0Provider
{
	size_t		(*prepare) (HnswBuildState *bs, void **state);
	void		(*link) (HnswBuildState *bs, void *state);
} HnswLevel0Provider;

extern void hnsw_build_add_unlinked(HnswBuildState *bs, const float *vec,
									ItemPointer heaptid);

/* src/cagra/cagra_index.c: build_method = 'cagra' */
extern const HnswLevel0Provider cagra_level0_provider;

/* hnswinsert.c */
extern bool hnswinsert(Relation index, Datum *values, bool *isnull,
					   ItemPointer heap_tid, Relation heap,
					   IndexUniqueCheck checkUnique,
#if PG_VERSION_NUM >= 140000
					   bool indexUnchanged,
#endif
					   IndexInfo *indexInfo);
extern void hnsw_insert_vector(Relation index, const float *vec,
							   ItemPointer heaptid, bool building);
extern bool hnsw_update_connection(HnswSearch *s, HnswElement *e,
								   ItemPointer newtid, const float *newvec,
								   int lc, bool building, bool force,
								   ItemPointer adopter);

/* hnswscan.c */
extern IndexScanDesc hnswbeginscan(Relation index, int nkeys, int norderbys);
extern void hnswrescan(IndexScanDesc scan, ScanKey keys, int nkeys,
					   ScanKey orderbys, int norderbys);
extern bool hnswgettuple(IndexScanDesc scan, ScanDirection dir);
extern void hnswendscan(IndexScanDesc scan);
extern const HnswVecCache *hnsw_scan_cache_peek(Relation index,
												uint32 *generation);

/* What gnnvec_scan_cache shows of one cache. */
typedef struct HnswScanCacheInfo
{
	Oid			indexoid;
	uint32		generation;
	int64		elements;
	int64		bytes;
	bool		codes;
	bool		shared;
} HnswScanCacheInfo;

/*
 * Which index a cache is for: its OID and its file, which a rebuild
 * (REINDEX, TRUNCATE) changes (hnswutils.c).
 */
typedef struct HnswIndexId
{
	Oid			indexoid;
#if PG_VERSION_NUM >= 160000
	RelFileLocator file;
#else
	RelFileNode file;
#endif
} HnswIndexId;

extern void hnsw_index_id(Relation index, HnswIndexId *id);
extern bool hnsw_index_id_is(const HnswIndexId *id, Relation index);

/* hnswshared.c: the scan caches in shared memory */
#define HNSW_SHARED_CACHES		8

/* A scan's hold on a shared cache (hnsw_shared_cache_get). */
#define HNSW_SHARED_NONE	(-1)
#define HNSW_SHARED_BUSY	(-2)
typedef struct HnswSharedCacheRef
{
	int			id;				/* or HNSW_SHARED_NONE / _BUSY */
	uint64		incarnation;
	uint32		generation;
} HnswSharedCacheRef;

extern int	hnsw_shared_cache_kb;
extern void hnsw_shared_cache_init(void);
extern HnswVecCache *hnsw_shared_cache_get(Relation index,
										   const HnswMetaPageData *meta,
										   bool for_scan,
										   HnswSharedCacheRef *ref);
extern bool hnsw_shared_cache_enter(const HnswSharedCacheRef *ref);
extern void hnsw_shared_cache_leave(const HnswSharedCacheRef *ref);
extern pg_atomic_uint64 *hnsw_shared_cache_changes(const HnswSharedCacheRef *ref);
extern void hnsw_shared_cache_modified(Relation index, BlockNumber blkno);

/*
 * The changes to an index's pages are counted per stripe of blocks (block
 * number modulo HNSW_LIST_STRIPES), so that a change stales the lists and
 * heap TIDs kept from the pages of its stripe only.  hnsw_list_tag: the tag
 * under which what is read from block blkno next may be kept, and the
 * lowest tag a kept record of that block must have to be used now.  Read
 * before the page (hnswshared.c).
 */
#define HNSW_LIST_STRIPES 1024

static inline uint64
hnsw_list_tag(pg_atomic_uint64 *changes, BlockNumber blkno)
{
	uint64		tag = pg_atomic_read_u64(&changes[blkno & (HNSW_LIST_STRIPES - 1)]) + 1;

	pg_read_barrier();
	return tag;
}
extern int	hnsw_shared_cache_list(HnswScanCacheInfo *out, int max);

/*
 * Scan plug-in points.
 *
 * hnsw_scan_adapt_query: called once per scan with the query vector as the
 * index sees it (normalised for cosine), before the graph search; may
 * rewrite it in place (the index's MicroLoRA HnswScan adapter when
 * gnnvec.adapt is on; the result is unit length again for cosine).
 *
 * hnsw_scan_rerank: called with the metapage the scan read and the
 * candidates of each search round, sorted by graph distance, whose pages
 * may not have been read yet (lsn invalid, heap TIDs not filled in;
 * their elements may since have been
 * deleted); returns true when it wrote a score for each to scores (the
 * GNN reranker's: the round is returned by descending score, ties in
 * distance order, see HnswRank), false to keep distance order.  The
 * executor still sees distances through the ORDER BY operator.
 *
 * hnsw_scan_ef: the ef of a scan's first round (gnnvec.ef_search, or more
 * when reranking wants more candidates).
 *
 * hnsw_scan_reranks: whether hnsw_scan_rerank is to see this scan's rounds
 * (a scan reads its candidates' pages lazily otherwise).
 *
 * hnsw_scan_adapt_query is defined in src/lora/lora_index.c, the others in
 * src/gnn/gnn_rerank.c.
 */
extern void hnsw_scan_adapt_query(Relation index, HnswMetric metric,
								  float *query, int dim);
extern int	hnsw_scan_ef(Relation index);
extern bool hnsw_scan_reranks(Relation index);
extern bool hnsw_scan_rerank(Relation index, const HnswMetaPageData *meta,
							 const float *query, const HnswCandidate *cands,
							 int ncands, double *scores);

/* hnswvacuum.c */
extern IndexBulkDeleteResult *hnswbulkdelete(IndexVacuumInfo *info,
											 IndexBulkDeleteResult *stats,
											 IndexBulkDeleteCallback callback,
											 void *callback_state);
extern IndexBulkDeleteResult *hnswvacuumcleanup(IndexVacuumInfo *info,
												IndexBulkDeleteResult *stats);

#endif							/* !HNSW_PURE */

#endif							/* GNNVEC_HNSW_H */
