/*
 * lora_shmem.c
 *		Where MicroLoRA adapters and trajectories live, and the settings.
 *
 * With gnnvec in shared_preload_libraries, one bank of adapters and one
 * trajectory ring sit in shared memory, each behind its own LWLock: every
 * backend adapts the same adapters and records into the same ring.  Shared
 * memory is sized once at server start from gnnvec.lora_max_dim and
 * gnnvec.trajectory_capacity.
 *
 * Without preloading there is no shared memory to ask for, so each backend
 * keeps its own bank and ring in TopMemoryContext (adapter storage sized to
 * the dimension each adapter sees, up to the type's limit), and the SQL
 * functions say so once per backend.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "lora/lora.h"

/* Settings */
static int	lora_rank_setting = LORA_DEFAULT_RANK;
static double lora_alpha_setting = 0.1;
static double lora_learning_rate_setting = 0.01;
static int	lora_max_dim_setting = 2048;
static bool lora_record_setting = false;
static int	trajectory_capacity_setting = 1000;

/* Shared state: header, then adapter storage, then ring storage. */
typedef struct LoraShared
{
	LWLock	   *bank_lock;
	LWLock	   *ring_lock;
	LoraBank	bank;
	LoraRing	ring;
} LoraShared;

static bool lora_is_shared = false;
static LoraShared *lora_shared = NULL;

/* Backend-local state when not preloaded */
static LoraBank *local_bank = NULL;
static LoraRing *local_ring = NULL;
static bool local_notice_given = false;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
adapters_size(void)
{
	return mul_size(mul_size(LORA_NUM_ADAPTERS,
							 lora_adapter_floats(lora_max_dim_setting)),
					sizeof(float));
}

static Size
lora_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(LoraShared));

	size = add_size(size, MAXALIGN(adapters_size()));
	return add_size(size, lora_ring_size(trajectory_capacity_setting,
										 lora_max_dim_setting));
}

static void
lora_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(lora_shmem_size());
	RequestNamedLWLockTranche("gnnvec_lora", 2);
}

