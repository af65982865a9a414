/*
 * hnswcheck.c
 *		gnnhnsw: gnnvec_index_info() and gnnvec_index_check().
 *
 * Both read every page of the index under share locks, one page at a
 * time, into arrays sorted by TID (pages are read in order, so they come
 * sorted), then work on the copy.  The check reports, one row each:
 * metapage problems, pages that are not ours, tuples of unknown kind,
 * element fields out of range, vectors whose data-tuple chain is broken
 * or holds NaN/Inf, neighbour tuples of the wrong shape, neighbour TIDs
 * that are not elements or point at the element itself or at one whose
 * level is too low, repeated neighbours, and live elements (not deleted,
 * with a heap row visible now) that cannot be reached from the entry point.
 */
#include "postgres.h"

#include <math.h>

#include "access/relation.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "commands/defrem.h"
#include "funcapi.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/tuplestore.h"

typedef struct CheckElem
{
	uint64		key;
	uint8		level;
	bool		deleted;
	uint8		nheaptids;
	ItemPointerData neighbortid;
	bool		reached;
} CheckElem;

typedef struct CheckNbr
{
	uint64		key;
	uint8		level;
	uint16		count;
	ItemPointerData *tids;
} CheckNbr;

typedef struct CheckData
{
	uint64		key;
	uint16		count;
	ItemPointerData next;
	bool		finite;
} CheckData;

typedef struct IndexImage
{
	HnswMetaPageData meta;
	bool		metaOk;
	BlockNumber nblocks;
	CheckElem  *elems;
	int64		nelems,
				capelems;
	CheckNbr   *nbrs;
	int64		nnbrs,
				capnbrs;
	CheckData  *data;
	int64		ndata,
				capdata;
	/* problems found while reading */
	Tuplestorestate *tstore;
	TupleDesc	tdesc;
	int64		nproblems;
} IndexImage;

static void
problem(IndexImage *img, int64 blkno, int offnum, const char *fmt,...)
	pg_attribute_printf(4, 5);

static void
problem(IndexImage *img, int64 blkno, int offnum, const char *fmt,...)
{
	va_list		args;
	char		buf[512];
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	img->nproblems++;
	if (img->tstore == NULL)
		return;
	va_start(args, fmt);
	vsnprintf(buf, sizeof(buf), fmt, args);
	va_end(args);
	values[0] = Int64GetDatum(blkno);
	values[1] = Int32GetDatum(offnum);
	nulls[1] = offnum < 0;
	values[2] = CStringGetTextDatum(buf);
	tuplestore_putvalues(img->tstore, img->tdesc, values, nulls);
}

#define GROW(arr, n, cap) \
	do { \
		if ((n) == (cap)) \
		{ \
			(cap) = (cap) ? (cap) * 2 : 256; \
			(arr) = (arr) ? repalloc_huge((arr), sizeof(*(arr)) * (cap)) \
				: MemoryContextAllocHuge(CurrentMemoryContext, sizeof(*(arr)) * (cap)); \
		} \
	} while (0)

static Relation
open_gnnhnsw(Oid indexoid)
{
	Relation	index = relation_open(indexoid, AccessShareLock);
	Oid			amoid = get_index_am_oid("gnnhnsw", false);

	if (index->rd_rel->relkind != RELKIND_INDEX ||
		index->rd_rel->relam != amoid)
	{
		char	   *name = pstrdup(RelationGetRelationName(index));

		relation_close(index, AccessShareLock);
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a gnnhnsw index", name),
				 errhint("Pass an index created with USING gnnhnsw.")));
	}
	if (pg_class_aclcheck(index->rd_index->indrelid, GetUserId(),
						  ACL_SELECT) != ACLCHECK_OK &&
#if PG_VERSION_NUM >= 160000
		!object_ownercheck(RelationRelationId, indexoid, GetUserId()))
#else
		!pg_class_ownercheck(indexoid, GetUserId()))
