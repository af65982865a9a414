/*
 * hnswinsert.c
 *		gnnhnsw: aminsert, the HNSW insert algorithm on the pages
 *		(Malkov & Yashunin 2018, Alg. 1 with the heuristic of Alg. 4).
 *
 * Concurrency: an insert holds the HNSW_UPDATE_LOCK page lock in share
 * mode, or in exclusive mode when its level may raise the entry point, so
 * entry-point changes are serialised and never race with each other.  The
 * search reads each page under a short share lock; the new element and its
 * neighbour tuple are written before any other element points at them, and
 * each neighbour list is then updated in place under an exclusive buffer
 * lock, re-checked after locking (a slot changed by a concurrent insert is
 * left alone).  Every change is one GenericXLog record.
 */
#include "postgres.h"

#include <math.h>

#include "access/generic_xlog.h"
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#endif
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/memutils.h"

static int
random_level(int m)
{
#if PG_VERSION_NUM >= 150000
	double		u = pg_prng_double(&pg_global_prng_state);	/* [0, 1) */
#else
	double		u = (double) random() / ((double) MAX_RANDOM_VALUE + 1);
#endif
	int			level = (int) floor(-log(1.0 - u) / log((double) m));
	int			cap = hnsw_level_cap(m);

	return level > cap ? cap : level;
}

/* Add a heap TID to an existing element with the same vector. */
static bool
add_heaptid(Relation index, HnswElement *e, const float *vec, int dim,
			ItemPointer heaptid, bool building)
{
	Buffer		buf = ReadBuffer(index, ItemPointerGetBlockNumber(&e->tid));
	HnswElementTuple etup;
	bool		done = false;

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	etup = hnsw_get_element(BufferGetPage(buf), ItemPointerGetOffsetNumber(&e->tid));
	if (etup && !etup->deleted && etup->nheaptids > 0 &&
		etup->nheaptids < HNSW_HEAPTIDS &&
		memcmp(etup->x, vec, sizeof(float) * etup->ninline) == 0)
	{
		HnswEdit	ed;
		Page		page = hnsw_edit_start(&ed, index, buf, building, false);

		etup = hnsw_get_element(page, ItemPointerGetOffsetNumber(&e->tid));
		etup->heaptids[etup->nheaptids++] = *heaptid;
		hnsw_edit_finish(&ed);
		done = true;
	}
	UnlockReleaseBuffer(buf);
	return done;
}

/* Pages an insert looks at, from the insert hint on, before appending. */
#define HNSW_INSERT_WALK	16

/*
 * Whether a page found new (all zeroes) while we hold its buffer lock
 * exclusively was abandoned by the backend that extended the relation with
 * it, so that we may initialise and use it.  An extender (hnsw_new_buffer)
 * initialises the page before it unlocks the buffer, and locks the buffer
 * before anybody else can: before it lets go of the relation extension
 * lock (PostgreSQL 15; from 16 on, before it marks the buffer valid, which
 * other readers wait for).  So if we hold the buffer lock and can also take
 * the extension lock, the page's extender has already had its buffer lock
 * and let go of it with the page still new: it failed, or it crashed (the
 * zeroes it wrote to the file stay), and it will not come back to the page;
 * later extenders get blocks after it.  The extension lock is only tried,
 * never waited for, because the extender holding it may be waiting for our
 * buffer lock; busy, the page is left for a later insert.
 */
static bool
new_page_abandoned(Relation index)
{
	if (!ConditionalLockRelationForExtension(index, ExclusiveLock))
		return false;
	UnlockRelationForExtension(index, ExclusiveLock);
	return true;
}

/*
 * Page blkno, locked exclusively, if it has need bytes free (need counts
 * the line pointers beyond the first, as PageGetFreeSpace does) or is an
 * abandoned new page (*fresh: the caller initialises it, in a full-page
 * WAL image); else InvalidBuffer.
 */
static Buffer
lock_page_with_room(Relation index, BlockNumber blkno, Size need, bool *fresh)
{
	Buffer		buf = ReadBuffer(index, blkno);
	Page		page;

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	page = BufferGetPage(buf);
	*fresh = PageIsNew(page);
	if (*fresh ? new_page_abandoned(index) : PageGetFreeSpace(page) >= need)
		return buf;
	UnlockReleaseBuffer(buf);
	return InvalidBuffer;
}

