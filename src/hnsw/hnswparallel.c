/*
 * hnswparallel.c
 *		gnnhnsw: parallel CREATE INDEX with PostgreSQL parallel workers.
 *
 * The leader and its workers scan the table in parallel and insert every
 * row into one HNSW graph in dynamic shared memory, with the algorithm of
 * hnswgraph.c (Malkov & Yashunin 2018, Alg. 1, 2 and 4) made concurrent:
 * each node has an LWLock guarding its neighbour lists (held only to copy
 * a list out, or to change it), the entry point has one, taken in share
 * mode by every insert and in exclusive mode by one that may raise the top
 * level.  A node's vector and its own lists are written before any other
 * node links to it.  Nodes and their neighbour slots are numbered, not
 * pointed to, since each process maps the segment at its own address.
 *
 * When the workers are done the leader looks at the shared graph through
 * an HnswGraph whose nodes point into the segment, and the ordinary page
 * writer (hnsw_build_finish) takes it from there.  Rows with identical
 * vectors get elements of their own here.  When the graph would outgrow
 * maintenance_work_mem the parallel build gives up and the serial build
 * (which spills to disk) runs instead.
 */
#include "postgres.h"

#include <math.h>

#include "access/parallel.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "commands/progress.h"
#if PG_VERSION_NUM >= 150000
#include "common/pg_prng.h"
#endif
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#define KEY_SHARED		UINT64CONST(0xA000000000000001)
#define KEY_SCAN		UINT64CONST(0xA000000000000002)
#define KEY_NODES		UINT64CONST(0xA000000000000003)
#define KEY_SLOTS		UINT64CONST(0xA000000000000004)
#define KEY_DISTS		UINT64CONST(0xA000000000000005)

typedef struct SharedNode
{
	LWLock		lock;			/* guards counts[] and the slots */
	uint64		slotsOff;		/* first slot in the slot arena */
	ItemPointerData heaptid;
	uint8		level;
	uint8		counts[HNSW_PURE_MAX_LEVELS];
	uint8		nkept[HNSW_PURE_MAX_LEVELS];	/* hnsw_list_add's state */
	/* the vector follows at NODE_HEADER */
} SharedNode;

#define NODE_HEADER MAXALIGN(sizeof(SharedNode))

typedef struct HnswShared
{
	/* set by the leader before the workers start */
	Oid			heaprelid;
	Oid			indexrelid;
	bool		isconcurrent;
	int			dim;
	int			m;
	int			efc;
	int			metric;
	int			levelCap;
	double		ml;
	int			trancheId;
	Size		nodeStride;
	uint32		capacity;
	uint64		slotCap;

	pg_atomic_uint32 nnodes;
	pg_atomic_uint64 slotsUsed;

	LWLock		entryLock;		/* guards entry and maxLevel */
	int32		entry;
	int			maxLevel;

	slock_t		mutex;			/* guards the fields below */
	double		reltuples;
	double		indtuples;
	bool		overflow;
} HnswShared;

/* One process's view of the shared graph and its scratch space. */
typedef struct ParallelBuilder
{
	HnswShared *sh;
	char	   *nodes;
	int32	   *slots;
	float	   *dists;			/* each slot's distance to its node */
	HnswMetric	metric;
	uint32	   *visited;
	uint32		visitTag;
	HnswHeap	cand;
	HnswHeap	res;
	HnswHeapItem *found;
	HnswHeapItem *scratch;		/* hnsw_list_add's */
	int32	   *copy;
	MemoryContext tmpCtx;
	double		reltuples;
	double		indtuples;
	bool		overflow;
} ParallelBuilder;

static inline SharedNode *
snode(ParallelBuilder *pb, int32 id)
{
	return (SharedNode *) (pb->nodes + (Size) id * pb->sh->nodeStride);
}

static inline float *
svec(ParallelBuilder *pb, int32 id)
{
	return (float *) ((char *) snode(pb, id) + NODE_HEADER);
}

