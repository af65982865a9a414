/*
 * hnswvacuum.c
 *		gnnhnsw: VACUUM.
 *
 * Three passes, as in pgvector's design:
 *	1. remove dead heap TIDs from every element; an element left with none
 *	   is to be deleted.  Then wait for the inserts that were running: one
 *	   may have chosen such an element as a neighbour before pass 1 reached
 *	   it, and its edge must be in place for pass 2 to repair it (an insert
 *	   that starts later sees no heap TID and does not choose it);
 *	2. move the entry point off a deleted element (highest live level), and
 *	   repair every live element that points at a deleted one: at that
 *	   level the deleted members give way to candidates chosen with the
 *	   neighbour-selection heuristic (Malkov & Yashunin 2018, Alg. 4) from
 *	   the live neighbours of the deleted ones; live members stay.  Then
 *	   every live element that a walk from the entry point through live
 *	   elements does not reach gets an in-edge;
 *	3. mark the elements deleted.  Their tuples stay readable (concurrent
 *	   scans may still walk through them) and an insert of the same level
 *	   reuses the space (hnswinsert.c); the insert hint moves back to the
 *	   first page with deleted elements.
 *
 * So a VACUUM stopped at any point (a crash, a cancel) leaves every live
 * element reachable: until pass 3 marks them, the deleted elements still
 * link what they linked, no repair removes a live element's in-edge, and
 * by pass 3 the live elements reach each other without them.
 *
 * A repair that finds the list changed under it by a concurrent insert
 * leaves that list alone: deleted elements stay traversable, so the graph
 * stays connected.
 *
 * Memory: the per-element work of passes 2 and 3 runs in a context reset
 * after each element; the reachability walk keeps two bits per line
 * pointer of the index and a queue that maintenance_work_mem bounds.
 */
#include "postgres.h"

#include "access/generic_xlog.h"
#include "commands/vacuum.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/memutils.h"

typedef struct VacState
{
	Relation	index;
	IndexBulkDeleteResult *stats;
	IndexBulkDeleteCallback callback;
	void	   *callback_state;
	BufferAccessStrategy bas;
	HnswMetaPageData meta;
	HnswKeySet	deleted;
	BlockNumber firstDeletedBlk;
	MemoryContext tmpCtx;
	HnswAllocator alloc;
} VacState;

static Buffer
vac_read(VacState *vs, BlockNumber blkno, int mode)
{
	Buffer		buf = ReadBufferExtended(vs->index, MAIN_FORKNUM, blkno,
										 RBM_NORMAL, vs->bas);

	LockBuffer(buf, mode);
	return buf;
}

/*
 * What a pass over the element pages does with one element: a test, or a
 * visit.  arg is the pass's own state.
 */
typedef bool (*VacElementTest) (VacState *vs, ItemPointer tid,
								HnswElementTuple etup, void *arg);
typedef void (*VacElementVisit) (VacState *vs, ItemPointer tid,
								 HnswElementTuple etup, void *arg);

/*
 * Walk the element pages for a pass that changes elements in place (passes
 * 1 and 3), each page locked exclusively.  choose is asked once about every
 * element not yet deleted and may leave in arg what change will need; if it
 * chose any, the page is changed in one WAL-logged edit in which change is
 * called on each chosen element.  recount, when given, then sees every
 * element not deleted on the page as it stays, still under the lock.
 */
