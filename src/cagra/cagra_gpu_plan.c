/*
 * cagra_gpu_plan.c
 *		The device-memory plan of the GPU CAGRA build (see cagra_gpu_plan.h).
 */
#include <stdio.h>
#include <string.h>

#include "cagra/cagra_gpu_plan.h"

/* Largest and smallest block sizes tried, per stage. */
#define EXACT_ROWS_MAX 8192
#define EXACT_ROWS_MIN 256
#define EXACT_COLS_MAX 16384
#define EXACT_COLS_MIN 1024
#define ASSIGN_ROWS_MAX 8192
#define ASSIGN_ROWS_MIN 64
#define LIST_QUERIES_MAX 1024
#define LIST_QUERIES_MIN 32
#define LIST_CANDS_MAX 16384
#define LIST_CANDS_MIN 256

static const char *const buffer_names[CAGRA_GPU_N_BUFFERS] = {
	"the cuBLAS workspace",
	"the kNN graph",
	"the mean",
	"the data set",
	"row norms",
	"a row block",
	"a column chunk",
	"column norms",
	"gathered candidates",
	"a distance tile",
	"candidate distances",
	"candidate ids",
	"the centroids",
	"centroid norms",
	"the k-means sample",
	"the sample's nearest centroids",
	"the sample's group offsets",
	"the sample's groups",
	"a block of rows to assign",
	"an assignment tile",
	"the block's nearest centroids",
	"probe distances",
	"probe ids",
	"a list's query ids",
	"a list's queries",
	"a list's candidate ids",
	"a list's candidates",
	"candidate norms",
	"a list's distance tile",
	"a list's top distances",
	"a list's top ids",
	"the pruned graph",
	"reverse-edge keys",
	"sorted reverse-edge keys",
	"reverse-edge sources",
	"sorted reverse-edge sources",
	"the final graph",
	"the radix sort's scratch",
};

const char *
cagra_gpu_buffer_name(CagraGpuBuffer buffer)
{
	return (unsigned) buffer < CAGRA_GPU_N_BUFFERS ? buffer_names[buffer] : "?";
}