#endif
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for index %s",
						RelationGetRelationName(index)),
				 errhint("SELECT on the index's table is required.")));
	return index;
}

static void
read_image(Relation index, IndexImage *img)
{
	BlockNumber blkno;
	Buffer		buf;
	Page		page;
	HnswMetaPage meta;
	char	   *problem_text;

	buf = ReadBuffer(index, HNSW_METAPAGE_BLKNO);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	meta = HnswPageGetMeta(page);
	memcpy(&img->meta, meta, sizeof(HnswMetaPageData));
	UnlockReleaseBuffer(buf);
	problem_text = hnsw_meta_problem(index, &img->meta);
	img->metaOk = problem_text == NULL;
	if (!img->metaOk)
	{
		problem(img, 0, -1, "%s", problem_text);
		return;
	}

	img->nblocks = RelationGetNumberOfBlocks(index);
	for (blkno = HNSW_METAPAGE_BLKNO + 1; blkno < img->nblocks; blkno++)
	{
		OffsetNumber off,
					maxoff;

		CHECK_FOR_INTERRUPTS();
		buf = ReadBuffer(index, blkno);
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		if (PageIsNew(page))
		{
			/* an extension a crash left empty: harmless, reused by inserts */
			UnlockReleaseBuffer(buf);
			continue;
		}
		if (PageGetSpecialSize(page) != MAXALIGN(sizeof(HnswPageOpaqueData)) ||
			HnswPageGetOpaque(page)->page_id != HNSW_PAGE_ID)
		{
			problem(img, blkno, -1, "page is not a gnnhnsw page");
			UnlockReleaseBuffer(buf);
			continue;
		}
		maxoff = PageGetMaxOffsetNumber(page);
		for (off = FirstOffsetNumber; off <= maxoff; off++)
		{
			ItemId		iid = PageGetItemId(page, off);
			char	   *item;
			Size		len;
			ItemPointerData tid;

			if (!ItemIdIsUsed(iid))
				continue;
			len = ItemIdGetLength(iid);
			if (!ItemIdIsNormal(iid) || len == 0 ||
				ItemIdGetOffset(iid) + len > BLCKSZ)
			{
				problem(img, blkno, off, "line pointer out of range (offset %u, length %zu)",
						ItemIdGetOffset(iid), len);
				continue;
			}
			item = PageGetItem(page, iid);
			ItemPointerSet(&tid, blkno, off);
			if (item[0] == HNSW_ELEMENT_TUPLE && len >= offsetof(HnswElementTupleData, x))
			{
				HnswElementTuple etup = (HnswElementTuple) item;
				CheckElem  *e;
				int			i;

				GROW(img->elems, img->nelems, img->capelems);
				e = &img->elems[img->nelems++];
				e->key = hnsw_tid_key(&tid);
				e->level = etup->level;
				e->deleted = etup->deleted != 0;
				e->nheaptids = etup->nheaptids;
				e->neighbortid = etup->neighbortid;
				e->reached = false;
				if (etup->level > hnsw_level_cap(img->meta.m))
					problem(img, blkno, off, "element level %d above the limit %d",
							etup->level, hnsw_level_cap(img->meta.m));
				if (etup->nheaptids > HNSW_HEAPTIDS)
					problem(img, blkno, off, "element has %d heap TIDs", etup->nheaptids);
				else
					for (i = 0; i < etup->nheaptids; i++)
						if (!ItemPointerIsValid(&etup->heaptids[i]))
							problem(img, blkno, off, "heap TID %d is invalid", i);
				if (etup->dim != img->meta.dims ||
					etup->ninline != hnsw_inline_floats(img->meta.dims) ||
					len < offsetof(HnswElementTupleData, x) + sizeof(float) * etup->ninline)
					problem(img, blkno, off, "element vector shape wrong (dim %d, inline %d)",
							etup->dim, etup->ninline);
				else
				{
					for (i = 0; i < etup->ninline; i++)
						if (isnan(etup->x[i]) || isinf(etup->x[i]))
							break;
					if (i < etup->ninline)
						problem(img, blkno, off, "element vector holds NaN or infinity");
					if ((etup->ninline < etup->dim) != ItemPointerIsValid(&etup->datatid))
						problem(img, blkno, off, "element data-tuple pointer inconsistent with its dimensions");
				}
				if (!ItemPointerIsValid(&etup->neighbortid))
					problem(img, blkno, off, "element has no neighbour tuple");
			}
			else if (item[0] == HNSW_NEIGHBOR_TUPLE &&
					 len >= offsetof(HnswNeighborTupleData, tids))
			{
				HnswNeighborTuple ntup = (HnswNeighborTuple) item;
				CheckNbr   *n;

				if (len < offsetof(HnswNeighborTupleData, tids) +
					sizeof(ItemPointerData) * ntup->count)
				{
					problem(img, blkno, off, "neighbour tuple shorter than its %d slots",
							ntup->count);
					continue;
				}
				GROW(img->nbrs, img->nnbrs, img->capnbrs);
				n = &img->nbrs[img->nnbrs++];
				n->key = hnsw_tid_key(&tid);
				n->level = ntup->level;
				n->count = ntup->count;
				n->tids = palloc(sizeof(ItemPointerData) * Max(ntup->count, 1));
				memcpy(n->tids, ntup->tids, sizeof(ItemPointerData) * ntup->count);
			}
			else if (item[0] == HNSW_DATA_TUPLE && len >= offsetof(HnswDataTupleData, x))
			{
				HnswDataTuple dtup = (HnswDataTuple) item;
				CheckData  *d;
				int			i;

				GROW(img->data, img->ndata, img->capdata);
				d = &img->data[img->ndata++];
				d->key = hnsw_tid_key(&tid);
				d->count = dtup->count;
				d->next = dtup->next;
				d->finite = true;
				if (len < offsetof(HnswDataTupleData, x) + sizeof(float) * dtup->count)
					problem(img, blkno, off, "data tuple shorter than its %d floats",
							dtup->count);
				else
					for (i = 0; i < dtup->count; i++)
						if (isnan(dtup->x[i]) || isinf(dtup->x[i]))
							d->finite = false;
			}
			else
				problem(img, blkno, off, "tuple of unknown kind %d", item[0]);
		}
		UnlockReleaseBuffer(buf);
	}
}

