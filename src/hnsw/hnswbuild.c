/*
 * hnswbuild.c
 *		gnnhnsw: CREATE INDEX.
 *
 * The rows are inserted into an in-memory graph (hnswgraph.c: HNSW insert,
 * Malkov & Yashunin 2018, Alg. 1 and 4) as long as it fits in
 * maintenance_work_mem; then the graph is written in one pass, element by
 * element, each element followed by its data tuples (large vectors) and its
 * neighbour tuple, and the whole relation is WAL-logged at the end with
 * log_newpage_range.  When the graph outgrows maintenance_work_mem the
 * part built so far is written out (NOTICE) and the remaining rows are
 * inserted into the pages with the ordinary insert code.
 *
 * Rows with identical vectors share one element (up to HNSW_HEAPTIDS).
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "access/generic_xlog.h"
#include "access/tableam.h"
#include "access/xloginsert.h"
#include "catalog/index.h"
#include "commands/progress.h"
#include "common/hashfn.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "utils/memutils.h"

/* ---------------------------------------------------------------------
 * Build state
 * --------------------------------------------------------------------- */

static void
check_dims_and_options(Relation index, int *dims, int *m, int *efc)
{
	int32		typmod = TupleDescAttr(RelationGetDescr(index), 0)->atttypmod;

	if (typmod < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("column does not have dimensions"),
				 errhint("Declare the column with a dimension count, e.g. vector(3), or index an expression cast to one.")));
	if (typmod < 1 || typmod > VECTOR_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("gnnhnsw cannot index vectors of %d dimensions", typmod),
				 errhint("gnnhnsw indexes 1 to %d dimensions.", VECTOR_MAX_DIM)));
	*dims = typmod;
	hnsw_get_options(index, m, efc);
	if (*efc < 2 * *m)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("ef_construction must be greater than or equal to 2 * m"),
				 errhint("Raise ef_construction to at least %d or lower m.", 2 * *m)));
}

static void *
graph_alloc(void *ctx, size_t size)
{
	return MemoryContextAllocHuge((MemoryContext) ctx, size);
}

static void
graph_free(void *ctx, void *ptr)
{
	pfree(ptr);
}

void
hnsw_build_init(HnswBuildState *bs, Relation heap, Relation index,
				IndexInfo *indexInfo, ForkNumber forkNum)
{
	Buffer		buf;
	HnswEdit	ed;

	memset(bs, 0, sizeof(HnswBuildState));
	bs->heap = heap;
	bs->index = index;
	bs->indexInfo = indexInfo;
	bs->forkNum = forkNum;
	check_dims_and_options(index, &bs->dim, &bs->m, &bs->efConstruction);
	bs->metric = hnsw_get_metric(index);
	bs->memLimit = (size_t) maintenance_work_mem * 1024;

	bs->graphCtx = AllocSetContextCreate(CurrentMemoryContext,
										 "gnnhnsw build graph",
										 ALLOCSET_DEFAULT_SIZES);
	bs->tmpCtx = AllocSetContextCreate(CurrentMemoryContext,
									   "gnnhnsw build temporary",
									   ALLOCSET_DEFAULT_SIZES);
	bs->alloc.alloc = graph_alloc;
	bs->alloc.free = graph_free;
	bs->alloc.ctx = bs->graphCtx;
	bs->graph = hnsw_graph_create(bs->dim, bs->m, bs->efConstruction,
								  bs->metric, hnsw_level_cap(bs->m),
								  0x5DEECE66DULL, &bs->alloc);
	bs->captids = 1024;
	bs->heaptids = MemoryContextAllocHuge(bs->graphCtx,
										  sizeof(ItemPointerData) * HNSW_HEAPTIDS * bs->captids);
	bs->nheaptids = MemoryContextAllocHuge(bs->graphCtx, bs->captids);

	/* the metapage: block 0 */
	buf = hnsw_new_buffer(index, forkNum);
	Assert(BufferGetBlockNumber(buf) == HNSW_METAPAGE_BLKNO);
	hnsw_edit_start(&ed, index, buf, forkNum == MAIN_FORKNUM, true);
	hnsw_fill_meta(ed.page, bs->dim, bs->m, bs->efConstruction, bs->metric);
	hnsw_edit_finish(&ed);
	UnlockReleaseBuffer(buf);
}