size_t
cagra_gpu_buffer_bytes(const CagraGpuPlanInput *in, const CagraGpuPlan *plan,
					   CagraGpuBuffer buffer)
{
	size_t		n = (size_t) in->n,
				dim = (size_t) in->dim,
				I = (size_t) in->intermediate_degree,
				d = (size_t) in->graph_degree,
				kc = (size_t) in->knn_candidates,
				L = (size_t) plan->n_lists,
				S = (size_t) plan->sample_rows,
				R = (size_t) plan->block_rows,
				C = (size_t) plan->block_cols,
				A = (size_t) plan->assign_rows,
				Q = (size_t) plan->list_queries,
				P = (size_t) plan->list_candidates,
				pool = (size_t) plan->probe_pool;
	bool		part = in->partitioned && plan->n_lists > 1;
	bool		exact = !part;
	bool		res = plan->resident;

	switch (buffer)
	{
		case CAGRA_GPU_BLAS_WORKSPACE:
			return CAGRA_GPU_BLAS_WORKSPACE_BYTES;
		case CAGRA_GPU_KNN_GRAPH:
			return n * I * 4;
		case CAGRA_GPU_MEAN:
			return dim * 4;
		case CAGRA_GPU_DATA:
			return res ? n * dim * 4 : 0;
		case CAGRA_GPU_DATA_NORMS:
			return exact && res ? n * 4 : 0;
		case CAGRA_GPU_ROW_BLOCK:
			return exact && !res ? R * dim * 4 : 0;
		case CAGRA_GPU_COL_CHUNK:
			return exact && !res ? C * dim * 4 : 0;
		case CAGRA_GPU_COL_NORMS:
			return exact && !res ? C * 4 : 0;
		case CAGRA_GPU_GATHERED:
			return exact && !res ? R * kc * dim * 4 : 0;
		case CAGRA_GPU_TILE:
			return exact ? R * C * 4 : 0;
		case CAGRA_GPU_TOP_DIST:
		case CAGRA_GPU_TOP_IDS:
			return exact ? R * kc * 4 : 0;
		case CAGRA_GPU_CENTROIDS:
			return part ? L * dim * 4 : 0;
		case CAGRA_GPU_CENTROID_NORMS:
			return part ? L * 4 : 0;
		case CAGRA_GPU_SAMPLE:
			return part ? S * dim * 4 : 0;
		case CAGRA_GPU_SAMPLE_NEAREST:
		case CAGRA_GPU_SAMPLE_MEMBERS:
			return part ? S * 4 : 0;
		case CAGRA_GPU_SAMPLE_OFFSETS:
			return part ? (L + 1) * 4 : 0;
		case CAGRA_GPU_ASSIGN_ROWS:
			return part && !res ? A * dim * 4 : 0;
		case CAGRA_GPU_ASSIGN_TILE:
			return part ? A * L * 4 : 0;
		case CAGRA_GPU_ASSIGN_NEAREST:
			return part ? A * 4 : 0;
		case CAGRA_GPU_PROBE_DIST:
		case CAGRA_GPU_PROBE_IDS:
			return part ? A * pool * 4 : 0;
		case CAGRA_GPU_LIST_QUERY_IDS:
			return part ? Q * 4 : 0;
		case CAGRA_GPU_LIST_QUERIES:
			return part ? Q * dim * 4 : 0;
		case CAGRA_GPU_LIST_CAND_IDS:
		case CAGRA_GPU_LIST_CAND_NORMS:
			return part ? P * 4 : 0;
		case CAGRA_GPU_LIST_CANDS:
			return part ? P * dim * 4 : 0;
		case CAGRA_GPU_LIST_TILE:
			return part ? Q * P * 4 : 0;
		case CAGRA_GPU_LIST_TOP_DIST:
		case CAGRA_GPU_LIST_TOP_IDS:
			return part ? Q * I * 4 : 0;
		case CAGRA_GPU_PRUNED:
		case CAGRA_GPU_EDGE_KEYS:
		case CAGRA_GPU_EDGE_KEYS_SORTED:
		case CAGRA_GPU_EDGE_SOURCES:
		case CAGRA_GPU_EDGE_SOURCES_SORTED:
		case CAGRA_GPU_FINAL_GRAPH:
			return n * d * 4;
		case CAGRA_GPU_SORT_SCRATCH:
			return in->sort_scratch_bytes;
		case CAGRA_GPU_N_BUFFERS:
			break;
	}
	return 0;
}

/* A stage's buffers, in the order the build allocates them. */
static const CagraGpuBuffer exact_knn_buffers[] = {
	CAGRA_GPU_BLAS_WORKSPACE, CAGRA_GPU_KNN_GRAPH, CAGRA_GPU_MEAN,
	CAGRA_GPU_DATA, CAGRA_GPU_DATA_NORMS, CAGRA_GPU_ROW_BLOCK,
	CAGRA_GPU_COL_CHUNK, CAGRA_GPU_COL_NORMS, CAGRA_GPU_GATHERED,
	CAGRA_GPU_TILE, CAGRA_GPU_TOP_DIST, CAGRA_GPU_TOP_IDS
};
static const CagraGpuBuffer kmeans_buffers[] = {
	CAGRA_GPU_BLAS_WORKSPACE, CAGRA_GPU_MEAN, CAGRA_GPU_DATA,
	CAGRA_GPU_CENTROIDS, CAGRA_GPU_CENTROID_NORMS, CAGRA_GPU_SAMPLE,
	CAGRA_GPU_SAMPLE_NEAREST, CAGRA_GPU_SAMPLE_OFFSETS,
	CAGRA_GPU_SAMPLE_MEMBERS, CAGRA_GPU_ASSIGN_TILE
};
static const CagraGpuBuffer assign_buffers[] = {
	CAGRA_GPU_BLAS_WORKSPACE, CAGRA_GPU_MEAN, CAGRA_GPU_DATA,
	CAGRA_GPU_CENTROIDS, CAGRA_GPU_CENTROID_NORMS, CAGRA_GPU_ASSIGN_ROWS,
	CAGRA_GPU_ASSIGN_TILE, CAGRA_GPU_ASSIGN_NEAREST, CAGRA_GPU_PROBE_DIST,
	CAGRA_GPU_PROBE_IDS
};
static const CagraGpuBuffer list_search_buffers[] = {
	CAGRA_GPU_BLAS_WORKSPACE, CAGRA_GPU_KNN_GRAPH, CAGRA_GPU_MEAN,
	CAGRA_GPU_DATA, CAGRA_GPU_LIST_QUERY_IDS, CAGRA_GPU_LIST_QUERIES,
	CAGRA_GPU_LIST_CAND_IDS, CAGRA_GPU_LIST_CANDS, CAGRA_GPU_LIST_CAND_NORMS,
	CAGRA_GPU_LIST_TILE, CAGRA_GPU_LIST_TOP_DIST, CAGRA_GPU_LIST_TOP_IDS
};
static const CagraGpuBuffer prune_buffers[] = {
	CAGRA_GPU_BLAS_WORKSPACE, CAGRA_GPU_KNN_GRAPH, CAGRA_GPU_PRUNED
};
static const CagraGpuBuffer reverse_buffers[] = {
	CAGRA_GPU_BLAS_WORKSPACE, CAGRA_GPU_PRUNED, CAGRA_GPU_EDGE_KEYS,
	CAGRA_GPU_EDGE_KEYS_SORTED, CAGRA_GPU_EDGE_SOURCES,
	CAGRA_GPU_EDGE_SOURCES_SORTED, CAGRA_GPU_FINAL_GRAPH,
	CAGRA_GPU_SORT_SCRATCH
};

