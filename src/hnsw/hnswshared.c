/*
 * hnswshared.c
 *		The shared scan cache: with gnnvec in shared_preload_libraries, the
 *		scan caches (hnswcache.c) of up to HNSW_SHARED_CACHES indexes live in
 *		shared memory, gnnvec.shared_scan_cache_size in all, filled by the
 *		scans of every backend and read by all of them, so that a new
 *		connection's first query finds the vectors earlier ones read instead
 *		of reading and encoding each element it meets again.  An index that
 *		gets no room here falls back to the backend's own cache (hnswscan.c).
 *
 * Locks.  Each cache has an LWLock.  A scan holds it shared while it
 * searches the graph (never while rows go back to the executor) and puts
 * entries under it with atomic operations (hnswcache.c's fixed caches).
 * Clearing a cache, for a new generation of its index (VACUUM freed
 * elements) or to give its memory to another index, takes the lock
 * exclusively, and only conditionally, so that no scan ever waits on
 * another's search: a cache to be cleared for a new generation is marked
 * stale first, no scan enters a stale cache, so its holders drain within a
 * search, and the next scan clears it; a scan that cannot goes on without
 * a cache.  Which index has which cache and memory (the directory) is
 * under an LWLock of its own; a cache's incarnation changes whenever it is
 * given to an index, so that a scan holding a reference to it notices.
 *
 * A cache is sized when it is made, from the index's pages, and does not
 * grow: elements inserted past its capacity are read from their pages.
 *
 * Neighbour lists.  A cache made on a primary with room for every element
 * and its level-0 list also keeps the lists scans read (hnswcache.c), so
 * that later scans walk the graph in memory, and the heap TIDs of the
 * elements they return.  Inserts change lists and heap TIDs in place, so
 * every change to an index page counts in its cache's count for the
 * page's stripe of blocks (hnsw_shared_cache_modified, after the change);
 * a scan reads the count of a page's stripe plus one (hnsw_list_tag)
 * before it reads the page, keeps what it read under that tag, and uses a
 * kept record only if its tag is the stripe's count plus one when it is
 * used.  A record read before a change was kept under a tag from before
 * its count, so no scan that starts after the change uses it: a row
 * inserted is found at once.  A change stales only its stripe's records
 * (1/HNSW_LIST_STRIPES of them for each block it changes), so scans under
 * a stream of inserts still find most lists kept.  On a standby the
 * startup process changes pages without counting, so lists are neither
 * kept nor used during recovery.
 * It is given to another index only after HNSW_SHARED_IDLE_SECS without a
 * scan (a dropped or rebuilt index's cache ends that way).
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#define HNSW_SHARED_IDLE_SECS	60
/* a cache for fewer elements than this is not worth a directory entry */
#define HNSW_SHARED_MIN_ELEMENTS 1024
/* an index that found no room asks again after this long */
#define HNSW_SHARED_RETRY_SECS	10

typedef struct SharedCache
{
	/* under the directory lock (and this cache's, exclusive, to change) */
	bool		inuse;
	Oid			dbid;
	HnswIndexId index;
	uint64		incarnation;
	Size		offset;			/* its memory in the arena */
	Size		bytes;
	/* under this cache's lock */
	uint32		generation;
	LWLock	   *lock;
	pg_atomic_uint32 stale;		/* to be cleared: no scan enters */
	pg_atomic_uint64 last_used; /* TimestampTz of a recent scan */
	pg_atomic_uint64 changes[HNSW_LIST_STRIPES];	/* to its index's pages,
													 * by stripe (never reset:
													 * tags only rise) */
	HnswVecCache vc;
} SharedCache;

typedef struct SharedCacheDir
{
	LWLock	   *lock;
	uint64		incarnations;
	Size		arena_bytes;
	char	   *arena;
	SharedCache caches[HNSW_SHARED_CACHES];
} SharedCacheDir;

int			hnsw_shared_cache_kb = 131072;
static SharedCacheDir *cacheDir = NULL;