static inline int32 *
sslots(ParallelBuilder *pb, SharedNode *node, int level)
{
	return pb->slots + node->slotsOff + hnsw_level_offset(pb->sh->m, level);
}

static inline float *
sdists(ParallelBuilder *pb, SharedNode *node, int level)
{
	return pb->dists + node->slotsOff + hnsw_level_offset(pb->sh->m, level);
}

static inline float
sdist(ParallelBuilder *pb, const float *q, int32 id)
{
	return hnsw_distance(pb->metric, q, svec(pb, id), pb->sh->dim);
}

/* Copy a node's list at one level out under its lock. */
static int
copy_list(ParallelBuilder *pb, int32 id, int level)
{
	SharedNode *node = snode(pb, id);
	int			cnt;

	LWLockAcquire(&node->lock, LW_SHARED);
	cnt = node->counts[level];
	memcpy(pb->copy, sslots(pb, node, level), sizeof(int32) * cnt);
	LWLockRelease(&node->lock);
	return cnt;
}

static int32
greedy(ParallelBuilder *pb, const float *q, int32 ep, float *epdist, int level)
{
	bool		changed = true;

	while (changed)
	{
		int			cnt = copy_list(pb, ep, level);
		int			i;

		changed = false;
		for (i = 0; i < cnt; i++)
		{
			float		d = sdist(pb, q, pb->copy[i]);

			if (d < *epdist)
			{
				*epdist = d;
				ep = pb->copy[i];
				changed = true;
			}
		}
	}
	return ep;
}

static int
shared_neighbors(void *arg, int32_t id, int level, const int32_t **list)
{
	ParallelBuilder *pb = (ParallelBuilder *) arg;

	*list = pb->copy;
	return copy_list(pb, id, level);
}

static const float *
shared_vector(void *arg, int32_t id)
{
	return svec((ParallelBuilder *) arg, id);
}

/* SEARCH-LAYER (Alg. 2, hnsw_layer_search) over the shared graph. */
static int
search_layer(ParallelBuilder *pb, const float *q, int32 ep, float epdist,
			 int ef, int level, HnswHeapItem *out)
{
	HnswLayerSearch ls = {pb->metric, pb->sh->dim, shared_neighbors,
	shared_vector, pb, &pb->cand, &pb->res, pb->visited, 0};

	if (++pb->visitTag == 0)
	{
		memset(pb->visited, 0, sizeof(uint32) * pb->sh->capacity);
		pb->visitTag = 1;
	}
	ls.tag = pb->visitTag;
	return hnsw_layer_search(&ls, q, ep, epdist, ef, level, out);
}

/* Edge src -> dst at a level; a full list is re-selected (under its lock). */
static void
add_link(ParallelBuilder *pb, int32 src, int32 dst, float dist, int level)
{
	SharedNode *node = snode(pb, src);
	int			max = hnsw_level_slots(pb->sh->m, level);
	int32	   *nb;
	float	   *nd;
	int			cnt,
				i;

	LWLockAcquire(&node->lock, LW_EXCLUSIVE);
	nb = sslots(pb, node, level);
	nd = sdists(pb, node, level);
	cnt = node->counts[level];
	for (i = 0; i < cnt; i++)
		if (nb[i] == dst)
			break;
	if (i == cnt)
		node->counts[level] = hnsw_list_add(pb->metric, pb->sh->dim, nb, nd,
											&node->nkept[level], cnt, max,
											dst, dist, shared_vector, pb,
											pb->scratch);
	LWLockRelease(&node->lock);
}