#define LENGTH(a) ((int) (sizeof(a) / sizeof((a)[0])))

static int
copy_buffers(CagraGpuBuffer *out, const CagraGpuBuffer *list, int len)
{
	memcpy(out, list, len * sizeof(CagraGpuBuffer));
	return len;
}

/* Whether a partitioned build really partitions (one list: exact, as on the CPU). */
static bool
plan_partitioned(const CagraGpuPlanInput *in)
{
	return in->partitioned && in->list_rows > 1 &&
		(in->n + in->list_rows - 1) / in->list_rows > 1;
}

int
cagra_gpu_stage_buffers(const CagraGpuPlanInput *in, CagraGpuStage stage,
						CagraGpuBuffer *out)
{
	bool		part = plan_partitioned(in);

	switch (stage)
	{
		case CAGRA_GPU_STAGE_EXACT_KNN:
			return part ? 0 : copy_buffers(out, exact_knn_buffers, LENGTH(exact_knn_buffers));
		case CAGRA_GPU_STAGE_KMEANS:
			return part ? copy_buffers(out, kmeans_buffers, LENGTH(kmeans_buffers)) : 0;
		case CAGRA_GPU_STAGE_ASSIGN:
			return part ? copy_buffers(out, assign_buffers, LENGTH(assign_buffers)) : 0;
		case CAGRA_GPU_STAGE_LIST_SEARCH:
			return part ? copy_buffers(out, list_search_buffers, LENGTH(list_search_buffers)) : 0;
		case CAGRA_GPU_STAGE_PRUNE:
			return copy_buffers(out, prune_buffers, LENGTH(prune_buffers));
		case CAGRA_GPU_STAGE_REVERSE:
			return copy_buffers(out, reverse_buffers, LENGTH(reverse_buffers));
		case CAGRA_GPU_N_STAGES:
			break;
	}
	return 0;
}

size_t
cagra_gpu_stage_bytes(const CagraGpuPlanInput *in, const CagraGpuPlan *plan,
					  CagraGpuStage stage)
{
	CagraGpuBuffer buffers[CAGRA_GPU_N_BUFFERS];
	int			count = cagra_gpu_stage_buffers(in, stage, buffers);
	size_t		bytes = 0;

	for (int i = 0; i < count; i++)
		bytes += cagra_gpu_buffer_bytes(in, plan, buffers[i]);
	return bytes;
}

