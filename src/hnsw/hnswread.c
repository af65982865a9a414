/*
 * hnswread.c
 *		gnnhnsw: reads for learners.  The GNN's view of an index and the
 *		training read elements, their vectors and their level-0 neighbour
 *		lists through these (hnsw.h), one element at a time, and never the
 *		tuples themselves: the page format stays in src/hnsw.
 */
#include "postgres.h"

#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/rel.h"

void
hnsw_reader_init(HnswReader *r, Relation index, const HnswMetaPageData *meta)
{
	memset(r, 0, sizeof(HnswReader));
	r->index = index;
	if (meta)
		r->meta = *meta;
	else
		hnsw_read_meta(index, &r->meta);
	r->metric = (HnswMetric) r->meta.metric;
	r->dim = r->meta.dims;
	r->m = r->meta.m;
}

bool
hnsw_read_element(const HnswReader *r, ItemPointer tid, float *vec,
				  ItemPointer neighbors)
{
	HnswSearch	s;
	HnswElement e;

	memset(&s, 0, sizeof(s));
	s.index = r->index;
	s.dim = r->dim;
	s.m = r->m;
	s.metric = r->metric;
	s.load_vectors = true;
	memset(&e, 0, sizeof(e));
	e.tid = *tid;
	hnsw_load_element(&s, &e);
	if (e.deleted || e.nheaptids == 0)
	{
		if (e.vec)
			pfree(e.vec);
		return false;
	}
	memcpy(vec, e.vec, sizeof(float) * r->dim);
	*neighbors = e.neighbortid;
	pfree(e.vec);
	return true;
}

/*
 * The level-0 slots of a neighbour tuple; a location that holds no
 * neighbour tuple of at least 2m slots reads as an empty list.
 */
int
hnsw_read_neighbors(const HnswReader *r, ItemPointer neighbors,
					ItemPointerData *tids, XLogRecPtr *lsn)
{
	int			slots = 2 * r->m;
	int			n = 0;
	Buffer		buf;
	HnswNeighborTuple ntup;

	buf = ReadBuffer(r->index, ItemPointerGetBlockNumber(neighbors));
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	*lsn = PageGetLSN(BufferGetPage(buf));
	ntup = hnsw_get_neighbors(BufferGetPage(buf),
							  ItemPointerGetOffsetNumber(neighbors));
	if (ntup && ntup->count >= slots)
		for (int i = 0; i < slots; i++)
			if (ItemPointerIsValid(&ntup->tids[i]))
				tids[n++] = ntup->tids[i];
	UnlockReleaseBuffer(buf);
	return n;
}

XLogRecPtr
hnsw_read_neighbors_lsn(Relation index, ItemPointer neighbors)
{
	Buffer		buf;
	XLogRecPtr	lsn;

	buf = ReadBuffer(index, ItemPointerGetBlockNumber(neighbors));
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	lsn = PageGetLSN(BufferGetPage(buf));
	UnlockReleaseBuffer(buf);
	return lsn;
}

int
hnsw_read_search(const HnswReader *r, const float *query, int ef,
				 HnswReadFound found, void *arg)
{
	HnswSearch	s;
	HnswMetaPageData meta = r->meta;
	HnswHeapItem *items = palloc(sizeof(HnswHeapItem) * (ef + 1));
	int			ep;
	int			nf = 0;
	int			n = 0;

	hnsw_search_init(&s, r->index, r->metric, r->dim, r->m, query);
	s.load_vectors = true;
	if (hnsw_search_to_level(&s, &meta, 0, &ep) >= 0)
		nf = hnsw_search_layer(&s, &ep, 1, ef, 0, items);
	for (int i = 0; i < nf; i++)
	{
		HnswElement *e = &s.elems[items[i].id];
		HnswCandidate cand;

		if (e->deleted || e->nheaptids == 0 || e->vec == NULL)
			continue;
		cand.tid = e->tid;
		cand.distance = items[i].dist;
		cand.lsn = e->lsn;
		cand.nbr_sum = e->nbr_sum;
		cand.nheaptids = e->nheaptids;
		memcpy(cand.heaptids, e->heaptids,
			   sizeof(ItemPointerData) * e->nheaptids);
		found(arg, &cand, e->vec, &e->neighbortid);
		n++;
	}
	hnsw_search_reset(&s);
	pfree(items);
	return n;
}

/*
 * A live element drawn with the random number r: a block after the
 * metapage drawn uniformly among the first nblocks, then one of its live
 * elements uniformly.  Elements of blocks that hold fewer elements are
 * drawn more often, so the draw is near uniform over elements, not
 * exactly (the blocks of an index hold about as many elements each).
 * False when the drawn block holds no live element: the caller draws again.
 */
bool
hnsw_random_element(Relation index, BlockNumber nblocks, uint64 r,
					ItemPointer tid)
{
	OffsetNumber live[MaxOffsetNumber];
	int			nlive = 0;
	BlockNumber blkno;
	Buffer		buf;
	Page		page;

	if (nblocks <= HNSW_METAPAGE_BLKNO + 1)
		return false;
	blkno = HNSW_METAPAGE_BLKNO + 1 +
		(BlockNumber) (r % (nblocks - HNSW_METAPAGE_BLKNO - 1));
	buf = ReadBuffer(index, blkno);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	for (OffsetNumber off = FirstOffsetNumber; off <= PageGetMaxOffsetNumber(page); off++)
	{
		HnswElementTuple etup = hnsw_get_element(page, off);

		if (etup != NULL && !etup->deleted && etup->nheaptids > 0)
			live[nlive++] = off;
	}
	if (nlive > 0)
		ItemPointerSet(tid, blkno, live[(r >> 32) % nlive]);
	UnlockReleaseBuffer(buf);
	return nlive > 0;
}

/*
 * The live element holding exactly vec (dim floats, as the index stores
 * them), by a pass over the pages: elements whose inline floats match are
 * read whole; false if there is none.
 */
bool
hnsw_find_element(Relation index, const float *vec, int dim, ItemPointer tid)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(index);
	OffsetNumber match[MaxOffsetNumber];
	float	   *whole = palloc(sizeof(float) * dim);
	bool		found = false;

	for (BlockNumber blkno = HNSW_METAPAGE_BLKNO + 1; blkno < nblocks && !found; blkno++)
	{
		Buffer		buf;
		Page		page;
		int			nmatch = 0;
		bool		split = false;

		CHECK_FOR_INTERRUPTS();
		buf = ReadBuffer(index, blkno);
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		for (OffsetNumber off = FirstOffsetNumber; off <= PageGetMaxOffsetNumber(page); off++)
		{
			HnswElementTuple etup = hnsw_get_element(page, off);

			if (etup == NULL || etup->deleted || etup->nheaptids == 0 ||
				etup->dim != dim || etup->ninline > dim ||
				memcmp(etup->x, vec, sizeof(float) * etup->ninline) != 0)
				continue;
			match[nmatch++] = off;
			split |= etup->ninline < dim;
		}
		UnlockReleaseBuffer(buf);
		for (int i = 0; i < nmatch && !found; i++)
		{
			ItemPointerSet(tid, blkno, match[i]);
			/* the rest of a long vector is in its data tuples */
			if (split)
			{
				hnsw_load_vector(index, tid, whole);
				found = memcmp(whole, vec, sizeof(float) * dim) == 0;
			}
			else
				found = true;
		}
	}
	pfree(whole);
	return found;
}
