/*
 * hnswutils.c
 *		gnnhnsw: pages, tuples, WAL helpers, and the search over the pages
 *		(SEARCH-LAYER of Malkov & Yashunin 2018, Alg. 2) that scans and
 *		inserts share.
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
 * initialised: the caller does that inside its WAL record, before it
 * unlocks the buffer).  Other backends may see the new block before it is
 * initialised; they leave a page that PageIsNew() alone unless its creator
 * has abandoned it, which they can tell because the buffer is locked
 * before the relation extension lock is released (hnswinsert.c,
 * new_page_abandoned).
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
	ed->index = index;
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

/*
 * A change to a live index (not one being built) counts for the shared
 * scan cache's neighbour lists (hnswshared.c).
 */
void
hnsw_edit_finish(HnswEdit *ed)
{
	if (ed->state)
	{
		GenericXLogFinish(ed->state);
		hnsw_shared_cache_modified(ed->index, BufferGetBlockNumber(ed->buf));
	}
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

	/*
	 * A random start, so that a scan cache keyed by an index OID and file
	 * that a later index happens to reuse is not taken for that index's.
	 */
#if PG_VERSION_NUM >= 150000
	meta->generation = pg_prng_uint32(&pg_global_prng_state);
#else
	meta->generation = (uint32) random();
#endif
	((PageHeader) page)->pd_lower =
		((char *) meta + sizeof(HnswMetaPageData)) - (char *) page;
}

/*
 * Whether blkno is a block of the index, cheaply: the size seen last is
 * kept in rd_amcache, and only a block beyond it costs a look at the file.
 * An index never shrinks (nothing truncates it; a REINDEX or TRUNCATE gives
 * it a new relfilenode, and the relcache invalidation that comes with that
 * frees rd_amcache), so a block below the size seen once stays valid.
 */
static bool
block_in_index(Relation index, BlockNumber blkno)
{
	BlockNumber *known = (BlockNumber *) index->rd_amcache;

	if (known != NULL && blkno < *known)
		return true;
	if (known == NULL)
	{
		known = MemoryContextAlloc(index->rd_indexcxt, sizeof(BlockNumber));
		index->rd_amcache = known;
	}
	*known = RelationGetNumberOfBlocks(index);
	return blkno < *known;
}

/*
 * Whether a TID read from a tuple can point at a tuple of the index: an
 * offset a page can have, on an existing block other than the metapage.
 */
static inline bool
tid_in_index(Relation index, ItemPointer tid)
{
	BlockNumber blkno = ItemPointerGetBlockNumberNoCheck(tid);
	OffsetNumber off = ItemPointerGetOffsetNumberNoCheck(tid);

	return off >= FirstOffsetNumber && off <= MaxOffsetNumber &&
		blkno != HNSW_METAPAGE_BLKNO && block_in_index(index, blkno);
}

/*
 * What is wrong with a metapage, or NULL.  These are the fields readers
 * size arrays and bound loops by, and the entry point they start from.
 */
char *
hnsw_meta_problem(Relation index, const HnswMetaPageData *meta)
{
	int32		typmod = TupleDescAttr(RelationGetDescr(index), 0)->atttypmod;
	ItemPointerData entry;

	if (meta->magic != HNSW_MAGIC)
		return psprintf("metapage magic is %08x, expected %08x",
						meta->magic, HNSW_MAGIC);
	if (meta->version != HNSW_FORMAT_VERSION)
		return psprintf("format version %u, expected %d",
						meta->version, HNSW_FORMAT_VERSION);
	if (meta->dims < 1 || meta->dims > VECTOR_MAX_DIM ||
		(typmod > 0 && meta->dims != typmod) ||
		meta->m < HNSW_MIN_M || meta->m > HNSW_MAX_M ||
		meta->efConstruction < HNSW_MIN_EF_CONSTRUCTION ||
		meta->efConstruction > HNSW_MAX_EF_CONSTRUCTION ||
		meta->metric < HNSW_METRIC_L2 || meta->metric > HNSW_METRIC_L1)
		return psprintf("metapage fields out of range (dims %u, m %u, ef_construction %u, metric %u)",
						meta->dims, meta->m, meta->efConstruction,
						meta->metric);
	if (meta->entryLevel < -1 || meta->entryLevel > hnsw_level_cap(meta->m))
		return psprintf("entry level %d out of range", meta->entryLevel);
	ItemPointerSet(&entry, meta->entryBlkno, meta->entryOffno);
	if (meta->entryLevel >= 0 && !tid_in_index(index, &entry))
		return psprintf("entry point (%u,%u) is not in the index",
						meta->entryBlkno, meta->entryOffno);
	return NULL;
}