void
cagra_gpu_plan_lists(const CagraGpuPlanInput *in, CagraGpuPlan *plan)
{
	plan->n_lists = 0;
	plan->sample_rows = 0;
	plan->probes = 0;
	plan->probe_pool = 0;
	if (!plan_partitioned(in))
		return;
	plan->n_lists = (in->n + in->list_rows - 1) / in->list_rows;
	plan->sample_rows = plan->n_lists * CAGRA_GPU_KMEANS_SAMPLE_PER_CENTROID;
	if (plan->sample_rows > in->n)
		plan->sample_rows = in->n;
	plan->probes = in->probes < plan->n_lists ? in->probes : (int) plan->n_lists;
	plan->probe_pool = plan->probes + CAGRA_GPU_PROBE_EXTRA < plan->n_lists ?
		plan->probes + CAGRA_GPU_PROBE_EXTRA : (int) plan->n_lists;
}

static int
at_most(int64_t n, int cap)
{
	return n < cap ? (int) n : cap;
}

/* Halve the stage's blocks until it fits or they are at their smallest. */
static bool
fit_stage(const CagraGpuPlanInput *in, CagraGpuPlan *pl, CagraGpuStage stage)
{
	for (;;)
	{
		size_t		bytes = cagra_gpu_stage_bytes(in, pl, stage);

		if (stage == CAGRA_GPU_STAGE_KMEANS)
		{
			size_t		assign = cagra_gpu_stage_bytes(in, pl, CAGRA_GPU_STAGE_ASSIGN);

			/* both stages use A: fit the larger */
			if (assign > bytes)
				bytes = assign;
		}
		if (bytes <= in->budget)
			return true;
		switch (stage)
		{
			case CAGRA_GPU_STAGE_EXACT_KNN:
				if (pl->block_cols > EXACT_COLS_MIN && pl->block_cols >= pl->block_rows)
					pl->block_cols /= 2;
				else if (pl->block_rows > EXACT_ROWS_MIN)
					pl->block_rows /= 2;
				else
					return false;
				break;
			case CAGRA_GPU_STAGE_KMEANS:
				if (pl->assign_rows <= ASSIGN_ROWS_MIN)
					return false;
				pl->assign_rows /= 2;
				break;
			case CAGRA_GPU_STAGE_LIST_SEARCH:
				if (pl->list_candidates > LIST_CANDS_MIN &&
					(pl->list_candidates >= 8 * pl->list_queries ||
					 pl->list_queries <= LIST_QUERIES_MIN))
					pl->list_candidates /= 2;
				else if (pl->list_queries > LIST_QUERIES_MIN)
					pl->list_queries /= 2;
				else
					return false;
				break;
			default:
				return false;	/* nothing to shrink */
		}
	}
}

static const CagraGpuStage fitted_stages[] = {
	CAGRA_GPU_STAGE_EXACT_KNN, CAGRA_GPU_STAGE_KMEANS,
	CAGRA_GPU_STAGE_LIST_SEARCH, CAGRA_GPU_STAGE_PRUNE,
	CAGRA_GPU_STAGE_REVERSE
};