/*
 * The indexes this backend found no room for, and when: their scans use
 * the backend's own cache without asking the directory (exclusively) each
 * time.
 */
typedef struct NoRoom
{
	HnswIndexId index;
	TimestampTz when;
} NoRoom;

#define HNSW_NO_ROOM_MEMO	8
static NoRoom noRoom[HNSW_NO_ROOM_MEMO];
static int	noRoomNext = 0;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
arena_bytes(void)
{
	return (Size) hnsw_shared_cache_kb * 1024;
}

static Size
shared_cache_shmem_size(void)
{
	/* the arena starts 16-aligned (hnsw_vcache_init_fixed) */
	return add_size(MAXALIGN(sizeof(SharedCacheDir)) + 16, arena_bytes());
}

static void
shared_cache_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(shared_cache_shmem_size());
	RequestNamedLWLockTranche("gnnvec_scan_cache", 1 + HNSW_SHARED_CACHES);
}

static void
shared_cache_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	cacheDir = ShmemInitStruct("gnnvec scan cache", shared_cache_shmem_size(),
							   &found);
	if (!found)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("gnnvec_scan_cache");
		char	   *arena = (char *) cacheDir + MAXALIGN(sizeof(SharedCacheDir));

		memset(cacheDir, 0, sizeof(SharedCacheDir));
		cacheDir->lock = &locks[0].lock;
		cacheDir->arena = (char *) TYPEALIGN(16, arena);
		cacheDir->arena_bytes = arena_bytes();
		for (int i = 0; i < HNSW_SHARED_CACHES; i++)
		{
			cacheDir->caches[i].lock = &locks[1 + i].lock;
			pg_atomic_init_u32(&cacheDir->caches[i].stale, 0);
			pg_atomic_init_u64(&cacheDir->caches[i].last_used, 0);
			for (int j = 0; j < HNSW_LIST_STRIPES; j++)
				pg_atomic_init_u64(&cacheDir->caches[i].changes[j], 0);
		}
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * From hnsw_init: the setting, and with gnnvec preloaded the shared memory
 * it sizes (otherwise there is no shared cache; the setting is still
 * defined so that postgresql.conf may name it).
 */
void
hnsw_shared_cache_init(void)
{
	DefineCustomIntVariable("gnnvec.shared_scan_cache_size",
							"Shared memory for gnnhnsw scan caches, used by every backend (needs gnnvec in shared_preload_libraries).",
							"0 turns the shared cache off; each backend then keeps its own (gnnvec.scan_cache_size).",
							&hnsw_shared_cache_kb, 131072, 0, MAX_KILOBYTES,
							process_shared_preload_libraries_in_progress ?
							PGC_POSTMASTER : PGC_BACKEND,
							GUC_UNIT_KB, NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress ||
		hnsw_shared_cache_kb == 0)
		return;
#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = shared_cache_shmem_request;
#else
	shared_cache_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = shared_cache_shmem_startup;
}

static bool
cache_is_for(const SharedCache *sc, Relation index)
{
	return sc->inuse && sc->dbid == MyDatabaseId &&
		hnsw_index_id_is(&sc->index, index);
}

/*
 * The cache of the index, with its incarnation and generation, or -1; the
 * caller holds the directory lock.
 */
static int
find_cache(Relation index, uint64 *incarnation, uint32 *generation)
{
	for (int i = 0; i < HNSW_SHARED_CACHES; i++)
		if (cache_is_for(&cacheDir->caches[i], index))
		{
			*incarnation = cacheDir->caches[i].incarnation;
			*generation = cacheDir->caches[i].generation;
			return i;
		}
	return -1;
}

/*
 * About how many elements the index has, from above: each takes at least
 * its vector and its level-0 neighbour tuple in the pages.
 */
static int64
estimate_elements(Relation index, const HnswMetaPageData *meta)
{
	Size		per = sizeof(float) * meta->dims +
		HNSW_NEIGHBOR_TUPLE_SIZE(meta->m, 0);
	double		n = (double) RelationGetNumberOfBlocks(index) * BLCKSZ / per;

	return (int64) Min(n * 1.1 + 256, (double) PG_INT32_MAX / 2);
}