/* INSERT (Alg. 1) of one row into the shared graph. */
static void
insert_row(ParallelBuilder *pb, const float *vec, ItemPointer heaptid)
{
	HnswShared *sh = pb->sh;
	int			m = sh->m;
	uint32		id;
	uint64		off;
	int			level;
	int			slots;
	SharedNode *node;
	LWLockMode	mode = LW_SHARED;
	int32		ep;
	int			maxLevel;
	float		epdist;
	int			lc,
				top,
				i;
	HnswHeapItem *selected[HNSW_PURE_MAX_LEVELS];
	int			nselected[HNSW_PURE_MAX_LEVELS];
	int			nheuristic[HNSW_PURE_MAX_LEVELS];
#if PG_VERSION_NUM >= 150000
	double		u = pg_prng_double(&pg_global_prng_state);
#else
	double		u = (double) random() / ((double) MAX_RANDOM_VALUE + 1);
#endif

	level = (int) floor(-log(1.0 - u) * sh->ml);
	if (level > sh->levelCap)
		level = sh->levelCap;
	slots = 2 * m + level * m;

	id = pg_atomic_fetch_add_u32(&sh->nnodes, 1);
	off = pg_atomic_fetch_add_u64(&sh->slotsUsed, slots);
	if (id >= sh->capacity || off + slots > sh->slotCap)
	{
		pb->overflow = true;
		return;
	}

	node = snode(pb, id);
	LWLockInitialize(&node->lock, sh->trancheId);
	node->slotsOff = off;
	node->heaptid = *heaptid;
	node->level = level;
	memset(node->counts, 0, sizeof(node->counts));
	memset(node->nkept, HNSW_KEPT_UNKNOWN, sizeof(node->nkept));
	memcpy(svec(pb, id), vec, sizeof(float) * sh->dim);

	LWLockAcquire(&sh->entryLock, mode);
	if (level > sh->maxLevel)
	{
		LWLockRelease(&sh->entryLock);
		mode = LW_EXCLUSIVE;
		LWLockAcquire(&sh->entryLock, mode);
	}
	ep = sh->entry;
	maxLevel = sh->maxLevel;
	if (ep < 0)
	{
		sh->entry = id;
		sh->maxLevel = level;
		LWLockRelease(&sh->entryLock);
		return;
	}

	epdist = sdist(pb, vec, ep);
	for (lc = maxLevel; lc > level; lc--)
		ep = greedy(pb, vec, ep, &epdist, lc);
	top = Min(level, maxLevel);
	for (lc = top; lc >= 0; lc--)
	{
		int			nf = search_layer(pb, vec, ep, epdist, sh->efc, lc, pb->found);

		/* as many as the list holds: 2m at level 0 (hnswgraph.c) */
		selected[lc] = palloc(sizeof(HnswHeapItem) * hnsw_level_slots(m, lc));
		nselected[lc] = hnsw_select_list(pb->metric, sh->dim, pb->found, nf,
										 hnsw_level_slots(m, lc), shared_vector,
										 pb, selected[lc], &nheuristic[lc]);
		ep = pb->found[0].id;
		epdist = pb->found[0].dist;
	}

	/* own lists first: nobody can reach this node yet */
	for (lc = top; lc >= 0; lc--)
	{
		int32	   *nb = sslots(pb, node, lc);
		float	   *nd = sdists(pb, node, lc);

		for (i = 0; i < nselected[lc]; i++)
		{
			nb[i] = selected[lc][i].id;
			nd[i] = selected[lc][i].dist;
		}
		/* a full list's state for hnsw_list_add */
		node->nkept[lc] = nselected[lc] == hnsw_level_slots(m, lc) ?
			(uint8) nheuristic[lc] : HNSW_KEPT_UNKNOWN;
		node->counts[lc] = nselected[lc];
	}
	/* then the links back (Alg. 1, lines 10-16) */
	for (lc = top; lc >= 0; lc--)
		for (i = 0; i < nselected[lc]; i++)
			add_link(pb, selected[lc][i].id, id, selected[lc][i].dist, lc);

	if (level > maxLevel)
	{
		sh->entry = id;
		sh->maxLevel = level;
	}
	LWLockRelease(&sh->entryLock);
}

typedef struct CallbackState
{
	ParallelBuilder *pb;
	Relation	index;
	int			dim;
} CallbackState;

