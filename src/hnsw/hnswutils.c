/*
 * hnswutils.c
 *		gnnhnsw: pages, tuples, WAL helpers, and the search over the pages
 *		(SEARCH-LAYER of Malkov & Yashunin 2018, Alg. 2) that scans and
 *		inserts share.
 */
#include "postgres.h"

#include <math.h>

#include "access/generic_xlog.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "utils/memutils.h"

/* ---------------------------------------------------------------------
 * Memory for the pure code
 * --------------------------------------------------------------------- */

static void *
palloc_alloc(void *ctx, size_t size)
{
	return MemoryContextAllocHuge(ctx ? (MemoryContext) ctx : CurrentMemoryContext,
								  size);
}

static void
palloc_free(void *ctx, void *ptr)
{
	pfree(ptr);
}

/*
 * Bind to CurrentMemoryContext now: structures that grow later (heaps, key
 * sets) must stay in the context they started in, whatever context is
 * current when they grow.
 */
void
hnsw_bind_allocator(HnswAllocator *a)
{
	a->alloc = palloc_alloc;
	a->free = palloc_free;
	a->ctx = CurrentMemoryContext;
}

/* ---------------------------------------------------------------------
 * Pages
 * --------------------------------------------------------------------- */

void
hnsw_init_page(Page page)
{
	HnswPageOpaque opaque;

	PageInit(page, BLCKSZ, sizeof(HnswPageOpaqueData));
	opaque = HnswPageGetOpaque(page);
	opaque->nextblkno = InvalidBlockNumber;
	opaque->flags = 0;
	opaque->page_id = HNSW_PAGE_ID;
}

/*
 * A new page at the end of the relation, exclusively locked (not yet
 * initialised: the caller does that inside its WAL record).  Other
 * backends may see the new block before it is initialised; they must leave
 * a page that PageIsNew() alone (only its creator initialises it).
 */
Buffer
hnsw_new_buffer(Relation index, ForkNumber forkNum)
{
	Buffer		buf;

#if PG_VERSION_NUM >= 160000
	buf = ExtendBufferedRel(BMR_REL(index), forkNum, NULL, EB_LOCK_FIRST);
#else
	LockRelationForExtension(index, ExclusiveLock);
	buf = ReadBufferExtended(index, forkNum, P_NEW, RBM_NORMAL, NULL);
	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	UnlockRelationForExtension(index, ExclusiveLock);
#endif
	return buf;
}

Page
hnsw_edit_start(HnswEdit *ed, Relation index, Buffer buf, bool building,
				bool fullImage)
{
	ed->buf = buf;
	if (building)
	{
		ed->state = NULL;
		ed->page = BufferGetPage(buf);
	}
	else
	{
		ed->state = GenericXLogStart(index);
		ed->page = GenericXLogRegisterBuffer(ed->state, buf,
											 fullImage ? GENERIC_XLOG_FULL_IMAGE : 0);
	}
	return ed->page;
}

void
hnsw_edit_finish(HnswEdit *ed)
{
	if (ed->state)
		GenericXLogFinish(ed->state);
	else
		MarkBufferDirty(ed->buf);
}

void
hnsw_fill_meta(Page page, int dims, int m, int efConstruction,
			   HnswMetric metric)
{
	HnswMetaPage meta;

	hnsw_init_page(page);
	meta = HnswPageGetMeta(page);
	meta->magic = HNSW_MAGIC;
	meta->version = HNSW_FORMAT_VERSION;
	meta->dims = dims;
	meta->m = m;
	meta->efConstruction = efConstruction;
	meta->metric = metric;
	meta->entryLevel = -1;
	meta->entryBlkno = InvalidBlockNumber;
	meta->entryOffno = InvalidOffsetNumber;
	meta->insertPage = InvalidBlockNumber;
	((PageHeader) page)->pd_lower =
		((char *) meta + sizeof(HnswMetaPageData)) - (char *) page;
}

