/*
 * hnswscan.c
 *		gnnhnsw: index scans for ORDER BY column <op> query LIMIT k.
 *
 * The first call of amgettuple searches the graph (Malkov & Yashunin 2018,
 * Alg. 5: greedy descent through the upper levels, then SEARCH-LAYER at
 * level 0 with ef = gnnvec.ef_search) and returns the heap rows of the
 * candidates in order of distance.  With gnnvec.iterative_scan on, when the
 * executor wants more rows (a WHERE clause filtered them away) the level-0
 * search resumes where it stopped (hnsw_level_search_round): each round
 * returns the next ef nearest elements it finds, none returned before;
 * strict_order drops those closer than the last row returned, relaxed_order
 * does not.  Once the scan has read gnnvec.max_scan_tuples elements it reads
 * no more neighbours, returns what it has met and ends.
 *
 * The query passes through hnsw_scan_adapt_query before the search and
 * each round's candidates through hnsw_scan_rerank after it (hnsw.h).
 *
 * The scan cache.  Most of a search's time went to reading the elements it
 * visits, each a pin, lock, copy and unlock in the buffer manager, though
 * it needs only their vectors and neighbour tuples.  Both stay the same
 * while an element lives; only VACUUM ends a life (an insert may then take
 * the element over).  So each backend keeps, per index, the vectors (with
 * the neighbour tuple TID) of the live elements its scans have read, up to
 * gnnvec.scan_cache_size over all indexes (hnswcache.c), and a search
 * meets a cached element without its page.  The elements a round returns
 * are read from their pages all the same (heap TIDs change with every
 * insert of an equal vector and every VACUUM), which also gives their
 * exact distances.  VACUUM bumps the metapage's generation when it frees
 * elements, under WAL, so standbys agree; a scan whose cache was filled
 * under another generation empties it first.  An insert that takes over an
 * element freed by a VACUUM still running can leave a scan of the old
 * generation with the old vector: that misguides the search for that
 * scan, never the rows returned or their order, which come from the pages.
 * With gnnvec preloaded, an index's cache is in shared memory, one for
 * every backend (hnswshared.c); the backend's own is then the fallback.
 */
#include "postgres.h"

#include "access/relscan.h"
#include "funcapi.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/snapmgr.h"
#include "utils/memutils.h"

/*
 * Candidates a scan with 8-bit codes orders by exact distance beyond its
 * ef nearest by code (hnsw_level_search_begin).  A code's error displaces
 * a near neighbour by a few places, more where many neighbours lie at
 * nearly the same distance.  Recall@10 at ef_search 10 with 0 / 1 / 2 / 4
 * / 8 more, and reading every vector from its page: Fashion-MNIST 0.9589 /
 * 0.9642 / 0.9647 / 0.9647 / - / 0.9643; 1M x 128 in clusters 0.8310 /
 * 0.8465 / 0.8538 / 0.8571 / 0.8586 / 0.8588 (CPU +18% at ef 10, none at
 * ef 20, where recall did not move).
 */
#define HNSW_CODES_EXTRA	8

/* One index's cache in this backend. */
typedef struct ScanCache
{
	HnswIndexId id;
	uint32		generation;
	HnswVecCache vc;
	struct ScanCache *next;
} ScanCache;

/* The caches of this backend, most recently used first. */
#define HNSW_SCAN_CACHES	4
static MemoryContext scanCacheCtx = NULL;
static HnswAllocator scanCacheAlloc;
static ScanCache *scanCaches = NULL;
static size_t scanCacheUsed = 0;