void
hnsw_read_meta(Relation index, HnswMetaPageData *meta)
{
	Buffer		buf = ReadBuffer(index, HNSW_METAPAGE_BLKNO);
	char	   *problem;

	LockBuffer(buf, BUFFER_LOCK_SHARE);
	memcpy(meta, HnswPageGetMeta(BufferGetPage(buf)), sizeof(HnswMetaPageData));
	UnlockReleaseBuffer(buf);
	problem = hnsw_meta_problem(index, meta);
	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INDEX_CORRUPTED),
				 errmsg("index \"%s\" is not a gnnhnsw index or its metapage is damaged",
						RelationGetRelationName(index)),
				 errdetail_internal("%s", problem),
				 errhint("REINDEX the index.")));
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

/*
 * The item at off when it is a tuple whose bytes lie in the page and that
 * has at least minlen of them and the given kind (first byte); else NULL.
 * *len gets its length.
 */
static char *
page_tuple(Page page, OffsetNumber off, uint8 kind, Size minlen, Size *len)
{
	ItemId		iid;
	char	   *item;

	if (off < FirstOffsetNumber || off > PageGetMaxOffsetNumber(page))
		return NULL;
	iid = PageGetItemId(page, off);
	*len = ItemIdGetLength(iid);
	if (!ItemIdIsNormal(iid) || *len < minlen ||
		ItemIdGetOffset(iid) + *len > BLCKSZ)
		return NULL;
	item = (char *) PageGetItem(page, iid);
	return (uint8) item[0] == kind ? item : NULL;
}

/*
 * The element tuple at off, or NULL with *why saying why not: another kind
 * of tuple, or an element whose length, inline floats and heap TID count
 * disagree, so that reading it would overrun it.
 */
static HnswElementTuple
element_at(Page page, OffsetNumber off, const char **why)
{
	Size		len;
	HnswElementTuple etup;

	etup = (HnswElementTuple) page_tuple(page, off, HNSW_ELEMENT_TUPLE,
										 offsetof(HnswElementTupleData, x), &len);
	if (etup == NULL)
		*why = "no element tuple there";
	else if (len != HNSW_ELEMENT_TUPLE_SIZE(etup->ninline))
		*why = "element tuple length does not match its inline floats";
	else if (etup->nheaptids > HNSW_HEAPTIDS)
		*why = "element has more heap TIDs than an element holds";
	else
		return etup;
	return NULL;
}

/* The same for neighbour tuples: their length must match their slots. */
static HnswNeighborTuple
neighbors_at(Page page, OffsetNumber off, const char **why)
{
	Size		len;
	HnswNeighborTuple ntup;

	ntup = (HnswNeighborTuple) page_tuple(page, off, HNSW_NEIGHBOR_TUPLE,
										  offsetof(HnswNeighborTupleData, tids), &len);
	if (ntup == NULL)
		*why = "no neighbour tuple there";
	else if (len != MAXALIGN(offsetof(HnswNeighborTupleData, tids) +
							 sizeof(ItemPointerData) * ntup->count))
		*why = "neighbour tuple length does not match its slots";
	else
		return ntup;
	return NULL;
}

/*
 * Page walkers (VACUUM, the checks) take what these return and skip the
 * rest; a tuple they return can be read whole.
 */
HnswElementTuple
hnsw_get_element(Page page, OffsetNumber off)
{
	const char *why;

	return element_at(page, off, &why);
}

HnswNeighborTuple
hnsw_get_neighbors(Page page, OffsetNumber off)
{
	const char *why;

	return neighbors_at(page, off, &why);
}

/*
 * The error for a damaged tuple met by following the graph.  Everything
 * that follows TIDs (searches, inserts, VACUUM's walks) stops here rather
 * than read past a tuple, loop, or give wrong answers.
 */
static void
tuple_corrupted(Relation index, BlockNumber blkno, OffsetNumber off,
				const char *fmt,...)
			pg_attribute_printf(4, 5) pg_attribute_noreturn();