/*
 * Start the edit that adds tuples to buf, a page with room or a fresh one
 * (initialised here).
 */
static Page
start_page_edit(HnswEdit *ed, Relation index, Buffer buf, bool fresh,
				bool building)
{
	Page		page = hnsw_edit_start(ed, index, buf, building, fresh);

	if (fresh)
		hnsw_init_page(page);
	return page;
}

/*
 * Put one tuple on the first page with room among the hint and the pages
 * after it (up to HNSW_INSERT_WALK of them; crashed extenders leave new
 * pages there), else on a new page.  The page used becomes the hint.
 */
static void
place_tuple(Relation index, void *item, Size size, bool building,
			BlockNumber *hint, ItemPointer tid)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(index);
	Buffer		buf = InvalidBuffer;
	bool		fresh = false;
	HnswEdit	ed;
	Page		page;
	OffsetNumber off;

	if (*hint != InvalidBlockNumber)
	{
		BlockNumber blkno = Max(*hint, HNSW_METAPAGE_BLKNO + 1);
		BlockNumber end = Min(nblocks, blkno + HNSW_INSERT_WALK);

		for (; blkno < end && !BufferIsValid(buf); blkno++)
			buf = lock_page_with_room(index, blkno, MAXALIGN(size), &fresh);
	}
	if (!BufferIsValid(buf))
	{
		buf = hnsw_new_buffer(index, MAIN_FORKNUM);
		fresh = true;
	}
	*hint = BufferGetBlockNumber(buf);
	page = start_page_edit(&ed, index, buf, fresh, building);
	off = PageAddItem(page, (Item) item, size, InvalidOffsetNumber, false, false);
	if (off == InvalidOffsetNumber)
		elog(ERROR, "gnnhnsw: failed to add a tuple of %zu bytes to block %u",
			 size, *hint);
	hnsw_edit_finish(&ed);
	ItemPointerSet(tid, *hint, off);
	UnlockReleaseBuffer(buf);
}

/*
 * Overwrite the deleted element at off (same vector size, level >= the new
 * element's) and its neighbour tuple, in one WAL record.  The neighbour
 * tuple is on the same page or a later one (the build and inserts never
 * put it earlier), so locks are taken in block order.  The neighbour tuple
 * keeps its slot count; slots above the new level stay invalid.  Returns
 * false if the neighbour tuple is not where it should be.
 */
static bool
reuse_element(Relation index, Buffer buf, OffsetNumber off,
			  HnswElementTuple etup, Size esize, HnswNeighborTuple ntup,
			  bool building)
{
	Page		page = BufferGetPage(buf);
	HnswElementTuple old = hnsw_get_element(page, off);
	ItemPointerData ntid = old->neighbortid;
	BlockNumber nblk = ItemPointerGetBlockNumber(&ntid);
	Buffer		nbuf = InvalidBuffer;
	Page		npage;
	HnswNeighborTuple oldn;
	GenericXLogState *state = NULL;
	int			i;

	if (nblk != BufferGetBlockNumber(buf))
	{
		if (nblk < BufferGetBlockNumber(buf) ||
			nblk >= RelationGetNumberOfBlocks(index))
			return false;
		nbuf = ReadBuffer(index, nblk);
		LockBuffer(nbuf, BUFFER_LOCK_EXCLUSIVE);
	}
	npage = BufferIsValid(nbuf) ? BufferGetPage(nbuf) : page;
	oldn = hnsw_get_neighbors(npage, ItemPointerGetOffsetNumber(&ntid));
	if (oldn == NULL || oldn->count < ntup->count)
	{
		if (BufferIsValid(nbuf))
			UnlockReleaseBuffer(nbuf);
		return false;
	}

	if (!building)
	{
		state = GenericXLogStart(index);
		page = GenericXLogRegisterBuffer(state, buf, 0);
		npage = BufferIsValid(nbuf) ? GenericXLogRegisterBuffer(state, nbuf, 0) : page;
	}
	old = hnsw_get_element(page, off);
	oldn = hnsw_get_neighbors(npage, ItemPointerGetOffsetNumber(&ntid));
	etup->neighbortid = ntid;
	oldn->level = ntup->level;
	for (i = 0; i < oldn->count; i++)
	{
		if (i < ntup->count)
			oldn->tids[i] = ntup->tids[i];
		else
			ItemPointerSetInvalid(&oldn->tids[i]);
	}
	memcpy(old, etup, esize);
	if (state)
	{
		GenericXLogFinish(state);
		hnsw_shared_cache_modified(index, BufferGetBlockNumber(buf));
		if (BufferIsValid(nbuf))
			hnsw_shared_cache_modified(index, nblk);
	}
	else
	{
		MarkBufferDirty(buf);
		if (BufferIsValid(nbuf))
			MarkBufferDirty(nbuf);
	}
	if (BufferIsValid(nbuf))
		UnlockReleaseBuffer(nbuf);
	return true;
}