static void
edit_element_pages(VacState *vs, VacElementTest choose, VacElementVisit change,
				   VacElementVisit recount, void *arg)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(vs->index);
	BlockNumber blkno;
	OffsetNumber *chosen = palloc(sizeof(OffsetNumber) * MaxOffsetNumber);

	for (blkno = HNSW_METAPAGE_BLKNO + 1; blkno < nblocks; blkno++)
	{
		Buffer		buf;
		Page		page;
		OffsetNumber off,
					maxoff;
		ItemPointerData tid;
		int			nchosen = 0;
		int			i;

		vacuum_delay_point();
		buf = vac_read(vs, blkno, BUFFER_LOCK_EXCLUSIVE);
		page = BufferGetPage(buf);
		if (PageIsNew(page))
		{
			UnlockReleaseBuffer(buf);
			continue;
		}
		maxoff = PageGetMaxOffsetNumber(page);
		for (off = FirstOffsetNumber; off <= maxoff; off++)
		{
			HnswElementTuple etup = hnsw_get_element(page, off);

			if (etup == NULL || etup->deleted)
				continue;
			ItemPointerSet(&tid, blkno, off);
			if (choose(vs, &tid, etup, arg))
				chosen[nchosen++] = off;
		}
		if (nchosen > 0)
		{
			HnswEdit	ed;

			page = hnsw_edit_start(&ed, vs->index, buf, false, false);
			for (i = 0; i < nchosen; i++)
			{
				ItemPointerSet(&tid, blkno, chosen[i]);
				change(vs, &tid, hnsw_get_element(page, chosen[i]), arg);
			}
			hnsw_edit_finish(&ed);
			page = BufferGetPage(buf);	/* the WAL copy is gone */
		}
		if (recount != NULL)
		{
			for (off = FirstOffsetNumber; off <= maxoff; off++)
			{
				HnswElementTuple etup = hnsw_get_element(page, off);

				if (etup == NULL || etup->deleted)
					continue;
				ItemPointerSet(&tid, blkno, off);
				recount(vs, &tid, etup, arg);
			}
		}
		UnlockReleaseBuffer(buf);
	}
	pfree(chosen);
}

/*
 * Pass 1.  arg is the page's dead flags: heap TID i of the element at
 * offset off is dead when dead[(off - 1) * HNSW_HEAPTIDS + i].
 */
static bool *
element_dead_flags(void *arg, ItemPointer tid)
{
	return (bool *) arg + (ItemPointerGetOffsetNumber(tid) - 1) * HNSW_HEAPTIDS;
}

static bool
has_dead_heap_tids(VacState *vs, ItemPointer tid, HnswElementTuple etup,
				   void *arg)
{
	bool	   *dead = element_dead_flags(arg, tid);
	bool		any = false;
	int			i;

	for (i = 0; i < etup->nheaptids; i++)
	{
		dead[i] = vs->callback(&etup->heaptids[i], vs->callback_state);
		any |= dead[i];
	}
	return any;
}

static void
drop_dead_heap_tids(VacState *vs, ItemPointer tid, HnswElementTuple etup,
					void *arg)
{
	bool	   *dead = element_dead_flags(arg, tid);
	int			i,
				n = 0;

	for (i = 0; i < etup->nheaptids; i++)
	{
		if (dead[i])
			vs->stats->tuples_removed++;
		else
			etup->heaptids[n++] = etup->heaptids[i];
	}
	for (i = n; i < HNSW_HEAPTIDS; i++)
		ItemPointerSetInvalid(&etup->heaptids[i]);
	etup->nheaptids = n;
}

/* An element left with no heap TID is to be deleted. */
static void
count_heap_tids(VacState *vs, ItemPointer tid, HnswElementTuple etup,
				void *arg)
{
	vs->stats->num_index_tuples += etup->nheaptids;
	if (etup->nheaptids == 0)
		hnsw_keyset_test_and_add(&vs->deleted, hnsw_tid_key(tid));
}

static void
remove_heap_tids(VacState *vs)
{
	bool	   *dead = palloc(sizeof(bool) * MaxOffsetNumber * HNSW_HEAPTIDS);

	edit_element_pages(vs, has_dead_heap_tids, drop_dead_heap_tids,
					   count_heap_tids, dead);
	pfree(dead);
}

static inline bool
is_deleted(VacState *vs, ItemPointer tid)
{
	return hnsw_keyset_contains(&vs->deleted, hnsw_tid_key(tid));
}

