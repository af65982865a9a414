/*
 * cagra.cu
 *		CAGRA graph construction on an NVIDIA GPU: the same algorithm as
 *		src/cagra/ on the CPU (Ootomo et al., "CAGRA: Highly Parallel Graph
 *		Construction and Approximate Nearest Neighbor Search for GPUs",
 *		ICDE 2024), behind the C ABI of gnnvec_cuda.h.
 *
 *	1. Exact kNN graph.  Rows go in blocks of R; each block meets the data
 *	   C columns at a time: cuBLAS sgemm fills an R x C tile with -2 x.y
 *	   (L2, on data centred on the host-computed mean), -x.y (inner product;
 *	   cosine on normalised rows), or a direct kernel fills it (L1).  One
 *	   thread block per tile row keeps the row's best kc candidates in shared
 *	   memory: values beating the current worst are appended to a buffer,
 *	   and buffer and list are bitonic-sorted together when the buffer fills.
 *	   After the last tile, the candidates' distances are recomputed
 *	   directly and sorted by (distance, id); the best I form the row.  This
 *	   is what the CPU does, so both give the same graph up to ties.
 *	2. Rank-based pruning: one thread block per node, A's list sorted by id
 *	   in shared memory so that "is B one of A's neighbours, at which rank"
 *	   is a binary search; detour counts by shared atomics; an edge's place
 *	   in the output is the number of edges with a smaller (count, rank).
 *	3. Reverse edges: the edges of the pruned graph in (rank, source) order
 *	   are stably radix-sorted by destination (CUB), so each node's reverse
 *	   sources come out in the order the CPU builds them; one thread per
 *	   node merges them after the d/2 protected forward edges.
 *
 * The data set stays on the device when it fits the memory budget and
 * streams through it block by block otherwise; the kNN graph and the
 * pruned graph must fit.  No CUDA or cuBLAS error is fatal: each becomes a
 * status and a message in the caller's buffer.
 */
#include <cublas_v2.h>
#include <cub/cub.cuh>
#include <cuda_runtime.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gnnvec_cuda.h"

#define TOPK_THREADS 256
#define SORT_MAX 2048			/* shared sort buffer: list + candidates */
#define PRUNE_THREADS 128
#define RERANK_THREADS 256
#define WARP 32

/* ---------------------------------------------------------------------- */
/* Errors */

typedef struct ErrorSink
{
	char	   *buf;
	size_t		len;
	int			status;			/* first error wins */
} ErrorSink;

static int
set_error(ErrorSink *sink, int status, const char *fmt, ...)
{
	va_list		ap;

	if (sink->status != GNNVEC_CUDA_OK)
		return sink->status;
	sink->status = status;
	if (sink->buf != NULL && sink->len > 0)
	{
		va_start(ap, fmt);
		vsnprintf(sink->buf, sink->len, fmt, ap);
		va_end(ap);
	}
	return status;
}

/* set_error for functions that answer true or false */
static bool
fail(ErrorSink *sink, int status, const char *fmt, ...)
{
	va_list		ap;

	if (sink->status != GNNVEC_CUDA_OK)
		return false;
	sink->status = status;
	if (sink->buf != NULL && sink->len > 0)
	{
		va_start(ap, fmt);
		vsnprintf(sink->buf, sink->len, fmt, ap);
		va_end(ap);
	}
	return false;
}

static bool
cuda_ok(ErrorSink *sink, cudaError_t err, const char *what)
{
	if (err == cudaSuccess)
		return true;
	set_error(sink, err == cudaErrorMemoryAllocation ? GNNVEC_CUDA_ERR_NOMEM :
			  GNNVEC_CUDA_ERR_CUDA, "%s: %s", what, cudaGetErrorString(err));
	return false;
}

static bool
cublas_ok(ErrorSink *sink, cublasStatus_t st, const char *what)
{
	if (st == CUBLAS_STATUS_SUCCESS)
		return true;
	set_error(sink, st == CUBLAS_STATUS_ALLOC_FAILED ? GNNVEC_CUDA_ERR_NOMEM :
			  GNNVEC_CUDA_ERR_CUBLAS, "%s: %s", what, cublasGetStatusString(st));
	return false;
}

#define CUDA_OK(sink, call) cuda_ok((sink), (call), #call)
#define LAUNCH_OK(sink, name) cuda_ok((sink), cudaGetLastError(), "launch of " name)

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------------- */
/* Device helpers */

__device__ __forceinline__ bool
pair_less(float da, int ia, float db, int ib)
{
	return da < db || (da == db && ia < ib);
}

__device__ __forceinline__ bool
int_pair_less(int ka, int va, int kb, int vb)
{
	return ka < kb || (ka == kb && va < vb);
}

/*
 * Ascending bitonic sort of n (a power of two) (key, value) pairs in shared
 * memory by the whole block; callers synchronise before, it synchronises
 * after.
 */
template <typename K, bool (*Less) (K, int, K, int)>
__device__ void
bitonic_sort(K *key, int *val, int n)
{
	for (int k = 2; k <= n; k <<= 1)
		for (int j = k >> 1; j > 0; j >>= 1)
		{
			for (int i = threadIdx.x; i < n; i += blockDim.x)
			{
				int			ixj = i ^ j;

				if (ixj > i)
				{
					K			ka = key[i],
								kb = key[ixj];
					int			va = val[i],
								vb = val[ixj];
					bool		up = (i & k) == 0;

					if (up ? Less(kb, vb, ka, va) : Less(ka, va, kb, vb))
					{
						key[i] = kb;
						key[ixj] = ka;
						val[i] = vb;
						val[ixj] = va;
					}
				}
			}
			__syncthreads();
		}
}