/* A deleted element on this page that the new one can take over, or 0. */
static OffsetNumber
find_reusable(Page page, int level, Size esize, OffsetNumber after,
			  bool *anyDeleted)
{
	OffsetNumber off,
				maxoff = PageGetMaxOffsetNumber(page);

	for (off = after + 1; off <= maxoff; off++)
	{
		HnswElementTuple old = hnsw_get_element(page, off);

		if (old == NULL || !old->deleted)
			continue;
		*anyDeleted = true;
		if (old->level < level || ItemPointerIsValid(&old->datatid) ||
			ItemIdGetLength(PageGetItemId(page, off)) != esize)
			continue;
		return off;
	}
	return InvalidOffsetNumber;
}

/*
 * Write an element whose vector fits inline, with its neighbour tuple on
 * the same page, in one WAL record.  Looks at up to HNSW_INSERT_WALK pages
 * from the insert hint for a deleted element of at least the new level to
 * take over, or room, or a new page a crashed extender left; else the last
 * page, else a new page.  The hint stays
 * on the first page that still has deleted elements.  Sets *etid.
 */
static void
write_inline_element(Relation index, HnswMetaPageData *meta,
					 HnswElementTuple etup, Size esize,
					 HnswNeighborTuple ntup, Size nsize, bool building,
					 ItemPointer etid)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(index);
	BlockNumber blkno = meta->insertPage;
	BlockNumber keep = InvalidBlockNumber;
	BlockNumber newhint;
	Buffer		buf = InvalidBuffer;
	Page		page;
	HnswEdit	ed;
	int			walked = 0;
	bool		placed = false;
	bool		fresh = false;

	if (blkno == InvalidBlockNumber || blkno == HNSW_METAPAGE_BLKNO || blkno >= nblocks)
		blkno = nblocks - 1;
	for (; blkno < nblocks && walked < HNSW_INSERT_WALK; blkno++, walked++)
	{
		OffsetNumber off;
		bool		anyDeleted = false;

		if (blkno == HNSW_METAPAGE_BLKNO)
			continue;
		CHECK_FOR_INTERRUPTS();
		buf = ReadBuffer(index, blkno);
		LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
		page = BufferGetPage(buf);
		if (PageIsNew(page))
		{
			/* ours if abandoned, else its extender's to initialise */
			if (new_page_abandoned(index))
			{
				fresh = placed = true;
				break;
			}
			UnlockReleaseBuffer(buf);
			continue;
		}
		off = InvalidOffsetNumber;
		while ((off = find_reusable(page, etup->level, esize, off,
									&anyDeleted)) != InvalidOffsetNumber)
		{
			if (reuse_element(index, buf, off, etup, esize, ntup, building))
				break;
		}
		if (off != InvalidOffsetNumber)
		{
			ItemPointerSet(etid, blkno, off);
			UnlockReleaseBuffer(buf);
			newhint = keep != InvalidBlockNumber ? keep : blkno;
			if (newhint != meta->insertPage)
				hnsw_set_insert_page(index, newhint, false, building);
			return;
		}
		if (anyDeleted && keep == InvalidBlockNumber)
			keep = blkno;
		if (PageGetFreeSpace(page) >= esize + nsize + sizeof(ItemIdData))
		{
			placed = true;		/* room here: keep the lock */
			break;
		}
		UnlockReleaseBuffer(buf);
	}

	/* nothing in the window: the last page, if it has room */
	if (!placed && blkno < nblocks && nblocks - 1 > HNSW_METAPAGE_BLKNO)
	{
		blkno = nblocks - 1;
		buf = lock_page_with_room(index, blkno, esize + nsize + sizeof(ItemIdData),
								  &fresh);
		placed = BufferIsValid(buf);
	}

	if (!placed)
	{
		buf = hnsw_new_buffer(index, MAIN_FORKNUM);
		blkno = BufferGetBlockNumber(buf);
		fresh = true;
	}
	page = start_page_edit(&ed, index, buf, fresh, building);

	{
		OffsetNumber noff,
					eoff;

		noff = PageAddItem(page, (Item) ntup, nsize, InvalidOffsetNumber, false, false);
		ItemPointerSet(&etup->neighbortid, blkno, noff);
		eoff = PageAddItem(page, (Item) etup, esize, InvalidOffsetNumber, false, false);
		if (noff == InvalidOffsetNumber || eoff == InvalidOffsetNumber)
			elog(ERROR, "gnnhnsw: failed to add element to block %u", blkno);
		hnsw_edit_finish(&ed);
		ItemPointerSet(etid, blkno, eoff);
	}
	UnlockReleaseBuffer(buf);
	newhint = keep != InvalidBlockNumber ? keep : blkno;
	if (newhint != meta->insertPage)
		hnsw_set_insert_page(index, newhint, false, building);
}