/*
 * The arena's largest gap between the caches in use (offset, bytes); the
 * caller holds the directory lock.
 */
static Size
largest_gap(Size *offset)
{
	Size		best = 0,
				at = 0;

	*offset = 0;
	for (;;)
	{
		Size		next = cacheDir->arena_bytes;
		Size		end = at;

		/* the first cache at or after at */
		for (int i = 0; i < HNSW_SHARED_CACHES; i++)
		{
			SharedCache *sc = &cacheDir->caches[i];

			if (sc->inuse && sc->offset >= at && sc->offset < next)
			{
				next = sc->offset;
				end = sc->offset + sc->bytes;
			}
		}
		if (next - at > best)
		{
			best = next - at;
			*offset = at;
		}
		if (next == cacheDir->arena_bytes)
			return best;
		at = TYPEALIGN(16, end);
	}
}

/*
 * Give up the least recently used cache idle for HNSW_SHARED_IDLE_SECS;
 * false when none is.  The caller holds the directory lock exclusively.
 */
static bool
evict_idle_cache(void)
{
	TimestampTz now = GetCurrentTimestamp();
	SharedCache *victim = NULL;
	uint64		oldest = PG_UINT64_MAX;

	for (int i = 0; i < HNSW_SHARED_CACHES; i++)
	{
		SharedCache *sc = &cacheDir->caches[i];
		uint64		used = pg_atomic_read_u64(&sc->last_used);

		if (sc->inuse && used < oldest &&
			TimestampDifferenceExceeds((TimestampTz) used, now,
									   HNSW_SHARED_IDLE_SECS * 1000))
		{
			victim = sc;
			oldest = used;
		}
	}
	if (victim == NULL || !LWLockConditionalAcquire(victim->lock, LW_EXCLUSIVE))
		return false;
	victim->inuse = false;
	LWLockRelease(victim->lock);
	return true;
}

static bool
no_room_recently(Relation index)
{
	for (int i = 0; i < HNSW_NO_ROOM_MEMO; i++)
		if (hnsw_index_id_is(&noRoom[i].index, index))
			return !TimestampDifferenceExceeds(noRoom[i].when,
											   GetCurrentStatementStartTimestamp(),
											   HNSW_SHARED_RETRY_SECS * 1000);
	return false;
}

static void
note_no_room(Relation index)
{
	NoRoom	   *r = &noRoom[noRoomNext++ % HNSW_NO_ROOM_MEMO];

	hnsw_index_id(index, &r->index);
	r->when = GetCurrentStatementStartTimestamp();
}

/*
 * A cache for the index, made in the largest free memory (after giving up
 * idle caches if there is not room for all of its elements); -1 when there
 * is not room for HNSW_SHARED_MIN_ELEMENTS.  Float vectors when all fit,
 * 8-bit codes otherwise (never for L1: see hnswscan.c), and neighbour
 * lists too when all fit with them and this is not a standby.  Like
 * find_cache, it gives the cache's incarnation and generation.
 */