typedef struct HnswScanOpaqueData
{
	MemoryContext ctx;			/* reset at every rescan */
	bool		first;
	HnswMetaPageData meta;
	HnswMetric	metric;
	float	   *query;
	HnswSearch	search;
	HnswSharedCacheRef shared;	/* search.cache is a shared one */
	bool		cacheCodes;		/* search.cache holds 8-bit codes */
	bool		reranks;		/* the rerank plug-in sees the rounds */
	HnswIterativeScan iterative;	/* gnnvec.iterative_scan when it began */
	HnswLevelSearch level0;		/* valid while !done */
	HnswHeapItem *found;		/* room for one round (ef) */
	uint32	   *seen;			/* search.seen, kept across rescans */
	int32		seencap;
	uint32		seenepoch;

	HnswCandidate *cands;		/* current round */
	int		   *candElems;		/* their indexes into search.elems */
	int			ncands;
	int			pos;
	int			heappos;
	bool		reranked;		/* cands in the rerank plug-in's order */
	int			placed;			/* cands[0..placed-1] are in that order; the
								 * rest are placed as pos reaches them */
	HnswRank	rank;			/* the order still to be placed */
	char	   *rankSpace;		/* rank's tree, then rankAt and rankOf */
	int		   *rankAt;			/* position in distance order -> in cands */
	int		   *rankOf;			/* position in cands -> in distance order */

	float		lastDist;		/* distance of the last row returned */
	bool		haveLast;
	bool		done;			/* no round comes after this one */
} HnswScanOpaqueData;

typedef HnswScanOpaqueData *HnswScanOpaque;

/* This backend's cache for the index, if it has one (no side effects). */
const HnswVecCache *
hnsw_scan_cache_peek(Relation index, uint32 *generation)
{
	for (ScanCache *sc = scanCaches; sc != NULL; sc = sc->next)
		if (hnsw_index_id_is(&sc->id, index))
		{
			*generation = sc->generation;
			return &sc->vc;
		}
	return NULL;
}

PG_FUNCTION_INFO_V1(gnnvec_scan_cache);

/*
 * The scan caches this backend may use: its own, then the shared ones of
 * this database's indexes (index, generation, elements, bytes, codes,
 * shared).
 */