/* Binary search in arrays sorted by key. */
#define FIND(arr, n, k, result) \
	do { \
		int64		lo_ = 0, hi_ = (n) - 1; \
		(result) = -1; \
		while (lo_ <= hi_) \
		{ \
			int64		mid_ = (lo_ + hi_) / 2; \
			if ((arr)[mid_].key == (k)) { (result) = mid_; break; } \
			if ((arr)[mid_].key < (k)) lo_ = mid_ + 1; else hi_ = mid_ - 1; \
		} \
	} while (0)

#define KEY_BLK(k) ((int64) ((k) >> 16))
#define KEY_OFF(k) ((int) ((k) & 0xFFFF))

static CheckNbr *
nbr_of(IndexImage *img, CheckElem *e)
{
	int64		i;

	if (!ItemPointerIsValid(&e->neighbortid))
		return NULL;
	FIND(img->nbrs, img->nnbrs, hnsw_tid_key(&e->neighbortid), i);
	return i >= 0 ? &img->nbrs[i] : NULL;
}

/*
 * Whether any heap row of an element is visible to a fresh snapshot.  An
 * element whose rows are all invisible is not "live": an insert in
 * progress has not linked it yet, or a crash cut its insert short (its row
 * was never committed) and VACUUM will take it away.
 */