/* Neither deleted nor to be deleted. */
static inline bool
is_live(VacState *vs, ItemPointer tid, HnswElementTuple etup)
{
	return etup != NULL && !etup->deleted && etup->nheaptids > 0 &&
		!is_deleted(vs, tid);
}

/*
 * Walk the element pages, each locked in share mode, calling visit on every
 * live element.
 */
static void
for_each_live_element(VacState *vs, VacElementVisit visit, void *arg)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(vs->index);
	BlockNumber blkno;

	for (blkno = HNSW_METAPAGE_BLKNO + 1; blkno < nblocks; blkno++)
	{
		Buffer		buf = vac_read(vs, blkno, BUFFER_LOCK_SHARE);
		Page		page = BufferGetPage(buf);
		OffsetNumber off,
					maxoff = PageIsNew(page) ? 0 : PageGetMaxOffsetNumber(page);

		for (off = FirstOffsetNumber; off <= maxoff; off++)
		{
			HnswElementTuple etup = hnsw_get_element(page, off);
			ItemPointerData tid;

			ItemPointerSet(&tid, blkno, off);
			if (is_live(vs, &tid, etup))
				visit(vs, &tid, etup, arg);
		}
		UnlockReleaseBuffer(buf);
	}
}

/*
 * Call work on the live elements that want accepts, a page at a time: they
 * are listed under the page's share lock, then worked on with no lock held
 * (work reads and writes other pages), each in vs->tmpCtx, reset after it.
 */
typedef void (*VacElementWork) (VacState *vs, ItemPointer tid, void *arg);

static void
work_on_live_elements(VacState *vs, VacElementTest want, VacElementWork work,
					  void *arg)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(vs->index);
	BlockNumber blkno;
	OffsetNumber *chosen = palloc(sizeof(OffsetNumber) * MaxOffsetNumber);
	MemoryContext old = MemoryContextSwitchTo(vs->tmpCtx);

	for (blkno = HNSW_METAPAGE_BLKNO + 1; blkno < nblocks; blkno++)
	{
		Buffer		buf;
		Page		page;
		OffsetNumber off,
					maxoff;
		int			nchosen = 0;
		int			i;

		vacuum_delay_point();
		buf = vac_read(vs, blkno, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		maxoff = PageIsNew(page) ? 0 : PageGetMaxOffsetNumber(page);
		for (off = FirstOffsetNumber; off <= maxoff; off++)
		{
			HnswElementTuple etup = hnsw_get_element(page, off);
			ItemPointerData tid;

			ItemPointerSet(&tid, blkno, off);
			if (is_live(vs, &tid, etup) &&
				(want == NULL || want(vs, &tid, etup, arg)))
				chosen[nchosen++] = off;
		}
		UnlockReleaseBuffer(buf);

		for (i = 0; i < nchosen; i++)
		{
			ItemPointerData tid;

			CHECK_FOR_INTERRUPTS();
			ItemPointerSet(&tid, blkno, chosen[i]);
			work(vs, &tid, arg);
			MemoryContextReset(vs->tmpCtx);
		}
	}
	MemoryContextSwitchTo(old);
	pfree(chosen);
}

/* The live element of the highest level; of equals, the first met. */
typedef struct HighestElement
{
	ItemPointerData tid;
	int			level;
} HighestElement;

static void
keep_highest(VacState *vs, ItemPointer tid, HnswElementTuple etup, void *arg)
{
	HighestElement *best = arg;

	if (etup->level > best->level)
	{
		best->level = etup->level;
		best->tid = *tid;
	}
}

/*
 * Between passes 1 and 2: every insert holds the update lock in share mode
 * from its search to its last edge, so taking it exclusively waits for the
 * inserts that may have chosen an element pass 1 emptied.
 */