static void
ensure_tid_room(HnswBuildState *bs, int32 id)
{
	if (id >= bs->captids)
	{
		int32		newcap = bs->captids * 2;
		ItemPointerData *tids = MemoryContextAllocHuge(bs->graphCtx,
													   sizeof(ItemPointerData) * HNSW_HEAPTIDS * newcap);
		uint8	   *ntids = MemoryContextAllocHuge(bs->graphCtx, newcap);

		memcpy(tids, bs->heaptids, sizeof(ItemPointerData) * HNSW_HEAPTIDS * bs->captids);
		memcpy(ntids, bs->nheaptids, bs->captids);
		pfree(bs->heaptids);
		pfree(bs->nheaptids);
		bs->heaptids = tids;
		bs->nheaptids = ntids;
		bs->captids = newcap;
	}
}

static bool
dup_has_room(void *arg, int32_t id)
{
	HnswBuildState *bs = arg;

	return bs->nheaptids[id] < HNSW_HEAPTIDS;
}

static size_t
build_memory(HnswBuildState *bs)
{
	return bs->graph->mem +
		(size_t) bs->captids * (sizeof(ItemPointerData) * HNSW_HEAPTIDS + 1) +
		(bs->unlinkedSlots ? sizeof(int32) * ((size_t) bs->unlinkedMask + 1) : 0);
}

/* Write the graph so far and go on inserting into the pages. */
static void
spill_to_disk(HnswBuildState *bs)
{
	ereport(NOTICE,
			(errmsg("gnnhnsw graph no longer fits into maintenance_work_mem after %.0f tuples",
					bs->indtuples),
			 errdetail("Building will take significantly more time."),
			 errhint("Increase maintenance_work_mem to speed up builds.")));
	hnsw_build_write(bs);
	bs->onDisk = true;
	hnsw_graph_free(bs->graph);
	bs->graph = NULL;
	MemoryContextReset(bs->graphCtx);
	bs->heaptids = NULL;
	bs->nheaptids = NULL;
}

void
hnsw_build_add(HnswBuildState *bs, const float *vec, ItemPointer heaptid)
{
	int32		id;
	bool		is_dup;

	if (!bs->onDisk &&
		build_memory(bs) + hnsw_graph_node_bytes(bs->dim, bs->m, 1, false) > bs->memLimit &&
		bs->graph->n > 0)
		spill_to_disk(bs);

	if (bs->onDisk)
	{
		hnsw_insert_vector(bs->index, vec, heaptid, true);
		return;
	}

	id = hnsw_graph_insert(bs->graph, vec, hnsw_graph_random_level(bs->graph),
						   dup_has_room, bs, &is_dup);
	if (is_dup)
	{
		bs->heaptids[id * HNSW_HEAPTIDS + bs->nheaptids[id]] = *heaptid;
		bs->nheaptids[id]++;
		return;
	}
	ensure_tid_room(bs, id);
	bs->heaptids[id * HNSW_HEAPTIDS] = *heaptid;
	bs->nheaptids[id] = 1;
}

/*
 * Rows collected unlinked share one element per vector, up to HNSW_HEAPTIDS
 * rows, as an HNSW build's insertion merges them (dup_has_room): else heavy
 * duplicates fill every kNN list with copies at distance 0, which CAGRA's
 * pruning drops as detourable, and a search returns only some of a
 * vector's rows.  An open-addressing table of node ids by vector hash finds
 * them; it is kept at most half full.
 */
static uint32
unlinked_slot(HnswBuildState *bs, const float *vec)
{
	return hash_bytes((const unsigned char *) vec, sizeof(float) * bs->dim) &
		bs->unlinkedMask;
}

static void
unlinked_grow(HnswBuildState *bs)
{
	int32	   *old = bs->unlinkedSlots;
	uint32		oldsize = old ? bs->unlinkedMask + 1 : 0;
	uint32		size = old ? oldsize * 2 : 1024;

	bs->unlinkedSlots = MemoryContextAllocHuge(bs->graphCtx, sizeof(int32) * size);
	memset(bs->unlinkedSlots, 0xFF, sizeof(int32) * size);
	bs->unlinkedMask = size - 1;
	for (uint32 i = 0; i < oldsize; i++)
	{
		uint32		slot;

		if (old[i] < 0)
			continue;
		slot = unlinked_slot(bs, bs->graph->nodes[old[i]].vec);
		while (bs->unlinkedSlots[slot] >= 0)
			slot = (slot + 1) & bs->unlinkedMask;
		bs->unlinkedSlots[slot] = old[i];
	}
	if (old)
		pfree(old);
}