static int
make_cache(Relation index, const HnswMetaPageData *meta, uint64 *incarnation,
		   uint32 *generation)
{
	int64		want = estimate_elements(index, meta);
	bool		codes_ok = meta->metric != HNSW_METRIC_L1;
	SharedCache *sc = NULL;
	Size		offset,
				gap;
	int64		capacity;
	bool		codes;
	int			nlinks;
	int			id;

	LWLockAcquire(cacheDir->lock, LW_EXCLUSIVE);
	if ((id = find_cache(index, incarnation, generation)) >= 0)
	{
		LWLockRelease(cacheDir->lock);
		return id;
	}
	for (;;)
	{
		for (id = 0; id < HNSW_SHARED_CACHES && cacheDir->caches[id].inuse; id++)
			;
		gap = largest_gap(&offset);
		codes = codes_ok &&
			hnsw_vcache_fixed_bytes(meta->dims, false, 0, want) > gap;
		nlinks = !RecoveryInProgress() &&
			hnsw_vcache_fixed_bytes(meta->dims, codes, 2 * meta->m, want) <= gap ?
			2 * meta->m : 0;
		capacity = Min(want, hnsw_vcache_fixed_capacity(meta->dims, codes,
														nlinks, gap));
		if (id < HNSW_SHARED_CACHES && capacity == want)
			break;
		if (!evict_idle_cache())
			break;
	}
	if (id == HNSW_SHARED_CACHES || capacity < Min(want, HNSW_SHARED_MIN_ELEMENTS))
	{
		LWLockRelease(cacheDir->lock);
		note_no_room(index);
		return -1;
	}
	sc = &cacheDir->caches[id];
	LWLockAcquire(sc->lock, LW_EXCLUSIVE);
	hnsw_vcache_init_fixed(&sc->vc, meta->dims, codes, nlinks, capacity,
						   cacheDir->arena + offset);
	sc->dbid = MyDatabaseId;
	hnsw_index_id(index, &sc->index);
	sc->incarnation = ++cacheDir->incarnations;
	sc->offset = offset;
	sc->bytes = sc->vc.bytes;
	sc->generation = meta->generation;
	pg_atomic_write_u32(&sc->stale, 0);
	pg_atomic_write_u64(&sc->last_used, (uint64) GetCurrentTimestamp());
	sc->inuse = true;
	*incarnation = sc->incarnation;
	*generation = sc->generation;
	LWLockRelease(sc->lock);
	LWLockRelease(cacheDir->lock);
	return id;
}

/*
 * Clear a cache for the generation in meta, if no scan holds it now and
 * meta is the index's current generation (a scan that read the metapage
 * before a VACUUM must not take the cache back).  False when it was not.
 */
static bool
renew_cache(Relation index, SharedCache *sc, uint64 incarnation,
			const HnswMetaPageData *meta)
{
	HnswMetaPageData now;

	hnsw_read_meta(index, &now);
	if (now.generation != meta->generation)
		return false;
	pg_atomic_write_u32(&sc->stale, 1);
	if (!LWLockConditionalAcquire(sc->lock, LW_EXCLUSIVE))
		return false;
	if (sc->incarnation == incarnation)
	{
		/* another scan may have cleared it since, and then marked it */
		if (sc->generation != meta->generation)
			hnsw_vcache_clear(&sc->vc);
		sc->generation = meta->generation;
		pg_atomic_write_u32(&sc->stale, 0);
	}
	LWLockRelease(sc->lock);
	return sc->incarnation == incarnation;
}

/*
 * The shared cache of the index for its generation in meta, or NULL: no
 * shared cache (not preloaded, or size 0), or no room for the index
 * (ref->id HNSW_SHARED_NONE: the backend's own cache may serve), or one of
 * another generation that could not be cleared now (HNSW_SHARED_BUSY: the
 * scan is to go without a cache, so that the backend does not build a
 * cache of its own for a moment's contention).  With for_scan a cache is
 * made or cleared as needed, and its use is noted; otherwise
 * (gnnvec_index_check) only one of meta's generation is returned.  The
 * caller reads it only between hnsw_shared_cache_enter and _leave.
 */