static void
wait_for_inserts(VacState *vs)
{
	LockPage(vs->index, HNSW_UPDATE_LOCK, ExclusiveLock);
	UnlockPage(vs->index, HNSW_UPDATE_LOCK, ExclusiveLock);
}

static bool
entry_is_deleted(VacState *vs)
{
	ItemPointerData entry;

	if (vs->meta.entryLevel < 0)
		return false;
	ItemPointerSet(&entry, vs->meta.entryBlkno, vs->meta.entryOffno);
	return is_deleted(vs, &entry);
}

/* Write the entry point (none when best->level < 0) and keep vs->meta. */
static void
set_entry_point(VacState *vs, HighestElement *best)
{
	Buffer		buf = ReadBuffer(vs->index, HNSW_METAPAGE_BLKNO);
	HnswEdit	ed;
	HnswMetaPage meta;

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	meta = HnswPageGetMeta(hnsw_edit_start(&ed, vs->index, buf, false, false));
	meta->entryLevel = best->level;
	meta->entryBlkno = best->level >= 0 ?
		ItemPointerGetBlockNumber(&best->tid) : InvalidBlockNumber;
	meta->entryOffno = best->level >= 0 ?
		ItemPointerGetOffsetNumber(&best->tid) : InvalidOffsetNumber;
	/* meta points into the WAL copy, which hnsw_edit_finish frees */
	memcpy(&vs->meta, meta, sizeof(HnswMetaPageData));
	hnsw_edit_finish(&ed);
	UnlockReleaseBuffer(buf);
}

/*
 * Pass 2a: the entry point must be live.  The successor is looked for
 * without the update lock, so that inserts go on during that index pass;
 * the lock is taken only to write it.  An insert that raised the entry
 * point meanwhile made the change unnecessary.  One that added an element
 * above the successor's level leaves it reachable through the levels
 * below, where it was linked.
 */
static void
replace_entry_point(VacState *vs)
{
	HighestElement best;

	hnsw_read_meta(vs->index, &vs->meta);
	if (!entry_is_deleted(vs))
		return;

	ItemPointerSetInvalid(&best.tid);
	best.level = -1;
	for_each_live_element(vs, keep_highest, &best);

	LockPage(vs->index, HNSW_UPDATE_LOCK, ExclusiveLock);
	hnsw_read_meta(vs->index, &vs->meta);
	if (entry_is_deleted(vs))
		set_entry_point(vs, &best);
	UnlockPage(vs->index, HNSW_UPDATE_LOCK, ExclusiveLock);
}

static bool
in_list(ItemPointer tid, ItemPointerData *list, int n)
{
	for (int i = 0; i < n; i++)
		if (ItemPointerEquals(tid, &list[i]))
			return true;
	return false;
}

/*
 * An element's repaired list at one level, from the live candidates tids
 * (ascending distance; keep[] says which the heuristic chose) and the
 * current list cur.  Every live member stays, so that no live element
 * loses an in-edge it had: until the reachability pass has run, a crash or
 * a cancel must not leave one unreachable.  Then come the candidates the
 * heuristic chose, then the nearest it passed over until the list is full
 * (Alg. 4's keepPrunedConnections, Malkov & Yashunin, TPAMI 2018): a
 * repaired list would otherwise shrink to the heuristic's own degree, far
 * below what the build left (on a CAGRA-built level 0 in 16 dimensions,
 * from 32 to about 11 after a third of the rows went, and searches at the
 * default ef_search then missed rows that are still there).
 */
static int
repaired_list(ItemPointerData *cur, int n, ItemPointerData *tids,
			  const bool *keep, int cnt, int max, ItemPointerData *out)
{
	int			k = 0;

	for (int i = 0; i < cnt && k < max; i++)
		if (in_list(&tids[i], cur, n))
			out[k++] = tids[i];
	for (int chosen = 1; chosen >= 0; chosen--)
		for (int i = 0; i < cnt && k < max; i++)
			if (keep[i] == chosen && !in_list(&tids[i], cur, n))
				out[k++] = tids[i];
	return k;
}