void
hnsw_read_meta(Relation index, HnswMetaPageData *meta)
{
	Buffer		buf = ReadBuffer(index, HNSW_METAPAGE_BLKNO);
	Page		page;
	HnswMetaPage m;

	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	m = HnswPageGetMeta(page);
	if (PageIsNew(page) || m->magic != HNSW_MAGIC)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("index \"%s\" is not a gnnhnsw index or its metapage is damaged",
						RelationGetRelationName(index)),
				 errhint("REINDEX the index.")));
	if (m->version != HNSW_FORMAT_VERSION)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("gnnhnsw index \"%s\" has format version %u, this build reads %d",
						RelationGetRelationName(index), m->version,
						HNSW_FORMAT_VERSION),
				 errhint("REINDEX the index.")));
	memcpy(meta, m, sizeof(HnswMetaPageData));
	UnlockReleaseBuffer(buf);
}

/*
 * Move the metapage's insert hint: to blkno, or (onlyLower) only when blkno
 * is before the current hint.
 */
void
hnsw_set_insert_page(Relation index, BlockNumber blkno, bool onlyLower,
					 bool building)
{
	Buffer		buf = ReadBuffer(index, HNSW_METAPAGE_BLKNO);
	HnswMetaPage meta;
	HnswEdit	ed;

	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	meta = HnswPageGetMeta(BufferGetPage(buf));
	if (meta->insertPage == blkno ||
		(onlyLower && meta->insertPage != InvalidBlockNumber &&
		 meta->insertPage <= blkno))
	{
		UnlockReleaseBuffer(buf);
		return;
	}
	meta = HnswPageGetMeta(hnsw_edit_start(&ed, index, buf, building, false));
	meta->insertPage = blkno;
	hnsw_edit_finish(&ed);
	UnlockReleaseBuffer(buf);
}

HnswElementTuple
hnsw_get_element(Page page, OffsetNumber off)
{
	ItemId		iid;
	HnswElementTuple etup;

	if (off < FirstOffsetNumber || off > PageGetMaxOffsetNumber(page))
		return NULL;
	iid = PageGetItemId(page, off);
	if (!ItemIdIsUsed(iid) || ItemIdGetLength(iid) < offsetof(HnswElementTupleData, x))
		return NULL;
	etup = (HnswElementTuple) PageGetItem(page, iid);
	return etup->type == HNSW_ELEMENT_TUPLE ? etup : NULL;
}

HnswNeighborTuple
hnsw_get_neighbors(Page page, OffsetNumber off)
{
	ItemId		iid;
	HnswNeighborTuple ntup;

	if (off < FirstOffsetNumber || off > PageGetMaxOffsetNumber(page))
		return NULL;
	iid = PageGetItemId(page, off);
	if (!ItemIdIsUsed(iid) || ItemIdGetLength(iid) < offsetof(HnswNeighborTupleData, tids))
		return NULL;
	ntup = (HnswNeighborTuple) PageGetItem(page, iid);
	if (ntup->type != HNSW_NEIGHBOR_TUPLE ||
		ItemIdGetLength(iid) < offsetof(HnswNeighborTupleData, tids) +
		sizeof(ItemPointerData) * ntup->count)
		return NULL;
	return ntup;
}

/* ---------------------------------------------------------------------
 * Vectors
 * --------------------------------------------------------------------- */

void
hnsw_normalize(float *x, int dim)
{
	double		norm = 0;
	int			i;

	for (i = 0; i < dim; i++)
		norm += (double) x[i] * x[i];
	norm = sqrt(norm);
	if (norm > 0)
		for (i = 0; i < dim; i++)
			x[i] = (float) (x[i] / norm);
}

/*
 * The vector an index stores for a column value: checked, copied to out
 * and normalised for cosine.  Returns false when the row is not indexed
 * (a zero vector under cosine has no direction).
 */
bool
hnsw_form_vector(Datum value, HnswMetric metric, int dims, float *out)
{
	Vector	   *v = DatumGetVector(value);
	int			i;

	if (v->dim != dims)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("expected %d dimensions, not %d", dims, v->dim),
				 errhint("The gnnhnsw index was built for vector(%d).", dims)));
	memcpy(out, v->x, sizeof(float) * dims);
	if (metric == HNSW_METRIC_COSINE)
	{
		double		norm = 0;

		for (i = 0; i < dims; i++)
			norm += (double) out[i] * out[i];
		if (norm == 0)
			return false;
		hnsw_normalize(out, dims);
	}
	return true;
}