HnswVecCache *
hnsw_shared_cache_get(Relation index, const HnswMetaPageData *meta,
					  bool for_scan, HnswSharedCacheRef *ref)
{
	SharedCache *sc;
	uint64		incarnation = 0;
	uint32		generation = 0;
	bool		stale;
	int			id;

	ref->id = HNSW_SHARED_NONE;
	if (cacheDir == NULL)
		return NULL;
	LWLockAcquire(cacheDir->lock, LW_SHARED);
	id = find_cache(index, &incarnation, &generation);
	LWLockRelease(cacheDir->lock);
	if (id < 0 &&
		(!for_scan || no_room_recently(index) ||
		 (id = make_cache(index, meta, &incarnation, &generation)) < 0))
		return NULL;
	sc = &cacheDir->caches[id];
	stale = pg_atomic_read_u32(&sc->stale) != 0;
	if (generation != meta->generation || stale)
	{
		if (!for_scan || !renew_cache(index, sc, incarnation, meta))
		{
			ref->id = HNSW_SHARED_BUSY;
			return NULL;
		}
	}
	if (for_scan)
	{
		TimestampTz now = GetCurrentStatementStartTimestamp();

		/* written once a second at most: scans read this cache line */
		if (TimestampDifferenceExceeds((TimestampTz) pg_atomic_read_u64(&sc->last_used),
									   now, 1000))
			pg_atomic_write_u64(&sc->last_used, (uint64) now);
	}
	ref->id = id;
	ref->incarnation = incarnation;
	ref->generation = meta->generation;
	return &sc->vc;
}

/*
 * Hold the cache for a stretch of search.  False (nothing held) when it
 * has since been given to another index, cleared for another generation,
 * or marked to be: the scan is to go on without it.
 */
bool
hnsw_shared_cache_enter(const HnswSharedCacheRef *ref)
{
	SharedCache *sc = &cacheDir->caches[ref->id];

	if (pg_atomic_read_u32(&sc->stale) != 0)
		return false;
	LWLockAcquire(sc->lock, LW_SHARED);
	if (sc->inuse && sc->incarnation == ref->incarnation &&
		sc->generation == ref->generation &&
		pg_atomic_read_u32(&sc->stale) == 0)
		return true;
	LWLockRelease(sc->lock);
	return false;
}

/*
 * The change counts by stripe (hnsw_list_tag) of the cache a scan holds,
 * or NULL when it keeps no lists (see the top of this file).
 */
pg_atomic_uint64 *
hnsw_shared_cache_changes(const HnswSharedCacheRef *ref)
{
	SharedCache *sc = &cacheDir->caches[ref->id];

	if (sc->vc.nlinks == 0 || RecoveryInProgress())
		return NULL;
	return sc->changes;
}

/*
 * Count a change to block blkno of the index, after it is made and before
 * it is committed (see the top of this file).
 */
void
hnsw_shared_cache_modified(Relation index, BlockNumber blkno)
{
	if (cacheDir == NULL)
		return;
	LWLockAcquire(cacheDir->lock, LW_SHARED);
	for (int i = 0; i < HNSW_SHARED_CACHES; i++)
		if (cache_is_for(&cacheDir->caches[i], index))
			pg_atomic_fetch_add_u64(&cacheDir->caches[i].changes[blkno & (HNSW_LIST_STRIPES - 1)], 1);
	LWLockRelease(cacheDir->lock);
}

/* An ERROR in between releases the lock with every other LWLock. */
void
hnsw_shared_cache_leave(const HnswSharedCacheRef *ref)
{
	LWLockRelease(cacheDir->caches[ref->id].lock);
}

/*
 * The shared caches of this database's indexes (gnnvec_scan_cache), at
 * most max of them into out; returns how many.
 */
int
hnsw_shared_cache_list(HnswScanCacheInfo *out, int max)
{
	int			n = 0;

	if (cacheDir == NULL)
		return 0;
	LWLockAcquire(cacheDir->lock, LW_SHARED);
	for (int i = 0; i < HNSW_SHARED_CACHES && n < max; i++)
	{
		SharedCache *sc = &cacheDir->caches[i];

		if (!sc->inuse || sc->dbid != MyDatabaseId)
			continue;
		out[n].indexoid = sc->index.indexoid;
		out[n].generation = sc->generation;
		out[n].elements = hnsw_vcache_count(&sc->vc);
		out[n].bytes = sc->bytes;
		out[n].codes = sc->vc.codes;
		out[n].shared = true;
		n++;
	}
	LWLockRelease(cacheDir->lock);
	return n;
}