/*
 * The element holding vec with room for one more row, or -1 with *slot
 * set to where a new element for vec goes.
 */
static int32
unlinked_find(HnswBuildState *bs, const float *vec, uint32 *slot)
{
	uint32		i = unlinked_slot(bs, vec);

	for (;; i = (i + 1) & bs->unlinkedMask)
	{
		int32		id = bs->unlinkedSlots[i];

		if (id < 0)
		{
			*slot = i;
			return -1;
		}
		if (bs->nheaptids[id] < HNSW_HEAPTIDS &&
			memcmp(bs->graph->nodes[id].vec, vec, sizeof(float) * bs->dim) == 0)
			return id;
	}
}

void
hnsw_build_add_unlinked(HnswBuildState *bs, const float *vec,
						ItemPointer heaptid)
{
	int32		id;
	uint32		slot;
	size_t		next;

	if ((uint32) bs->graph->n >= bs->unlinkedMask / 2)
		unlinked_grow(bs);
	id = unlinked_find(bs, vec, &slot);
	if (id >= 0)
	{
		bs->heaptids[id * HNSW_HEAPTIDS + bs->nheaptids[id]] = *heaptid;
		bs->nheaptids[id]++;
		return;
	}

	/*
	 * CAGRA needs every row in memory at once: no spilling to disk.  The
	 * next row costs its node, its share of the vector array (all of the
	 * array's growth when it is full) and what the provider said.
	 */
	next = hnsw_graph_node_bytes(bs->dim, bs->m, 1, true) + bs->unlinkedRowBytes;
	if (bs->graph->n == bs->graph->vecs_cap)
		next += sizeof(float) * bs->dim *
			(size_t) (hnsw_graph_vecs_grown(bs->graph->vecs_cap) - bs->graph->vecs_cap);
	if (build_memory(bs) + next +
		(size_t) bs->graph->n * bs->unlinkedRowBytes > bs->memLimit)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("gnnhnsw CAGRA build does not fit into maintenance_work_mem after %d rows",
						bs->graph->n),
				 errdetail("A CAGRA build keeps every row and its kNN graph in memory, about %zu bytes per row.",
						   hnsw_graph_node_bytes(bs->dim, bs->m, 1, true) +
						   sizeof(float) * bs->dim + bs->unlinkedRowBytes),
				 errhint("Increase maintenance_work_mem, or build with build_method = 'hnsw', which can continue on disk.")));
	id = hnsw_graph_append(bs->graph, vec, hnsw_graph_random_level(bs->graph));
	ensure_tid_room(bs, id);
	bs->heaptids[id * HNSW_HEAPTIDS] = *heaptid;
	bs->nheaptids[id] = 1;
	bs->unlinkedSlots[slot] = id;
}

/* ---------------------------------------------------------------------
 * Page writer
 * --------------------------------------------------------------------- */

/* Where the next tuple goes: the same rule in the planning and the writing. */
typedef struct PagePlan
{
	BlockNumber blkno;
	Size		free;
	OffsetNumber nextoff;
} PagePlan;

#define PAGE_ROOM (BLCKSZ - MAXALIGN(SizeOfPageHeaderData) - MAXALIGN(sizeof(HnswPageOpaqueData)))

static void
plan_place(PagePlan *p, Size size, ItemPointer tid)
{
	Size		need = MAXALIGN(size) + sizeof(ItemIdData);

	if (need > p->free)
	{
		p->blkno++;
		p->free = PAGE_ROOM;
		p->nextoff = FirstOffsetNumber;
	}
	ItemPointerSet(tid, p->blkno, p->nextoff);
	p->free -= need;
	p->nextoff++;
}

typedef struct PageWriter
{
	HnswBuildState *bs;
	BlockNumber blkno;			/* block of page, InvalidBlockNumber if none */
	Page		page;
} PageWriter;

static void
writer_flush(PageWriter *w)
{
	Buffer		buf;

	if (w->blkno == InvalidBlockNumber)
		return;
	buf = hnsw_new_buffer(w->bs->index, w->bs->forkNum);
	if (BufferGetBlockNumber(buf) != w->blkno)
		elog(ERROR, "gnnhnsw build: expected block %u, got %u",
			 w->blkno, BufferGetBlockNumber(buf));
	memcpy(BufferGetPage(buf), w->page, BLCKSZ);
	MarkBufferDirty(buf);
	UnlockReleaseBuffer(buf);
	w->blkno = InvalidBlockNumber;
}