/* Pass 2b for one element: new lists for the levels that need them. */
static void
repair_element(VacState *vs, ItemPointer etid, void *arg)
{
	int			m = vs->meta.m;
	int			dim = vs->meta.dims;
	HnswMetric	metric = (HnswMetric) vs->meta.metric;
	HnswSearch	base;
	HnswElement *e;
	int			idx;
	int			lc;
	ItemPointerData *cur = palloc(sizeof(ItemPointerData) * 2 * m);
	ItemPointerData *more = palloc(sizeof(ItemPointerData) * 2 * m);

	hnsw_search_init(&base, vs->index, metric, dim, m, NULL);
	base.load_vectors = true;
	idx = hnsw_search_add(&base, etid);
	if (idx < 0)
		return;
	e = &base.elems[idx];
	if (e->deleted || e->nheaptids == 0)
		return;

	for (lc = 0; lc <= e->level; lc++)
	{
		int			n = hnsw_load_neighbors(vs->index, &e->neighbortid, m, lc, cur);
		int			max = hnsw_level_slots(m, lc);
		bool		broken = false;
		HnswSearch	t;
		int			i,
					j,
					cnt,
					nlist;
		ItemPointerData list[2 * HNSW_MAX_M];
		float	  **vecs;
		float	   *dists;
		ItemPointerData *tids;
		bool	   *keep;
		Buffer		buf;
		HnswNeighborTuple ntup;

		for (i = 0; i < n; i++)
			if (is_deleted(vs, &cur[i]))
				broken = true;
		if (!broken)
			continue;

		/* candidates, with their distances to e */
		hnsw_search_init(&t, vs->index, metric, dim, m, e->vec);
		t.load_vectors = true;
		hnsw_keyset_test_and_add(&t.visited, hnsw_tid_key(etid));
		for (i = 0; i < n; i++)
		{
			if (is_deleted(vs, &cur[i]))
			{
				HnswSearch d;
				int			didx;

				hnsw_search_init(&d, vs->index, metric, dim, m, NULL);
				didx = hnsw_search_add(&d, &cur[i]);
				if (didx >= 0)
				{
					int			nm = hnsw_load_neighbors(vs->index,
														 &d.elems[didx].neighbortid,
														 m, lc, more);

					for (j = 0; j < nm; j++)
						if (!is_deleted(vs, &more[j]))
							hnsw_search_add(&t, &more[j]);
				}
			}
			else
				hnsw_search_add(&t, &cur[i]);
		}

		vecs = palloc(sizeof(float *) * Max(t.nelems, 1));
		dists = palloc(sizeof(float) * Max(t.nelems, 1));
		tids = palloc(sizeof(ItemPointerData) * Max(t.nelems, 1));
		keep = palloc(sizeof(bool) * Max(t.nelems, 1));
		cnt = 0;
		for (i = 0; i < t.nelems; i++)
		{
			HnswElement *c = &t.elems[i];

			if (c->deleted || c->nheaptids == 0 || c->level < lc)
				continue;
			for (j = cnt; j > 0 && dists[j - 1] > c->dist; j--)
			{
				dists[j] = dists[j - 1];
				vecs[j] = vecs[j - 1];
				tids[j] = tids[j - 1];
			}
			dists[j] = c->dist;
			vecs[j] = c->vec;
			tids[j] = c->tid;
			cnt++;
		}
		hnsw_select_heuristic(metric, dim, vecs, dists, cnt, max, keep);
		nlist = repaired_list(cur, n, tids, keep, cnt, max, list);

		/* write, unless a concurrent insert changed the list meanwhile */
		buf = vac_read(vs, ItemPointerGetBlockNumber(&e->neighbortid),
					   BUFFER_LOCK_EXCLUSIVE);
		ntup = hnsw_get_neighbors(BufferGetPage(buf),
								  ItemPointerGetOffsetNumber(&e->neighbortid));
		if (ntup && lc <= ntup->level)
		{
			int			start = hnsw_level_offset(m, lc);
			int			k = 0;
			bool		same = true;

			for (i = start; i < start + max; i++)
				if (ItemPointerIsValid(&ntup->tids[i]) &&
					(k >= n || !ItemPointerEquals(&ntup->tids[i], &cur[k++])))
					same = false;
			if (same && k == n)
			{
				HnswEdit	ed;
				Page		page = hnsw_edit_start(&ed, vs->index, buf, false, false);

				ntup = hnsw_get_neighbors(page, ItemPointerGetOffsetNumber(&e->neighbortid));
				for (i = 0; i < max; i++)
				{
					if (i < nlist)
						ntup->tids[start + i] = list[i];
					else
						ItemPointerSetInvalid(&ntup->tids[start + i]);
				}
				hnsw_edit_finish(&ed);
			}
		}
		UnlockReleaseBuffer(buf);
	}
}