bool
cagra_gpu_plan(const CagraGpuPlanInput *in, CagraGpuPlan *plan,
			   char *errbuf, size_t errlen)
{
	CagraGpuPlan pl;
	CagraGpuStage failed = CAGRA_GPU_STAGE_EXACT_KNN;

	memset(plan, 0, sizeof(CagraGpuPlan));
	if (in->n < 2 || in->dim < 1 || in->intermediate_degree < 1 ||
		in->graph_degree < 1 || in->knn_candidates < in->intermediate_degree ||
		(in->partitioned && (in->list_rows < 2 || in->probes < 1)))
	{
		if (errbuf != NULL && errlen > 0)
			snprintf(errbuf, errlen, "invalid GPU plan input: %lld rows of dimension %d",
					 (long long) in->n, in->dim);
		return false;
	}
	for (int resident = in->stream ? 0 : 1; resident >= 0; resident--)
	{
		bool		fits = true;

		memset(&pl, 0, sizeof(pl));
		cagra_gpu_plan_lists(in, &pl);
		pl.resident = resident != 0;
		pl.block_rows = at_most(in->n, EXACT_ROWS_MAX);
		pl.block_cols = at_most(in->n, EXACT_COLS_MAX);
		pl.assign_rows = at_most(in->n > pl.n_lists ? in->n : pl.n_lists, ASSIGN_ROWS_MAX);
		pl.list_queries = at_most(in->n, LIST_QUERIES_MAX);
		pl.list_candidates = at_most(in->n, LIST_CANDS_MAX);
		for (int s = 0; s < LENGTH(fitted_stages) && fits; s++)
			if (!fit_stage(in, &pl, fitted_stages[s]))
			{
				fits = false;
				failed = fitted_stages[s];
			}
		if (fits)
		{
			for (int s = 0; s < CAGRA_GPU_N_STAGES; s++)
			{
				pl.stage_bytes[s] = cagra_gpu_stage_bytes(in, &pl, (CagraGpuStage) s);
				if (pl.stage_bytes[s] > pl.peak_bytes)
					pl.peak_bytes = pl.stage_bytes[s];
			}
			*plan = pl;
			return true;
		}
	}
	if (errbuf != NULL && errlen > 0)
	{
		static const char *const stage_names[CAGRA_GPU_N_STAGES] = {
			"the exact kNN", "k-means", "the list assignment",
			"the list searches", "pruning", "the reverse-edge merge"
		};

		snprintf(errbuf, errlen,
				 "%.1f MiB of GPU memory is too little for %s of %lld rows of dimension %d (%.1f MiB with the smallest blocks, the data streamed)",
				 in->budget / 1048576.0, stage_names[failed], (long long) in->n,
				 in->dim, cagra_gpu_stage_bytes(in, &pl, failed) / 1048576.0);
	}
	return false;
}

/* ---------------------------------------------------------------------- */
/* The host half of the partitioned kNN */

void
cagra_gpu_group_by_key(const int32_t *key, int64_t count, int n_keys,
					   int32_t *offsets, int32_t *members)
{
	memset(offsets, 0, ((size_t) n_keys + 1) * sizeof(int32_t));
	for (int64_t i = 0; i < count; i++)
		offsets[key[i] + 1]++;
	for (int k = 0; k < n_keys; k++)
		offsets[k + 1] += offsets[k];
	for (int64_t i = 0; i < count; i++)
		members[offsets[key[i]]++] = (int32_t) i;
	/* offsets[k] now ends group k: shift back */
	memmove(offsets + 1, offsets, (size_t) n_keys * sizeof(int32_t));
	offsets[0] = 0;
}

/* Append list m's rows to cands, once. */
static void
take_list(const int32_t *offsets, const int32_t *members, int64_t n_lists,
		  int32_t l, int32_t m, int32_t *stamp, int32_t *cands,
		  int64_t *n_cands)
{
	if (m < 0 || m >= n_lists || stamp[m] == l + 1)
		return;
	stamp[m] = l + 1;
	memcpy(cands + *n_cands, members + offsets[m],
		   (size_t) (offsets[m + 1] - offsets[m]) * sizeof(int32_t));
	*n_cands += offsets[m + 1] - offsets[m];
}

int64_t
cagra_gpu_list_candidates(const int32_t *offsets, const int32_t *members,
						  int64_t n_lists, int32_t l, const int32_t *pool,
						  int pool_len, int probes, int64_t need,
						  int32_t *stamp, int32_t *cands)
{
	int64_t		n_cands = 0;
	int			taken = 1;

	take_list(offsets, members, n_lists, l, l, stamp, cands, &n_cands);
	for (int j = 0; j < pool_len && taken < probes; j++)
		if (pool[j] != l && pool[j] >= 0 && pool[j] < n_lists)
		{
			take_list(offsets, members, n_lists, l, pool[j], stamp, cands, &n_cands);
			taken++;
		}
	for (int j = 0; j < pool_len && n_cands < need; j++)
		take_list(offsets, members, n_lists, l, pool[j], stamp, cands, &n_cands);
	for (int32_t m = 0; m < n_lists && n_cands < need; m++)
		take_list(offsets, members, n_lists, l, m, stamp, cands, &n_cands);
	return n_cands;
}