Datum
gnnvec_scan_cache(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HnswScanCacheInfo info[HNSW_SCAN_CACHES + HNSW_SHARED_CACHES];
	int			n = 0;

	InitMaterializedSRF(fcinfo, 0);
	for (ScanCache *sc = scanCaches; sc != NULL; sc = sc->next, n++)
	{
		info[n].indexoid = sc->id.indexoid;
		info[n].generation = sc->generation;
		info[n].elements = hnsw_vcache_count(&sc->vc);
		info[n].bytes = (int64) sc->vc.bytes;
		info[n].codes = sc->vc.codes;
		info[n].shared = false;
	}
	n += hnsw_shared_cache_list(info + n, lengthof(info) - n);
	/*
	 * An installation not updated to 0.1.3 has no shared column: the
	 * tuplestore takes as many values as its descriptor has.
	 */
	for (int i = 0; i < n; i++)
	{
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		values[0] = ObjectIdGetDatum(info[i].indexoid);
		values[1] = Int64GetDatum(info[i].generation);
		values[2] = Int64GetDatum(info[i].elements);
		values[3] = Int64GetDatum(info[i].bytes);
		values[4] = BoolGetDatum(info[i].codes);
		values[5] = BoolGetDatum(info[i].shared);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * The seen marks of a search that walks a cache's neighbour lists: one
 * word per slot of the cache, kept by the scan across rescans (a lateral
 * join rescans once per outer row) and made new for each by a new epoch.
 */
static void
scan_seen_marks(HnswScanOpaque so)
{
	int32		cap = so->search.cache->capacity;

	if (so->seencap < cap)
	{
		if (so->seen)
			pfree(so->seen);
		so->seen = MemoryContextAllocExtended(GetMemoryChunkContext(so),
											  sizeof(uint32) * cap,
											  MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
		so->seencap = cap;
		so->seenepoch = 0;
	}
	if (++so->seenepoch == 0)
	{
		memset(so->seen, 0, sizeof(uint32) * so->seencap);
		so->seenepoch = 1;
	}
	so->search.seen = so->seen;
	so->search.seen_epoch = so->seenepoch;
}

static void
drop_scan_cache(ScanCache *sc)
{
	hnsw_vcache_clear(&sc->vc);
	pfree(sc);
}

/*
 * Whether the index's cache is to hold 8-bit codes: when the index is
 * larger than the budget, its float vectors could not all be held, and
 * codes hold four times as many (their distances are checked against the
 * page when a candidate is returned, see candidate_ready).  L1 distances
 * do not decompose into the dot product the codes are read with.
 */
static bool
scan_cache_codes(Relation index, const HnswMetaPageData *meta, size_t limit)
{
	return meta->metric != HNSW_METRIC_L1 &&
		(uint64) RelationGetNumberOfBlocks(index) * BLCKSZ > limit;
}

/*
 * The scan's cache for the index, valid for the generation in meta: the
 * shared one if the index has one (so->shared), else this backend's; NULL
 * when gnnvec.scan_cache_size is 0.  Whether the backend's holds codes is
 * decided when it starts empty (after each generation change too).
 */
static HnswVecCache *
get_scan_cache(Relation index, HnswScanOpaque so)
{
	const HnswMetaPageData *meta = &so->meta;
	size_t		limit = (size_t) hnsw_scan_cache_kb * 1024;
	HnswVecCache *shared;
	ScanCache **link;
	ScanCache  *sc;
	int			n = 0;

	if (scanCacheCtx == NULL)
	{
		MemoryContext old;

		scanCacheCtx = AllocSetContextCreate(TopMemoryContext, "gnnhnsw scan cache",
											 ALLOCSET_DEFAULT_SIZES);
		old = MemoryContextSwitchTo(scanCacheCtx);
		hnsw_bind_allocator(&scanCacheAlloc);
		MemoryContextSwitchTo(old);
	}
	/* a smaller budget than the caches hold: start over */
	while (scanCacheUsed > limit && scanCaches != NULL)
	{
		sc = scanCaches;
		scanCaches = sc->next;
		drop_scan_cache(sc);
	}
	if (limit == 0)
		return NULL;
	if ((shared = hnsw_shared_cache_get(index, meta, true, &so->shared)) != NULL)
		return shared;
	if (so->shared.id == HNSW_SHARED_BUSY)
		return NULL;
	for (link = &scanCaches; (sc = *link) != NULL; link = &sc->next, n++)
	{
		if (hnsw_index_id_is(&sc->id, index))
			break;
	}
	if (sc != NULL)
		*link = sc->next;		/* to the front, below */
	else
	{
		if (n >= HNSW_SCAN_CACHES)
		{
			/* drop the least recently used */
			for (link = &scanCaches; (*link)->next != NULL; link = &(*link)->next)
				;
			drop_scan_cache(*link);
			*link = NULL;
		}
		sc = MemoryContextAllocZero(scanCacheCtx, sizeof(ScanCache));
		hnsw_index_id(index, &sc->id);
		sc->generation = meta->generation;
		/* floats or codes: chosen below, while it is empty */
		hnsw_vcache_init(&sc->vc, meta->dims, false, &scanCacheUsed, limit,
						 &scanCacheAlloc);
	}
	sc->next = scanCaches;
	scanCaches = sc;
	sc->vc.limit = limit;
	if (sc->generation != meta->generation)
	{
		hnsw_vcache_clear(&sc->vc);
		sc->generation = meta->generation;
	}
	if (hnsw_vcache_count(&sc->vc) == 0)
		sc->vc.codes = scan_cache_codes(index, meta, limit);
	return &sc->vc;
}

IndexScanDesc
hnswbeginscan(Relation index, int nkeys, int norderbys)
{
	IndexScanDesc scan = RelationGetIndexScan(index, nkeys, norderbys);
	HnswScanOpaque so = palloc0(sizeof(HnswScanOpaqueData));

	so->ctx = AllocSetContextCreate(CurrentMemoryContext, "gnnhnsw scan",
									ALLOCSET_DEFAULT_SIZES);
	so->first = true;
	scan->opaque = so;
	return scan;
}

void
hnswrescan(IndexScanDesc scan, ScanKey keys, int nkeys, ScanKey orderbys,
		   int norderbys)
{
	HnswScanOpaque so = (HnswScanOpaque) scan->opaque;

	if (keys && scan->numberOfKeys > 0)
		memmove(scan->keyData, keys, scan->numberOfKeys * sizeof(ScanKeyData));
	if (orderbys && scan->numberOfOrderBys > 0)
		memmove(scan->orderByData, orderbys,
				scan->numberOfOrderBys * sizeof(ScanKeyData));
	MemoryContextReset(so->ctx);
	so->first = true;
	so->cands = NULL;
	so->ncands = 0;
	so->pos = 0;
	so->heappos = 0;
	so->reranked = false;
	so->placed = 0;
	so->rankSpace = NULL;
	so->done = false;
}

/*
 * Hold the scan's shared cache, if it has one, for a stretch of graph
 * search; a scan whose cache was cleared or given away since goes on
 * without one.  Rows go back to the executor only after scan_cache_leave.
 */
static void
scan_cache_enter(HnswScanOpaque so)
{
	so->search.list_changes = NULL;
	if (so->shared.id < 0)
		return;
	if (hnsw_shared_cache_enter(&so->shared))
		so->search.list_changes = hnsw_shared_cache_changes(&so->shared);
	else
	{
		so->shared.id = HNSW_SHARED_NONE;
		so->search.cache = NULL;
	}
}

static void
scan_cache_leave(HnswScanOpaque so)
{
	if (so->shared.id >= 0)
		hnsw_shared_cache_leave(&so->shared);
}

/*
 * Whether the scan's shared cache keeps its candidates' heap TIDs: a scan
 * over float vectors (exact distances, so a candidate needs its page only
 * for its rows) with neighbour lists, whose tag also serves the heap TIDs
 * (hnswshared.c: every change to an element's heap TIDs or flags is a
 * change to a page).  Reranked scans too: the plug-in orders candidates by
 * their distances and the model, not by anything on their pages.
 */
static bool
rows_kept(HnswScanOpaque so)
{
	return so->search.list_changes != NULL && !so->cacheCodes;
}

/*
 * Under the shared cache's lock: the candidates whose one heap TID the
 * cache keeps for this scan's tag need not be read from their pages.
 */
static void
known_rows(HnswScanOpaque so, int nf)
{
	HnswSearch *s = &so->search;

	if (!rows_kept(so))
		return;
	for (int i = 0; i < nf; i++)
	{
		HnswElement *e = &s->elems[so->found[i].id];
		uint64		heap;

		if (e->verified || e->centry == NULL ||
			(heap = hnsw_vcache_heap(s->cache, e->centry,
									 hnsw_list_tag(s->list_changes,
												   ItemPointerGetBlockNumber(&e->tid)))) == 0)
			continue;
		hnsw_key_tid(heap, &e->heaptids[0]);
		e->nheaptids = 1;
		e->deleted = false;
		e->verified = true;
	}
}

/*
 * Keep the heap TID of a candidate just read from its page, for later
 * scans, if it has one, under the tag its page had before it was read;
 * the cache is held again for the write, and only if it is still the one
 * the element was met in.
 */
static void
keep_row(HnswScanOpaque so, HnswElement *e, uint64 tag)
{
	if (e->centry == NULL || e->deleted || e->nheaptids != 1 ||
		!hnsw_shared_cache_enter(&so->shared))
		return;
	hnsw_vcache_set_heap(so->search.cache, e->centry, tag,
						 hnsw_tid_key(&e->heaptids[0]));
	hnsw_shared_cache_leave(&so->shared);
}

/*
 * Read a candidate's element from its page if the search met it through
 * the scan cache, and fill in its heap TIDs and exact distance.  False when
 * the candidate at so->pos is not to be returned after all: its element is
 * deleted or has no rows, strict order drops it, or its exact distance (a
 * cached vector can be stale, see above) moved it further down the list
 * (not in a reranked round, whose order is not by distance).
 */
static bool
candidate_ready(HnswScanOpaque so)
{
	HnswCandidate *c = &so->cands[so->pos];
	HnswElement *e = &so->search.elems[so->candElems[so->pos]];
	float		dist;
	int			j;

	if (c->nheaptids > 0)
		return true;
	if (!e->verified)
	{
		uint64		tag = rows_kept(so) ?
			hnsw_list_tag(so->search.list_changes, ItemPointerGetBlockNumber(&e->tid)) : 0;

		hnsw_search_verify(&so->search, e);
		if (tag != 0)
			keep_row(so, e, tag);
	}
	if (e->deleted || e->nheaptids == 0 ||
		(so->iterative == HNSW_ITERATIVE_SCAN_STRICT && so->haveLast &&
		 e->dist < so->lastDist))
	{
		so->pos++;
		return false;
	}
	c->distance = e->dist;
	c->lsn = e->lsn;
	c->nheaptids = e->nheaptids;
	memcpy(c->heaptids, e->heaptids, sizeof(ItemPointerData) * e->nheaptids);
	if (so->reranked)
		return true;
	/* c stays at so->pos while its place moves: compare with its copy */
	dist = c->distance;
	for (j = so->pos; j + 1 < so->ncands && so->cands[j + 1].distance < dist; j++)
	{
		HnswCandidate tc = so->cands[j];
		int			te = so->candElems[j];

		so->cands[j] = so->cands[j + 1];
		so->candElems[j] = so->candElems[j + 1];
		so->cands[j + 1] = tc;
		so->candElems[j + 1] = te;
	}
	return j == so->pos;
}

/*
 * Verify every candidate of the round (candidate_ready), keeping those to
 * be returned at the front of so->cands; returns how many.
 */
static int
verify_candidates(HnswScanOpaque so)
{
	int			n = 0;

	while (so->pos < so->ncands)
	{
		if (!candidate_ready(so))
			continue;
		so->cands[n] = so->cands[so->pos];
		so->candElems[n++] = so->candElems[so->pos++];
	}
	so->pos = 0;
	return n;
}

/* Insertion sort of the verified candidates by exact distance (about ef). */
static void
sort_candidates(HnswScanOpaque so)
{
	for (int i = 1; i < so->ncands; i++)
	{
		HnswCandidate c = so->cands[i];
		int			e = so->candElems[i];
		int			j;

		for (j = i; j > 0 && so->cands[j - 1].distance > c.distance; j--)
		{
			so->cands[j] = so->cands[j - 1];
			so->candElems[j] = so->candElems[j - 1];
		}
		so->cands[j] = c;
		so->candElems[j] = e;
	}
}

/*
 * Puts the round's candidates in the rerank plug-in's order.  Their search
 * distances are exact when the scan cache holds float vectors (the same
 * as the pages'), so they go to the plug-in as found, and their pages are
 * read only as rows are asked for (candidate_ready), as in a plain scan:
 * reading all of them first was about a tenth of a plain scan's time at
 * ef 100 (docs/gnn.md).  Distances from 8-bit codes are not exact, and
 * strict order must drop candidates nearer than the last row returned
 * before any is returned: then every candidate is read first.  The order
 * is drawn one place at a time as the executor reaches it (place_ranked),
 * not sorted whole: a LIMIT 10 scan reads about 10 of 100 (docs/gnn.md).
 */
static void
rerank_round(IndexScanDesc scan)
{
	HnswScanOpaque so = (HnswScanOpaque) scan->opaque;
	double	   *scores;
	int			n;
	int			i;

	if (so->cacheCodes || so->iterative == HNSW_ITERATIVE_SCAN_STRICT)
		so->ncands = verify_candidates(so);
	n = so->ncands;
	/* what validates the plug-in's cached state without reading pages */
	for (i = 0; i < n; i++)
		so->cands[i].nbr_sum = so->search.elems[so->candElems[i]].nbr_sum;
	scores = palloc(sizeof(double) * Max(n, 1));
	if (hnsw_scan_rerank(scan->indexRelation, &so->meta, so->query,
						 so->cands, n, scores))
	{
		if (so->rankSpace)
			pfree(so->rankSpace);
		/* one allocation: the tree, then the two maps */
		so->rankSpace = palloc(hnsw_rank_size(n) + sizeof(int) * 2 * n);
		so->rankAt = (int *) (so->rankSpace + hnsw_rank_size(n));
		so->rankOf = so->rankAt + n;
		hnsw_rank_init(&so->rank, scores, n, so->rankSpace);
		for (i = 0; i < n; i++)
			so->rankAt[i] = so->rankOf[i] = i;
		so->placed = 0;
	}
	pfree(scores);
	so->reranked = true;
}

/*
 * Puts the next candidate of the rerank's order at so->placed (so->pos),
 * swapping it with the one there.
 */
static void
place_ranked(HnswScanOpaque so)
{
	int			p = so->placed++;
	int			next = hnsw_rank_next(&so->rank);	/* in distance order */
	int			from = so->rankAt[next];
	int			displaced = so->rankOf[p];
	HnswCandidate c = so->cands[p];
	int			e = so->candElems[p];

	so->cands[p] = so->cands[from];
	so->candElems[p] = so->candElems[from];
	so->cands[from] = c;
	so->candElems[from] = e;
	so->rankAt[displaced] = from;
	so->rankOf[from] = displaced;
	so->rankAt[next] = p;
	so->rankOf[p] = next;
}

/*
 * One round of the level-0 search: fills so->cands with the elements found
 * that no earlier round returned, in order of distance, or of the rerank
 * plug-in's score.  Their pages are read as the executor asks for rows
 * (candidate_ready), or all at once when their exact distances are needed
 * first.
 */
static void
search_round(IndexScanDesc scan)
{
	HnswScanOpaque so = (HnswScanOpaque) scan->opaque;
	int			nf;
	int			i;

	scan_cache_enter(so);
	nf = hnsw_level_search_round(&so->level0, hnsw_max_scan_tuples, so->found);
	known_rows(so, nf);
	scan_cache_leave(so);
	if (so->cands)
	{
		pfree(so->cands);
		pfree(so->candElems);
	}
	so->cands = palloc(sizeof(HnswCandidate) * Max(nf, 1));
	so->candElems = palloc(sizeof(int) * Max(nf, 1));
	so->ncands = 0;
	for (i = 0; i < nf; i++)
	{
		HnswCandidate *c = &so->cands[so->ncands];

		c->tid = so->search.elems[so->found[i].id].tid;
		c->distance = so->found[i].dist;
		c->nheaptids = 0;
		so->candElems[so->ncands++] = so->found[i].id;
	}
	so->pos = 0;
	so->heappos = 0;
	so->reranked = false;
	so->placed = nf;			/* all, unless a rerank orders them */
	if (so->reranks)
		rerank_round(scan);
	else if (so->cacheCodes)
	{
		/*
		 * Distances from 8-bit codes are off by up to a few percent, more
		 * than separates near neighbours: read every candidate's vector and
		 * return them in the order of their exact distances.  (Ordering by
		 * a statistical lower bound instead, reading pages only as rows are
		 * asked for, read fewer but lost 0.4 point of recall@10 on
		 * Fashion-MNIST: integer pixels make rounding errors correlated.)
		 */
		so->ncands = verify_candidates(so);
		sort_candidates(so);
		/* the extra only stood in for near neighbours the codes misplaced */
		if (so->iterative == HNSW_ITERATIVE_SCAN_OFF)
			so->ncands = Min(so->ncands, so->level0.ef);
	}

	/* a round that found nothing new has seen all it can reach */
	if (so->iterative == HNSW_ITERATIVE_SCAN_OFF || nf == 0)
	{
		hnsw_level_search_end(&so->level0);
		so->done = true;
	}
}

static void
start_scan(IndexScanDesc scan)
{
	HnswScanOpaque so = (HnswScanOpaque) scan->opaque;
	Relation	index = scan->indexRelation;
	ScanKey		key;
	int			ep;
	int			found;
	int			ef;
	int			extra;

	/*
	 * The graph is searched as it is now, and rows are returned in the order
	 * the search finds them: nothing a snapshot that is not MVCC (a dirty
	 * read, SnapshotAny) can rely on.
	 */
	if (!IsMVCCSnapshot(scan->xs_snapshot))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("non-MVCC snapshots are not supported with gnnhnsw"),
				 errhint("Scan gnnhnsw indexes only under an MVCC snapshot, as ordinary queries do.")));

	if (scan->numberOfOrderBys == 0 || scan->orderByData == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot scan gnnhnsw index without order"),
				 errhint("Use ORDER BY column <-> value (or <#>, <=>, <+>) with LIMIT.")));

	hnsw_read_meta(index, &so->meta);
	so->metric = (HnswMetric) so->meta.metric;
	so->query = palloc0(sizeof(float) * so->meta.dims);
	key = &scan->orderByData[0];
	/* a NULL query orders nothing: every row is as near as any other */
	if (!(key->sk_flags & SK_ISNULL))
	{
		Vector	   *v = DatumGetVector(key->sk_argument);

		if (v->dim != (int) so->meta.dims)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("different vector dimensions %u and %d",
							so->meta.dims, v->dim),
					 errhint("The query vector must have the dimensions of the indexed column.")));
		memcpy(so->query, v->x, sizeof(float) * so->meta.dims);
		if (so->metric == HNSW_METRIC_COSINE)
			hnsw_normalize(so->query, so->meta.dims);
	}
	hnsw_scan_adapt_query(index, so->metric, so->query, so->meta.dims);

	hnsw_search_init(&so->search, index, so->metric, so->meta.dims,
					 so->meta.m, so->query);
	so->shared.id = HNSW_SHARED_NONE;
	hnsw_search_use_cache(&so->search, get_scan_cache(index, so));
	/* a shared cache's kind does not change while its index has it */
	so->cacheCodes = so->search.cache != NULL && so->search.cache->codes;
	if (so->search.cache != NULL && so->search.cache->nlinks > 0)
		scan_seen_marks(so);
	/* decided once: the search records what the plug-in is to check */
	so->reranks = hnsw_scan_reranks(index);
	so->search.nbr_sums = so->reranks;
	so->lastDist = 0;
	so->haveLast = false;
	scan_cache_enter(so);
	found = hnsw_search_to_level(&so->search, &so->meta, 0, &ep);
	scan_cache_leave(so);
	if (found < 0)
	{
		/* an empty index */
		so->done = true;
		return;
	}
	ef = hnsw_scan_ef(index);
	extra = so->cacheCodes && !so->reranks ? HNSW_CODES_EXTRA : 0;
	so->found = palloc(sizeof(HnswHeapItem) * (ef + extra));
	so->iterative = (HnswIterativeScan) hnsw_iterative_scan;
	hnsw_level_search_begin(&so->level0, &so->search, &ep, 1, ef, extra, 0,
							so->iterative != HNSW_ITERATIVE_SCAN_OFF);
	so->done = false;
	search_round(scan);
}