/* Pass 2b. */
static void
repair_graph(VacState *vs)
{
	work_on_live_elements(vs, NULL, repair_element, NULL);
}

/* The most line pointers a page of this index can have. */
static int
slots_per_block(int dim, int m)
{
	Size		smallest = Min(HNSW_NEIGHBOR_TUPLE_SIZE(m, 0),
							   HNSW_ELEMENT_TUPLE_SIZE(hnsw_inline_floats(dim)));
	int			ndata = hnsw_data_tuples(dim);

	if (ndata > 0)
	{
		int			tail = dim - hnsw_inline_floats(dim) - (ndata - 1) * HNSW_DATA_MAX;

		smallest = Min(smallest, HNSW_DATA_TUPLE_SIZE(tail));
	}
	return (BLCKSZ - MAXALIGN(SizeOfPageHeaderData) -
			MAXALIGN(sizeof(HnswPageOpaqueData))) / (smallest + sizeof(ItemIdData));
}

/*
 * Pass 2c's walk: two bits for each line pointer the index's pages can
 * hold, and a queue of what maintenance_work_mem leaves (at least 1024
 * TIDs).  Blocks added after the walk started hold elements inserted
 * since, which inserts link: they count as reached.
 */
typedef struct VacReach
{
	HnswReachWalk walk;
	HnswAllocator alloc;		/* the walk's context */
	HnswSearch	loader;			/* reads elements, checked, no vectors */
	int64		reconnected;	/* unreached elements given an in-edge */
} VacReach;

static void
vac_reach_init(VacReach *r, VacState *vs)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(vs->index);
	int			slots = slots_per_block(vs->meta.dims, vs->meta.m);
	Size		budget = (Size) maintenance_work_mem * 1024;
	Size		bitbytes = hnsw_reach_bitmap_bytes(nblocks, slots);
	Size		qcap;

	budget = budget > bitbytes ? budget - bitbytes : 0;
	qcap = Max(budget / sizeof(int64), 1024);
	qcap = Min(qcap, MaxAllocSize / sizeof(int64));
	hnsw_bind_allocator(&r->alloc);
	hnsw_reach_init(&r->walk, nblocks, slots, (int) qcap, &r->alloc);
	hnsw_search_init(&r->loader, vs->index, (HnswMetric) vs->meta.metric,
					 vs->meta.dims, vs->meta.m, NULL);
	r->reconnected = 0;
}

/*
 * Queue what a live element links to, at every level: the walk goes
 * through live elements only, those that stay once pass 3 has marked the
 * others.  A damaged element is an ERROR here, as in a search.
 */