__host__ __device__ __forceinline__ int
next_pow2(int x)
{
	int			p = 1;

	while (p < x)
		p <<= 1;
	return p;
}

__device__ __forceinline__ float
warp_sum(float v)
{
	for (int off = WARP / 2; off > 0; off >>= 1)
		v += __shfl_down_sync(0xffffffffu, v, off);
	return v;
}

/* ---------------------------------------------------------------------- */
/* Data preparation */

/* rows -= mean (L2: distances do not change, GEMM rounding shrinks). */
__global__ void
centre_rows_kernel(float *x, long long rows, int dim, const float *mean)
{
	long long	i = (long long) blockIdx.x * blockDim.x + threadIdx.x;

	if (i < rows * dim)
		x[i] -= mean[i % dim];
}

/* One warp per row: scale to unit length; zero rows stay zero. */
__global__ void
normalise_rows_kernel(float *x, long long rows, int dim)
{
	long long	row = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / WARP;
	int			lane = threadIdx.x % WARP;
	float		s = 0.0f;
	float	   *v;

	if (row >= rows)
		return;
	v = x + row * dim;
	for (int j = lane; j < dim; j += WARP)
		s += v[j] * v[j];
	s = __shfl_sync(0xffffffffu, warp_sum(s), 0);
	if (s > 0.0f)
	{
		float		scale = rsqrtf(s);

		for (int j = lane; j < dim; j += WARP)
			v[j] *= scale;
	}
}

/* One warp per row: |x|^2. */
__global__ void
row_norms_kernel(const float *x, long long rows, int dim, float *norms)
{
	long long	row = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / WARP;
	int			lane = threadIdx.x % WARP;
	float		s = 0.0f;

	if (row >= rows)
		return;
	for (int j = lane; j < dim; j += WARP)
		s += x[row * dim + j] * x[row * dim + j];
	s = warp_sum(s);
	if (lane == 0)
		norms[row] = s;
}

/* L1 has no GEMM form: tile[r][c] = |x_r - y_c|_1, 16 x 16 per block. */
#define L1_TILE 16
__global__ void
l1_tile_kernel(const float *rows, int n_rows, const float *cols, int n_cols,
			   int dim, float *tile, int ldt)
{
	__shared__ float xs[L1_TILE][L1_TILE + 1];
	__shared__ float ys[L1_TILE][L1_TILE + 1];
	int			r = blockIdx.y * L1_TILE + threadIdx.y;
	int			c = blockIdx.x * L1_TILE + threadIdx.x;
	float		acc = 0.0f;

	for (int k0 = 0; k0 < dim; k0 += L1_TILE)
	{
		int			rr = blockIdx.y * L1_TILE + threadIdx.y;
		int			cc = blockIdx.x * L1_TILE + threadIdx.y;
		int			k = k0 + threadIdx.x;

		xs[threadIdx.y][threadIdx.x] = rr < n_rows && k < dim ? rows[(size_t) rr * dim + k] : 0.0f;
		ys[threadIdx.y][threadIdx.x] = cc < n_cols && k < dim ? cols[(size_t) cc * dim + k] : 0.0f;
		__syncthreads();
		for (int j = 0; j < L1_TILE; j++)
			acc += fabsf(xs[threadIdx.y][j] - ys[threadIdx.x][j]);
		__syncthreads();
	}
	if (r < n_rows && c < n_cols)
		tile[(size_t) r * ldt + c] = acc;
}

/* ---------------------------------------------------------------------- */
/* Stage 1: per-row top-k over tiles, then exact re-ranking */

__global__ void
topk_init_kernel(float *top_d, int *top_i, long long count)
{
	long long	i = (long long) blockIdx.x * blockDim.x + threadIdx.x;

	if (i < count)
	{
		top_d[i] = INFINITY;
		top_i[i] = INT_MAX;
	}
}

/* Sort list + buffer (total entries) and keep the best kc as the list. */
__device__ void
topk_merge(float *sd, int *si, int total)
{
	int			n_sort = next_pow2(total);

	for (int i = total + threadIdx.x; i < n_sort; i += blockDim.x)
	{
		sd[i] = INFINITY;
		si[i] = INT_MAX;
	}
	__syncthreads();
	bitonic_sort<float, pair_less>(sd, si, n_sort);
}

/*
 * One block per tile row: offer the row's values (plus |y|^2 for L2) to
 * the row's candidate list top_d/top_i (kc entries, sorted).
 */
__global__ void
topk_tile_kernel(const float *tile, int ldt, const float *col_norms,
				 long long col0, int n_cols, long long row0, int kc,
				 float *top_d, int *top_i)
{
	__shared__ float sd[SORT_MAX];
	__shared__ int si[SORT_MAX];
	__shared__ int count;
	const float *row = tile + (size_t) blockIdx.x * ldt;
	long long	self = row0 + blockIdx.x;
	float	   *list_d = top_d + (size_t) blockIdx.x * kc;
	int		   *list_i = top_i + (size_t) blockIdx.x * kc;
	int			room = SORT_MAX - kc;
	float		bound_d;
	int			bound_i;

	for (int i = threadIdx.x; i < kc; i += blockDim.x)
	{
		sd[i] = list_d[i];
		si[i] = list_i[i];
	}
	if (threadIdx.x == 0)
		count = 0;
	__syncthreads();
	bound_d = sd[kc - 1];
	bound_i = si[kc - 1];

	for (int base = 0; base < n_cols; base += blockDim.x)
	{
		int			c = base + threadIdx.x;
		int			filled;

		if (c < n_cols)
		{
			float		v = row[c] + (col_norms ? col_norms[c] : 0.0f);
			int			id = (int) (col0 + c);

			if (id != self && pair_less(v, id, bound_d, bound_i))
			{
				int			slot = atomicAdd(&count, 1);

				sd[kc + slot] = v;
				si[kc + slot] = id;
			}
		}
		__syncthreads();
		filled = count;
		__syncthreads();		/* everyone has read count */
		/* merge before another round could overflow the buffer */
		if (filled > room - (int) blockDim.x)
		{
			topk_merge(sd, si, kc + filled);
			bound_d = sd[kc - 1];
			bound_i = si[kc - 1];
			if (threadIdx.x == 0)
				count = 0;
			__syncthreads();
		}
	}
	if (count > 0)
	{
		int			filled = count;

		topk_merge(sd, si, kc + filled);
	}
	for (int i = threadIdx.x; i < kc; i += blockDim.x)
	{
		list_d[i] = sd[i];
		list_i[i] = si[i];
	}
}