static void
lora_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	lora_shared = ShmemInitStruct("gnnvec lora", lora_shmem_size(), &found);
	if (!found)
	{
		char	   *next = (char *) lora_shared + MAXALIGN(sizeof(LoraShared));
		LWLockPadded *locks = GetNamedLWLockTranche("gnnvec_lora");

		lora_shared->bank_lock = &locks[0].lock;
		lora_shared->ring_lock = &locks[1].lock;
		lora_bank_init(&lora_shared->bank, (float *) next, lora_max_dim_setting);
		next += MAXALIGN(adapters_size());
		lora_ring_init(&lora_shared->ring, next, trajectory_capacity_setting,
					   lora_max_dim_setting);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * The sizes fix shared memory at server start when preloaded; otherwise they
 * size this backend's ring when first used, so they are fixed per backend
 * (PostgreSQL allows PGC_POSTMASTER settings only during preloading).
 */
static void
define_settings(void)
{
	GucContext	size_context = process_shared_preload_libraries_in_progress ?
		PGC_POSTMASTER : PGC_BACKEND;

	DefineCustomIntVariable("gnnvec.lora_rank",
							"Rank of MicroLoRA adapters initialised from now on.",
							"An adapter keeps the rank it was initialised with until it is reset.",
							&lora_rank_setting, LORA_DEFAULT_RANK, 1, LORA_MAX_RANK,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("gnnvec.lora_alpha",
							 "Scale alpha of MicroLoRA adapters initialised from now on (y = x + alpha (x A) B).",
							 "An adapter keeps the alpha it was initialised with until it is reset.",
							 &lora_alpha_setting, 0.1, 0.0, 1000.0,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomRealVariable("gnnvec.lora_learning_rate",
							 "SGD learning rate of gnnvec_lora_adapt and gnnvec_lora_reward.",
							 NULL,
							 &lora_learning_rate_setting, 0.01, 0.0, 1000.0,
							 PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("gnnvec.lora_max_dim",
							"Largest dimension of shared-memory adapters and of trajectory embeddings.",
							"With gnnvec preloaded, shared memory is sized from this at server start.",
							&lora_max_dim_setting, 2048, 1, LORA_MAX_DIM,
							size_context, 0, NULL, NULL, NULL);
	DefineCustomBoolVariable("gnnvec.record_trajectories",
							 "Record executed plan nodes of operator scope types as trajectories.",
							 "Turns on per-node timing instrumentation for every query while on.",
							 &lora_record_setting, false,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("gnnvec.trajectory_capacity",
							"Trajectories the ring buffer holds; the oldest are overwritten.",
							NULL,
							&trajectory_capacity_setting, 1000, 1, 1000000,
							size_context, 0, NULL, NULL, NULL);
}

void
lora_init(void)
{
	define_settings();
	lora_index_init();
	if (process_shared_preload_libraries_in_progress)
	{
		lora_is_shared = true;
#if PG_VERSION_NUM >= 150000
		prev_shmem_request_hook = shmem_request_hook;
		shmem_request_hook = lora_shmem_request;
#else
		lora_shmem_request();
#endif
		prev_shmem_startup_hook = shmem_startup_hook;
		shmem_startup_hook = lora_shmem_startup;
	}
	lora_hook_install();
}

void
lora_settings(LoraSettings *settings)
{
	settings->rank = lora_rank_setting;
	settings->alpha = (float) lora_alpha_setting;
	settings->learning_rate = (float) lora_learning_rate_setting;
}

bool
lora_recording(void)
{
	return lora_record_setting;
}

int
lora_max_dim(void)
{
	return lora_max_dim_setting;
}

void
lora_notice_if_local(void)
{
	if (lora_is_shared || local_notice_given)
		return;
	local_notice_given = true;
	ereport(NOTICE,
			(errmsg("gnnvec MicroLoRA adapters and trajectories are private to this session"),
			 errdetail("gnnvec is not in shared_preload_libraries, so they live in this backend's memory and end with it."),
			 errhint("Add gnnvec to shared_preload_libraries and restart to share them across sessions.")));
}

static void
check_shared_ready(void)
{
	if (lora_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("gnnvec shared memory for MicroLoRA is not initialised")));
}

LoraBank *
lora_bank_begin(bool exclusive)
{
	if (lora_is_shared)
	{
		check_shared_ready();
		LWLockAcquire(lora_shared->bank_lock, exclusive ? LW_EXCLUSIVE : LW_SHARED);
		return &lora_shared->bank;
	}
	if (local_bank == NULL)
	{
		local_bank = MemoryContextAllocZero(TopMemoryContext, sizeof(LoraBank));
		lora_bank_init(local_bank, NULL, 0);
	}
	return local_bank;
}

/* An ERROR in between releases the lock with every other LWLock. */
void
lora_bank_end(void)
{
	if (lora_is_shared)
		LWLockRelease(lora_shared->bank_lock);
}

/*
 * Backend-local adapters get storage for the dimension they are about to
 * be initialised with; shared ones have theirs (lora_bank_forward reports
 * a dimension above gnnvec.lora_max_dim).
 */
void
lora_bank_reserve(LoraBank *bank, int scope, int dim)
{
	LoraAdapter *ads[2];
	int			n;

	if (lora_is_shared)
		return;
	n = lora_bank_adapters_for(bank, scope, ads);
	for (int i = 0; i < n; i++)
	{
		LoraAdapter *ad = ads[i];
		float	   *mem;

		if (ad->dim != 0 || ad->capacity >= dim)
			continue;
		mem = MemoryContextAlloc(TopMemoryContext,
								 sizeof(float) * lora_adapter_floats(dim));
		if (ad->mem != NULL)
			pfree(ad->mem);
		lora_adapter_attach(ad, mem, dim, ad->seed);
	}
}

LoraRing *
lora_ring_begin(bool exclusive)
{
	if (lora_is_shared)
	{
		check_shared_ready();
		LWLockAcquire(lora_shared->ring_lock, exclusive ? LW_EXCLUSIVE : LW_SHARED);
		return &lora_shared->ring;
	}
	if (local_ring == NULL)
	{
		Size		size = lora_ring_size(trajectory_capacity_setting,
										  lora_max_dim_setting);
		void	   *storage = MemoryContextAllocHuge(TopMemoryContext, size);
		LoraRing   *ring = MemoryContextAlloc(TopMemoryContext, sizeof(LoraRing));

		lora_ring_init(ring, storage, trajectory_capacity_setting,
					   lora_max_dim_setting);
		local_ring = ring;
	}
	return local_ring;
}

void
lora_ring_end(void)
{
	if (lora_is_shared)
		LWLockRelease(lora_shared->ring_lock);
}