/*
 * Write an element whose vector is split over data tuples, or that does not
 * fit in one page with its neighbour tuple: the neighbour tuple, the data
 * tuples from the last to the first, then the element that points at them
 * all.  No reuse of deleted space for these.
 */
static void
write_split_element(Relation index, HnswMetaPageData *meta,
					HnswElementTuple etup, Size esize, HnswNeighborTuple ntup,
					Size nsize, const float *vec, int dim, bool building,
					ItemPointer etid)
{
	BlockNumber hint = meta->insertPage;
	int			ninline = hnsw_inline_floats(dim);
	int			ndata = hnsw_data_tuples(dim);
	HnswDataTuple dtup = palloc0(HNSW_DATA_TUPLE_SIZE(HNSW_DATA_MAX));
	ItemPointerData next;
	int			k;

	place_tuple(index, ntup, nsize, building, &hint, &etup->neighbortid);
	ItemPointerSetInvalid(&next);
	for (k = ndata - 1; k >= 0; k--)
	{
		int			start = ninline + k * HNSW_DATA_MAX;
		int			cnt = Min(dim - start, HNSW_DATA_MAX);
		Size		dsize = HNSW_DATA_TUPLE_SIZE(cnt);

		memset(dtup, 0, dsize);
		dtup->type = HNSW_DATA_TUPLE;
		dtup->count = cnt;
		dtup->next = next;
		memcpy(dtup->x, vec + start, sizeof(float) * cnt);
		place_tuple(index, dtup, dsize, building, &hint, &next);
	}
	etup->datatid = next;
	place_tuple(index, etup, esize, building, &hint, etid);
	if (hint != meta->insertPage)
		hnsw_set_insert_page(index, hint, false, building);
	pfree(dtup);
}

/* Put the given TIDs into free slots of one level of a neighbour tuple. */
static void
adopt_dropped(Relation index, ItemPointer ntid, int m, int lc, ItemPointer self,
			  ItemPointerData *drops, int ndrops, bool building)
{
	Buffer		buf = ReadBuffer(index, ItemPointerGetBlockNumber(ntid));
	HnswNeighborTuple ntup;
	HnswEdit	ed;
	Page		page;
	int			start = hnsw_level_offset(m, lc);
	int			end = start + hnsw_level_slots(m, lc);
	int			d,
				i;

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	ntup = hnsw_get_neighbors(BufferGetPage(buf), ItemPointerGetOffsetNumber(ntid));
	if (ntup == NULL || lc > ntup->level)
	{
		UnlockReleaseBuffer(buf);
		return;
	}
	page = hnsw_edit_start(&ed, index, buf, building, false);
	ntup = hnsw_get_neighbors(page, ItemPointerGetOffsetNumber(ntid));
	for (d = 0; d < ndrops; d++)
	{
		int			free = -1;

		if (ItemPointerEquals(&drops[d], self))
			continue;
		for (i = start; i < end; i++)
		{
			if (ItemPointerEquals(&ntup->tids[i], &drops[d]))
			{
				free = -1;
				break;
			}
			if (free < 0 && !ItemPointerIsValid(&ntup->tids[i]))
				free = i;
		}
		if (free >= 0)
			ntup->tids[free] = drops[d];
	}
	hnsw_edit_finish(&ed);
	UnlockReleaseBuffer(buf);
}