static bool
element_has_visible_row(Relation index, CheckElem *e)
{
	Relation	heap;
	Snapshot	snapshot;
	Buffer		buf;
	HnswElementTuple etup;
	ItemPointerData tids[HNSW_HEAPTIDS];
	int			ntids = 0;
	int			i;
	bool		visible = false;

	buf = ReadBuffer(index, (BlockNumber) KEY_BLK(e->key));
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	etup = hnsw_get_element(BufferGetPage(buf), (OffsetNumber) KEY_OFF(e->key));
	if (etup && !etup->deleted)
	{
		ntids = Min(etup->nheaptids, HNSW_HEAPTIDS);
		memcpy(tids, etup->heaptids, sizeof(ItemPointerData) * ntids);
	}
	UnlockReleaseBuffer(buf);

	heap = table_open(index->rd_index->indrelid, AccessShareLock);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	for (i = 0; i < ntids && !visible; i++)
	{
		bool		all_dead = false;

		visible = table_index_fetch_tuple_check(heap, &tids[i], snapshot, &all_dead);
	}
	UnregisterSnapshot(snapshot);
	table_close(heap, AccessShareLock);
	return visible;
}

/* Element-level checks that need the whole image, then reachability. */
static void
check_graph(Relation index, IndexImage *img)
{
	int			m = img->meta.m;
	int			dims = img->meta.dims;
	int64		i;
	int64	   *queue;
	int64		qhead = 0,
				qtail = 0;

	for (i = 0; i < img->nelems; i++)
	{
		CheckElem  *e = &img->elems[i];
		CheckNbr   *n = nbr_of(img, e);
		int			lc;

		if (n == NULL)
		{
			if (ItemPointerIsValid(&e->neighbortid))
				problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
						"neighbour TID (%u,%u) is not a neighbour tuple",
						ItemPointerGetBlockNumberNoCheck(&e->neighbortid),
						ItemPointerGetOffsetNumberNoCheck(&e->neighbortid));
			continue;
		}
		if (n->level != e->level || n->count < 2 * m + e->level * m ||
			(n->count - 2 * m) % m != 0)
		{
			problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
					"neighbour tuple has level %d and %d slots for an element of level %d",
					n->level, n->count, e->level);
			continue;
		}
		/* a deleted element's lists are never repaired: only traversed */
		for (lc = 0; lc <= e->level && !e->deleted; lc++)
		{
			int			start = hnsw_level_offset(m, lc);
			int			slots = hnsw_level_slots(m, lc);
			int			s,
						t;

			for (s = start; s < start + slots; s++)
			{
				ItemPointer tid = &n->tids[s];
				int64		j;

				if (!ItemPointerIsValid(tid))
					continue;
				FIND(img->elems, img->nelems, hnsw_tid_key(tid), j);
				if (j < 0)
					problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
							"level %d neighbour (%u,%u) is not an element", lc,
							ItemPointerGetBlockNumber(tid), ItemPointerGetOffsetNumber(tid));
				else if (j == i)
					problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
							"element is its own neighbour at level %d", lc);
				else if (img->elems[j].level < lc)
					problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
							"level %d neighbour (%u,%u) has level %d", lc,
							ItemPointerGetBlockNumber(tid), ItemPointerGetOffsetNumber(tid),
							img->elems[j].level);
				for (t = start; t < s; t++)
					if (ItemPointerEquals(&n->tids[t], tid))
						problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
								"level %d neighbour (%u,%u) appears twice", lc,
								ItemPointerGetBlockNumber(tid), ItemPointerGetOffsetNumber(tid));
			}
		}
	}

	/* data chains of split vectors */
	if (hnsw_inline_floats(dims) < dims)
	{
		Buffer		buf;

		for (i = 0; i < img->nelems; i++)
		{
			CheckElem  *e = &img->elems[i];
			ItemPointerData tid;
			HnswElementTuple etup;
			ItemPointerData next;
			int			total = hnsw_inline_floats(dims);

			ItemPointerSet(&tid, KEY_BLK(e->key), KEY_OFF(e->key));
			buf = ReadBuffer(index, ItemPointerGetBlockNumber(&tid));
			LockBuffer(buf, BUFFER_LOCK_SHARE);
			etup = hnsw_get_element(BufferGetPage(buf), ItemPointerGetOffsetNumber(&tid));
			if (etup)
				next = etup->datatid;
			else
				ItemPointerSetInvalid(&next);
			UnlockReleaseBuffer(buf);
			/* each link holds at least one float, or the walk stops */
			while (ItemPointerIsValid(&next) && total < dims)
			{
				int64		j;

				FIND(img->data, img->ndata, hnsw_tid_key(&next), j);
				if (j < 0)
				{
					problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
							"data tuple (%u,%u) missing",
							ItemPointerGetBlockNumber(&next),
							ItemPointerGetOffsetNumber(&next));
					break;
				}
				if (!img->data[j].finite)
					problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
							"element vector holds NaN or infinity");
				if (img->data[j].count == 0)
				{
					problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
							"data tuple (%u,%u) holds no floats",
							ItemPointerGetBlockNumber(&next),
							ItemPointerGetOffsetNumber(&next));
					break;
				}
				total += img->data[j].count;
				next = img->data[j].next;
			}
			if (total == dims && ItemPointerIsValid(&next))
				problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
						"data tuple chain goes on past the vector's last float");
			else if (total != dims)
				problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
						"vector has %d of %d floats", total, dims);
		}
	}

	/* entry point */
	if (img->meta.entryLevel >= 0)
	{
		ItemPointerData etid;
		int64		j;

		ItemPointerSet(&etid, img->meta.entryBlkno, img->meta.entryOffno);
		FIND(img->elems, img->nelems, hnsw_tid_key(&etid), j);
		if (j < 0)
		{
			problem(img, 0, -1, "entry point (%u,%u) is not an element",
					img->meta.entryBlkno, img->meta.entryOffno);
			return;
		}
		if (img->elems[j].deleted)
			problem(img, 0, -1, "entry point (%u,%u) is deleted",
					img->meta.entryBlkno, img->meta.entryOffno);
		if (img->elems[j].level != img->meta.entryLevel)
			problem(img, 0, -1, "entry point has level %d, metapage says %d",
					img->elems[j].level, img->meta.entryLevel);

		/* breadth-first over every level's edges */
		queue = MemoryContextAllocHuge(CurrentMemoryContext,
									   sizeof(int64) * Max(img->nelems, 1));
		img->elems[j].reached = true;
		queue[qtail++] = j;
		while (qhead < qtail)
		{
			CheckElem  *e = &img->elems[queue[qhead++]];
			CheckNbr   *n = nbr_of(img, e);
			int			s;

			if (n == NULL)
				continue;
			for (s = 0; s < n->count; s++)
			{
				int64		k;

				if (!ItemPointerIsValid(&n->tids[s]))
					continue;
				FIND(img->elems, img->nelems, hnsw_tid_key(&n->tids[s]), k);
				if (k >= 0 && !img->elems[k].reached)
				{
					img->elems[k].reached = true;
					queue[qtail++] = k;
				}
			}
		}
	}
	for (i = 0; i < img->nelems; i++)
	{
		CheckElem  *e = &img->elems[i];

		if (!e->deleted && e->nheaptids > 0 && !e->reached &&
			element_has_visible_row(index, e))
			problem(img, KEY_BLK(e->key), KEY_OFF(e->key),
					"live element not reachable from the entry point");
	}
}

