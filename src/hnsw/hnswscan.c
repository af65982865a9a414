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
 */
#include "postgres.h"

#include "access/relscan.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/snapmgr.h"
#include "utils/memutils.h"

typedef struct HnswScanOpaqueData
{
	MemoryContext ctx;			/* reset at every rescan */
	bool		first;
	HnswMetaPageData meta;
	HnswMetric	metric;
	float	   *query;
	HnswSearch	search;
	HnswIterativeScan iterative;	/* gnnvec.iterative_scan when it began */
	HnswLevelSearch level0;		/* valid while !done */
	HnswHeapItem *found;		/* room for one round (ef) */

	HnswCandidate *cands;		/* current round */
	int			ncands;
	int			pos;
	int			heappos;

	float		lastDist;		/* distance of the last row returned */
	bool		haveLast;
	bool		done;			/* no round comes after this one */
} HnswScanOpaqueData;

typedef HnswScanOpaqueData *HnswScanOpaque;

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
	so->done = false;
}

/*
 * One round of the level-0 search: fills so->cands with the live elements
 * found that no earlier round returned.
 */
static void
search_round(IndexScanDesc scan)
{
	HnswScanOpaque so = (HnswScanOpaque) scan->opaque;
	HnswSearch *s = &so->search;
	int			nf;
	int			i;

	nf = hnsw_level_search_round(&so->level0, hnsw_max_scan_tuples, so->found);
	if (so->cands)
		pfree(so->cands);
	so->cands = palloc(sizeof(HnswCandidate) * Max(nf, 1));
	so->ncands = 0;
	for (i = 0; i < nf; i++)
	{
		HnswElement *e = &s->elems[so->found[i].id];
		HnswCandidate *c;

		if (e->deleted || e->nheaptids == 0)
			continue;
		if (so->iterative == HNSW_ITERATIVE_SCAN_STRICT &&
			so->haveLast && so->found[i].dist < so->lastDist)
			continue;
		c = &so->cands[so->ncands++];
		c->tid = e->tid;
		c->distance = so->found[i].dist;
		c->lsn = e->lsn;
		c->nheaptids = e->nheaptids;
		memcpy(c->heaptids, e->heaptids, sizeof(ItemPointerData) * e->nheaptids);
	}
	so->ncands = hnsw_scan_rerank(scan->indexRelation, so->query,
								  so->meta.dims, so->cands, so->ncands);
	so->pos = 0;
	so->heappos = 0;

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
	int			ef;

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
	so->lastDist = 0;
	so->haveLast = false;
	if (hnsw_search_to_level(&so->search, &so->meta, 0, &ep) < 0)
	{
		/* an empty index */
		so->done = true;
		return;
	}
	ef = hnsw_scan_ef(index);
	so->found = palloc(sizeof(HnswHeapItem) * ef);
	so->iterative = (HnswIterativeScan) hnsw_iterative_scan;
	hnsw_level_search_begin(&so->level0, &so->search, &ep, 1, ef, 0,
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
			HnswCandidate *c = &so->cands[so->pos];

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
	pfree(so);
	scan->opaque = NULL;
}