bool
hnswgettuple(IndexScanDesc scan, ScanDirection dir)
{
	HnswScanOpaque so = (HnswScanOpaque) scan->opaque;
	MemoryContext old = MemoryContextSwitchTo(so->ctx);

	if (so->first)
	{
		pgstat_count_index_scan(scan->indexRelation);
		start_scan(scan);
		so->first = false;
	}

	for (;;)
	{
		if (so->pos < so->ncands)
		{
			HnswCandidate *c;

			if (so->pos == so->placed)
				place_ranked(so);
			c = &so->cands[so->pos];
			if (so->heappos == 0 && !candidate_ready(so))
				continue;
			if (so->heappos < c->nheaptids)
			{
				scan->xs_heaptid = c->heaptids[so->heappos++];
				scan->xs_recheck = false;
				scan->xs_recheckorderby = false;
				so->lastDist = c->distance;
				so->haveLast = true;
				MemoryContextSwitchTo(old);
				return true;
			}
			so->pos++;
			so->heappos = 0;
			continue;
		}
		if (so->done)
			break;
		search_round(scan);
	}
	MemoryContextSwitchTo(old);
	return false;
}

void
hnswendscan(IndexScanDesc scan)
{
	HnswScanOpaque so = (HnswScanOpaque) scan->opaque;

	MemoryContextDelete(so->ctx);
	if (so->seen)
		pfree(so->seen);
	pfree(so);
	scan->opaque = NULL;
}