static int
cmp_uint64(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a,
				y = *(const uint64 *) b;

	return x < y ? -1 : x > y;
}

/*
 * The level-0 neighbour list the cache keeps for the element at key (valid
 * for tag) must be the one on its page: the same TIDs, in any order.
 */
static void
check_links(Relation index, IndexImage *img, const HnswVecCache *c,
			const void *cached, uint64 tag, uint64 key, const char *which)
{
	int32		slots[2 * HNSW_MAX_M];
	ItemPointerData tids[2 * HNSW_MAX_M];
	ItemPointerData nbrtid;
	uint64		want[2 * HNSW_MAX_M],
				got[2 * HNSW_MAX_M],
				nbr_sum;
	int			n = hnsw_vcache_links(c, cached, tag, slots, &nbr_sum),
				npage;

	if (n < 0)
		return;
	hnsw_key_tid(hnsw_vcache_word(cached), &nbrtid);
	npage = hnsw_load_neighbors(index, &nbrtid, img->meta.m, 0, tids);
	for (int i = 0; i < npage; i++)
		want[i] = hnsw_tid_key(&tids[i]);
	for (int i = 0; i < n; i++)
		hnsw_vcache_slot_entry(c, slots[i], &got[i]);
	qsort(want, npage, sizeof(uint64), cmp_uint64);
	qsort(got, n, sizeof(uint64), cmp_uint64);
	if (n != npage || memcmp(want, got, sizeof(uint64) * n) != 0)
		problem(img, KEY_BLK(key), KEY_OFF(key),
				"%s keeps a neighbour list (%d) that is not the page's (%d)",
				which, n, npage);
	else if (nbr_sum != hnsw_neighbors_fingerprint(tids, npage))
		problem(img, KEY_BLK(key), KEY_OFF(key),
				"%s keeps a neighbour list whose fingerprint is not the list's",
				which);
}