static void
writer_add(PageWriter *w, ItemPointer tid, void *item, Size size)
{
	BlockNumber blkno = ItemPointerGetBlockNumber(tid);

	if (blkno != w->blkno)
	{
		writer_flush(w);
		hnsw_init_page(w->page);
		w->blkno = blkno;
	}
	if (PageAddItem(w->page, (Item) item, size, InvalidOffsetNumber, false,
					false) != ItemPointerGetOffsetNumber(tid))
		elog(ERROR, "gnnhnsw build: failed to add tuple to block %u", blkno);
}

/* TIDs of one node's tuples in the order they are placed. */
static void
plan_node(PagePlan *p, HnswBuildState *bs, int level, ItemPointer etid,
		  ItemPointer dtids, ItemPointer ntid)
{
	int			ninline = hnsw_inline_floats(bs->dim);
	int			ndata = hnsw_data_tuples(bs->dim);
	int			rest = bs->dim - ninline;
	int			k;

	plan_place(p, HNSW_ELEMENT_TUPLE_SIZE(ninline), etid);
	for (k = 0; k < ndata; k++)
	{
		int			cnt = Min(rest, HNSW_DATA_MAX);

		plan_place(p, HNSW_DATA_TUPLE_SIZE(cnt), &dtids[k]);
		rest -= cnt;
	}
	plan_place(p, HNSW_NEIGHBOR_TUPLE_SIZE(bs->m, level), ntid);
}

/*
 * Write the in-memory graph to the pages after the metapage and point the
 * metapage at its entry point.
 */