/* Distance of the metric; x, y may be centred (L2) or normalised (cosine). */
__device__ float
warp_distance(const float *x, const float *y, int dim, int metric, int lane)
{
	float		a = 0.0f,
				nx = 0.0f,
				ny = 0.0f;

	for (int j = lane; j < dim; j += WARP)
	{
		float		xj = x[j],
					yj = y[j];

		switch (metric)
		{
			case GNNVEC_CUDA_METRIC_L2:
				a += (xj - yj) * (xj - yj);
				break;
			case GNNVEC_CUDA_METRIC_L1:
				a += fabsf(xj - yj);
				break;
			default:
				a += xj * yj;
				nx += xj * xj;
				ny += yj * yj;
				break;
		}
	}
	a = warp_sum(a);
	if (metric == GNNVEC_CUDA_METRIC_INNER_PRODUCT)
		return -a;
	if (metric == GNNVEC_CUDA_METRIC_COSINE)
	{
		float		cosine;

		nx = warp_sum(nx);
		ny = warp_sum(ny);
		if (nx == 0.0f || ny == 0.0f)
			return 1.0f;
		cosine = fminf(fmaxf(a / sqrtf(nx * ny), -1.0f), 1.0f);
		return 1.0f - cosine;
	}
	return a;
}

/*
 * One block per row: exact distances of the kc candidates, sorted by
 * (distance, id); the first I go to knn.  Vectors come from the resident
 * data, or from row_buf (the block's rows) and gathered (row r's candidates
 * at r * kc) when the data set streams.
 */
__global__ void
rerank_kernel(const float *data, const float *row_buf, const float *gathered,
			  int dim, int metric, long long n, long long row0, int kc,
			  int degree, const int *top_i, int *knn)
{
	__shared__ float sd[SORT_MAX];
	__shared__ int si[SORT_MAX];
	int			r = blockIdx.x;
	int			lane = threadIdx.x % WARP;
	int			warp = threadIdx.x / WARP;
	int			n_warps = blockDim.x / WARP;
	const float *x = row_buf ? row_buf + (size_t) r * dim : data + (size_t) (row0 + r) * dim;
	int			n_sort = next_pow2(kc);

	for (int j = warp; j < kc; j += n_warps)
	{
		int			id = top_i[(size_t) r * kc + j];
		const float *y;
		float		dist;

		/* an empty slot (only NaN distances leave one) stays empty */
		if (id < 0 || id >= n)
		{
			if (lane == 0)
			{
				sd[j] = INFINITY;
				si[j] = INT_MAX;
			}
			continue;
		}
		y = gathered ? gathered + ((size_t) r * kc + j) * dim : data + (size_t) id * dim;
		dist = warp_distance(x, y, dim, metric, lane);
		if (lane == 0)
		{
			sd[j] = dist;
			si[j] = id;
		}
	}
	for (int j = kc + threadIdx.x; j < n_sort; j += blockDim.x)
	{
		sd[j] = INFINITY;
		si[j] = INT_MAX;
	}
	__syncthreads();
	bitonic_sort<float, pair_less>(sd, si, n_sort);
	for (int j = threadIdx.x; j < degree; j += blockDim.x)
		knn[(size_t) (row0 + r) * degree + j] = si[j] == INT_MAX ? -1 : si[j];
}

/* ---------------------------------------------------------------------- */
/* Stage 2: rank-based pruning */

/* Rank of node b in the id-sorted list, or -1. */
__device__ __forceinline__ int
prune_lookup(const int *ids, const int *ranks, int n, int b)
{
	int			lo = 0,
				hi = n;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (ids[mid] < b)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && ids[lo] == b ? ranks[lo] : -1;
}

/*
 * One block per node A.  Entries that are -1, A itself or repeat an id met
 * at a better rank are no edges (as on the CPU).  Output in increasing
 * (detour count, rank) order, -1 filled.
 */