/*
 * Add the edge e -> newtid at level lc.  A full list is re-selected with
 * the heuristic over its members plus the new element; the new element
 * then takes the slot of the farthest member the heuristic dropped (with
 * force, of the farthest member when the heuristic drops the new one).
 * Returns whether the edge is there.  evec is e's vector.
 */
static bool
update_connection(HnswSearch *s, HnswElement *e, const float *evec,
				  ItemPointer newtid, const float *newvec, int lc,
				  bool building, bool force, ItemPointer adopter)
{
	Relation	index = s->index;
	int			m = s->m;
	int			max = hnsw_level_slots(m, lc);
	ItemPointerData *cur = palloc(sizeof(ItemPointerData) * 2 * m);
	int			n = hnsw_load_neighbors(index, &e->neighbortid, m, lc, cur);
	ItemPointerData replace;
	int			i;
	Buffer		buf;
	HnswNeighborTuple ntup;

	bool		done = false;

	ItemPointerSetInvalid(&replace);
	for (i = 0; i < n; i++)
		if (ItemPointerEquals(&cur[i], newtid))
			return true;

	if (n >= max)
	{
		HnswSearch	t;
		float	  **vecs = palloc(sizeof(float *) * (n + 1));
		float	   *dists = palloc(sizeof(float) * (n + 1));
		ItemPointerData *tids = palloc(sizeof(ItemPointerData) * (n + 1));
		bool	   *keep = palloc(sizeof(bool) * (n + 1));
		float		newdist = hnsw_distance(s->metric, evec, newvec, s->dim);
		int			cnt = 0;

		hnsw_search_init(&t, index, s->metric, s->dim, m, evec);
		t.load_vectors = true;
		for (i = 0; i < n; i++)
		{
			int			idx = hnsw_search_add(&t, &cur[i]);

			if (idx < 0 || t.elems[idx].deleted || t.elems[idx].nheaptids == 0)
			{
				/* a member that is gone or being deleted gives way first */
				replace = cur[i];
				adopter = NULL;	/* nothing to keep reachable */
				cnt = -1;
				break;
			}
		}
		if (cnt == 0)
		{
			int			j;

			/* insertion sort of the members and the new element by distance */
			for (i = 0; i <= t.nelems; i++)
			{
				float		d = i < t.nelems ? t.elems[i].dist : newdist;
				float	   *v = i < t.nelems ? t.elems[i].vec : (float *) newvec;
				ItemPointerData tid = i < t.nelems ? t.elems[i].tid : *newtid;

				for (j = cnt; j > 0 && dists[j - 1] > d; j--)
				{
					dists[j] = dists[j - 1];
					vecs[j] = vecs[j - 1];
					tids[j] = tids[j - 1];
				}
				dists[j] = d;
				vecs[j] = v;
				tids[j] = tid;
				cnt++;
			}
			hnsw_select_heuristic(s->metric, s->dim, vecs, dists, cnt, max, keep);
			for (i = 0; i < cnt; i++)
				if (ItemPointerEquals(&tids[i], newtid))
					break;
			if (i == cnt || !keep[i])
			{
				if (!force)
					return false;	/* the new element is not wanted */
				for (i = 0; i < cnt; i++)
					keep[i] = !ItemPointerEquals(&tids[i], newtid);
				for (i = cnt - 1; i >= 0 && !keep[i]; i--)
					;
				if (i >= 0)
					keep[i] = false;
			}
			for (i = cnt - 1; i >= 0; i--)
			{
				if (!keep[i] && !ItemPointerEquals(&tids[i], newtid))
				{
					replace = tids[i];
					break;
				}
			}
			if (!ItemPointerIsValid(&replace))
				return false;
		}
	}

	/*
	 * The member about to lose its in-edge from e may have no other: the new
	 * element adopts it first, so that a crash between the two changes
	 * leaves an extra edge, never an unreachable element.
	 */
	if (adopter && ItemPointerIsValid(&replace))
		adopt_dropped(index, adopter, m, lc, newtid, &replace, 1, building);

	buf = ReadBuffer(index, ItemPointerGetBlockNumber(&e->neighbortid));
	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	ntup = hnsw_get_neighbors(BufferGetPage(buf),
							  ItemPointerGetOffsetNumber(&e->neighbortid));
	if (ntup && lc <= ntup->level)
	{
		int			start = hnsw_level_offset(m, lc);
		int			slot = -1;

		for (i = start; i < start + max && i < ntup->count; i++)
		{
			if (ItemPointerEquals(&ntup->tids[i], newtid))
			{
				slot = -1;
				break;
			}
			if (slot < 0 &&
				(ItemPointerIsValid(&replace) ?
				 ItemPointerEquals(&ntup->tids[i], &replace) :
				 !ItemPointerIsValid(&ntup->tids[i])))
				slot = i;
		}
		if (slot >= 0)
		{
			HnswEdit	ed;
			Page		page = hnsw_edit_start(&ed, index, buf, building, false);

			ntup = hnsw_get_neighbors(page, ItemPointerGetOffsetNumber(&e->neighbortid));
			ntup->tids[slot] = *newtid;
			hnsw_edit_finish(&ed);
			done = true;
		}
	}
	UnlockReleaseBuffer(buf);
	return done;
}