static void
parallel_callback(Relation index, ItemPointer tid, Datum *values, bool *isnull,
				  bool tupleIsAlive, void *state)
{
	CallbackState *cs = state;
	ParallelBuilder *pb = cs->pb;
	MemoryContext old;
	float	   *vec;

	pb->reltuples++;
	if (isnull[0] || pb->overflow)
		return;
	old = MemoryContextSwitchTo(pb->tmpCtx);
	vec = palloc(sizeof(float) * cs->dim);
	if (hnsw_form_vector(values[0], pb->metric, cs->dim, vec))
	{
		insert_row(pb, vec, tid);
		pb->indtuples++;
	}
	MemoryContextSwitchTo(old);
	MemoryContextReset(pb->tmpCtx);
}

/* The part every participant runs: its share of the scan, inserted. */
static void
participate(HnswShared *sh, ParallelTableScanDesc pscan, char *nodes,
			int32 *slots, float *dists, Relation heap, Relation index,
			IndexInfo *indexInfo)
{
	ParallelBuilder pb;
	CallbackState cs;
	TableScanDesc scan;
	HnswAllocator alloc;
	const HnswAllocator *a = &alloc;

	hnsw_bind_allocator(&alloc);
	memset(&pb, 0, sizeof(pb));
	pb.sh = sh;
	pb.nodes = nodes;
	pb.slots = slots;
	pb.dists = dists;
	pb.metric = (HnswMetric) sh->metric;
	pb.visited = MemoryContextAllocHuge(CurrentMemoryContext,
										sizeof(uint32) * sh->capacity);
	memset(pb.visited, 0, sizeof(uint32) * sh->capacity);
	hnsw_heap_init(&pb.cand, false, sh->efc * 4, a);
	hnsw_heap_init(&pb.res, true, sh->efc + 1, a);
	pb.found = palloc(sizeof(HnswHeapItem) * (sh->efc + 1));
	pb.scratch = palloc(sizeof(HnswHeapItem) * 2 * (2 * sh->m + 1));
	pb.copy = palloc(sizeof(int32) * 2 * sh->m);
	pb.tmpCtx = AllocSetContextCreate(CurrentMemoryContext,
									  "gnnhnsw parallel build",
									  ALLOCSET_DEFAULT_SIZES);
	cs.pb = &pb;
	cs.index = index;
	cs.dim = sh->dim;

	scan = table_beginscan_parallel(heap, pscan);
	table_index_build_scan(heap, index, indexInfo, true, false,
						   parallel_callback, &cs, scan);

	SpinLockAcquire(&sh->mutex);
	sh->reltuples += pb.reltuples;
	sh->indtuples += pb.indtuples;
	sh->overflow |= pb.overflow;
	SpinLockRelease(&sh->mutex);
	MemoryContextDelete(pb.tmpCtx);
}

/* Entry point of a worker (named in CreateParallelContext). */
PGDLLEXPORT void hnsw_parallel_build_main(dsm_segment *seg, shm_toc *toc);

void
hnsw_parallel_build_main(dsm_segment *seg, shm_toc *toc)
{
	HnswShared *sh = shm_toc_lookup(toc, KEY_SHARED, false);
	ParallelTableScanDesc pscan = shm_toc_lookup(toc, KEY_SCAN, false);
	char	   *nodes = shm_toc_lookup(toc, KEY_NODES, false);
	int32	   *slots = shm_toc_lookup(toc, KEY_SLOTS, false);
	float	   *dists = shm_toc_lookup(toc, KEY_DISTS, false);
	LOCKMODE	heapLockmode = sh->isconcurrent ? ShareUpdateExclusiveLock : ShareLock;
	Relation	heap;
	Relation	index;
	IndexInfo  *indexInfo;

	LWLockRegisterTranche(sh->trancheId, "gnnhnsw_build");
	heap = table_open(sh->heaprelid, heapLockmode);
	index = index_open(sh->indexrelid, RowExclusiveLock);
	indexInfo = BuildIndexInfo(index);
	indexInfo->ii_Concurrent = sh->isconcurrent;
	participate(sh, pscan, nodes, slots, dists, heap, index, indexInfo);
	index_close(index, RowExclusiveLock);
	table_close(heap, heapLockmode);
}