/* ---------------------------------------------------------------------
 * Loading elements
 * --------------------------------------------------------------------- */

void
hnsw_search_init(HnswSearch *s, Relation index, HnswMetric metric, int dim,
				 int m, const float *query)
{
	memset(s, 0, sizeof(HnswSearch));
	s->index = index;
	s->metric = metric;
	s->dim = dim;
	s->m = m;
	s->query = query;
	s->capelems = 256;
	s->elems = palloc(sizeof(HnswElement) * s->capelems);
	hnsw_bind_allocator(&s->alloc);
	hnsw_keyset_init(&s->visited, 256, &s->alloc);
}

/* Forget every element met; keeps the query and the memory. */
void
hnsw_search_reset(HnswSearch *s)
{
	int			i;

	for (i = 0; i < s->nelems; i++)
		if (s->elems[i].vec)
			pfree(s->elems[i].vec);
	s->nelems = 0;
	s->ntuples_read = 0;
	hnsw_keyset_free(&s->visited);
	hnsw_keyset_init(&s->visited, 256, &s->alloc);
}

/*
 * Read the element at e->tid: header fields, the distance to the query
 * (summed tuple by tuple for a vector split over several), and the vector
 * itself when s->load_vectors.  False if no element is there.
 */
static bool
load_element_pinned(HnswSearch *s, HnswElement *e, Buffer buf)
{
	Page		page;
	HnswElementTuple etup;
	ItemPointerData next;
	float		dist = 0;
	int			done;

	if (!BufferIsValid(buf))
		buf = ReadBuffer(s->index, ItemPointerGetBlockNumber(&e->tid));
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	etup = hnsw_get_element(page, ItemPointerGetOffsetNumber(&e->tid));
	if (etup == NULL || etup->dim != s->dim || etup->ninline > s->dim)
	{
		UnlockReleaseBuffer(buf);
		return false;
	}
	e->level = etup->level;
	e->deleted = etup->deleted != 0;
	e->nheaptids = Min(etup->nheaptids, HNSW_HEAPTIDS);
	memcpy(e->heaptids, etup->heaptids, sizeof(ItemPointerData) * e->nheaptids);
	e->neighbortid = etup->neighbortid;
	e->lsn = PageGetLSN(page);
	e->vec = s->load_vectors ? palloc(sizeof(float) * s->dim) : NULL;
	if (s->query)
		dist = hnsw_distance(s->metric, s->query, etup->x, etup->ninline);
	if (e->vec)
		memcpy(e->vec, etup->x, sizeof(float) * etup->ninline);
	done = etup->ninline;
	next = etup->datatid;
	UnlockReleaseBuffer(buf);

	while (done < s->dim && ItemPointerIsValid(&next))
	{
		HnswDataTuple dtup;
		ItemId		iid;
		OffsetNumber off = ItemPointerGetOffsetNumber(&next);
		int			count;

		buf = ReadBuffer(s->index, ItemPointerGetBlockNumber(&next));
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		page = BufferGetPage(buf);
		if (off > PageGetMaxOffsetNumber(page))
		{
			UnlockReleaseBuffer(buf);
			break;
		}
		iid = PageGetItemId(page, off);
		dtup = (HnswDataTuple) PageGetItem(page, iid);
		if (!ItemIdIsUsed(iid) || dtup->type != HNSW_DATA_TUPLE)
		{
			UnlockReleaseBuffer(buf);
			break;
		}
		count = Min(dtup->count, s->dim - done);
		if (s->query)
			dist += hnsw_distance(s->metric, s->query + done, dtup->x, count);
		if (e->vec)
			memcpy(e->vec + done, dtup->x, sizeof(float) * count);
		done += count;
		next = dtup->next;
		UnlockReleaseBuffer(buf);
	}
	if (done != s->dim)
	{
		if (e->vec)
			pfree(e->vec);
		e->vec = NULL;
		return false;
	}
	e->dist = dist;
	s->ntuples_read++;
	return true;
}

bool
hnsw_load_element(HnswSearch *s, HnswElement *e)
{
	return load_element_pinned(s, e, InvalidBuffer);
}