__global__ void
prune_kernel(const int *knn, int degree_in, int degree_out, int detour,
			 int *pruned)
{
	__shared__ int row[GNNVEC_CUDA_MAX_DEGREE];
	__shared__ int ids[GNNVEC_CUDA_MAX_DEGREE];
	__shared__ int ranks[GNNVEC_CUDA_MAX_DEGREE];
	__shared__ int detours[GNNVEC_CUDA_MAX_DEGREE];
	__shared__ bool is_edge[GNNVEC_CUDA_MAX_DEGREE];
	__shared__ int n_edges;
	int			a_node = blockIdx.x;
	int			I = degree_in;
	int			n_sort = next_pow2(I);

	for (int r = threadIdx.x; r < n_sort; r += blockDim.x)
	{
		int			id = r < I ? knn[(size_t) a_node * I + r] : -1;

		if (r < I)
		{
			row[r] = id;
			detours[r] = 0;
		}
		ids[r] = id < 0 || id == a_node ? INT_MAX : id;
		ranks[r] = r;
	}
	if (threadIdx.x == 0)
		n_edges = 0;
	__syncthreads();
	bitonic_sort<int, int_pair_less>(ids, ranks, n_sort);
	for (int r = threadIdx.x; r < I; r += blockDim.x)
	{
		bool		edge = row[r] >= 0 && row[r] != a_node &&
			prune_lookup(ids, ranks, n_sort, row[r]) == r;

		is_edge[r] = edge;
		if (edge)
			atomicAdd(&n_edges, 1);
	}
	__syncthreads();

	for (int idx = threadIdx.x; idx < (I - 1) * I; idx += blockDim.x)
	{
		int			a = idx / I;
		int			rank_in_d = idx % I;
		int			b_node;
		int			b;

		if (!is_edge[a])
			continue;
		b_node = knn[(size_t) row[a] * I + rank_in_d];
		if (b_node < 0)
			continue;
		b = prune_lookup(ids, ranks, n_sort, b_node);
		if (b <= a)
			continue;
		if (detour == GNNVEC_CUDA_DETOUR_RANK_BELOW && rank_in_d >= b)
			continue;
		atomicAdd(&detours[b], 1);
	}
	__syncthreads();

	for (int e = threadIdx.x; e < I; e += blockDim.x)
	{
		int			place = 0;

		if (!is_edge[e])
			continue;
		for (int f = 0; f < I; f++)
			if (is_edge[f] && (detours[f] < detours[e] ||
							   (detours[f] == detours[e] && f < e)))
				place++;
		if (place < degree_out)
			pruned[(size_t) a_node * degree_out + place] = row[e];
	}
	for (int p = n_edges + threadIdx.x; p < degree_out; p += blockDim.x)
		pruned[(size_t) a_node * degree_out + p] = -1;
}

/* ---------------------------------------------------------------------- */
/* Stage 3: reverse edges */

/* Edge e = k * n + src (rank-major): key = destination (n: none). */
__global__ void
reverse_edges_kernel(const int *pruned, int n, int d, int *keys, int *sources)
{
	long long	e = (long long) blockIdx.x * blockDim.x + threadIdx.x;

	if (e < (long long) n * d)
	{
		int			k = (int) (e / n);
		int			src = (int) (e % n);
		int			dst = pruned[(size_t) src * d + k];

		keys[e] = dst < 0 || dst == src ? n : dst;
		sources[e] = src;
	}
}