static void
expand_element(VacState *vs, VacReach *r, ItemPointer tid, ItemPointerData *nb)
{
	HnswElement e;
	int			lc;

	e.tid = *tid;
	hnsw_load_element(&r->loader, &e);
	if (e.deleted || e.nheaptids == 0 || is_deleted(vs, tid))
		return;
	for (lc = 0; lc <= e.level; lc++)
	{
		int			n = hnsw_load_neighbors(vs->index, &e.neighbortid, vs->meta.m,
											lc, nb);

		for (int j = 0; j < n; j++)
			hnsw_reach_add(&r->walk, ItemPointerGetBlockNumber(&nb[j]),
						   ItemPointerGetOffsetNumber(&nb[j]));
	}
}

static bool
is_unreached(VacState *vs, ItemPointer tid, HnswElementTuple etup, void *arg)
{
	return !hnsw_reach_contains(&((VacReach *) arg)->walk,
								ItemPointerGetBlockNumber(tid),
								ItemPointerGetOffsetNumber(tid));
}

/*
 * An in-edge for a lost element from the nearest reached live element
 * that a search for it finds and that takes it, as an insert would add it.
 */
static void
reconnect_element(VacState *vs, ItemPointer lost, void *arg)
{
	int			dim = vs->meta.dims;
	float	   *vec = palloc(sizeof(float) * dim);
	HnswSearch	t;
	HnswHeapItem *found = palloc(sizeof(HnswHeapItem) * (vs->meta.efConstruction + 1));
	int			ep,
				nf,
				j;

	hnsw_load_vector(vs->index, lost, vec);
	hnsw_search_init(&t, vs->index, (HnswMetric) vs->meta.metric, dim,
					 vs->meta.m, vec);
	if (hnsw_search_to_level(&t, &vs->meta, 0, &ep) < 0)
		return;
	nf = hnsw_search_layer(&t, &ep, 1, vs->meta.efConstruction, 0, found);
	for (j = 0; j < nf; j++)
	{
		HnswElement *r = &t.elems[found[j].id];

		if (r->deleted || r->nheaptids == 0 || is_deleted(vs, &r->tid) ||
			ItemPointerEquals(&r->tid, lost) ||
			!hnsw_reach_contains(&((VacReach *) arg)->walk,
								 ItemPointerGetBlockNumber(&r->tid),
								 ItemPointerGetOffsetNumber(&r->tid)))
			continue;
		if (hnsw_update_connection(&t, r, lost, vec, 0, false, true, NULL))
			break;
	}
	((VacReach *) arg)->reconnected++;
}

/*
 * Pass 2c: heavy deletion can cut live elements off (their in-edges all
 * came from deleted ones).  Walk the graph from the entry point through
 * live elements; each live element not met gets an in-edge.
 */