static void
tuple_corrupted(Relation index, BlockNumber blkno, OffsetNumber off,
				const char *fmt,...)
{
	va_list		args;
	char		detail[256];

	va_start(args, fmt);
	vsnprintf(detail, sizeof(detail), fmt, args);
	va_end(args);
	ereport(ERROR,
			(errcode(ERRCODE_INDEX_CORRUPTED),
			 errmsg("index \"%s\" has a damaged tuple at block %u, offset %u",
					RelationGetRelationName(index), blkno, off),
			 errdetail_internal("%s", detail),
			 errhint("REINDEX the index.")));
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

/*
 * Let a search with a query meet elements through a scan cache: the query
 * as cached distances need it (its 8-bit code too) and a buffer for the
 * vectors it puts in the cache.  Only scans have a cache; other searches
 * (inserts, VACUUM) skip this work.
 */
void
hnsw_search_use_cache(HnswSearch *s, HnswVecCache *cache)
{
	Assert(s->query != NULL);
	s->cache = cache;
	if (cache == NULL)
		return;
	hnsw_vcache_query(&s->cquery, s->query, s->dim, palloc(s->dim));
	s->cachebuf = palloc(sizeof(float) * s->dim);
}

#if PG_VERSION_NUM >= 160000
#define INDEX_FILE(rel) ((rel)->rd_locator)
#else
#define INDEX_FILE(rel) ((rel)->rd_node)
#endif

void
hnsw_index_id(Relation index, HnswIndexId *id)
{
	memset(id, 0, sizeof(HnswIndexId));
	id->indexoid = RelationGetRelid(index);
	memcpy(&id->file, &INDEX_FILE(index), sizeof(id->file));
}

bool
hnsw_index_id_is(const HnswIndexId *id, Relation index)
{
	return id->indexoid == RelationGetRelid(index) &&
		memcmp(&id->file, &INDEX_FILE(index), sizeof(id->file)) == 0;
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
 * ERROR unless the element tuple at (blkno, off) is one of this index: its
 * vector's shape, level and TIDs are what the readers rely on.
 */
static void
check_element(HnswSearch *s, BlockNumber blkno, OffsetNumber off,
			  HnswElementTuple etup)
{
	if (etup->dim != s->dim || etup->ninline != hnsw_inline_floats(s->dim))
		tuple_corrupted(s->index, blkno, off,
						"element has %d dimensions, %d inline; the index has %d",
						etup->dim, etup->ninline, s->dim);
	if (etup->level > hnsw_level_cap(s->m))
		tuple_corrupted(s->index, blkno, off,
						"element level %d is above the limit %d",
						etup->level, hnsw_level_cap(s->m));
	if (!tid_in_index(s->index, &etup->neighbortid))
		tuple_corrupted(s->index, blkno, off,
						"element's neighbour tuple (%u,%u) is not in the index",
						ItemPointerGetBlockNumberNoCheck(&etup->neighbortid),
						ItemPointerGetOffsetNumberNoCheck(&etup->neighbortid));
	if (ItemPointerIsValid(&etup->datatid) != (etup->ninline < s->dim))
		tuple_corrupted(s->index, blkno, off,
						"element's data tuple pointer does not match its dimensions");
}

/*
 * Add the data tuples that continue a vector from float done on to the
 * distance (and the vector), following the chain from next; prev is the
 * tuple next was read from.  The split depends only on the dimension count,
 * so every link must hold exactly the floats expected and the chain must
 * end with the vector: each step consumes at least one float, and a chain
 * that loops or is cut short is an error.
 */
static float
load_data_chain(HnswSearch *s, HnswElement *e, int done, ItemPointerData next,
				ItemPointerData prev)
{
	float		dist = 0;

	while (done < s->dim)
	{
		int			want = Min(s->dim - done, HNSW_DATA_MAX);
		BlockNumber blkno = ItemPointerGetBlockNumberNoCheck(&next);
		OffsetNumber off = ItemPointerGetOffsetNumberNoCheck(&next);
		Size		len;
		Buffer		buf;
		HnswDataTuple dtup;

		CHECK_FOR_INTERRUPTS();
		if (!tid_in_index(s->index, &next))
			tuple_corrupted(s->index, ItemPointerGetBlockNumber(&prev),
							ItemPointerGetOffsetNumber(&prev),
							"data tuple pointer (%u,%u) is not in the index",
							blkno, off);
		buf = ReadBuffer(s->index, blkno);
		LockBuffer(buf, BUFFER_LOCK_SHARE);
		dtup = (HnswDataTuple) page_tuple(BufferGetPage(buf), off,
										  HNSW_DATA_TUPLE,
										  offsetof(HnswDataTupleData, x), &len);
		if (dtup == NULL)
			tuple_corrupted(s->index, ItemPointerGetBlockNumber(&prev),
							ItemPointerGetOffsetNumber(&prev),
							"the next data tuple, (%u,%u), is missing", blkno, off);
		if (dtup->count != want || len != HNSW_DATA_TUPLE_SIZE(want))
			tuple_corrupted(s->index, blkno, off,
							"data tuple holds %d floats in %zu bytes, expected %d",
							dtup->count, len, want);
		if (s->query)
			dist += hnsw_distance(s->metric, s->query + done, dtup->x, want);
		if (e->vec)
			memcpy(e->vec + done, dtup->x, sizeof(float) * want);
		done += want;
		prev = next;
		next = dtup->next;
		UnlockReleaseBuffer(buf);
	}
	if (ItemPointerIsValid(&next))
		tuple_corrupted(s->index, ItemPointerGetBlockNumber(&prev),
						ItemPointerGetOffsetNumber(&prev),
						"data tuple chain goes on past the vector's last float");
	return dist;
}

/*
 * Read the element at e->tid: header fields, the distance to the query
 * (summed tuple by tuple for a vector split over several), and the vector
 * itself when s->load_vectors; with put, a live element's vector goes into
 * the search's scan cache, if it has one.  TIDs come from the graph, which
 * points only at elements: anything else there is damage (an ERROR).
 */
static void
load_element_pinned(HnswSearch *s, HnswElement *e, Buffer buf, bool put)
{
	BlockNumber blkno = ItemPointerGetBlockNumberNoCheck(&e->tid);
	OffsetNumber off = ItemPointerGetOffsetNumberNoCheck(&e->tid);
	Page		page;
	HnswElementTuple etup;
	ItemPointerData next;
	const char *why;
	float		dist = 0;
	int			done;
	bool		caching;

	if (!BufferIsValid(buf))
	{
		if (!tid_in_index(s->index, &e->tid))
			tuple_corrupted(s->index, blkno, off,
							"an element pointer leads to this TID, which is not in the index");
		buf = ReadBuffer(s->index, blkno);
	}
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	page = BufferGetPage(buf);
	etup = element_at(page, off, &why);
	if (etup == NULL)
		tuple_corrupted(s->index, blkno, off, "%s", why);
	check_element(s, blkno, off, etup);
	e->level = etup->level;
	e->deleted = etup->deleted != 0;
	e->nheaptids = etup->nheaptids;
	memcpy(e->heaptids, etup->heaptids, sizeof(ItemPointerData) * e->nheaptids);
	e->neighbortid = etup->neighbortid;
	e->lsn = PageGetLSN(page);
	e->verified = true;
	caching = put && s->cache != NULL && !s->load_vectors && !etup->deleted;
	e->vec = s->load_vectors ? palloc(sizeof(float) * s->dim) :
		caching ? s->cachebuf : NULL;
	if (s->query)
		dist = hnsw_distance(s->metric, s->query, etup->x, etup->ninline);
	if (e->vec)
		memcpy(e->vec, etup->x, sizeof(float) * etup->ninline);
	done = etup->ninline;
	next = etup->datatid;
	UnlockReleaseBuffer(buf);

	e->dist = dist + load_data_chain(s, e, done, next, e->tid);

	/*
	 * Only a live element's vector is cached: a deleted one may be taken
	 * over by an insert at any time, and VACUUM bumps the generation only
	 * when it frees elements (hnswscan.c).
	 */
	if (caching)
	{
		hnsw_vcache_put(s->cache, hnsw_tid_key(&e->tid), s->cachebuf,
						hnsw_tid_key(&e->neighbortid));
		e->vec = NULL;
	}
}

void
hnsw_load_element(HnswSearch *s, HnswElement *e)
{
	load_element_pinned(s, e, InvalidBuffer, true);
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
	s.m = meta.m;
	s.metric = meta.metric;
	s.load_vectors = true;
	e.tid = *tid;
	hnsw_load_element(&s, &e);
	memcpy(out, e.vec, sizeof(float) * meta.dims);
	pfree(e.vec);
}

/* Room for n elements in s->elems, at least twice what it had if it grows. */
static void
search_reserve(HnswSearch *s, int64 n)
{
	if (n <= s->capelems)
		return;
	s->capelems = Max(n, (int64) s->capelems * 2);
	s->elems = repalloc_huge(s->elems, sizeof(HnswElement) * s->capelems);
}

/* Room for one more element in s->elems. */
static HnswElement *
search_next_elem(HnswSearch *s, ItemPointer tid)
{
	HnswElement *e;

	search_reserve(s, (int64) s->nelems + 1);
	e = &s->elems[s->nelems];
	e->tid = *tid;
	e->nbr_sum = 0;
	e->centry = NULL;
	/* max_scan_tuples bounds the elements met, from the cache or a page */
	s->ntuples_read++;
	return e;
}

/* Load an element not visited before, whose block the caller pinned. */
static int
search_add_pinned(HnswSearch *s, ItemPointer tid, Buffer buf)
{
	load_element_pinned(s, search_next_elem(s, tid), buf, true);
	return s->nelems++;
}

/*
 * Meet an element not visited before whose vector (or code) came from the
 * scan cache, without its page: only its distance, approximate for a code,
 * and its neighbour tuple are known (not verified).
 */
static int
search_add_cached(HnswSearch *s, ItemPointer tid, const void *entry)
{
	HnswElement *e = search_next_elem(s, tid);
	uint64		aux = hnsw_vcache_word(entry);

	hnsw_key_tid(aux, &e->neighbortid);
	e->dist = hnsw_vcache_distance(s->cache, s->metric, &s->cquery, entry);
	e->level = 0;
	e->deleted = false;
	e->nheaptids = 0;
	e->vec = NULL;
	e->centry = entry;
	e->lsn = InvalidXLogRecPtr;
	e->verified = false;
	return s->nelems++;
}

/* The cache entry of tid, or NULL. */
static inline const void *
search_cached(HnswSearch *s, ItemPointer tid)
{
	return s->cache ? hnsw_vcache_get(s->cache, hnsw_tid_key(tid)) : NULL;
}

/*
 * Read an element met through the cache from its page: its heap TIDs,
 * flags and exact distance.  It is in the cache already, and a scan
 * verifies while it does not hold a shared cache (hnswscan.c): no put.
 */
void
hnsw_search_verify(HnswSearch *s, HnswElement *e)
{
	if (!e->verified)
		load_element_pinned(s, e, InvalidBuffer, false);
}

/*
 * Visit tid in a search: -1 if already visited, else the index of the
 * loaded element in s->elems.
 */
int
hnsw_search_add(HnswSearch *s, ItemPointer tid)
{
	const void *entry;

	if (hnsw_keyset_test_and_add(&s->visited, hnsw_tid_key(tid)))
		return -1;
	entry = search_cached(s, tid);
	return entry ? search_add_cached(s, tid, entry) :
		search_add_pinned(s, tid, InvalidBuffer);
}

/*
 * A fingerprint of a level-0 neighbour list (its valid TIDs, as
 * hnsw_load_neighbors and hnsw_read_neighbors return them): the sum of a
 * 64-bit mix of each (Steele et al. 2014, SplitMix64's finaliser), never 0.
 * It is computed from a list just read, where reading the page's LSN to
 * tell whether the list changed would be one more cache miss.
 */
uint64
hnsw_neighbors_fingerprint(const ItemPointerData *tids, int n)
{
	uint64		sum = 0;

	for (int i = 0; i < n; i++)
	{
		uint64		z = hnsw_tid_key((ItemPointer) &tids[i]) + UINT64CONST(0x9e3779b97f4a7c15);

		z = (z ^ (z >> 30)) * UINT64CONST(0xbf58476d1ce4e5b9);
		z = (z ^ (z >> 27)) * UINT64CONST(0x94d049bb133111eb);
		sum += z ^ (z >> 31);
	}
	return sum != 0 ? sum : 1;
}

/*
 * Neighbour TIDs of an element at one level (out: room for 2m).  Zero when
 * the element has no neighbour tuple or the tuple has no such level (an
 * element taken over by a lower-level insert since the caller read it).
 * The tuple's slots must fit its level for this m, and every TID in them
 * must be in the index: the callers read the TIDs' pages without a check.
 */
int
hnsw_load_neighbors(Relation index, ItemPointer neighbortid, int m, int level,
					ItemPointerData *out)
{
	BlockNumber blkno;
	OffsetNumber off;
	Buffer		buf;
	HnswNeighborTuple ntup;
	const char *why;
	int			n = 0;

	if (!ItemPointerIsValid(neighbortid))
		return 0;
	blkno = ItemPointerGetBlockNumber(neighbortid);
	off = ItemPointerGetOffsetNumber(neighbortid);
	buf = ReadBuffer(index, blkno);
	LockBuffer(buf, BUFFER_LOCK_SHARE);
	ntup = neighbors_at(BufferGetPage(buf), off, &why);
	if (ntup == NULL)
		tuple_corrupted(index, blkno, off, "%s", why);
	if (ntup->level > hnsw_level_cap(m) ||
		ntup->count < 2 * m + ntup->level * m || (ntup->count - 2 * m) % m != 0)
		tuple_corrupted(index, blkno, off,
						"neighbour tuple of level %d has %d slots, which does not fit m = %d",
						ntup->level, ntup->count, m);
	if (level <= ntup->level)
	{
		int			start = hnsw_level_offset(m, level);
		int			slots = hnsw_level_slots(m, level);
		int			i;

		for (i = start; i < start + slots; i++)
		{
			ItemPointer tid = &ntup->tids[i];

			if (!ItemPointerIsValid(tid))
				continue;
			if (!tid_in_index(index, tid))
				tuple_corrupted(index, blkno, off,
								"level %d neighbour (%u,%u) is not in the index",
								level, ItemPointerGetBlockNumberNoCheck(tid),
								ItemPointerGetOffsetNumberNoCheck(tid));
			out[n++] = *tid;
		}
	}
	UnlockReleaseBuffer(buf);
	return n;
}

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
 *
 * A round also returns, after its ef nearest, the extra nearest elements
 * behind them that it met (the search still stops by the ef nearest): for
 * distances from 8-bit codes, whose errors can put a near neighbour just
 * behind the ef-th, so that the caller finds it among the extra when it
 * orders them by exact distance.
 */
void
hnsw_level_search_begin(HnswLevelSearch *ls, HnswSearch *s, int *entries,
						int nentries, int ef, int extra, int level,
						bool resumable)
{
	int			i;

	ls->s = s;
	ls->ef = ef;
	ls->extra = extra;
	ls->level = level;
	ls->resumable = resumable;
	ls->nbrs = palloc(sizeof(ItemPointerData) * 2 * s->m);
	ls->slots = palloc(sizeof(int32) * 2 * s->m);
	ls->todo = palloc(sizeof(ItemPointerData) * 2 * s->m);
	ls->bufs = palloc(sizeof(Buffer) * 2 * s->m);

	/*
	 * Room for the elements a level-0 search meets, up front: growing the
	 * array by doubling copied it three or four times a scan (about 2,000
	 * elements met at ef 100, m 16 on the relevance sets; up to 2m per
	 * neighbour list read), 2% of a scan's CPU when realloc could not
	 * extend it in place (docs/gnn.md, "Rerank latency").
	 */
	if (level == 0)
		search_reserve(s, (int64) s->nelems + (int64) ef * 2 * s->m);
	/* a fresh visited set per level: upper levels must not hide elements */
	hnsw_keyset_free(&s->visited);
	hnsw_keyset_init(&s->visited, level == 0 ? (uint64) ef * s->m : 64,
					 &s->alloc);
	hnsw_heap_init(&ls->cand, false, ef * 2, &s->alloc);
	hnsw_heap_init(&ls->res, true, ef + 1, &s->alloc);
	hnsw_heap_init(&ls->spill, true, extra + 1, &s->alloc);
	hnsw_heap_init(&ls->left, false, resumable ? ef * 2 : 1, &s->alloc);
	for (i = 0; i < nentries; i++)
	{
		HnswElement *e = &s->elems[entries[i]];

		hnsw_keyset_test_and_add(&s->visited, hnsw_tid_key(&e->tid));
		hnsw_heap_push(&ls->cand, e->dist, entries[i]);
		hnsw_heap_push(&ls->left, e->dist, entries[i]);
	}
}

/*
 * An element behind the round's ef nearest: among the extra, or kept for a
 * later round, or dropped.
 */
static void
level_search_behind(HnswLevelSearch *ls, float d, int idx)
{
	HnswHeapItem out = {d, idx};

	if (ls->extra > 0 && (ls->spill.n < ls->extra || d < hnsw_heap_top(&ls->spill)->dist))
	{
		hnsw_heap_push(&ls->spill, d, idx);
		if (ls->spill.n <= ls->extra)
			return;
		out = hnsw_heap_pop(&ls->spill);
	}
	if (ls->resumable)
		hnsw_heap_push(&ls->left, out.dist, out.id);
}

/* An element met: into this round's result, or behind it. */
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

			level_search_behind(ls, out.dist, out.id);
		}
	}
	else
	{
		if (ls->resumable)
			hnsw_heap_push(&ls->cand, d, idx);
		level_search_behind(ls, d, idx);
	}
}

