/*
 * gnnvec_cuda.h
 *		The C ABI of gnnvec_cuda.so, the GPU half of the CAGRA build.
 *
 * gnnvec.so never links this library: src/cagra/cagra_gpu.c dlopen()s it
 * when a GPU build is asked for and resolves the functions below by name,
 * checking gnnvec_cuda_abi_version() first.  No PostgreSQL header, no C++
 * type crosses this boundary.  Every function returns a GnnvecCudaStatus and
 * writes a message into errbuf on failure; CUDA and cuBLAS errors, including
 * out-of-memory, come back this way and never abort the process.
 */
#ifndef GNNVEC_CUDA_H
#define GNNVEC_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* Bumped whenever a signature or a struct below changes. */
#define GNNVEC_CUDA_ABI_VERSION 2

/* Same values as CagraMetric and CagraDetour in src/cagra/cagra.h. */
#define GNNVEC_CUDA_METRIC_L2			0
#define GNNVEC_CUDA_METRIC_INNER_PRODUCT 1
#define GNNVEC_CUDA_METRIC_COSINE		2
#define GNNVEC_CUDA_METRIC_L1			3
#define GNNVEC_CUDA_DETOUR_ANY_RANK		0
#define GNNVEC_CUDA_DETOUR_RANK_BELOW	1
/* Same values as CagraKnnMethod. */
#define GNNVEC_CUDA_KNN_EXACT			0
#define GNNVEC_CUDA_KNN_PARTITIONED		1

/* Largest intermediate degree and candidate count the kernels accept. */
#define GNNVEC_CUDA_MAX_DEGREE			1024
#define GNNVEC_CUDA_MAX_CANDIDATES		1280

typedef enum GnnvecCudaStatus
{
	GNNVEC_CUDA_OK = 0,
	GNNVEC_CUDA_ERR_PARAM,		/* invalid argument */
	GNNVEC_CUDA_ERR_NO_DEVICE,	/* no usable device (or no driver) */
	GNNVEC_CUDA_ERR_NOMEM,		/* device or host memory exhausted */
	GNNVEC_CUDA_ERR_CUDA,		/* any other CUDA runtime error */
	GNNVEC_CUDA_ERR_CUBLAS		/* a cuBLAS error */
} GnnvecCudaStatus;

typedef struct GnnvecCudaCagraParams
{
	int			metric;			/* GNNVEC_CUDA_METRIC_* */
	int			intermediate_degree;	/* I */
	int			graph_degree;	/* d <= I */
	int			detour;			/* GNNVEC_CUDA_DETOUR_* */
	int			knn_candidates; /* exact: GEMM candidates per row,
								 * I..MAX_CANDIDATES */
	int			knn_method;		/* GNNVEC_CUDA_KNN_* */
	int			list_rows;		/* partitioned: rows per k-means list, >= 2 */
	int			list_probes;	/* partitioned: lists searched per list, >= 1 */
	int			stream_data;	/* 1: stream the data set even if it fits
								 * (tests of the streamed path) */
	int			device;			/* CUDA device ordinal */
	size_t		device_bytes;	/* device memory to use; 0: 90% of free */
} GnnvecCudaCagraParams;

typedef struct GnnvecCudaCagraStats
{
	double		setup_seconds;	/* device context, cuBLAS handle */
	double		knn_seconds;	/* including uploads */
	double		prune_seconds;
	double		reverse_seconds;	/* including the download */
	int64_t		row_blocks;		/* kNN row blocks (exact) or list query
								 * blocks (partitioned) processed */
	int			data_resident;	/* 1: the data set stayed on the device */
	int64_t		n_lists;		/* k-means lists (0: exact kNN) */
	int64_t		planned_bytes;	/* the memory plan's peak */
	int64_t		budget_bytes;	/* the device memory it was planned for */
} GnnvecCudaCagraStats;

/* GNNVEC_CUDA_ABI_VERSION of the library. */
int			gnnvec_cuda_abi_version(void);

/* Number of devices; 0 (and GNNVEC_CUDA_OK) when there is no GPU. */
int			gnnvec_cuda_device_count(int *count, char *errbuf, size_t errlen);

/* Device name (NUL-terminated, truncated to name_len) and total memory. */
int			gnnvec_cuda_device_info(int device, char *name, size_t name_len,
									size_t *total_bytes,
									char *errbuf, size_t errlen);

/*
 * CAGRA stages 1-3 for n rows of dim floats in host memory: the kNN graph
 * (exact: cuBLAS GEMM tiles over all pairs, top-k, exact re-ranking;
 * partitioned: k-means lists on the GPU, each list searched by GEMM among
 * its probed lists, as src/cagra/cagra_partition.c does on the CPU),
 * rank-based pruning, reverse-edge merge.  graph receives n * graph_degree
 * ids (host memory); knn, when not NULL, the n * intermediate_degree kNN
 * graph.  Given the same kNN graph, the pruned and merged graph is the
 * CPU's bit for bit.  Device memory follows the plan of
 * src/cagra/cagra_gpu_plan.h: the data set stays on the device when every
 * stage fits with it, and streams through it otherwise.
 */
int			gnnvec_cuda_cagra_build(const float *data, int64_t n, int dim,
									const GnnvecCudaCagraParams *params,
									int32_t *knn, int32_t *graph,
									GnnvecCudaCagraStats *stats,
									char *errbuf, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif							/* GNNVEC_CUDA_H */