/*
 * A scan cache of the index (hnswscan.c, hnswshared.c), filled under the
 * index's current generation: every vector (or code) and neighbour tuple
 * TID in it must be its live element's, and every neighbour list and heap
 * TID it keeps valid under its stripe's change count (changes; NULL: none)
 * its page's.
 */
static void
check_cache(Relation index, IndexImage *img, const HnswVecCache *c,
			pg_atomic_uint64 *changes, const char *which)
{
	HnswSearch	loader;

	if (c->map == NULL)
		return;
	hnsw_search_init(&loader, index, (HnswMetric) img->meta.metric,
					 img->meta.dims, img->meta.m, NULL);
	loader.load_vectors = true;
	for (uint64 i = 0; i <= c->mask; i++)
	{
		uint64		key = c->map[i].key;
		const void *cached;
		int64		k;

		if (key == 0)
			continue;
		cached = hnsw_vcache_get(c, key);
		FIND(img->elems, img->nelems, key, k);
		if (k < 0)
			problem(img, KEY_BLK(key), KEY_OFF(key),
					"%s holds an element the index does not have", which);
		else if (!img->elems[k].deleted)
		{
			HnswElement e;

			hnsw_key_tid(key, &e.tid);
			hnsw_load_element(&loader, &e);
			if (!hnsw_vcache_matches(c, cached, e.vec) ||
				hnsw_vcache_word(cached) != hnsw_tid_key(&img->elems[k].neighbortid))
				problem(img, KEY_BLK(key), KEY_OFF(key),
						"%s disagrees with the element's vector or neighbour tuple",
						which);
			else if (changes != NULL)
			{
				uint64		heap = hnsw_vcache_heap(c, cached,
													hnsw_list_tag(changes, KEY_BLK(key)));

				if (heap != 0 && (e.deleted || e.nheaptids != 1 ||
								  hnsw_tid_key(&e.heaptids[0]) != heap))
					problem(img, KEY_BLK(key), KEY_OFF(key),
							"%s keeps a heap TID that is not the element's",
							which);
				check_links(index, img, c, cached,
							hnsw_list_tag(changes, KEY_BLK(hnsw_vcache_word(cached))),
							key, which);
			}
			pfree(e.vec);
		}
	}
}