/* Prefetch the first bytes of an object (at most 640: ten cache lines). */
static inline void
prefetch_bytes(const void *p, Size len)
{
	for (Size o = 0; o < Min(len, 640); o += 64)
		hnsw_prefetch((const char *) p + o);
}

/*
 * Meet the neighbours of a cached element from the list the cache keeps
 * for it (see hnswshared.c): the list's length, or -1 when the cache keeps
 * none valid for this scan.  As below, in stages: the neighbours' slots
 * (their keys), then their entries.
 */
static int
level_search_expand_cached(HnswLevelSearch *ls, const void *centry,
						   uint64 tag, uint64 *nbr_sum)
{
	HnswSearch *s = ls->s;
	const void *entries[2 * HNSW_MAX_M];
	uint64		keys[2 * HNSW_MAX_M];
	int			n,
				nf = 0,
				nh = 0;

	/*
	 * The list's fingerprint (a reranked scan records it) was kept with
	 * it: computing it here read every neighbour's slot for its TID,
	 * those the seen marks spare a plain scan (docs/gnn.md, "Rerank
	 * latency").
	 */
	n = hnsw_vcache_links(s->cache, centry, tag, ls->slots, nbr_sum);
	if (n < 0)
		return -1;

	/*
	 * Most neighbours were met before, and the seen marks tell without
	 * touching their slots; the visited set stays the authority for the
	 * others (an element read from its page and cached since has no mark).
	 */
	for (int i = 0; i < n; i++)
	{
		if (s->seen[ls->slots[i]] == s->seen_epoch)
			continue;
		s->seen[ls->slots[i]] = s->seen_epoch;
		hnsw_vcache_prefetch_slot(s->cache, ls->slots[i]);
		ls->slots[nf++] = ls->slots[i];
	}
	for (int i = 0; i < nf; i++)
	{
		const void *entry = hnsw_vcache_slot_entry(s->cache, ls->slots[i], &keys[i]);

		if (hnsw_keyset_test_and_add(&s->visited, keys[i]))
			continue;
		prefetch_bytes((const char *) entry - sizeof(uint64),
					   sizeof(uint64) + hnsw_vcache_entry_bytes(s->cache));
		entries[nh] = entry;
		keys[nh++] = keys[i];
	}
	for (int i = 0; i < nh; i++)
	{
		ItemPointerData tid;
		int			idx;

		hnsw_key_tid(keys[i], &tid);
		idx = search_add_cached(s, &tid, entries[i]);
		level_search_meet(ls, s->elems[idx].dist, idx);
	}
	return n;
}

