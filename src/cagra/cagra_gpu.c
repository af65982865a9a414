/*
 * cagra_gpu.c
 *		Loader of the GPU module cuda/gnnvec_cuda.so.
 *
 * The module is opened with dlopen only when a GPU build is asked for, so
 * that gnnvec.so (and everything else) runs on machines with no CUDA at all.
 * Its ABI is the C one of cuda/gnnvec_cuda.h, checked by version.  The
 * device-memory plan (cagra_gpu_plan.h) is shared with the module: a build
 * that cannot fit the device is refused here before its data is sent.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"
#include "cagra/cagra_gpu_plan.h"
#include "../../cuda/gnnvec_cuda.h"

_Static_assert(GNNVEC_CUDA_METRIC_L2 == CAGRA_METRIC_L2 &&
			   GNNVEC_CUDA_METRIC_INNER_PRODUCT == CAGRA_METRIC_INNER_PRODUCT &&
			   GNNVEC_CUDA_METRIC_COSINE == CAGRA_METRIC_COSINE &&
			   GNNVEC_CUDA_METRIC_L1 == CAGRA_METRIC_L1,
			   "metric codes differ between cagra.h and gnnvec_cuda.h");
_Static_assert(GNNVEC_CUDA_DETOUR_ANY_RANK == CAGRA_DETOUR_ANY_RANK &&
			   GNNVEC_CUDA_DETOUR_RANK_BELOW == CAGRA_DETOUR_RANK_BELOW,
			   "detour codes differ between cagra.h and gnnvec_cuda.h");
_Static_assert(GNNVEC_CUDA_KNN_EXACT == CAGRA_KNN_EXACT &&
			   GNNVEC_CUDA_KNN_PARTITIONED == CAGRA_KNN_PARTITIONED,
			   "kNN method codes differ between cagra.h and gnnvec_cuda.h");
_Static_assert(GNNVEC_CUDA_MAX_DEGREE == CAGRA_MAX_DEGREE,
			   "degree limits differ between cagra.h and gnnvec_cuda.h");

typedef int (*AbiVersionFn) (void);
typedef int (*DeviceCountFn) (int *, char *, size_t);
typedef int (*DeviceInfoFn) (int, char *, size_t, size_t *, char *, size_t);
typedef int (*CagraBuildFn) (const float *, int64_t, int,
							 const GnnvecCudaCagraParams *, int32_t *,
							 int32_t *, GnnvecCudaCagraStats *, char *, size_t);

struct CagraGpu
{
	void	   *handle;
	DeviceCountFn device_count;
	DeviceInfoFn device_info;
	CagraBuildFn cagra_build;
};

static void *
gpu_symbol(void *handle, const char *name, const char *path,
		   char *errbuf, size_t errlen)
{
	void	   *fn = dlsym(handle, name);

	if (fn == NULL)
		cagra_error(CAGRA_ERR_DEVICE, errbuf, errlen,
					"GPU module \"%s\" has no function %s", path, name);
	return fn;
}

CagraGpu *
cagra_gpu_open(const char *path, char *errbuf, size_t errlen)
{
	void	   *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	CagraGpu   *gpu;
	AbiVersionFn abi_version;

	if (handle == NULL)
	{
		const char *why = dlerror();

		cagra_error(CAGRA_ERR_DEVICE, errbuf, errlen,
					"cannot load GPU module \"%s\": %s", path,
					why ? why : "unknown error");
		return NULL;
	}
	gpu = calloc(1, sizeof(CagraGpu));
	if (gpu == NULL)
	{
		cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen, "out of memory");
		dlclose(handle);
		return NULL;
	}
	gpu->handle = handle;
	abi_version = (AbiVersionFn) gpu_symbol(handle, "gnnvec_cuda_abi_version",
											path, errbuf, errlen);
	gpu->device_count = (DeviceCountFn) gpu_symbol(handle, "gnnvec_cuda_device_count",
												   path, errbuf, errlen);
	gpu->device_info = (DeviceInfoFn) gpu_symbol(handle, "gnnvec_cuda_device_info",
												 path, errbuf, errlen);
	gpu->cagra_build = (CagraBuildFn) gpu_symbol(handle, "gnnvec_cuda_cagra_build",
												 path, errbuf, errlen);
	if (abi_version == NULL || gpu->device_count == NULL ||
		gpu->device_info == NULL || gpu->cagra_build == NULL)
	{
		cagra_gpu_close(gpu);
		return NULL;
	}
	if (abi_version() != GNNVEC_CUDA_ABI_VERSION)
	{
		cagra_error(CAGRA_ERR_DEVICE, errbuf, errlen,
					"GPU module \"%s\" has ABI version %d, expected %d",
					path, abi_version(), GNNVEC_CUDA_ABI_VERSION);
		cagra_gpu_close(gpu);
		return NULL;
	}
	return gpu;
}

void
cagra_gpu_close(CagraGpu *gpu)
{
	if (gpu == NULL)
		return;
	dlclose(gpu->handle);
	free(gpu);
}

/* Map a module status onto ours; the message is already in errbuf. */
static CagraStatus
gpu_status(int rc)
{
	switch (rc)
	{
		case GNNVEC_CUDA_OK:
			return CAGRA_OK;
		case GNNVEC_CUDA_ERR_PARAM:
			return CAGRA_ERR_PARAM;
		case GNNVEC_CUDA_ERR_NOMEM:
			return CAGRA_ERR_NOMEM;
		default:
			return CAGRA_ERR_DEVICE;
	}
}