/*
 * update_connection in a memory context of its own: a full list loads the
 * vectors of its 2m members, and e's own when the caller's search did not
 * keep it, which must not pile up over the calls of one insert.
 */
bool
hnsw_update_connection(HnswSearch *s, HnswElement *e, ItemPointer newtid,
					   const float *newvec, int lc, bool building, bool force,
					   ItemPointer adopter)
{
	MemoryContext ctx = AllocSetContextCreate(CurrentMemoryContext,
											  "gnnhnsw update connection",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(ctx);
	float	   *evec = e->vec;
	bool		done;

	if (evec == NULL)
	{
		evec = palloc(sizeof(float) * s->dim);
		hnsw_load_vector(s->index, &e->tid, evec);
	}
	done = update_connection(s, e, evec, newtid, newvec, lc, building, force,
							 adopter);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(ctx);
	return done;
}

/*
 * Vectors for the neighbour selection of an insert, loaded from the pages
 * when the heuristic (Alg. 4) first asks for one, into max + 1 slots that
 * evict the least recently used.  The heuristic holds two vectors at a
 * time, the candidate and one it keeps; the candidate was used last, so a
 * miss never evicts it.  An insert thus holds (max + 1) x dim floats
 * instead of a vector per element its search visited (about 100 MB at
 * 16000 dimensions).
 */
typedef struct LazyVectors
{
	HnswSearch *s;
	HnswSearch	loader;			/* no query: reads vectors only */
	int			nslots;
	int32	   *ids;			/* element index in s->elems, -1: free */
	uint64	   *used;			/* last use, for eviction */
	float	  **vecs;
	uint64		clock;
} LazyVectors;

static void
lazy_vectors_init(LazyVectors *lv, HnswSearch *s, int max)
{
	lv->s = s;
	hnsw_search_init(&lv->loader, s->index, s->metric, s->dim, s->m, NULL);
	lv->loader.load_vectors = true;
	lv->nslots = max + 1;
	lv->ids = palloc(sizeof(int32) * lv->nslots);
	lv->used = palloc0(sizeof(uint64) * lv->nslots);
	lv->vecs = palloc(sizeof(float *) * lv->nslots);
	for (int i = 0; i < lv->nslots; i++)
	{
		lv->ids[i] = -1;
		lv->vecs[i] = palloc(sizeof(float) * s->dim);
	}
	lv->clock = 0;
}

static const float *
lazy_vector_of(void *arg, int32_t id)
{
	LazyVectors *lv = arg;
	int			victim = 0;
	HnswElement e;

	for (int i = 0; i < lv->nslots; i++)
	{
		if (lv->ids[i] == id)
		{
			lv->used[i] = ++lv->clock;
			return lv->vecs[i];
		}
		if (lv->used[i] < lv->used[victim])
			victim = i;
	}
	e.tid = lv->s->elems[id].tid;
	hnsw_load_element(&lv->loader, &e);
	memcpy(lv->vecs[victim], e.vec, sizeof(float) * lv->s->dim);
	pfree(e.vec);
	lv->ids[victim] = id;
	lv->used[victim] = ++lv->clock;
	return lv->vecs[victim];
}

/*
 * The first of found[0..nf) (ascending) that holds exactly vec and can take
 * another heap TID: rows with equal vectors share an element.
 */
static bool
add_to_duplicate(HnswSearch *s, const HnswHeapItem *found, int nf,
				 const float *vec, ItemPointer heaptid, bool building)
{
	float	   *other = palloc(sizeof(float) * s->dim);

	for (int i = 0; i < nf && found[i].dist == found[0].dist; i++)
	{
		HnswElement *e = &s->elems[found[i].id];

		if (e->deleted || e->nheaptids == 0)
			continue;
		hnsw_load_vector(s->index, &e->tid, other);
		if (memcmp(other, vec, sizeof(float) * s->dim) == 0 &&
			add_heaptid(s->index, e, vec, s->dim, heaptid, building))
			return true;
	}
	return false;
}

/*
 * Insert one vector (already normalised for cosine) for one heap row.
 * building: called from CREATE INDEX after the in-memory graph outgrew
 * maintenance_work_mem (no WAL; the build logs every page at the end).
 */
static void
insert_vector(Relation index, const float *vec, ItemPointer heaptid,
			  bool building)
{
	HnswMetaPageData meta;
	HnswMetric	metric;
	int			m,
				efc,
				dim,
				level,
				top,
				lc;
	LOCKMODE	lockmode = ShareLock;
	HnswSearch	s;
	int		  **selected;
	int		   *nselected;
	int			ninline;
	Size		esize,
				nsize;
	HnswElementTuple etup;
	HnswNeighborTuple ntup;
	ItemPointerData etid;
	int			i;

	hnsw_read_meta(index, &meta);
	metric = (HnswMetric) meta.metric;
	m = meta.m;
	efc = meta.efConstruction;
	dim = meta.dims;
	level = random_level(m);

	LockPage(index, HNSW_UPDATE_LOCK, lockmode);
	hnsw_read_meta(index, &meta);
	if (level > meta.entryLevel)
	{
		UnlockPage(index, HNSW_UPDATE_LOCK, lockmode);
		lockmode = ExclusiveLock;
		LockPage(index, HNSW_UPDATE_LOCK, lockmode);
		hnsw_read_meta(index, &meta);
	}

	selected = palloc0(sizeof(int *) * (level + 1));
	nselected = palloc0(sizeof(int) * (level + 1));
	/* distances only: vectors are loaded where the selection needs them */
	hnsw_search_init(&s, index, metric, dim, m, vec);

	top = Min(level, meta.entryLevel);
	if (meta.entryLevel >= 0)
	{
		HnswHeapItem *found = palloc(sizeof(HnswHeapItem) * (efc + 1));
		HnswHeapItem *cands = palloc(sizeof(HnswHeapItem) * (efc + 1));
		HnswHeapItem *kept = palloc(sizeof(HnswHeapItem) * m);
		int		   *entries = palloc(sizeof(int) * (efc + 1));
		int			nentries = 1;
		LazyVectors lv;

		lazy_vectors_init(&lv, &s, m);
		if (hnsw_search_to_level(&s, &meta, top, &entries[0]) < 0)
			nentries = 0;
		for (lc = top; lc >= 0 && nentries > 0; lc--)
		{
			int			nf = hnsw_search_layer(&s, entries, nentries, efc, lc, found);
			int			nc = 0;

			if (lc == 0 && add_to_duplicate(&s, found, nf, vec, heaptid, building))
			{
				UnlockPage(index, HNSW_UPDATE_LOCK, lockmode);
				return;
			}

			for (i = 0; i < nf; i++)
			{
				HnswElement *e = &s.elems[found[i].id];

				entries[i] = found[i].id;
				if (e->deleted || e->nheaptids == 0 || e->level < lc)
					continue;
				cands[nc++] = found[i];
			}
			nentries = nf;
			nselected[lc] = hnsw_select_keep_pruned(metric, dim, cands, nc, m,
													lazy_vector_of, &lv, kept);
			selected[lc] = palloc(sizeof(int) * m);
			for (i = 0; i < nselected[lc]; i++)
				selected[lc][i] = kept[i].id;
		}
	}

	/* the new element and its neighbour tuple */
	ninline = hnsw_inline_floats(dim);
	esize = HNSW_ELEMENT_TUPLE_SIZE(ninline);
	nsize = HNSW_NEIGHBOR_TUPLE_SIZE(m, level);
	etup = palloc0(esize);
	ntup = palloc0(nsize);
	etup->type = HNSW_ELEMENT_TUPLE;
	etup->level = level;
	etup->deleted = 0;
	etup->nheaptids = 1;
	etup->heaptids[0] = *heaptid;
	for (i = 1; i < HNSW_HEAPTIDS; i++)
		ItemPointerSetInvalid(&etup->heaptids[i]);
	ItemPointerSetInvalid(&etup->neighbortid);
	ItemPointerSetInvalid(&etup->datatid);
	etup->dim = dim;
	etup->ninline = ninline;
	memcpy(etup->x, vec, sizeof(float) * ninline);
	ntup->type = HNSW_NEIGHBOR_TUPLE;
	ntup->level = level;
	ntup->count = 2 * m + level * m;
	for (i = 0; i < ntup->count; i++)
		ItemPointerSetInvalid(&ntup->tids[i]);
	for (lc = 0; lc <= level; lc++)
	{
		int			off = hnsw_level_offset(m, lc);

		for (i = 0; i < nselected[lc]; i++)
			ntup->tids[off + i] = s.elems[selected[lc][i]].tid;
	}

	/* element and neighbour tuple together on one page when they fit */
	if (ninline == dim &&
		esize + nsize + 2 * sizeof(ItemIdData) <=
		BLCKSZ - MAXALIGN(SizeOfPageHeaderData) - MAXALIGN(sizeof(HnswPageOpaqueData)))
		write_inline_element(index, &meta, etup, esize, ntup, nsize, building, &etid);
	else
		write_split_element(index, &meta, etup, esize, ntup, nsize, vec, dim,
							building, &etid);

	/*
	 * Connect: the selected neighbours point back (Alg. 1, lines 10-16).  A
	 * member a full list gives up for the new element may have had no other
	 * in-edge; the new element adopts it in a free slot of its own list
	 * before the replacement, so that it stays reachable.
	 */
	for (lc = top; lc >= 0; lc--)
	{
		int			accepted = 0;

		for (i = 0; i < nselected[lc]; i++)
			if (hnsw_update_connection(&s, &s.elems[selected[lc][i]], &etid, vec,
									   lc, building, false, &etup->neighbortid))
				accepted++;
		/* nobody took the new element: the nearest neighbour must */
		if (accepted == 0 && nselected[lc] > 0)
			hnsw_update_connection(&s, &s.elems[selected[lc][0]], &etid, vec,
								   lc, building, true, &etup->neighbortid);
	}

	/* a new top level: the new element is the entry point */
	if (level > meta.entryLevel)
	{
		Buffer		buf = ReadBuffer(index, HNSW_METAPAGE_BLKNO);
		HnswEdit	ed;
		HnswMetaPage mp;

		LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
		mp = HnswPageGetMeta(hnsw_edit_start(&ed, index, buf, building, false));
		mp->entryLevel = level;
		mp->entryBlkno = ItemPointerGetBlockNumber(&etid);
		mp->entryOffno = ItemPointerGetOffsetNumber(&etid);
		hnsw_edit_finish(&ed);
		UnlockReleaseBuffer(buf);
	}

	UnlockPage(index, HNSW_UPDATE_LOCK, lockmode);
}

void
hnsw_insert_vector(Relation index, const float *vec, ItemPointer heaptid,
				   bool building)
{
	MemoryContext ctx = AllocSetContextCreate(CurrentMemoryContext,
											  "gnnhnsw insert",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(ctx);

	insert_vector(index, vec, heaptid, building);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(ctx);
}

bool
hnswinsert(Relation index, Datum *values, bool *isnull, ItemPointer heap_tid,
		   Relation heap, IndexUniqueCheck checkUnique,
#if PG_VERSION_NUM >= 140000
		   bool indexUnchanged,
#endif
		   IndexInfo *indexInfo)
{
	MemoryContext ctx,
				old;
	HnswMetaPageData meta;
	float	   *vec;

	if (isnull[0])
		return false;

	ctx = AllocSetContextCreate(CurrentMemoryContext, "gnnhnsw insert",
								ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(ctx);
	hnsw_read_meta(index, &meta);
	vec = palloc(sizeof(float) * meta.dims);
	if (hnsw_form_vector(values[0], (HnswMetric) meta.metric, meta.dims, vec))
		hnsw_insert_vector(index, vec, heap_tid, false);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(ctx);
	return false;
}