void
hnsw_build_write(HnswBuildState *bs)
{
	HnswGraph  *g = bs->graph;
	int			ndata = hnsw_data_tuples(bs->dim);
	int			ninline = hnsw_inline_floats(bs->dim);
	ItemPointerData *etids;
	ItemPointerData *dtids = palloc(sizeof(ItemPointerData) * (ndata + 1));
	ItemPointerData ntid;
	PagePlan	plan;
	PageWriter	w;
	Size		esize = HNSW_ELEMENT_TUPLE_SIZE(ninline);
	HnswElementTuple etup = palloc0(esize);
	HnswDataTuple dtup = palloc0(HNSW_DATA_TUPLE_SIZE(HNSW_DATA_MAX));
	HnswNeighborTuple ntup = palloc0(HNSW_NEIGHBOR_TUPLE_SIZE(bs->m, HNSW_MAX_LEVEL));
	int32		i;
	Buffer		buf;
	HnswMetaPage meta;
	HnswEdit	ed;
	BlockNumber lastblk;

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE,
								 PROGRESS_HNSW_PHASE_WRITE);
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_TOTAL, g->n);

	/* every element reachable from the entry point */
	{
		int64		unreached;
		int64		added = hnsw_graph_connect(g, &unreached);

		if (added > 0 || unreached > 0)
			elog(DEBUG2, "gnnhnsw build: %lld edges added for reachability, %lld elements still unreachable",
				 (long long) added, (long long) unreached);
	}
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, 0);

	/* pass 1: where every element goes */
	etids = MemoryContextAllocHuge(CurrentMemoryContext,
								   sizeof(ItemPointerData) * Max(g->n, 1));
	plan.blkno = HNSW_METAPAGE_BLKNO;
	plan.free = 0;
	plan.nextoff = FirstOffsetNumber;
	for (i = 0; i < g->n; i++)
		plan_node(&plan, bs, g->nodes[i].level, &etids[i], dtids, &ntid);
	lastblk = plan.blkno;

	/* pass 2: the same placement, writing */
	plan.blkno = HNSW_METAPAGE_BLKNO;
	plan.free = 0;
	plan.nextoff = FirstOffsetNumber;
	w.bs = bs;
	w.blkno = InvalidBlockNumber;
	w.page = palloc(BLCKSZ);
	for (i = 0; i < g->n; i++)
	{
		HnswGraphNode *node = &g->nodes[i];
		ItemPointerData etid;
		int			rest = bs->dim - ninline;
		int			done = ninline;
		int			k,
					l;
		Size		nsize = HNSW_NEIGHBOR_TUPLE_SIZE(bs->m, node->level);

		CHECK_FOR_INTERRUPTS();
		plan_node(&plan, bs, node->level, &etid, dtids, &ntid);
		Assert(ItemPointerEquals(&etid, &etids[i]));

		memset(etup, 0, esize);
		etup->type = HNSW_ELEMENT_TUPLE;
		etup->level = node->level;
		etup->deleted = 0;
		etup->nheaptids = bs->nheaptids[i];
		memcpy(etup->heaptids, &bs->heaptids[i * HNSW_HEAPTIDS],
			   sizeof(ItemPointerData) * bs->nheaptids[i]);
		for (k = bs->nheaptids[i]; k < HNSW_HEAPTIDS; k++)
			ItemPointerSetInvalid(&etup->heaptids[k]);
		etup->neighbortid = ntid;
		if (ndata > 0)
			etup->datatid = dtids[0];
		else
			ItemPointerSetInvalid(&etup->datatid);
		etup->dim = bs->dim;
		etup->ninline = ninline;
		memcpy(etup->x, node->vec, sizeof(float) * ninline);
		writer_add(&w, &etid, etup, esize);

		for (k = 0; k < ndata; k++)
		{
			int			cnt = Min(rest, HNSW_DATA_MAX);
			Size		dsize = HNSW_DATA_TUPLE_SIZE(cnt);

			memset(dtup, 0, dsize);
			dtup->type = HNSW_DATA_TUPLE;
			dtup->count = cnt;
			if (k + 1 < ndata)
				dtup->next = dtids[k + 1];
			else
				ItemPointerSetInvalid(&dtup->next);
			memcpy(dtup->x, node->vec + done, sizeof(float) * cnt);
			writer_add(&w, &dtids[k], dtup, dsize);
			done += cnt;
			rest -= cnt;
		}

		memset(ntup, 0, nsize);
		ntup->type = HNSW_NEIGHBOR_TUPLE;
		ntup->level = node->level;
		ntup->count = 2 * bs->m + node->level * bs->m;
		for (k = 0; k < ntup->count; k++)
			ItemPointerSetInvalid(&ntup->tids[k]);
		for (l = 0; l <= node->level; l++)
		{
			int			off = hnsw_level_offset(bs->m, l);
			int32	   *nb = node->nbrs + off;

			for (k = 0; k < node->counts[l]; k++)
				ntup->tids[off + k] = etids[nb[k]];
		}
		writer_add(&w, &ntid, ntup, nsize);

		if ((i & 1023) == 0)
			pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, i);
	}
	writer_flush(&w);
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE, g->n);

	/* metapage: entry point and insert hint */
	buf = ReadBufferExtended(bs->index, bs->forkNum, HNSW_METAPAGE_BLKNO,
							 RBM_NORMAL, NULL);
	LockBuffer(buf, BUFFER_LOCK_EXCLUSIVE);
	hnsw_edit_start(&ed, bs->index, buf, bs->forkNum == MAIN_FORKNUM, false);
	meta = HnswPageGetMeta(ed.page);
	if (g->entry >= 0)
	{
		meta->entryLevel = g->nodes[g->entry].level;
		meta->entryBlkno = ItemPointerGetBlockNumber(&etids[g->entry]);
		meta->entryOffno = ItemPointerGetOffsetNumber(&etids[g->entry]);
	}
	meta->insertPage = g->n > 0 ? lastblk : InvalidBlockNumber;
	hnsw_edit_finish(&ed);
	UnlockReleaseBuffer(buf);

	pfree(etids);
	pfree(dtids);
	pfree(etup);
	pfree(dtup);
	pfree(ntup);
	pfree(w.page);
}

/* ---------------------------------------------------------------------
 * ambuild / ambuildempty
 * --------------------------------------------------------------------- */

static void
build_callback(Relation index, ItemPointer tid, Datum *values, bool *isnull,
			   bool tupleIsAlive, void *state)
{
	HnswBuildState *bs = state;
	MemoryContext old;
	float	   *vec;

	bs->reltuples++;
	if (isnull[0])
		return;
	old = MemoryContextSwitchTo(bs->tmpCtx);
	vec = palloc(sizeof(float) * bs->dim);
	if (hnsw_form_vector(values[0], bs->metric, bs->dim, vec))
	{
		MemoryContextSwitchTo(old);
		if (bs->unlinked)
			hnsw_build_add_unlinked(bs, vec, tid);
		else
			hnsw_build_add(bs, vec, tid);
		bs->indtuples++;
		if (((int64) bs->indtuples & 255) == 0)
			pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
										 (int64) bs->indtuples);
	}
	else
		MemoryContextSwitchTo(old);
	MemoryContextReset(bs->tmpCtx);
}