/* The whole vector of the element at tid (out: dim floats). */
void
hnsw_load_vector(Relation index, ItemPointer tid, float *out)
{
	HnswSearch	s;
	HnswElement e;
	HnswMetaPageData meta;

	hnsw_read_meta(index, &meta);
	memset(&s, 0, sizeof(s));
	s.index = index;
	s.dim = meta.dims;
	s.metric = meta.metric;
	s.load_vectors = true;
	e.tid = *tid;
	if (!hnsw_load_element(&s, &e))
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("no gnnhnsw element at (%u,%u) in index \"%s\"",
						ItemPointerGetBlockNumber(tid),
						ItemPointerGetOffsetNumber(tid),
						RelationGetRelationName(index))));
	memcpy(out, e.vec, sizeof(float) * meta.dims);
	pfree(e.vec);
}

/*
 * Visit tid in a search: -1 if already visited or not an element, else
 * the index of the loaded element in s->elems.
 */
/* Load an element not visited before, whose block the caller pinned. */
static int
search_add_pinned(HnswSearch *s, ItemPointer tid, Buffer buf)
{
	HnswElement *e;

	if (s->nelems == s->capelems)
	{
		s->capelems *= 2;
		s->elems = repalloc_huge(s->elems, sizeof(HnswElement) * s->capelems);
	}
	e = &s->elems[s->nelems];
	e->tid = *tid;
	if (!load_element_pinned(s, e, buf))
		return -1;
	return s->nelems++;
}

int
hnsw_search_add(HnswSearch *s, ItemPointer tid)
{
	HnswElement *e;

	if (hnsw_keyset_test_and_add(&s->visited, hnsw_tid_key(tid)))
		return -1;
	if (s->nelems == s->capelems)
	{
		s->capelems *= 2;
		s->elems = repalloc_huge(s->elems, sizeof(HnswElement) * s->capelems);
	}
	e = &s->elems[s->nelems];
	e->tid = *tid;
	if (!hnsw_load_element(s, e))
		return -1;
	return s->nelems++;
}

/*
 * Neighbour TIDs of an element at one level (out: room for 2m).  Zero when
 * the tuple is gone or has no such level.
 */
int
hnsw_load_neighbors(Relation index, ItemPointer neighbortid, int m, int level,
					ItemPointerData *out)
{
	Buffer		buf;
	Page		page;
	HnswNeighborTuple ntup;
	int			n = 0;

	if (!ItemPointerIsValid(neighbortid))
		return 0;
	buf = ReadBuffer(index, ItemPointerGetBlockNumber(neighbortid));
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	ntup = hnsw_get_neighbors(page, ItemPointerGetOffsetNumber(neighbortid));
	if (ntup && level <= ntup->level)
	{
		int			start = hnsw_level_offset(m, level);
		int			slots = hnsw_level_slots(m, level);
		int			i;

		if (start + slots <= ntup->count)
			for (i = 0; i < slots; i++)
				if (ItemPointerIsValid(&ntup->tids[i + start]))
					out[n++] = ntup->tids[i + start];
	}
	UnlockReleaseBuffer(buf);
	return n;
}

#if defined(__GNUC__) || defined(__clang__)
#define hnsw_prefetch(p) __builtin_prefetch(p)
#else
#define hnsw_prefetch(p) ((void) 0)
#endif

/* Prefetch hints only: nothing read here is trusted (no lock is held). */
static inline void
prefetch_itemid(Page page, OffsetNumber off)
{
	if (off >= FirstOffsetNumber &&
		off <= (BLCKSZ - SizeOfPageHeaderData) / sizeof(ItemIdData))
		hnsw_prefetch(PageGetItemId(page, off));
}

static inline void
prefetch_tuple(Page page, OffsetNumber off, Size len)
{
	ItemId		iid;
	Size		lpoff;
	Size		o;

	if (off < FirstOffsetNumber ||
		off > (BLCKSZ - SizeOfPageHeaderData) / sizeof(ItemIdData))
		return;
	iid = PageGetItemId(page, off);
	lpoff = ItemIdGetOffset(iid);
	if (len > 640)
		len = 640;
	if (lpoff == 0 || lpoff + len > BLCKSZ)
		return;
	for (o = 0; o < len; o += 64)
		hnsw_prefetch((char *) page + lpoff + o);
}