__device__ __forceinline__ long long
lower_bound_key(const int *keys, long long n, int v)
{
	long long	lo = 0,
				hi = n;

	while (lo < hi)
	{
		long long	mid = (lo + hi) / 2;

		if (keys[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

__device__ __forceinline__ void
merge_append(int *out, int *len, int self, int id)
{
	if (id < 0 || id == self)
		return;
	for (int i = 0; i < *len; i++)
		if (out[i] == id)
			return;
	out[(*len)++] = id;
}

/* One thread per node: protected forward edges, reverse, the rest. */
__global__ void
merge_reverse_kernel(const int *pruned, int n, int d, const int *sorted_keys,
					 const int *sorted_sources, int *graph)
{
	int			v = blockIdx.x * blockDim.x + threadIdx.x;
	const int  *fwd;
	int		   *out;
	long long	lo,
				take;
	int			len = 0;
	int			protected_edges = d / 2;

	if (v >= n)
		return;
	fwd = pruned + (size_t) v * d;
	out = graph + (size_t) v * d;
	lo = lower_bound_key(sorted_keys, (long long) n * d, v);
	take = lower_bound_key(sorted_keys, (long long) n * d, v + 1) - lo;
	if (take > d)
		take = d;				/* the CPU keeps d reverse sources too */
	for (int k = 0; k < protected_edges; k++)
		merge_append(out, &len, v, fwd[k]);
	for (long long j = 0; j < take && len < d; j++)
		merge_append(out, &len, v, sorted_sources[lo + j]);
	for (int k = protected_edges; k < d && len < d; k++)
		merge_append(out, &len, v, fwd[k]);
	while (len < d)
		out[len++] = -1;
}

/* ---------------------------------------------------------------------- */
/* The build */

typedef struct Plan
{
	int			rows;			/* R: rows per block */
	int			cols;			/* C: columns per tile */
	bool		resident;
} Plan;

typedef struct Build
{
	ErrorSink  *sink;
	const float *host;
	long long	n;
	int			dim;
	GnnvecCudaCagraParams p;
	Plan		plan;
	cublasHandle_t blas;
	bool		blas_ready;
	float	   *mean;			/* host, L2 only */
	/* device */
	float	   *d_mean;
	float	   *d_data;			/* resident data set */
	float	   *d_norms;		/* |y|^2 of the resident data (L2) */
	float	   *d_rows;			/* streamed: the block's rows */
	float	   *d_cols;			/* streamed: one column chunk */
	float	   *d_col_norms;	/* streamed: its |y|^2 (L2) */
	float	   *d_gathered;		/* streamed: candidates' vectors */
	float	   *d_tile;
	float	   *d_top_d;
	int		   *d_top_i;
	int		   *d_knn;
	int		   *d_pruned;
	/* host scratch when streaming */
	int		   *h_top_i;
	float	   *h_gathered;
} Build;

static void
free_device(void *p)
{
	if (p != NULL)
		cudaFree(p);
}

/* Buffers of stage 1, freed before stage 3 needs the room. */
static void
free_knn_buffers(Build *b)
{
	free_device(b->d_mean);
	free_device(b->d_data);
	free_device(b->d_norms);
	free_device(b->d_rows);
	free_device(b->d_cols);
	free_device(b->d_col_norms);
	free_device(b->d_gathered);
	free_device(b->d_tile);
	free_device(b->d_top_d);
	free_device(b->d_top_i);
	b->d_mean = b->d_data = b->d_norms = b->d_rows = b->d_cols = NULL;
	b->d_col_norms = b->d_gathered = b->d_tile = b->d_top_d = NULL;
	b->d_top_i = NULL;
	free(b->h_top_i);
	free(b->h_gathered);
	b->h_top_i = NULL;
	b->h_gathered = NULL;
}

static void
build_cleanup(Build *b)
{
	free_knn_buffers(b);
	free_device(b->d_knn);
	free_device(b->d_pruned);
	free(b->mean);
	if (b->blas_ready)
		cublasDestroy(b->blas);
}

static bool
device_alloc(Build *b, void **p, size_t bytes, const char *what)
{
	cudaError_t err = cudaMalloc(p, bytes);

	if (err == cudaSuccess)
		return true;
	*p = NULL;
	return fail(b->sink, err == cudaErrorMemoryAllocation ? GNNVEC_CUDA_ERR_NOMEM :
				GNNVEC_CUDA_ERR_CUDA, "cannot allocate %.1f MiB of GPU memory for %s: %s",
				bytes / 1048576.0, what, cudaGetErrorString(err));
}

/* Bytes stage 1 needs besides the graphs, for a plan. */
static size_t
knn_stage_bytes(const Build *b, const Plan *pl)
{
	size_t		R = pl->rows,
				C = pl->cols,
				kc = b->p.knn_candidates,
				dim = b->dim;
	size_t		bytes = R * C * 4 + R * kc * 8 + dim * 4;

	if (pl->resident)
		bytes += (size_t) b->n * dim * 4 + (size_t) b->n * 4;
	else
		bytes += R * dim * 4 + C * dim * 4 + C * 4 + R * kc * dim * 4;
	return bytes;
}

/*
 * Choose block sizes: keep the data resident if that leaves room for a
 * reasonable tile, else stream it, halving tiles and blocks until they fit.
 */
static bool
plan_memory(Build *b, size_t budget)
{
	size_t		graphs = (size_t) b->n * (b->p.intermediate_degree + b->p.graph_degree) * 4;
	long long	n = b->n;
	Plan		pl;

	if (graphs >= budget)
		return fail(b->sink, GNNVEC_CUDA_ERR_NOMEM,
					"the kNN and pruned graphs need %.1f MiB, more than the %.1f MiB of GPU memory available",
					graphs / 1048576.0, budget / 1048576.0);
	budget -= graphs;
	for (int resident = 1; resident >= 0; resident--)
	{
		pl.resident = resident != 0;
		pl.rows = (int) (n < 8192 ? n : 8192);
		pl.cols = (int) (n < 16384 ? n : 16384);
		while (knn_stage_bytes(b, &pl) > budget && (pl.cols > 1024 || pl.rows > 256))
		{
			if (pl.cols > 1024 && pl.cols >= pl.rows)
				pl.cols /= 2;
			else
				pl.rows /= 2;
		}
		if (knn_stage_bytes(b, &pl) <= budget)
		{
			b->plan = pl;
			return true;
		}
	}
	return fail(b->sink, GNNVEC_CUDA_ERR_NOMEM,
				"%.1f MiB of GPU memory is too little for a kNN block of 256 rows of dimension %d",
				budget / 1048576.0, b->dim);
}

static bool
alloc_knn_buffers(Build *b)
{
	const Plan *pl = &b->plan;
	size_t		R = pl->rows,
				C = pl->cols,
				kc = b->p.knn_candidates,
				dim = b->dim,
				n = b->n;

	if (!device_alloc(b, (void **) &b->d_knn, n * b->p.intermediate_degree * 4, "the kNN graph") ||
		!device_alloc(b, (void **) &b->d_tile, R * C * 4, "a distance tile") ||
		!device_alloc(b, (void **) &b->d_top_d, R * kc * 4, "candidate lists") ||
		!device_alloc(b, (void **) &b->d_top_i, R * kc * 4, "candidate lists") ||
		!device_alloc(b, (void **) &b->d_mean, dim * 4, "the mean"))
		return false;
	if (pl->resident)
		return device_alloc(b, (void **) &b->d_data, n * dim * 4, "the data set") &&
			device_alloc(b, (void **) &b->d_norms, n * 4, "row norms");
	b->h_top_i = (int *) malloc(R * kc * 4);
	b->h_gathered = (float *) malloc(R * kc * dim * 4);
	if (b->h_top_i == NULL || b->h_gathered == NULL)
		return fail(b->sink, GNNVEC_CUDA_ERR_NOMEM,
					"out of host memory for candidate gathering");
	return device_alloc(b, (void **) &b->d_rows, R * dim * 4, "a row block") &&
		device_alloc(b, (void **) &b->d_cols, C * dim * 4, "a column chunk") &&
		device_alloc(b, (void **) &b->d_col_norms, C * 4, "column norms") &&
		device_alloc(b, (void **) &b->d_gathered, R * kc * dim * 4, "gathered candidates");
}

static unsigned
grid_for(long long items, int threads)
{
	return (unsigned) ((items + threads - 1) / threads);
}

/* After an upload: centre (L2) or normalise (cosine) rows in place. */
static bool
prepare_rows(Build *b, float *d_x, long long rows)
{
	if (b->p.metric == GNNVEC_CUDA_METRIC_L2)
	{
		centre_rows_kernel<<<grid_for(rows * b->dim, 256), 256>>>(d_x, rows, b->dim, b->d_mean);
		return LAUNCH_OK(b->sink, "centre_rows_kernel");
	}
	if (b->p.metric == GNNVEC_CUDA_METRIC_COSINE)
	{
		normalise_rows_kernel<<<grid_for(rows * WARP, 256), 256>>>(d_x, rows, b->dim);
		return LAUNCH_OK(b->sink, "normalise_rows_kernel");
	}
	return true;
}

static bool
upload_rows(Build *b, float *d_x, long long first, long long rows)
{
	return CUDA_OK(b->sink, cudaMemcpy(d_x, b->host + first * b->dim,
									   (size_t) rows * b->dim * sizeof(float),
									   cudaMemcpyHostToDevice)) &&
		prepare_rows(b, d_x, rows);
}

static bool
row_norms(Build *b, const float *d_x, long long rows, float *d_norms)
{
	row_norms_kernel<<<grid_for(rows * WARP, 256), 256>>>(d_x, rows, b->dim, d_norms);
	return LAUNCH_OK(b->sink, "row_norms_kernel");
}

/* The mean the CPU also centres on (double accumulation, host side). */
static bool
upload_mean(Build *b)
{
	double	   *sum;

	if (b->p.metric != GNNVEC_CUDA_METRIC_L2)
		return true;
	sum = (double *) calloc(b->dim, sizeof(double));
	b->mean = (float *) malloc(b->dim * sizeof(float));
	if (sum == NULL || b->mean == NULL)
	{
		free(sum);
		return fail(b->sink, GNNVEC_CUDA_ERR_NOMEM, "out of host memory");
	}
	for (long long i = 0; i < b->n; i++)
		for (int j = 0; j < b->dim; j++)
			sum[j] += b->host[i * b->dim + j];
	for (int j = 0; j < b->dim; j++)
		b->mean[j] = (float) (sum[j] / (double) b->n);
	free(sum);
	return CUDA_OK(b->sink, cudaMemcpy(b->d_mean, b->mean, b->dim * sizeof(float),
									   cudaMemcpyHostToDevice));
}

/* Fill the tile rows x cols: GEMM for L2/IP/cosine, direct for L1. */
static bool
fill_tile(Build *b, const float *d_r, int rows, const float *d_c, int cols)
{
	int			m = b->p.metric;
	float		alpha = m == GNNVEC_CUDA_METRIC_L2 ? -2.0f : -1.0f;
	float		beta = 0.0f;

	if (m == GNNVEC_CUDA_METRIC_L1)
	{
		dim3		block(L1_TILE, L1_TILE);
		dim3		grid(grid_for(cols, L1_TILE), grid_for(rows, L1_TILE));

		l1_tile_kernel<<<grid, block>>>(d_r, rows, d_c, cols, b->dim, b->d_tile,
										b->plan.cols);
		return LAUNCH_OK(b->sink, "l1_tile_kernel");
	}

	/*
	 * Column-major view: tile^T (cols x rows, ld = C) = Y X^T, Y and X being
	 * row-major (dim-contiguous), i.e. column-major dim x cols and dim x rows.
	 */
	return cublas_ok(b->sink,
					 cublasSgemm(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, cols, rows,
								 b->dim, &alpha, d_c, b->dim, d_r, b->dim,
								 &beta, b->d_tile, b->plan.cols),
					 "cublasSgemm");
}

/*
 * Streamed data: copy every row's candidates' vectors next to each other,
 * prepared (centred, normalised) like the rows they are compared with.
 */
static bool
gather_candidates(Build *b, int rows)
{
	size_t		kc = b->p.knn_candidates;
	size_t		dim = b->dim;

	if (!CUDA_OK(b->sink, cudaMemcpy(b->h_top_i, b->d_top_i, rows * kc * sizeof(int),
									 cudaMemcpyDeviceToHost)))
		return false;
	for (size_t i = 0; i < rows * kc; i++)
	{
		int			id = b->h_top_i[i];

		if (id >= 0 && id < b->n)
			memcpy(b->h_gathered + i * dim, b->host + (size_t) id * dim,
				   dim * sizeof(float));
		else
			memset(b->h_gathered + i * dim, 0, dim * sizeof(float));
	}
	return CUDA_OK(b->sink, cudaMemcpy(b->d_gathered, b->h_gathered,
									   rows * kc * dim * sizeof(float),
									   cudaMemcpyHostToDevice)) &&
		prepare_rows(b, b->d_gathered, (long long) rows * kc);
}

static bool
knn_block(Build *b, long long row0, int rows)
{
	const Plan *pl = &b->plan;
	int			kc = b->p.knn_candidates;
	bool		l2 = b->p.metric == GNNVEC_CUDA_METRIC_L2;
	const float *d_r = pl->resident ? b->d_data + row0 * b->dim : b->d_rows;

	topk_init_kernel<<<grid_for((long long) rows * kc, 256), 256>>>(b->d_top_d, b->d_top_i,
																   (long long) rows * kc);
	if (!LAUNCH_OK(b->sink, "topk_init_kernel"))
		return false;
	if (!pl->resident && !upload_rows(b, b->d_rows, row0, rows))
		return false;
	for (long long col0 = 0; col0 < b->n; col0 += pl->cols)
	{
		int			cols = (int) (b->n - col0 < pl->cols ? b->n - col0 : pl->cols);
		const float *d_c = pl->resident ? b->d_data + col0 * b->dim : b->d_cols;
		const float *d_cn = pl->resident ? b->d_norms + col0 : b->d_col_norms;

		if (!pl->resident &&
			(!upload_rows(b, b->d_cols, col0, cols) ||
			 (l2 && !row_norms(b, b->d_cols, cols, b->d_col_norms))))
			return false;
		if (!fill_tile(b, d_r, rows, d_c, cols))
			return false;
		topk_tile_kernel<<<rows, TOPK_THREADS>>>(b->d_tile, pl->cols, l2 ? d_cn : NULL,
												 col0, cols, row0, kc,
												 b->d_top_d, b->d_top_i);
		if (!LAUNCH_OK(b->sink, "topk_tile_kernel"))
			return false;
	}
	if (!pl->resident && !gather_candidates(b, rows))
		return false;
	rerank_kernel<<<rows, RERANK_THREADS>>>(b->d_data, pl->resident ? NULL : b->d_rows,
											pl->resident ? NULL : b->d_gathered,
											b->dim, b->p.metric, b->n, row0, kc,
											b->p.intermediate_degree,
											b->d_top_i, b->d_knn);
	return LAUNCH_OK(b->sink, "rerank_kernel");
}

static bool
knn_stage(Build *b, GnnvecCudaCagraStats *stats)
{
	if (!alloc_knn_buffers(b) || !upload_mean(b))
		return false;
	if (b->plan.resident)
	{
		if (!upload_rows(b, b->d_data, 0, b->n) ||
			(b->p.metric == GNNVEC_CUDA_METRIC_L2 &&
			 !row_norms(b, b->d_data, b->n, b->d_norms)))
			return false;
	}
	for (long long row0 = 0; row0 < b->n; row0 += b->plan.rows)
	{
		int			rows = (int) (b->n - row0 < b->plan.rows ? b->n - row0 : b->plan.rows);

		if (!knn_block(b, row0, rows))
			return false;
		stats->row_blocks++;
	}
	return CUDA_OK(b->sink, cudaDeviceSynchronize());
}

static bool
prune_stage(Build *b)
{
	if (!device_alloc(b, (void **) &b->d_pruned,
					  (size_t) b->n * b->p.graph_degree * 4, "the pruned graph"))
		return false;
	prune_kernel<<<(unsigned) b->n, PRUNE_THREADS>>>(b->d_knn, b->p.intermediate_degree,
													 b->p.graph_degree, b->p.detour,
													 b->d_pruned);
	return LAUNCH_OK(b->sink, "prune_kernel") &&
		CUDA_OK(b->sink, cudaDeviceSynchronize());
}

/* Stage 3 into the host array graph. */
static bool
reverse_stage(Build *b, int32_t *graph)
{
	int			n = (int) b->n;
	int			d = b->p.graph_degree;
	long long	n_edges = (long long) n * d;
	int		   *keys = NULL,
			   *keys_sorted = NULL,
			   *sources = NULL,
			   *sources_sorted = NULL,
			   *d_graph = NULL;
	void	   *temp = NULL;
	size_t		temp_bytes = 0;
	int			end_bit = 1;
	bool		ok;

	while (end_bit < 31 && (1LL << end_bit) <= n)
		end_bit++;
	ok = device_alloc(b, (void **) &keys, n_edges * 4, "reverse edges") &&
		device_alloc(b, (void **) &keys_sorted, n_edges * 4, "reverse edges") &&
		device_alloc(b, (void **) &sources, n_edges * 4, "reverse edges") &&
		device_alloc(b, (void **) &sources_sorted, n_edges * 4, "reverse edges") &&
		device_alloc(b, (void **) &d_graph, n_edges * 4, "the final graph");
	if (ok)
	{
		reverse_edges_kernel<<<grid_for(n_edges, 256), 256>>>(b->d_pruned, n, d, keys, sources);
		ok = LAUNCH_OK(b->sink, "reverse_edges_kernel") &&
			CUDA_OK(b->sink, cub::DeviceRadixSort::SortPairs(NULL, temp_bytes, keys, keys_sorted,
															 sources, sources_sorted,
															 (int) n_edges, 0, end_bit)) &&
			device_alloc(b, &temp, temp_bytes, "the radix sort");
	}
	if (ok)
	{
		ok = CUDA_OK(b->sink, cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys, keys_sorted,
															  sources, sources_sorted,
															  (int) n_edges, 0, end_bit));
		if (ok)
		{
			merge_reverse_kernel<<<grid_for(n, 256), 256>>>(b->d_pruned, n, d, keys_sorted,
															sources_sorted, d_graph);
			ok = LAUNCH_OK(b->sink, "merge_reverse_kernel") &&
				CUDA_OK(b->sink, cudaMemcpy(graph, d_graph, n_edges * sizeof(int32_t),
											cudaMemcpyDeviceToHost));
		}
	}
	free_device(keys);
	free_device(keys_sorted);
	free_device(sources);
	free_device(sources_sorted);
	free_device(d_graph);
	free_device(temp);
	return ok;
}

static int
check_params(const float *data, int64_t n, int dim, const GnnvecCudaCagraParams *p,
			 ErrorSink *sink)
{
	if (data == NULL || p == NULL || n < 2 || n > INT_MAX || dim < 1)
		return set_error(sink, GNNVEC_CUDA_ERR_PARAM,
						 "invalid data set: %lld rows of dimension %d",
						 (long long) n, dim);
	if (p->metric < GNNVEC_CUDA_METRIC_L2 || p->metric > GNNVEC_CUDA_METRIC_L1 ||
		p->detour < GNNVEC_CUDA_DETOUR_ANY_RANK || p->detour > GNNVEC_CUDA_DETOUR_RANK_BELOW)
		return set_error(sink, GNNVEC_CUDA_ERR_PARAM, "unknown metric %d or detour %d",
						 p->metric, p->detour);
	if (p->graph_degree < 1 || p->graph_degree > p->intermediate_degree ||
		p->intermediate_degree > GNNVEC_CUDA_MAX_DEGREE || p->intermediate_degree >= n)
		return set_error(sink, GNNVEC_CUDA_ERR_PARAM,
						 "invalid degrees: graph %d, intermediate %d, for %lld rows",
						 p->graph_degree, p->intermediate_degree, (long long) n);
	if (p->knn_candidates < p->intermediate_degree ||
		p->knn_candidates > GNNVEC_CUDA_MAX_CANDIDATES || p->knn_candidates >= n)
		return set_error(sink, GNNVEC_CUDA_ERR_PARAM,
						 "knn_candidates %d must be in %d..%d and below the row count",
						 p->knn_candidates, p->intermediate_degree,
						 GNNVEC_CUDA_MAX_CANDIDATES);
	if ((long long) n * p->graph_degree > INT_MAX)
		return set_error(sink, GNNVEC_CUDA_ERR_PARAM,
						 "%lld rows of degree %d exceed the 2^31 edges of the GPU merge",
						 (long long) n, p->graph_degree);
	return GNNVEC_CUDA_OK;
}

static bool
select_device(int device, ErrorSink *sink)
{
	int			count = 0;
	cudaError_t err = cudaGetDeviceCount(&count);

	if (err != cudaSuccess || device < 0 || device >= count)
		return fail(sink, GNNVEC_CUDA_ERR_NO_DEVICE, "no CUDA device %d (%d found%s%s)",
					device, err == cudaSuccess ? count : 0,
					err == cudaSuccess ? "" : ": ",
					err == cudaSuccess ? "" : cudaGetErrorString(err));
	return CUDA_OK(sink, cudaSetDevice(device));
}

static bool
memory_budget(const GnnvecCudaCagraParams *p, ErrorSink *sink, size_t *budget)
{
	size_t		free_bytes = 0,
				total_bytes = 0;

	if (!CUDA_OK(sink, cudaMemGetInfo(&free_bytes, &total_bytes)))
		return false;
	*budget = free_bytes / 10 * 9;
	if (p->device_bytes > 0 && p->device_bytes < *budget)
		*budget = p->device_bytes;
	return true;
}

static void
run_build(Build *b, int32_t *knn, int32_t *graph, GnnvecCudaCagraStats *stats)
{
	size_t		budget;
	double		t = now_seconds();

	/* context creation, the first CUDA call's cost, is reported apart */
	if (!select_device(b->p.device, b->sink) || !memory_budget(&b->p, b->sink, &budget) ||
		!plan_memory(b, budget) ||
		!cublas_ok(b->sink, cublasCreate(&b->blas), "cublasCreate"))
		return;
	b->blas_ready = true;
	if (!cublas_ok(b->sink, cublasSetMathMode(b->blas, CUBLAS_DEFAULT_MATH),
				   "cublasSetMathMode"))
		return;
	stats->data_resident = b->plan.resident;
	stats->setup_seconds = now_seconds() - t;

	t = now_seconds();
	if (!knn_stage(b, stats))
		return;
	free_knn_buffers(b);
	if (knn != NULL &&
		!CUDA_OK(b->sink, cudaMemcpy(knn, b->d_knn,
									 (size_t) b->n * b->p.intermediate_degree * sizeof(int32_t),
									 cudaMemcpyDeviceToHost)))
		return;
	stats->knn_seconds = now_seconds() - t;

	t = now_seconds();
	if (!prune_stage(b))
		return;
	free_device(b->d_knn);
	b->d_knn = NULL;
	stats->prune_seconds = now_seconds() - t;

	t = now_seconds();
	if (!reverse_stage(b, graph))
		return;
	stats->reverse_seconds = now_seconds() - t;
}

/* ---------------------------------------------------------------------- */
/* The C ABI */

extern "C" int
gnnvec_cuda_abi_version(void)
{
	return GNNVEC_CUDA_ABI_VERSION;
}

extern "C" int
gnnvec_cuda_device_count(int *count, char *errbuf, size_t errlen)
{
	ErrorSink	sink = {errbuf, errlen, GNNVEC_CUDA_OK};
	cudaError_t err = cudaGetDeviceCount(count);

	/* no GPU or no driver: zero devices, not a failure */
	if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
	{
		*count = 0;
		return GNNVEC_CUDA_OK;
	}
	if (!cuda_ok(&sink, err, "cudaGetDeviceCount"))
		*count = 0;
	return sink.status;
}

extern "C" int
gnnvec_cuda_device_info(int device, char *name, size_t name_len,
						size_t *total_bytes, char *errbuf, size_t errlen)
{
	ErrorSink	sink = {errbuf, errlen, GNNVEC_CUDA_OK};
	cudaDeviceProp prop;

	if (!select_device(device, &sink) ||
		!CUDA_OK(&sink, cudaGetDeviceProperties(&prop, device)))
		return sink.status;
	if (name != NULL && name_len > 0)
		snprintf(name, name_len, "%s", prop.name);
	if (total_bytes != NULL)
		*total_bytes = prop.totalGlobalMem;
	return GNNVEC_CUDA_OK;
}

extern "C" int
gnnvec_cuda_cagra_build(const float *data, int64_t n, int dim,
						const GnnvecCudaCagraParams *params,
						int32_t *knn, int32_t *graph,
						GnnvecCudaCagraStats *stats,
						char *errbuf, size_t errlen)
{
	ErrorSink	sink = {errbuf, errlen, GNNVEC_CUDA_OK};
	GnnvecCudaCagraStats local;
	Build		b;

	if (stats == NULL)
		stats = &local;
	memset(stats, 0, sizeof(*stats));

	/*
	 * A failed launch of an earlier build in this process (a backend builds
	 * many indexes) leaves its error pending until someone reads it: read
	 * and drop it here, or LAUNCH_OK would blame this build's first kernel.
	 */
	(void) cudaGetLastError();
	if (graph == NULL)
		return set_error(&sink, GNNVEC_CUDA_ERR_PARAM, "no output graph");
	if (check_params(data, n, dim, params, &sink) != GNNVEC_CUDA_OK)
		return sink.status;
	memset(&b, 0, sizeof(b));
	b.sink = &sink;
	b.host = data;
	b.n = n;
	b.dim = dim;
	b.p = *params;
	run_build(&b, knn, graph, stats);
	build_cleanup(&b);
	return sink.status;
}