void
hnsw_build_collect(HnswBuildState *bs, bool link)
{
	bs->unlinked = !link;
	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE,
								 PROGRESS_HNSW_PHASE_LOAD);
	table_index_build_scan(bs->heap, bs->index, bs->indexInfo, true, true,
						   build_callback, bs, NULL);
	pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
								 (int64) bs->indtuples);
}

IndexBuildResult *
hnsw_build_finish(HnswBuildState *bs)
{
	IndexBuildResult *result;

	if (!bs->onDisk && !bs->pagesWritten)
		hnsw_build_write(bs);

	if (RelationNeedsWAL(bs->index) && bs->forkNum == MAIN_FORKNUM)
		log_newpage_range(bs->index, MAIN_FORKNUM, 0,
						  RelationGetNumberOfBlocks(bs->index), true);

	if (bs->graph)
		hnsw_graph_free(bs->graph);
	bs->graph = NULL;
	MemoryContextDelete(bs->graphCtx);
	MemoryContextDelete(bs->tmpCtx);

	result = palloc(sizeof(IndexBuildResult));
	result->heap_tuples = bs->reltuples;
	result->index_tuples = bs->indtuples;
	return result;
}

/*
 * A build whose graph comes from a level-0 provider: the rows are collected
 * unlinked, then the provider links every level of the graph.
 */
static void
build_by_provider(HnswBuildState *bs, const HnswLevel0Provider *provider)
{
	void	   *state;

	size_t		row_bytes;
	double		rows;

	bs->unlinkedRowBytes = provider->prepare(bs, &state);

	/*
	 * The rows' vectors in one array, room for the table's estimated rows
	 * and 2% (ANALYZE's estimate of 1M rows came out 8 rows short), no more
	 * than maintenance_work_mem holds; grown when full.  While it grows,
	 * the old array lives on for a moment: at most 4 dim bytes per row so
	 * far, less than the provider's stages take later.
	 */
	row_bytes = hnsw_graph_node_bytes(bs->dim, bs->m, 1, true) +
		sizeof(float) * bs->dim + bs->unlinkedRowBytes;
	rows = Min(Max(bs->heap->rd_rel->reltuples, 0.0) * 1.02,
			   (double) (bs->memLimit / row_bytes));
	hnsw_graph_pack_vectors(bs->graph, (int32) Min(rows, (double) (INT32_MAX / 2)));
	hnsw_build_collect(bs, false);
	if (bs->graph->n > 0)
		provider->link(bs, state);
}

IndexBuildResult *
hnswbuild(Relation heap, Relation index, IndexInfo *indexInfo)
{
	HnswBuildState bs;
	HnswCagraOptions cagra;

	if (RelationGetNumberOfBlocks(index) != 0)
		elog(ERROR, "index \"%s\" already contains data",
			 RelationGetRelationName(index));

	hnsw_build_init(&bs, heap, index, indexInfo, MAIN_FORKNUM);
	hnsw_get_cagra_options(index, &cagra);
	if (cagra.method == HNSW_BUILD_CAGRA)
		build_by_provider(&bs, &cagra_level0_provider);
	else if (!hnsw_build_parallel(&bs))
		hnsw_build_collect(&bs, true);
	else
		ereport(DEBUG1,
				(errmsg_internal("gnnhnsw: parallel build, %d workers requested, leader participating",
								 bs.parallelWorkers)));
	return hnsw_build_finish(&bs);
}

/* An empty index in the init fork (UNLOGGED tables). */
void
hnswbuildempty(Relation index)
{
	int			dims,
				m,
				efc;
	Buffer		buf;
	HnswEdit	ed;

	check_dims_and_options(index, &dims, &m, &efc);
	buf = hnsw_new_buffer(index, INIT_FORKNUM);
	hnsw_edit_start(&ed, index, buf, false, true);
	hnsw_fill_meta(ed.page, dims, m, efc, hnsw_get_metric(index));
	hnsw_edit_finish(&ed);
	UnlockReleaseBuffer(buf);
}