CagraStatus
cagra_gpu_device_count(CagraGpu *gpu, int *count, char *errbuf, size_t errlen)
{
	return gpu_status(gpu->device_count(count, errbuf, errlen));
}

CagraStatus
cagra_gpu_device_info(CagraGpu *gpu, int device, char *name, size_t name_len,
					  size_t *total_bytes, char *errbuf, size_t errlen)
{
	return gpu_status(gpu->device_info(device, name, name_len, total_bytes,
									   errbuf, errlen));
}

/*
 * The memory plan of the build (cagra_gpu_plan.h) for the whole device, or
 * for device_bytes when that is less: a build that cannot fit even then is
 * refused here, before any data goes to the device.  The module plans
 * again with the memory actually free and CUB's own scratch size, which
 * only add to what is counted here (the scratch is taken as 0).
 */
static CagraStatus
gpu_plan_check(CagraGpu *gpu, const GnnvecCudaCagraParams *gp, int64_t n,
			   int dim, char *errbuf, size_t errlen)
{
	CagraGpuPlanInput in;
	CagraGpuPlan plan;
	size_t		total = 0;
	CagraStatus status;

	status = gpu_status(gpu->device_info(gp->device, NULL, 0, &total,
										 errbuf, errlen));
	if (status != CAGRA_OK)
		return status;
	memset(&in, 0, sizeof(in));
	in.n = n;
	in.dim = dim;
	in.intermediate_degree = gp->intermediate_degree;
	in.graph_degree = gp->graph_degree;
	in.knn_candidates = gp->knn_candidates;
	in.partitioned = gp->knn_method == GNNVEC_CUDA_KNN_PARTITIONED;
	in.list_rows = gp->list_rows;
	in.probes = gp->list_probes;
	in.budget = gp->device_bytes > 0 && gp->device_bytes < total ?
		gp->device_bytes : total;
	in.stream = gp->stream_data != 0;
	if (!cagra_gpu_plan(&in, &plan, errbuf, errlen))
		return CAGRA_ERR_NOMEM;
	return CAGRA_OK;
}

CagraStatus
cagra_gpu_build(CagraGpu *gpu, int device, size_t device_bytes,
				bool stream_data, const float *data, int64_t n, int dim,
				const CagraParams *params, int32_t *knn, int32_t *graph,
				CagraStats *stats, char *errbuf, size_t errlen)
{
	GnnvecCudaCagraParams gp;
	GnnvecCudaCagraStats gs;
	CagraStats	local;
	CagraStatus status;

	if (stats == NULL)
		stats = &local;
	memset(stats, 0, sizeof(CagraStats));
	status = cagra_params_check(params, n, dim, errbuf, errlen);
	if (status != CAGRA_OK)
		return status;
	gp.metric = params->metric;
	gp.intermediate_degree = params->intermediate_degree;
	gp.graph_degree = params->graph_degree;
	gp.detour = params->detour;
	gp.knn_candidates = cagra_knn_candidates(params->intermediate_degree, n - 1);
	/* the kNN method and its lists as the CPU would use them */
	gp.knn_method = params->knn_method;
	gp.list_rows = params->list_rows > 0 ? params->list_rows : CAGRA_LIST_ROWS;
	gp.list_probes = params->list_probes > 0 ? params->list_probes : CAGRA_LIST_PROBES;
	gp.stream_data = stream_data;
	gp.device = device;
	gp.device_bytes = device_bytes;
	status = gpu_plan_check(gpu, &gp, n, dim, errbuf, errlen);
	if (status != CAGRA_OK)
		return status;
	status = gpu_status(gpu->cagra_build(data, n, dim, &gp, knn, graph, &gs,
										 errbuf, errlen));
	if (status != CAGRA_OK)
		return status;
	stats->setup_seconds = gs.setup_seconds;
	stats->knn_seconds = gs.knn_seconds;
	stats->prune_seconds = gs.prune_seconds;
	stats->reverse_seconds = gs.reverse_seconds;
	stats->gpu_data_resident = gs.data_resident != 0;
	stats->gpu_row_blocks = gs.row_blocks;
	stats->gpu_lists = gs.n_lists;
	stats->gpu_planned_bytes = gs.planned_bytes;
	stats->gpu_budget_bytes = gs.budget_bytes;
	return cagra_finish(data, n, dim, params, graph, stats, errbuf, errlen);
}