/*
 * Keep the list of the element at tid just read from its page (nbrs, n)
 * in the cache for this scan's tag, if the element and every neighbour
 * are cached: later scans then walk it in memory.
 */
static void
keep_links(HnswLevelSearch *ls, ItemPointer tid, const void *centry, int n,
		   uint64 tag)
{
	HnswSearch *s = ls->s;

	if (centry == NULL &&
		(centry = hnsw_vcache_get(s->cache, hnsw_tid_key(tid))) == NULL)
		return;
	for (int i = 0; i < n; i++)
		if (hnsw_vcache_lookup(s->cache, hnsw_tid_key(&ls->nbrs[i]),
							   &ls->slots[i]) == NULL)
			return;
	hnsw_vcache_set_links(s->cache, centry, tag, ls->slots, n,
						  hnsw_neighbors_fingerprint(ls->nbrs, n));
}

/*
 * Read the neighbours of one element and meet those not visited yet: from
 * the scan cache's list when it keeps one, else from the page.  Memory is
 * touched in stages, each prefetched for all neighbours before any is
 * used, so that the cache misses overlap: the scan cache's map entries,
 * then the cached vectors; for the others, their pages' line pointers,
 * then their tuples.
 */
static void
level_search_expand(HnswLevelSearch *ls, int id)
{
	HnswSearch *s = ls->s;
	const void *entries[2 * HNSW_MAX_M];
	ItemPointerData hits[2 * HNSW_MAX_M];
	ItemPointerData fresh[2 * HNSW_MAX_M];
	ItemPointerData tid = s->elems[id].tid;
	bool		lists = ls->level == 0 && s->list_changes != NULL && s->seen != NULL;
	const void *centry = lists ? s->elems[id].centry : NULL;
	uint64		tag = 0,
				nbr_sum;
	int			nn = -1,
				nf = 0,
				nh = 0,
				nu = 0;
	int			i;

	/* the tag of the list's page, read before the page (hnswshared.c) */
	if (lists)
		tag = hnsw_list_tag(s->list_changes,
							ItemPointerGetBlockNumberNoCheck(&s->elems[id].neighbortid));
	if (centry != NULL &&
		(nn = level_search_expand_cached(ls, centry, tag, &nbr_sum)) >= 0)
	{
		if (s->nbr_sums)
			s->elems[id].nbr_sum = nbr_sum;
		return;
	}
	nn = hnsw_load_neighbors(s->index, &s->elems[id].neighbortid, s->m,
							 ls->level, ls->nbrs);
	if (ls->level == 0 && s->nbr_sums)
		s->elems[id].nbr_sum = hnsw_neighbors_fingerprint(ls->nbrs, nn);
	for (i = 0; i < nn; i++)
	{
		if (hnsw_keyset_test_and_add(&s->visited, hnsw_tid_key(&ls->nbrs[i])))
			continue;
		if (s->cache)
			hnsw_vcache_prefetch(s->cache, hnsw_tid_key(&ls->nbrs[i]));
		fresh[nf++] = ls->nbrs[i];
	}
	for (i = 0; i < nf; i++)
	{
		int32		slot;
		const void *entry = s->cache == NULL ? NULL :
			hnsw_vcache_lookup(s->cache, hnsw_tid_key(&fresh[i]), &slot);

		if (entry)
		{
			if (s->seen && ls->level == 0)
				s->seen[slot] = s->seen_epoch;
			prefetch_bytes((const char *) entry - sizeof(uint64),
						   sizeof(uint64) + hnsw_vcache_entry_bytes(s->cache));
			entries[nh] = entry;
			hits[nh++] = fresh[i];
			continue;
		}
		ls->todo[nu] = fresh[i];
		ls->bufs[nu] = ReadBuffer(s->index, ItemPointerGetBlockNumber(&fresh[i]));
		prefetch_itemid(BufferGetPage(ls->bufs[nu]),
						ItemPointerGetOffsetNumber(&fresh[i]));
		nu++;
	}
	for (i = 0; i < nh; i++)
	{
		int			idx = search_add_cached(s, &hits[i], entries[i]);

		level_search_meet(ls, s->elems[idx].dist, idx);
	}
	for (i = 0; i < nu; i++)
		prefetch_tuple(BufferGetPage(ls->bufs[i]), ItemPointerGetOffsetNumber(&ls->todo[i]),
					   offsetof(HnswElementTupleData, x) + sizeof(float) * s->dim);
	for (i = 0; i < nu; i++)
	{
		int			idx = search_add_pinned(s, &ls->todo[i], ls->bufs[i]);

		level_search_meet(ls, s->elems[idx].dist, idx);
	}
	if (lists)
		keep_links(ls, &tid, centry, nn, tag);
}

/*
 * One round: out (room for ef + extra) gets, ascending, the ef nearest
 * elements met that no earlier round returned, then the extra behind them;
 * returns how many (0: nothing is left).
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

	/*
	 * Drain the max-heaps from the back: ascending order, the extra after
	 * the ef nearest (each was behind the ef-th when it was met, and the
	 * ef-th only comes nearer).
	 */
	n = res->n;
	while (res->n > 0)
	{
		HnswHeapItem it = hnsw_heap_pop(res);

		out[res->n] = it;
	}
	out += n;
	n += ls->spill.n;
	while (ls->spill.n > 0)
	{
		HnswHeapItem it = hnsw_heap_pop(&ls->spill);

		out[ls->spill.n] = it;
	}
	return n;
}

void
hnsw_level_search_end(HnswLevelSearch *ls)
{
	hnsw_heap_free(&ls->cand);
	hnsw_heap_free(&ls->res);
	hnsw_heap_free(&ls->spill);
	hnsw_heap_free(&ls->left);
	pfree(ls->nbrs);
	pfree(ls->slots);
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

	hnsw_level_search_begin(&ls, s, entries, nentries, ef, 0, level, false);
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