static void
connect_unreachable(VacState *vs)
{
	VacReach	r;
	ItemPointerData tid;
	ItemPointerData *nb;
	BlockNumber blk;
	OffsetNumber off;
	MemoryContext walkCtx = AllocSetContextCreate(CurrentMemoryContext,
												  "gnnhnsw vacuum walk",
												  ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(walkCtx);

	hnsw_read_meta(vs->index, &vs->meta);
	if (vs->meta.entryLevel >= 0)
	{
		nb = palloc(sizeof(ItemPointerData) * 2 * vs->meta.m);
		vac_reach_init(&r, vs);
		hnsw_reach_add(&r.walk, vs->meta.entryBlkno, vs->meta.entryOffno);
		while (hnsw_reach_next(&r.walk, &blk, &off))
		{
			vacuum_delay_point();
			ItemPointerSet(&tid, blk, off);
			expand_element(vs, &r, &tid, nb);
		}
		work_on_live_elements(vs, is_unreached, reconnect_element, &r);
		if (r.reconnected > 0)
			elog(DEBUG1, "gnnhnsw vacuum: reconnected " INT64_FORMAT " elements",
				 r.reconnected);
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(walkCtx);
}

/* Pass 3. */
static bool
is_to_be_deleted(VacState *vs, ItemPointer tid, HnswElementTuple etup,
				 void *arg)
{
	return etup->nheaptids == 0 && is_deleted(vs, tid);
}

static void
set_deleted(VacState *vs, ItemPointer tid, HnswElementTuple etup, void *arg)
{
	etup->deleted = 1;
	if (vs->firstDeletedBlk == InvalidBlockNumber)
		vs->firstDeletedBlk = ItemPointerGetBlockNumber(tid);
}

/*
 * Elements were freed for reuse: the vectors scans cached under the old
 * generation may now change (hnswscan.c).  After the marking, so that a
 * scan that fills its cache under the new generation sees them deleted
 * and leaves them out.  An index built before the field existed has a
 * metapage whose pd_lower ends before it: extended, so the WAL record
 * covers it.
 */
static void
bump_generation(VacState *vs)
{
	Buffer		buf = ReadBuffer(vs->index, HNSW_METAPAGE_BLKNO);
	HnswEdit	ed;
	Page		page;
	HnswMetaPage meta;
	uint16		end;

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	page = hnsw_edit_start(&ed, vs->index, buf, false, false);
	meta = HnswPageGetMeta(page);
	meta->generation++;
	end = (char *) meta + sizeof(HnswMetaPageData) - (char *) page;
	if (((PageHeader) page)->pd_lower < end)
		((PageHeader) page)->pd_lower = end;
	hnsw_edit_finish(&ed);
	UnlockReleaseBuffer(buf);
}

static void
mark_deleted(VacState *vs)
{
	vs->firstDeletedBlk = InvalidBlockNumber;
	edit_element_pages(vs, is_to_be_deleted, set_deleted, NULL, NULL);
	if (vs->firstDeletedBlk != InvalidBlockNumber)
	{
		bump_generation(vs);
		hnsw_set_insert_page(vs->index, vs->firstDeletedBlk, true, false);
	}
}

IndexBulkDeleteResult *
hnswbulkdelete(IndexVacuumInfo *info, IndexBulkDeleteResult *stats,
			   IndexBulkDeleteCallback callback, void *callback_state)
{
	VacState	vs;

	if (stats == NULL)
		stats = palloc0(sizeof(IndexBulkDeleteResult));
	vs.index = info->index;
	vs.stats = stats;
	vs.callback = callback;
	vs.callback_state = callback_state;
	vs.bas = GetAccessStrategy(BAS_BULKREAD);
	vs.tmpCtx = AllocSetContextCreate(CurrentMemoryContext,
									  "gnnhnsw vacuum", ALLOCSET_DEFAULT_SIZES);
	hnsw_read_meta(vs.index, &vs.meta);
	hnsw_bind_allocator(&vs.alloc);
	hnsw_keyset_init(&vs.deleted, 1024, &vs.alloc);
	stats->num_index_tuples = 0;

	remove_heap_tids(&vs);
	if (vs.deleted.n > 0)
	{
		wait_for_inserts(&vs);
		replace_entry_point(&vs);
		repair_graph(&vs);
		connect_unreachable(&vs);
		mark_deleted(&vs);
	}

	hnsw_keyset_free(&vs.deleted);
	FreeAccessStrategy(vs.bas);
	MemoryContextDelete(vs.tmpCtx);
	stats->num_pages = RelationGetNumberOfBlocks(info->index);
	return stats;
}

IndexBulkDeleteResult *
hnswvacuumcleanup(IndexVacuumInfo *info, IndexBulkDeleteResult *stats)
{
	if (info->analyze_only)
		return stats;
	if (stats == NULL)
	{
		/* no bulk delete ran: the heap's count is as good as ours */
		stats = palloc0(sizeof(IndexBulkDeleteResult));
		stats->num_index_tuples = info->num_heap_tuples;
		stats->estimated_count = info->estimated_count;
	}
	stats->num_pages = RelationGetNumberOfBlocks(info->index);
	return stats;
}