/*
 * Try a parallel build into bs (rows collected and linked).  Returns false,
 * with nothing changed, when no worker can be had or the graph would not
 * fit in maintenance_work_mem; the caller then builds serially.
 */
bool
hnsw_build_parallel(HnswBuildState *bs)
{
	int			nworkers;
	ParallelContext *pcxt;
	Snapshot	snapshot;
	Size		scanSize;
	Size		stride;
	double		estimate;
	uint64		capacity;
	uint64		slotCap;
	HnswShared *sh;
	ParallelTableScanDesc pscan;
	char	   *nodes;
	int32	   *slots;
	float	   *dists;
	uint32		n,
				i;
	HnswGraph  *g;
	bool		ok;
	static int	trancheId = 0;

	nworkers = plan_create_index_workers(RelationGetRelid(bs->heap),
										 RelationGetRelid(bs->index));
	if (nworkers <= 0 || IsInParallelMode())
		return false;

	/* room for the rows, within maintenance_work_mem */
	stride = MAXALIGN(NODE_HEADER + sizeof(float) * bs->dim);
	capacity = bs->memLimit / (stride + (sizeof(int32) + sizeof(float)) * 4 * bs->m +
							   sizeof(uint32));
	estimate = bs->heap->rd_rel->reltuples;
	if (estimate > 0 && capacity > (uint64) (estimate * 1.2 + 1000))
		capacity = (uint64) (estimate * 1.2 + 1000);
	if (estimate > 0 && estimate > capacity)
		return false;			/* would not fit: serial build spills */
	if (capacity > PG_INT32_MAX / 2)
		capacity = PG_INT32_MAX / 2;
	slotCap = capacity * 4 * bs->m;

	if (trancheId == 0)
		trancheId = LWLockNewTrancheId();
	LWLockRegisterTranche(trancheId, "gnnhnsw_build");

	EnterParallelMode();
	pcxt = CreateParallelContext("gnnvec", "hnsw_parallel_build_main", nworkers);
	snapshot = bs->indexInfo->ii_Concurrent ?
		RegisterSnapshot(GetTransactionSnapshot()) : SnapshotAny;
	scanSize = table_parallelscan_estimate(bs->heap, snapshot);
	shm_toc_estimate_chunk(&pcxt->estimator, sizeof(HnswShared));
	shm_toc_estimate_chunk(&pcxt->estimator, scanSize);
	shm_toc_estimate_chunk(&pcxt->estimator, stride * capacity);
	shm_toc_estimate_chunk(&pcxt->estimator, sizeof(int32) * slotCap);
	shm_toc_estimate_chunk(&pcxt->estimator, sizeof(float) * slotCap);
	shm_toc_estimate_keys(&pcxt->estimator, 5);
	InitializeParallelDSM(pcxt);
	if (pcxt->seg == NULL)
	{
		if (IsMVCCSnapshot(snapshot))
			UnregisterSnapshot(snapshot);
		DestroyParallelContext(pcxt);
		ExitParallelMode();
		return false;
	}

	sh = shm_toc_allocate(pcxt->toc, sizeof(HnswShared));
	memset(sh, 0, sizeof(HnswShared));
	sh->heaprelid = RelationGetRelid(bs->heap);
	sh->indexrelid = RelationGetRelid(bs->index);
	sh->isconcurrent = bs->indexInfo->ii_Concurrent;
	sh->dim = bs->dim;
	sh->m = bs->m;
	sh->efc = bs->efConstruction;
	sh->metric = bs->metric;
	sh->levelCap = hnsw_level_cap(bs->m);
	sh->ml = 1.0 / log((double) bs->m);
	sh->trancheId = trancheId;
	sh->nodeStride = stride;
	sh->capacity = (uint32) capacity;
	sh->slotCap = slotCap;
	pg_atomic_init_u32(&sh->nnodes, 0);
	pg_atomic_init_u64(&sh->slotsUsed, 0);
	LWLockInitialize(&sh->entryLock, trancheId);
	sh->entry = -1;
	sh->maxLevel = -1;
	SpinLockInit(&sh->mutex);
	pscan = shm_toc_allocate(pcxt->toc, scanSize);
	table_parallelscan_initialize(bs->heap, pscan, snapshot);
	nodes = shm_toc_allocate(pcxt->toc, stride * capacity);
	slots = shm_toc_allocate(pcxt->toc, sizeof(int32) * slotCap);
	dists = shm_toc_allocate(pcxt->toc, sizeof(float) * slotCap);
	shm_toc_insert(pcxt->toc, KEY_SHARED, sh);
	shm_toc_insert(pcxt->toc, KEY_SCAN, pscan);
	shm_toc_insert(pcxt->toc, KEY_NODES, nodes);
	shm_toc_insert(pcxt->toc, KEY_SLOTS, slots);
	shm_toc_insert(pcxt->toc, KEY_DISTS, dists);

	LaunchParallelWorkers(pcxt);
	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE,
								 PROGRESS_HNSW_PHASE_LOAD);
	/* the leader takes its share too */
	participate(sh, pscan, nodes, slots, dists, bs->heap, bs->index,
				bs->indexInfo);
	WaitForParallelWorkersToFinish(pcxt);
	if (IsMVCCSnapshot(snapshot))
		UnregisterSnapshot(snapshot);

	ok = !sh->overflow;
	if (ok)
	{
		ParallelBuilder view;

		/* the ordinary page writer reads the shared graph in place */
		view.sh = sh;
		view.nodes = nodes;
		view.slots = slots;
		n = Min(pg_atomic_read_u32(&sh->nnodes), sh->capacity);
		g = bs->graph;
		g->a->free(g->a->ctx, g->nodes);
		g->a->free(g->a->ctx, g->visited);
		g->nodes = MemoryContextAllocHuge(bs->graphCtx, sizeof(HnswGraphNode) * Max(n, 1));
		g->visited = MemoryContextAllocHuge(bs->graphCtx, sizeof(uint32_t) * Max(n, 1));
		memset(g->visited, 0, sizeof(uint32_t) * Max(n, 1));
		g->visit_tag = 0;
		g->cap = Max(n, 1);
		g->n = n;
		g->borrowed = true;
		g->entry = sh->entry;
		g->max_level = sh->maxLevel;
		if (n > (uint32) bs->captids)
		{
			int32		want = (int32) n;

			bs->heaptids = MemoryContextAllocHuge(bs->graphCtx,
												  sizeof(ItemPointerData) * HNSW_HEAPTIDS * want);
			bs->nheaptids = MemoryContextAllocHuge(bs->graphCtx, want);
			bs->captids = want;
		}
		for (i = 0; i < n; i++)
		{
			SharedNode *node = snode(&view, i);

			g->nodes[i].vec = svec(&view, i);
			g->nodes[i].nbrs = slots + node->slotsOff;
			g->nodes[i].dists = dists + node->slotsOff;
			g->nodes[i].counts = node->counts;
			g->nodes[i].nkept = node->nkept;
			g->nodes[i].level = node->level;
			bs->heaptids[i * HNSW_HEAPTIDS] = node->heaptid;
			bs->nheaptids[i] = 1;
		}
		bs->reltuples = sh->reltuples;
		bs->indtuples = sh->indtuples;
		pgstat_progress_update_param(PROGRESS_CREATEIDX_TUPLES_DONE,
									 (int64) bs->indtuples);
		/* write the pages while the segment is still mapped */
		hnsw_build_write(bs);
		bs->parallelWorkers = nworkers;
	}
	DestroyParallelContext(pcxt);
	ExitParallelMode();
	if (ok)
	{
		/* the nodes lived in the segment: forget them */
		bs->graph->n = 0;
		bs->pagesWritten = true;
	}
	return ok;
}