/*
 * SEARCH-LAYER over the pages (Alg. 2), in rounds.  hnsw_level_search_begin
 * starts from the entry elements given (indexes into s->elems); each
 * hnsw_level_search_round then returns the ef nearest elements it finds that
 * no earlier round returned.  A plain search (resumable false) is one round
 * and, as Alg. 2 does, forgets the elements too far for its result.  A
 * resumable search keeps them: every element met stays in cand until its
 * neighbours are read and in left until a round returns it, so the next
 * round continues where the last one stopped and, round after round,
 * reaches every element reachable from the entry.
 */
void
hnsw_level_search_begin(HnswLevelSearch *ls, HnswSearch *s, int *entries,
				   int nentries, int ef, int level, bool resumable)
{
	int			i;

	ls->s = s;
	ls->ef = ef;
	ls->level = level;
	ls->resumable = resumable;
	ls->nbrs = palloc(sizeof(ItemPointerData) * 2 * s->m);
	ls->todo = palloc(sizeof(ItemPointerData) * 2 * s->m);
	ls->bufs = palloc(sizeof(Buffer) * 2 * s->m);

	/* a fresh visited set per level: upper levels must not hide elements */
	hnsw_keyset_free(&s->visited);
	hnsw_keyset_init(&s->visited, level == 0 ? (uint64) ef * s->m : 64,
					 &s->alloc);
	hnsw_heap_init(&ls->cand, false, ef * 2, &s->alloc);
	hnsw_heap_init(&ls->res, true, ef + 1, &s->alloc);
	hnsw_heap_init(&ls->left, false, resumable ? ef * 2 : 1, &s->alloc);
	for (i = 0; i < nentries; i++)
	{
		HnswElement *e = &s->elems[entries[i]];

		hnsw_keyset_test_and_add(&s->visited, hnsw_tid_key(&e->tid));
		hnsw_heap_push(&ls->cand, e->dist, entries[i]);
		hnsw_heap_push(&ls->left, e->dist, entries[i]);
	}
}

/* An element met: into this round's result, or kept for later, or dropped. */
static void
level_search_meet(HnswLevelSearch *ls, float d, int idx)
{
	if (ls->res.n < ls->ef || d < hnsw_heap_top(&ls->res)->dist)
	{
		hnsw_heap_push(&ls->cand, d, idx);
		hnsw_heap_push(&ls->res, d, idx);
		if (ls->res.n > ls->ef)
		{
			HnswHeapItem out = hnsw_heap_pop(&ls->res);

			if (ls->resumable)
				hnsw_heap_push(&ls->left, out.dist, out.id);
		}
	}
	else if (ls->resumable)
	{
		hnsw_heap_push(&ls->cand, d, idx);
		hnsw_heap_push(&ls->left, d, idx);
	}
}

/* Read the neighbours of one element and meet those not visited yet. */
static void
level_search_expand(HnswLevelSearch *ls, int id)
{
	HnswSearch *s = ls->s;
	int			nn;
	int			nu = 0;
	int			i;

	nn = hnsw_load_neighbors(s->index, &s->elems[id].neighbortid, s->m,
							 ls->level, ls->nbrs);

	/*
	 * The neighbours' tuples are scattered over shared buffers: pin them all
	 * and prefetch their line pointers, then their tuples, before reading
	 * any, so that the cache misses overlap.
	 */
	for (i = 0; i < nn; i++)
	{
		if (hnsw_keyset_test_and_add(&s->visited, hnsw_tid_key(&ls->nbrs[i])))
			continue;
		ls->todo[nu] = ls->nbrs[i];
		ls->bufs[nu] = ReadBuffer(s->index, ItemPointerGetBlockNumber(&ls->nbrs[i]));
		prefetch_itemid(BufferGetPage(ls->bufs[nu]),
						ItemPointerGetOffsetNumber(&ls->nbrs[i]));
		nu++;
	}
	for (i = 0; i < nu; i++)
		prefetch_tuple(BufferGetPage(ls->bufs[i]), ItemPointerGetOffsetNumber(&ls->todo[i]),
					   offsetof(HnswElementTupleData, x) + sizeof(float) * s->dim);
	for (i = 0; i < nu; i++)
	{
		int			idx = search_add_pinned(s, &ls->todo[i], ls->bufs[i]);

		if (idx >= 0)
			level_search_meet(ls, s->elems[idx].dist, idx);
	}
}