/* This backend's scan cache of the index, and the shared one. */
static void
check_scan_caches(Relation index, IndexImage *img)
{
	uint32		generation;
	const HnswVecCache *c = hnsw_scan_cache_peek(index, &generation);
	HnswSharedCacheRef ref;

	if (c != NULL && generation == img->meta.generation)
		check_cache(index, img, c, NULL, "this backend's scan cache");
	c = hnsw_shared_cache_get(index, &img->meta, false, &ref);
	if (c != NULL && hnsw_shared_cache_enter(&ref))
	{
		check_cache(index, img, c, hnsw_shared_cache_changes(&ref),
					"the shared scan cache");
		hnsw_shared_cache_leave(&ref);
	}
}

PG_FUNCTION_INFO_V1(gnnvec_index_check);
Datum
gnnvec_index_check(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;
	Relation	index;
	IndexImage	img;
	TupleDesc	tdesc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("gnnvec_index_check must be called in a context that accepts a set"),
				 errhint("Call it in FROM: SELECT * FROM gnnvec_index_check('idx').")));
	if (get_call_result_type(fcinfo, NULL, &tdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	index = open_gnnhnsw(indexoid);
	memset(&img, 0, sizeof(img));
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	img.tdesc = CreateTupleDescCopy(tdesc);
	img.tstore = tuplestore_begin_heap(true, false, work_mem);
	MemoryContextSwitchTo(old);

	read_image(index, &img);
	if (img.metaOk)
	{
		check_graph(index, &img);
		check_scan_caches(index, &img);
	}
	relation_close(index, AccessShareLock);

	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setResult = img.tstore;
	rsinfo->setDesc = img.tdesc;
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(gnnvec_index_info);
Datum
gnnvec_index_info(PG_FUNCTION_ARGS)
{
	Oid			indexoid = PG_GETARG_OID(0);
	Relation	index;
	IndexImage	img;
	TupleDesc	tdesc;
	Datum		values[12];
	bool		nulls[12];
	int64		live = 0,
				deleted = 0,
				heaptids = 0,
				edges = 0,
				i;
	int			maxlevel = -1;
	ItemPointerData *entry;

	if (get_call_result_type(fcinfo, NULL, &tdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	index = open_gnnhnsw(indexoid);
	memset(&img, 0, sizeof(img));
	read_image(index, &img);
	if (!img.metaOk)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("index \"%s\" has a damaged metapage",
						RelationGetRelationName(index)),
				 errhint("Run gnnvec_index_check() for details, then REINDEX.")));
	for (i = 0; i < img.nelems; i++)
	{
		CheckElem  *e = &img.elems[i];
		CheckNbr   *n;
		int			s;

		if (e->deleted)
		{
			deleted++;
			continue;
		}
		live++;
		heaptids += e->nheaptids;
		maxlevel = Max(maxlevel, e->level);
		n = nbr_of(&img, e);
		if (n && n->count >= 2 * img.meta.m)
			for (s = 0; s < 2 * img.meta.m; s++)
				if (ItemPointerIsValid(&n->tids[s]))
					edges++;
	}

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int64GetDatum(live);
	values[1] = Int64GetDatum(deleted);
	values[2] = Int64GetDatum(heaptids);
	values[3] = Int32GetDatum(maxlevel + 1);
	values[4] = Float8GetDatum(live > 0 ? (double) edges / live : 0.0);
	if (img.meta.entryLevel >= 0)
	{
		entry = palloc(sizeof(ItemPointerData));
		ItemPointerSet(entry, img.meta.entryBlkno, img.meta.entryOffno);
		values[5] = PointerGetDatum(entry);
	}
	else
		nulls[5] = true;
	values[6] = Int32GetDatum(img.meta.entryLevel);
	values[7] = Int64GetDatum((int64) img.nblocks);
	values[8] = Int64GetDatum((int64) img.nblocks * BLCKSZ);
	values[9] = Int32GetDatum(img.meta.dims);
	values[10] = Int32GetDatum(img.meta.m);
	values[11] = Int32GetDatum(img.meta.efConstruction);
	relation_close(index, AccessShareLock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tdesc),
													  values, nulls)));
}