/*
 * One round: out (room for ef) gets, ascending, the ef nearest elements met
 * that no earlier round returned; returns how many (0: nothing is left).
 * A resumable search reads no more neighbours once maxRead elements have
 * been read, but still returns what it has met.
 */
int
hnsw_level_search_round(HnswLevelSearch *ls, int64 maxRead, HnswHeapItem *out)
{
	HnswHeap   *res = &ls->res;
	int			n;

	/* this round's result starts with the nearest of those left over */
	while (ls->left.n > 0 && res->n < ls->ef)
	{
		HnswHeapItem it = hnsw_heap_pop(&ls->left);

		hnsw_heap_push(res, it.dist, it.id);
	}

	while (ls->cand.n > 0 && !(ls->resumable && ls->s->ntuples_read >= maxRead))
	{
		HnswHeapItem c = hnsw_heap_pop(&ls->cand);

		if (res->n >= ls->ef && c.dist > hnsw_heap_top(res)->dist)
		{
			/* not read yet: the next round may need it */
			if (ls->resumable)
				hnsw_heap_push(&ls->cand, c.dist, c.id);
			break;
		}
		CHECK_FOR_INTERRUPTS();
		level_search_expand(ls, c.id);
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

void
hnsw_level_search_end(HnswLevelSearch *ls)
{
	hnsw_heap_free(&ls->cand);
	hnsw_heap_free(&ls->res);
	hnsw_heap_free(&ls->left);
	pfree(ls->nbrs);
	pfree(ls->todo);
	pfree(ls->bufs);
}

/*
 * SEARCH-LAYER: the ef nearest elements of the query at one level, from
 * the entry elements given.  out (room for ef) gets them ascending;
 * returns how many.
 */
int
hnsw_search_layer(HnswSearch *s, int *entries, int nentries, int ef,
				  int level, HnswHeapItem *out)
{
	HnswLevelSearch ls;
	int			n;

	hnsw_level_search_begin(&ls, s, entries, nentries, ef, level, false);
	n = hnsw_level_search_round(&ls, 0, out);
	hnsw_level_search_end(&ls);
	return n;
}

/*
 * From the entry point down to level + 1 with ef = 1 (Alg. 5, the zoom-in
 * phase).  Returns the element to start level `level` from (index into
 * s->elems), or -1 for an empty index.
 */
int
hnsw_search_to_level(HnswSearch *s, HnswMetaPageData *meta, int level, int *ep)
{
	ItemPointerData tid;
	int			entry;
	int			lc;
	HnswHeapItem best;

	if (meta->entryLevel < 0)
		return -1;
	ItemPointerSet(&tid, meta->entryBlkno, meta->entryOffno);
	entry = hnsw_search_add(s, &tid);
	if (entry < 0)
		return -1;
	for (lc = meta->entryLevel; lc > level; lc--)
	{
		hnsw_search_layer(s, &entry, 1, 1, lc, &best);
		entry = best.id;
	}
	*ep = entry;
	return entry;
}

static const float *
array_vector(void *arg, int32_t id)
{
	return ((float **) arg)[id];
}

/*
 * Alg. 4 (hnsw_heuristic_select) over candidates held as arrays, sorted by
 * ascending distance to the base element: vecs[i] at dists[i].  keep[i]
 * tells which were kept; returns how many (at most max).
 */
int
hnsw_select_heuristic(HnswMetric metric, int dim, float **vecs,
					  const float *dists, int n, int max, bool *keep)
{
	HnswHeapItem *cands = palloc(sizeof(HnswHeapItem) * Max(n, 1));
	HnswHeapItem *kept = palloc(sizeof(HnswHeapItem) * Max(n, 1));
	int			nkept;

	for (int i = 0; i < n; i++)
	{
		cands[i].dist = dists[i];
		cands[i].id = i;
		keep[i] = false;
	}
	nkept = hnsw_heuristic_select(metric, dim, cands, n, max, array_vector, vecs, kept);
	for (int i = 0; i < nkept; i++)
		keep[kept[i].id] = true;
	pfree(cands);
	pfree(kept);
	return nkept;
}
