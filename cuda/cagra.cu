/*
 * cagra.cu
 *		CAGRA graph construction on an NVIDIA GPU: the same algorithm as
 *		src/cagra/ on the CPU (Ootomo et al., "CAGRA: Highly Parallel Graph
 *		Construction and Approximate Nearest Neighbor Search for GPUs",
 *		ICDE 2024), behind the C ABI of gnnvec_cuda.h.
 *
 *	1. The kNN graph, by the index's method, as on the CPU:
 *	   exact: rows go in blocks of R; each block meets the data C columns
 *	   at a time: cuBLAS sgemm fills an R x C tile with -2 x.y (L2, on data
 *	   centred on the host-computed mean), -x.y (inner product; cosine on
 *	   normalised rows), or a direct kernel fills it (L1).  One thread
 *	   block per tile row keeps the row's best kc candidates in shared
 *	   memory: values beating the current worst are appended to a buffer,
 *	   and buffer and list are bitonic-sorted together when the buffer
 *	   fills.  After the last tile, the candidates' distances are
 *	   recomputed directly and sorted by (distance, id); the best I form
 *	   the row.  This is what the CPU does, so both give the same graph up
 *	   to ties.
 *	   partitioned (src/cagra/cagra_partition.c on the CPU): k-means on an
 *	   evenly spaced sample (Lloyd's iterations; assignments by a cuBLAS
 *	   GEMM against the centroids and a per-row minimum, means by a kernel
 *	   over the sample grouped by centroid), every row in the list of its
 *	   nearest centroid, and each list's rows searched by GEMM tiles among
 *	   the rows of the `probes` lists nearest its centroid (its own first);
 *	   the same top-k kernel merges a row's candidates across tiles, hence
 *	   across probed lists, ranked by the GEMM's values as on the CPU.  A
 *	   row costs about probes x list_rows distances instead of n.
 *	2. Rank-based pruning: one thread block per node, A's list sorted by id
 *	   in shared memory so that "is B one of A's neighbours, at which rank"
 *	   is a binary search; detour counts by shared atomics; an edge's place
 *	   in the output is the number of edges with a smaller (count, rank).
 *	3. Reverse edges: the edges of the pruned graph in (rank, source) order
 *	   are stably radix-sorted by destination (CUB), so each node's reverse
 *	   sources come out in the order the CPU builds them; one thread per
 *	   node merges them after the d/2 protected forward edges.
 *
 * Device memory follows the plan of src/cagra/cagra_gpu_plan.h: every
 * buffer is allocated by plan id at its planned size when a stage starts
 * (stage_enter), the data set stays on the device when every stage fits
 * with it and streams through it in blocks otherwise (rows gathered on the
 * host and uploaded).  All work runs on the legacy default stream, so
 * kernels, cuBLAS calls and copies are ordered without events.  No CUDA or
 * cuBLAS error is fatal: each becomes a status and a message in the
 * caller's buffer, and every buffer is freed on every path
 * (build_cleanup).
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

#include "cagra/cagra_gpu_plan.h"
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
 * the row's candidate list top_d/top_i (kc entries, sorted).  Column c is
 * row col_ids[c] (NULL: col0 + c) and tile row r is row_ids[r] (NULL:
 * row0 + r); with exclude_self, a row is not its own candidate.  Lists
 * carry over from tile to tile, so a row's candidates can come in chunks.
 */
__global__ void
topk_tile_kernel(const float *tile, int ldt, const float *col_norms,
				 const int *col_ids, long long col0, int n_cols,
				 const int *row_ids, long long row0, bool exclude_self,
				 int kc, float *top_d, int *top_i)
{
	__shared__ float sd[SORT_MAX];
	__shared__ int si[SORT_MAX];
	__shared__ int count;
	const float *row = tile + (size_t) blockIdx.x * ldt;
	long long	self = row_ids ? row_ids[blockIdx.x] : row0 + blockIdx.x;
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
			int			id = col_ids ? col_ids[c] : (int) (col0 + c);

			if ((!exclude_self || id != self) &&
				pair_less(v, id, bound_d, bound_i))
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
/* Stage 1, partitioned: k-means lists */

/* dst row p = src row p * src_rows / dst_rows: evenly spaced rows. */
__global__ void
spaced_rows_kernel(const float *src, long long src_rows, float *dst,
				   long long dst_rows, int dim)
{
	long long	i = (long long) blockIdx.x * blockDim.x + threadIdx.x;

	if (i < dst_rows * dim)
	{
		long long	p = i / dim;

		dst[i] = src[(p * src_rows / dst_rows) * dim + i % dim];
	}
}

/* dst row r = src row ids[r]. */
__global__ void
gather_rows_kernel(const float *src, const int *ids, int rows, int dim,
				   float *dst)
{
	long long	i = (long long) blockIdx.x * blockDim.x + threadIdx.x;

	if (i < (long long) rows * dim)
		dst[i] = src[(size_t) ids[i / dim] * dim + i % dim];
}

/*
 * One warp per tile row: the column with the smallest value (plus |c|^2
 * when col_norms is given), ties to the smaller column: the nearest
 * centroid.  A row of NaNs goes to centroid 0.
 */
__global__ void
nearest_kernel(const float *tile, int ldt, int rows, int cols,
			   const float *col_norms, int *nearest)
{
	long long	row = ((long long) blockIdx.x * blockDim.x + threadIdx.x) / WARP;
	int			lane = threadIdx.x % WARP;
	float		best = INFINITY;
	int			best_id = INT_MAX;

	if (row >= rows)
		return;					/* the whole warp: row is per warp */
	for (int c = lane; c < cols; c += WARP)
	{
		float		v = tile[(size_t) row * ldt + c] + (col_norms ? col_norms[c] : 0.0f);

		if (pair_less(v, c, best, best_id))
		{
			best = v;
			best_id = c;
		}
	}
	for (int off = WARP / 2; off > 0; off >>= 1)
	{
		float		other = __shfl_down_sync(0xffffffffu, best, off);
		int			other_id = __shfl_down_sync(0xffffffffu, best_id, off);

		if (pair_less(other, other_id, best, best_id))
		{
			best = other;
			best_id = other_id;
		}
	}
	if (lane == 0)
		nearest[row] = best_id == INT_MAX ? 0 : best_id;
}

/*
 * One block per centroid: the mean of its sample rows (members[offsets[l]
 * .. offsets[l + 1]), summed in that order, in double, so that the result
 * does not depend on scheduling); an empty centroid stays.  normalise
 * (cosine) scales it to unit length: spherical k-means, whose assignments
 * by -x.c equal the CPU's by cosine distance.
 */
#define CENTROID_THREADS 128
__global__ void
centroid_update_kernel(const float *sample, int dim, const int *offsets,
					   const int *members, float *centroids, bool normalise)
{
	__shared__ float partial[CENTROID_THREADS];
	int			l = blockIdx.x;
	int			begin = offsets[l],
				end = offsets[l + 1];
	float	   *c = centroids + (size_t) l * dim;
	float		sq = 0.0f;

	if (end == begin)
		return;					/* the whole block */
	for (int j = threadIdx.x; j < dim; j += blockDim.x)
	{
		double		sum = 0.0;

		for (int m = begin; m < end; m++)
			sum += sample[(size_t) members[m] * dim + j];
		c[j] = (float) (sum / (double) (end - begin));
		sq += c[j] * c[j];
	}
	if (!normalise)
		return;
	partial[threadIdx.x] = sq;
	__syncthreads();
	for (int half = blockDim.x / 2; half > 0; half >>= 1)
	{
		if (threadIdx.x < half)
			partial[threadIdx.x] += partial[threadIdx.x + half];
		__syncthreads();
	}
	if (partial[0] > 0.0f)
	{
		float		scale = rsqrtf(partial[0]);

		for (int j = threadIdx.x; j < dim; j += blockDim.x)
			c[j] *= scale;
	}
}

/* knn row row_ids[r] = the first k of top_i row r (empty slots: -1). */
__global__ void
scatter_top_kernel(const int *top_i, int rows, int k, const int *row_ids,
				   int *knn)
{
	long long	i = (long long) blockIdx.x * blockDim.x + threadIdx.x;

	if (i < (long long) rows * k)
	{
		int			id = top_i[i];

		knn[(size_t) row_ids[i / k] * k + i % k] = id == INT_MAX ? -1 : id;
	}
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

typedef struct Build
{
	ErrorSink  *sink;
	const float *host;
	long long	n;
	int			dim;
	GnnvecCudaCagraParams p;
	CagraGpuPlanInput pin;
	CagraGpuPlan plan;
	bool		partitioned;	/* the plan has lists */
	cublasHandle_t blas;
	bool		blas_ready;
	float	   *mean;			/* host, L2 only */
	void	   *buf[CAGRA_GPU_N_BUFFERS];	/* device, by plan id */
	/* host scratch */
	float	   *h_rows;			/* rows gathered for an upload */
	int		   *h_ids;			/* exact, streamed: candidate ids */
	int		   *h_nearest;		/* partitioned: sample or row -> centroid */
	int		   *h_offsets;		/* lists (or sample groups) as CSR */
	int		   *h_members;
	int		   *h_pool;			/* L x probe_pool nearest lists */
	int		   *h_cands;		/* a list's candidate rows */
	int		   *h_stamp;		/* lists taken for the current list */
} Build;

#define FBUF(b, id) ((float *) (b)->buf[id])
#define IBUF(b, id) ((int *) (b)->buf[id])

static void
free_device(void *p)
{
	if (p != NULL)
		cudaFree(p);
}

static void
build_cleanup(Build *b)
{
	/* the handle first: it holds our workspace */
	if (b->blas_ready)
		cublasDestroy(b->blas);
	for (int i = 0; i < CAGRA_GPU_N_BUFFERS; i++)
		free_device(b->buf[i]);
	free(b->mean);
	free(b->h_rows);
	free(b->h_ids);
	free(b->h_nearest);
	free(b->h_offsets);
	free(b->h_members);
	free(b->h_pool);
	free(b->h_cands);
	free(b->h_stamp);
}

/*
 * Enter a stage of the plan: free the buffers it does not use, then
 * allocate those it does at their planned sizes (cagra_gpu_plan.h), so
 * that the memory in use is what the plan counted for the stage.
 */
static bool
stage_enter(Build *b, CagraGpuStage stage)
{
	CagraGpuBuffer list[CAGRA_GPU_N_BUFFERS];
	bool		keep[CAGRA_GPU_N_BUFFERS] = {false};
	int			count = cagra_gpu_stage_buffers(&b->pin, stage, list);

	for (int i = 0; i < count; i++)
		keep[list[i]] = true;
	for (int i = 0; i < CAGRA_GPU_N_BUFFERS; i++)
		if (!keep[i] && b->buf[i] != NULL)
		{
			void	   *p = b->buf[i];

			b->buf[i] = NULL;
			if (!CUDA_OK(b->sink, cudaFree(p)))
				return false;
		}
	for (int i = 0; i < count; i++)
	{
		size_t		bytes = cagra_gpu_buffer_bytes(&b->pin, &b->plan, list[i]);
		cudaError_t err;

		if (bytes == 0 || b->buf[list[i]] != NULL)
			continue;
		err = cudaMalloc(&b->buf[list[i]], bytes);
		if (err != cudaSuccess)
		{
			b->buf[list[i]] = NULL;
			return fail(b->sink, err == cudaErrorMemoryAllocation ? GNNVEC_CUDA_ERR_NOMEM :
						GNNVEC_CUDA_ERR_CUDA,
						"cannot allocate %.1f MiB of GPU memory for %s (%.1f MiB planned for the stage): %s",
						bytes / 1048576.0, cagra_gpu_buffer_name(list[i]),
						b->plan.stage_bytes[stage] / 1048576.0,
						cudaGetErrorString(err));
		}
	}
	return true;
}

static bool
host_alloc(Build *b, void **p, size_t bytes)
{
	*p = malloc(bytes > 0 ? bytes : 1);
	if (*p == NULL)
		return fail(b->sink, GNNVEC_CUDA_ERR_NOMEM,
					"out of host memory (%.1f MiB) for the GPU build",
					bytes / 1048576.0);
	return true;
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
		centre_rows_kernel<<<grid_for(rows * b->dim, 256), 256>>>(d_x, rows, b->dim,
																  FBUF(b, CAGRA_GPU_MEAN));
		return LAUNCH_OK(b->sink, "centre_rows_kernel");
	}
	if (b->p.metric == GNNVEC_CUDA_METRIC_COSINE)
	{
		normalise_rows_kernel<<<grid_for(rows * WARP, 256), 256>>>(d_x, rows, b->dim);
		return LAUNCH_OK(b->sink, "normalise_rows_kernel");
	}
	return true;
}

/* Rows first .. first + rows - 1, uploaded and prepared. */
static bool
upload_rows(Build *b, float *d_x, long long first, long long rows)
{
	return CUDA_OK(b->sink, cudaMemcpy(d_x, b->host + first * b->dim,
									   (size_t) rows * b->dim * sizeof(float),
									   cudaMemcpyHostToDevice)) &&
		prepare_rows(b, d_x, rows);
}

/*
 * Rows h_ids[0 .. rows) (also at d_ids on the device) into d_x, prepared:
 * gathered on the device from the resident data, or on the host and
 * uploaded when the data streams.
 */
static bool
load_rows(Build *b, const int *h_ids, const int *d_ids, int rows, float *d_x)
{
	size_t		dim = b->dim;

	if (b->plan.resident)
	{
		gather_rows_kernel<<<grid_for((long long) rows * b->dim, 256), 256>>>(FBUF(b, CAGRA_GPU_DATA),
																			  d_ids, rows, b->dim, d_x);
		return LAUNCH_OK(b->sink, "gather_rows_kernel");
	}
	for (int r = 0; r < rows; r++)
		memcpy(b->h_rows + r * dim, b->host + (size_t) h_ids[r] * dim,
			   dim * sizeof(float));
	return CUDA_OK(b->sink, cudaMemcpy(d_x, b->h_rows, rows * dim * sizeof(float),
									   cudaMemcpyHostToDevice)) &&
		prepare_rows(b, d_x, rows);
}

static bool
row_norms(Build *b, const float *d_x, long long rows, float *d_norms)
{
	row_norms_kernel<<<grid_for(rows * WARP, 256), 256>>>(d_x, rows, b->dim, d_norms);
	return LAUNCH_OK(b->sink, "row_norms_kernel");
}

static bool
topk_init(Build *b, float *d_dist, int *d_ids, long long count)
{
	topk_init_kernel<<<grid_for(count, 256), 256>>>(d_dist, d_ids, count);
	return LAUNCH_OK(b->sink, "topk_init_kernel");
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
	return CUDA_OK(b->sink, cudaMemcpy(FBUF(b, CAGRA_GPU_MEAN), b->mean,
									   b->dim * sizeof(float), cudaMemcpyHostToDevice));
}

/*
 * tile (rows x cols, leading dimension ldt) = values ordered like the
 * metric's distances: -2 x.y (L2, |y|^2 added later), -x.y (inner product,
 * cosine on normalised rows) by GEMM, |x - y|_1 directly (L1).
 */
static bool
fill_tile(Build *b, int metric, const float *d_r, int rows, const float *d_c,
		  int cols, float *d_tile, int ldt)
{
	float		alpha = metric == GNNVEC_CUDA_METRIC_L2 ? -2.0f : -1.0f;
	float		beta = 0.0f;

	if (metric == GNNVEC_CUDA_METRIC_L1)
	{
		dim3		block(L1_TILE, L1_TILE);
		dim3		grid(grid_for(cols, L1_TILE), grid_for(rows, L1_TILE));

		l1_tile_kernel<<<grid, block>>>(d_r, rows, d_c, cols, b->dim, d_tile, ldt);
		return LAUNCH_OK(b->sink, "l1_tile_kernel");
	}

	/*
	 * Column-major view: tile^T (cols x rows, ld = ldt) = Y X^T, Y and X
	 * being row-major (dim-contiguous), i.e. column-major dim x cols and
	 * dim x rows.
	 */
	return cublas_ok(b->sink,
					 cublasSgemm(b->blas, CUBLAS_OP_T, CUBLAS_OP_N, cols, rows,
								 b->dim, &alpha, d_c, b->dim, d_r, b->dim,
								 &beta, d_tile, ldt),
					 "cublasSgemm");
}

/* ---------------------------------------------------------------------- */
/* Stage 1, exact: all pairs */

/*
 * Streamed data: copy every row's candidates' vectors next to each other,
 * prepared (centred, normalised) like the rows they are compared with.
 */
static bool
gather_candidates(Build *b, int rows)
{
	size_t		kc = b->p.knn_candidates;
	size_t		dim = b->dim;

	if (!CUDA_OK(b->sink, cudaMemcpy(b->h_ids, IBUF(b, CAGRA_GPU_TOP_IDS),
									 rows * kc * sizeof(int), cudaMemcpyDeviceToHost)))
		return false;
	for (size_t i = 0; i < rows * kc; i++)
	{
		int			id = b->h_ids[i];

		if (id >= 0 && id < b->n)
			memcpy(b->h_rows + i * dim, b->host + (size_t) id * dim,
				   dim * sizeof(float));
		else
			memset(b->h_rows + i * dim, 0, dim * sizeof(float));
	}
	return CUDA_OK(b->sink, cudaMemcpy(FBUF(b, CAGRA_GPU_GATHERED), b->h_rows,
									   rows * kc * dim * sizeof(float),
									   cudaMemcpyHostToDevice)) &&
		prepare_rows(b, FBUF(b, CAGRA_GPU_GATHERED), (long long) rows * kc);
}

static bool
exact_block(Build *b, long long row0, int rows)
{
	const CagraGpuPlan *pl = &b->plan;
	int			kc = b->p.knn_candidates;
	bool		l2 = b->p.metric == GNNVEC_CUDA_METRIC_L2;
	const float *d_data = FBUF(b, CAGRA_GPU_DATA);
	const float *d_r = pl->resident ? d_data + row0 * b->dim : FBUF(b, CAGRA_GPU_ROW_BLOCK);

	if (!topk_init(b, FBUF(b, CAGRA_GPU_TOP_DIST), IBUF(b, CAGRA_GPU_TOP_IDS),
				   (long long) rows * kc))
		return false;
	if (!pl->resident && !upload_rows(b, FBUF(b, CAGRA_GPU_ROW_BLOCK), row0, rows))
		return false;
	for (long long col0 = 0; col0 < b->n; col0 += pl->block_cols)
	{
		int			cols = (int) (b->n - col0 < pl->block_cols ? b->n - col0 : pl->block_cols);
		const float *d_c = pl->resident ? d_data + col0 * b->dim : FBUF(b, CAGRA_GPU_COL_CHUNK);
		const float *d_cn = pl->resident ? FBUF(b, CAGRA_GPU_DATA_NORMS) + col0 :
			FBUF(b, CAGRA_GPU_COL_NORMS);

		if (!pl->resident &&
			(!upload_rows(b, FBUF(b, CAGRA_GPU_COL_CHUNK), col0, cols) ||
			 (l2 && !row_norms(b, FBUF(b, CAGRA_GPU_COL_CHUNK), cols,
							   FBUF(b, CAGRA_GPU_COL_NORMS)))))
			return false;
		if (!fill_tile(b, b->p.metric, d_r, rows, d_c, cols, FBUF(b, CAGRA_GPU_TILE),
					   pl->block_cols))
			return false;
		topk_tile_kernel<<<rows, TOPK_THREADS>>>(FBUF(b, CAGRA_GPU_TILE), pl->block_cols,
												 l2 ? d_cn : NULL, NULL, col0, cols,
												 NULL, row0, true, kc,
												 FBUF(b, CAGRA_GPU_TOP_DIST),
												 IBUF(b, CAGRA_GPU_TOP_IDS));
		if (!LAUNCH_OK(b->sink, "topk_tile_kernel"))
			return false;
	}
	if (!pl->resident && !gather_candidates(b, rows))
		return false;
	rerank_kernel<<<rows, RERANK_THREADS>>>(d_data,
											pl->resident ? NULL : FBUF(b, CAGRA_GPU_ROW_BLOCK),
											pl->resident ? NULL : FBUF(b, CAGRA_GPU_GATHERED),
											b->dim, b->p.metric, b->n, row0, kc,
											b->p.intermediate_degree,
											IBUF(b, CAGRA_GPU_TOP_IDS),
											IBUF(b, CAGRA_GPU_KNN_GRAPH));
	return LAUNCH_OK(b->sink, "rerank_kernel");
}

static bool
exact_knn_stage(Build *b, GnnvecCudaCagraStats *stats)
{
	const CagraGpuPlan *pl = &b->plan;

	if (!stage_enter(b, CAGRA_GPU_STAGE_EXACT_KNN) || !upload_mean(b))
		return false;
	if (pl->resident)
	{
		if (!upload_rows(b, FBUF(b, CAGRA_GPU_DATA), 0, b->n) ||
			(b->p.metric == GNNVEC_CUDA_METRIC_L2 &&
			 !row_norms(b, FBUF(b, CAGRA_GPU_DATA), b->n, FBUF(b, CAGRA_GPU_DATA_NORMS))))
			return false;
	}
	else if (!host_alloc(b, (void **) &b->h_ids,
						 (size_t) pl->block_rows * b->p.knn_candidates * sizeof(int)) ||
			 !host_alloc(b, (void **) &b->h_rows,
						 (size_t) pl->block_rows * b->p.knn_candidates * b->dim * sizeof(float)))
		return false;
	for (long long row0 = 0; row0 < b->n; row0 += pl->block_rows)
	{
		int			rows = (int) (b->n - row0 < pl->block_rows ? b->n - row0 : pl->block_rows);

		if (!exact_block(b, row0, rows))
			return false;
		stats->row_blocks++;
	}
	return CUDA_OK(b->sink, cudaDeviceSynchronize());
}

/* ---------------------------------------------------------------------- */
/* Stage 1, partitioned: k-means lists searched near each other */

/* k-means runs under L2 except for cosine, as on the CPU (cagra_partition.c). */
static int
partition_metric(const Build *b)
{
	return b->p.metric == GNNVEC_CUDA_METRIC_COSINE ? GNNVEC_CUDA_METRIC_COSINE :
		GNNVEC_CUDA_METRIC_L2;
}

/* Nearest centroid of rows d_x[0 .. rows), rows <= A, into d_nearest. */
static bool
nearest_centroids(Build *b, const float *d_x, int rows, int *d_nearest)
{
	int			L = (int) b->plan.n_lists;
	int			pmetric = partition_metric(b);

	if (!fill_tile(b, pmetric, d_x, rows, FBUF(b, CAGRA_GPU_CENTROIDS), L,
				   FBUF(b, CAGRA_GPU_ASSIGN_TILE), L))
		return false;
	nearest_kernel<<<grid_for((long long) rows * WARP, 256), 256>>>(FBUF(b, CAGRA_GPU_ASSIGN_TILE),
																	L, rows, L,
																	pmetric == GNNVEC_CUDA_METRIC_L2 ?
																	FBUF(b, CAGRA_GPU_CENTROID_NORMS) : NULL,
																	d_nearest);
	return LAUNCH_OK(b->sink, "nearest_kernel");
}

/*
 * Lloyd's iterations on an evenly spaced sample of S rows, started from
 * evenly spaced sample rows (as the CPU does): assignments by GEMM against
 * the centroids (cuBLAS) and a per-row minimum, the means by a kernel over
 * the sample grouped by centroid.
 */
static bool
kmeans_stage(Build *b)
{
	const CagraGpuPlan *pl = &b->plan;
	long long	S = pl->sample_rows;
	int			L = (int) pl->n_lists;
	int			A = pl->assign_rows;
	bool		l2 = partition_metric(b) == GNNVEC_CUDA_METRIC_L2;
	float	   *d_sample;
	float	   *d_centroids;

	if (!stage_enter(b, CAGRA_GPU_STAGE_KMEANS) || !upload_mean(b) ||
		!host_alloc(b, (void **) &b->h_nearest, (size_t) (S > b->n ? S : b->n) * sizeof(int)) ||
		!host_alloc(b, (void **) &b->h_offsets, ((size_t) L + 1) * sizeof(int)) ||
		!host_alloc(b, (void **) &b->h_members, (size_t) b->n * sizeof(int)))
		return false;
	d_sample = FBUF(b, CAGRA_GPU_SAMPLE);
	d_centroids = FBUF(b, CAGRA_GPU_CENTROIDS);
	if (pl->resident)
	{
		if (!upload_rows(b, FBUF(b, CAGRA_GPU_DATA), 0, b->n))
			return false;
		spaced_rows_kernel<<<grid_for(S * b->dim, 256), 256>>>(FBUF(b, CAGRA_GPU_DATA), b->n,
															   d_sample, S, b->dim);
		if (!LAUNCH_OK(b->sink, "spaced_rows_kernel"))
			return false;
	}
	else
	{
		size_t		dim = b->dim;

		for (long long s0 = 0; s0 < S; s0 += A)
		{
			int			rows = (int) (S - s0 < A ? S - s0 : A);

			for (int r = 0; r < rows; r++)
				memcpy(b->h_rows + r * dim, b->host + ((s0 + r) * b->n / S) * dim,
					   dim * sizeof(float));
			if (!CUDA_OK(b->sink, cudaMemcpy(d_sample + s0 * dim, b->h_rows,
											 rows * dim * sizeof(float),
											 cudaMemcpyHostToDevice)) ||
				!prepare_rows(b, d_sample + s0 * dim, rows))
				return false;
		}
	}
	spaced_rows_kernel<<<grid_for((long long) L * b->dim, 256), 256>>>(d_sample, S, d_centroids,
																	   L, b->dim);
	if (!LAUNCH_OK(b->sink, "spaced_rows_kernel"))
		return false;

	for (int it = 0; it < CAGRA_GPU_KMEANS_ITERATIONS; it++)
	{
		if (l2 && !row_norms(b, d_centroids, L, FBUF(b, CAGRA_GPU_CENTROID_NORMS)))
			return false;
		for (long long s0 = 0; s0 < S; s0 += A)
			if (!nearest_centroids(b, d_sample + s0 * b->dim, (int) (S - s0 < A ? S - s0 : A),
								   IBUF(b, CAGRA_GPU_SAMPLE_NEAREST) + s0))
				return false;
		if (!CUDA_OK(b->sink, cudaMemcpy(b->h_nearest, IBUF(b, CAGRA_GPU_SAMPLE_NEAREST),
										 S * sizeof(int), cudaMemcpyDeviceToHost)))
			return false;
		cagra_gpu_group_by_key(b->h_nearest, S, L, b->h_offsets, b->h_members);
		if (!CUDA_OK(b->sink, cudaMemcpy(IBUF(b, CAGRA_GPU_SAMPLE_OFFSETS), b->h_offsets,
										 ((size_t) L + 1) * sizeof(int),
										 cudaMemcpyHostToDevice)) ||
			!CUDA_OK(b->sink, cudaMemcpy(IBUF(b, CAGRA_GPU_SAMPLE_MEMBERS), b->h_members,
										 S * sizeof(int), cudaMemcpyHostToDevice)))
			return false;
		centroid_update_kernel<<<L, CENTROID_THREADS>>>(d_sample, b->dim,
														IBUF(b, CAGRA_GPU_SAMPLE_OFFSETS),
														IBUF(b, CAGRA_GPU_SAMPLE_MEMBERS),
														d_centroids, !l2);
		if (!LAUNCH_OK(b->sink, "centroid_update_kernel"))
			return false;
	}
	return !l2 || row_norms(b, d_centroids, L, FBUF(b, CAGRA_GPU_CENTROID_NORMS));
}

/*
 * Every row to the list of its nearest centroid (h_offsets, h_members),
 * and every list's probe_pool nearest lists (h_pool, by the partition
 * metric).  Under inner product the CPU ranks a row's probes by x.c
 * instead (probe_metric in cagra_partition.c); these list-level probes
 * still go by distance, unchanged until a GPU can test the change.
 */
static bool
assign_stage(Build *b)
{
	const CagraGpuPlan *pl = &b->plan;
	int			L = (int) pl->n_lists;
	int			A = pl->assign_rows;
	int			pool = pl->probe_pool;
	bool		l2 = partition_metric(b) == GNNVEC_CUDA_METRIC_L2;
	float	   *d_centroids;

	if (!stage_enter(b, CAGRA_GPU_STAGE_ASSIGN) ||
		!host_alloc(b, (void **) &b->h_pool, (size_t) L * pool * sizeof(int)))
		return false;
	d_centroids = FBUF(b, CAGRA_GPU_CENTROIDS);
	for (long long a0 = 0; a0 < b->n; a0 += A)
	{
		int			rows = (int) (b->n - a0 < A ? b->n - a0 : A);
		const float *d_x = pl->resident ? FBUF(b, CAGRA_GPU_DATA) + a0 * b->dim :
			FBUF(b, CAGRA_GPU_ASSIGN_ROWS);

		if ((!pl->resident && !upload_rows(b, FBUF(b, CAGRA_GPU_ASSIGN_ROWS), a0, rows)) ||
			!nearest_centroids(b, d_x, rows, IBUF(b, CAGRA_GPU_ASSIGN_NEAREST)) ||
			!CUDA_OK(b->sink, cudaMemcpy(b->h_nearest + a0, IBUF(b, CAGRA_GPU_ASSIGN_NEAREST),
										 rows * sizeof(int), cudaMemcpyDeviceToHost)))
			return false;
	}
	cagra_gpu_group_by_key(b->h_nearest, b->n, L, b->h_offsets, b->h_members);

	/* the centroids' nearest centroids, their own among them */
	for (int c0 = 0; c0 < L; c0 += A)
	{
		int			rows = L - c0 < A ? L - c0 : A;

		if (!fill_tile(b, partition_metric(b), d_centroids + (size_t) c0 * b->dim, rows,
					   d_centroids, L, FBUF(b, CAGRA_GPU_ASSIGN_TILE), L) ||
			!topk_init(b, FBUF(b, CAGRA_GPU_PROBE_DIST), IBUF(b, CAGRA_GPU_PROBE_IDS),
					   (long long) rows * pool))
			return false;
		topk_tile_kernel<<<rows, TOPK_THREADS>>>(FBUF(b, CAGRA_GPU_ASSIGN_TILE), L,
												 l2 ? FBUF(b, CAGRA_GPU_CENTROID_NORMS) : NULL,
												 NULL, 0, L, NULL, c0, false, pool,
												 FBUF(b, CAGRA_GPU_PROBE_DIST),
												 IBUF(b, CAGRA_GPU_PROBE_IDS));
		if (!LAUNCH_OK(b->sink, "topk_tile_kernel") ||
			!CUDA_OK(b->sink, cudaMemcpy(b->h_pool + (size_t) c0 * pool,
										 IBUF(b, CAGRA_GPU_PROBE_IDS),
										 (size_t) rows * pool * sizeof(int),
										 cudaMemcpyDeviceToHost)))
			return false;
	}
	return true;
}

/*
 * The rows of list l, Q at a time, against its candidate rows, P at a
 * time: one GEMM tile per pair, whose values are offered to the rows'
 * top-I lists (merged across tiles, so across probed lists), ranked by the
 * GEMM's values as the CPU's partitioned search ranks them.
 */
static bool
search_list(Build *b, int l, GnnvecCudaCagraStats *stats)
{
	const CagraGpuPlan *pl = &b->plan;
	int			I = b->p.intermediate_degree;
	int			size = b->h_offsets[l + 1] - b->h_offsets[l];
	const int  *queries = b->h_members + b->h_offsets[l];
	bool		l2 = b->p.metric == GNNVEC_CUDA_METRIC_L2;
	int			n_cands;
	int		   *d_qids = IBUF(b, CAGRA_GPU_LIST_QUERY_IDS);
	int		   *d_cids = IBUF(b, CAGRA_GPU_LIST_CAND_IDS);
	float	   *d_q = FBUF(b, CAGRA_GPU_LIST_QUERIES);
	float	   *d_c = FBUF(b, CAGRA_GPU_LIST_CANDS);
	float	   *d_cn = FBUF(b, CAGRA_GPU_LIST_CAND_NORMS);

	if (size == 0)
		return true;

	/*
	 * Its own rows, then its probed lists' (a short list takes more, so
	 * that its rows find I others: cagra_gpu_list_candidates).
	 */
	n_cands = (int) cagra_gpu_list_candidates(b->h_offsets, b->h_members, pl->n_lists, l,
											  b->h_pool + (size_t) l * pl->probe_pool,
											  pl->probe_pool, pl->probes,
											  b->p.intermediate_degree + 1,
											  b->h_stamp, b->h_cands);
	for (int q0 = 0; q0 < size; q0 += pl->list_queries)
	{
		int			qn = size - q0 < pl->list_queries ? size - q0 : pl->list_queries;

		if (!CUDA_OK(b->sink, cudaMemcpy(d_qids, queries + q0, qn * sizeof(int),
										 cudaMemcpyHostToDevice)) ||
			!load_rows(b, queries + q0, d_qids, qn, d_q) ||
			!topk_init(b, FBUF(b, CAGRA_GPU_LIST_TOP_DIST), IBUF(b, CAGRA_GPU_LIST_TOP_IDS),
					   (long long) qn * I))
			return false;
		for (int c0 = 0; c0 < n_cands; c0 += pl->list_candidates)
		{
			int			cn = n_cands - c0 < pl->list_candidates ?
				n_cands - c0 : pl->list_candidates;

			if (!CUDA_OK(b->sink, cudaMemcpy(d_cids, b->h_cands + c0, cn * sizeof(int),
											 cudaMemcpyHostToDevice)) ||
				!load_rows(b, b->h_cands + c0, d_cids, cn, d_c) ||
				(l2 && !row_norms(b, d_c, cn, d_cn)) ||
				!fill_tile(b, b->p.metric, d_q, qn, d_c, cn,
						   FBUF(b, CAGRA_GPU_LIST_TILE), pl->list_candidates))
				return false;
			topk_tile_kernel<<<qn, TOPK_THREADS>>>(FBUF(b, CAGRA_GPU_LIST_TILE),
												   pl->list_candidates, l2 ? d_cn : NULL,
												   d_cids, 0, cn, d_qids, 0, true, I,
												   FBUF(b, CAGRA_GPU_LIST_TOP_DIST),
												   IBUF(b, CAGRA_GPU_LIST_TOP_IDS));
			if (!LAUNCH_OK(b->sink, "topk_tile_kernel"))
				return false;
		}
		scatter_top_kernel<<<grid_for((long long) qn * I, 256), 256>>>(IBUF(b, CAGRA_GPU_LIST_TOP_IDS),
																	   qn, I, d_qids,
																	   IBUF(b, CAGRA_GPU_KNN_GRAPH));
		if (!LAUNCH_OK(b->sink, "scatter_top_kernel"))
			return false;
		stats->row_blocks++;
	}
	return true;
}

/*
 * The partitioned kNN: the inverted-file search of Jegou et al. (IEEE
 * TPAMI 2011) applied to the data itself, with one set of probed lists per
 * list, as src/cagra/cagra_partition.c does on the CPU; CAGRA's pruning
 * tolerates a kNN graph that misses a few true neighbours (Ootomo et al.,
 * ICDE 2024, sec. IV), and cuVS builds its intermediate graph
 * approximately too (IVF-PQ or NN-descent).
 */
static bool
partitioned_knn_stage(Build *b, GnnvecCudaCagraStats *stats)
{
	const CagraGpuPlan *pl = &b->plan;
	int			widest = pl->assign_rows;

	if (pl->list_queries > widest)
		widest = pl->list_queries;
	if (pl->list_candidates > widest)
		widest = pl->list_candidates;
	if (!host_alloc(b, (void **) &b->h_rows, (size_t) widest * b->dim * sizeof(float)) ||
		!kmeans_stage(b) || !assign_stage(b) ||
		!stage_enter(b, CAGRA_GPU_STAGE_LIST_SEARCH) ||
		!host_alloc(b, (void **) &b->h_cands, (size_t) b->n * sizeof(int)) ||
		!host_alloc(b, (void **) &b->h_stamp, (size_t) pl->n_lists * sizeof(int)))
		return false;
	/* the resident data set was prepared by the k-means stage */
	memset(b->h_stamp, 0, (size_t) pl->n_lists * sizeof(int));
	for (int l = 0; l < pl->n_lists; l++)
		if (!search_list(b, l, stats))
			return false;
	return CUDA_OK(b->sink, cudaDeviceSynchronize());
}

/* ---------------------------------------------------------------------- */
/* Stages 2 and 3 */

static bool
prune_stage(Build *b)
{
	if (!stage_enter(b, CAGRA_GPU_STAGE_PRUNE))
		return false;
	prune_kernel<<<(unsigned) b->n, PRUNE_THREADS>>>(IBUF(b, CAGRA_GPU_KNN_GRAPH),
													 b->p.intermediate_degree,
													 b->p.graph_degree, b->p.detour,
													 IBUF(b, CAGRA_GPU_PRUNED));
	return LAUNCH_OK(b->sink, "prune_kernel") &&
		CUDA_OK(b->sink, cudaDeviceSynchronize());
}

/* Bits of a destination key (0 .. n, n meaning none). */
static int
radix_end_bit(long long n)
{
	int			end_bit = 1;

	while (end_bit < 31 && (1LL << end_bit) <= n)
		end_bit++;
	return end_bit;
}

/* CUB's scratch for the stable sort of the n x d reverse edges, for the plan. */
static bool
sort_scratch_bytes(Build *b, size_t *bytes)
{
	*bytes = 0;
	if (!CUDA_OK(b->sink, cub::DeviceRadixSort::SortPairs(NULL, *bytes, (int *) NULL,
														  (int *) NULL, (int *) NULL,
														  (int *) NULL,
														  (int) (b->n * b->p.graph_degree),
														  0, radix_end_bit(b->n))))
		return false;
	/* never 0: a NULL scratch would make the sort a size query again */
	if (*bytes == 0)
		*bytes = 256;
	return true;
}

/* Stage 3 into the host array graph. */
static bool
reverse_stage(Build *b, int32_t *graph)
{
	int			n = (int) b->n;
	int			d = b->p.graph_degree;
	long long	n_edges = (long long) n * d;
	size_t		temp_bytes = b->pin.sort_scratch_bytes;
	int		   *keys,
			   *keys_sorted,
			   *sources,
			   *sources_sorted;

	if (!stage_enter(b, CAGRA_GPU_STAGE_REVERSE))
		return false;
	keys = IBUF(b, CAGRA_GPU_EDGE_KEYS);
	keys_sorted = IBUF(b, CAGRA_GPU_EDGE_KEYS_SORTED);
	sources = IBUF(b, CAGRA_GPU_EDGE_SOURCES);
	sources_sorted = IBUF(b, CAGRA_GPU_EDGE_SOURCES_SORTED);
	reverse_edges_kernel<<<grid_for(n_edges, 256), 256>>>(IBUF(b, CAGRA_GPU_PRUNED), n, d,
														  keys, sources);
	if (!LAUNCH_OK(b->sink, "reverse_edges_kernel") ||
		!CUDA_OK(b->sink, cub::DeviceRadixSort::SortPairs(b->buf[CAGRA_GPU_SORT_SCRATCH],
														  temp_bytes, keys, keys_sorted,
														  sources, sources_sorted,
														  (int) n_edges, 0,
														  radix_end_bit(n))))
		return false;
	merge_reverse_kernel<<<grid_for(n, 256), 256>>>(IBUF(b, CAGRA_GPU_PRUNED), n, d,
													keys_sorted, sources_sorted,
													IBUF(b, CAGRA_GPU_FINAL_GRAPH));
	return LAUNCH_OK(b->sink, "merge_reverse_kernel") &&
		CUDA_OK(b->sink, cudaMemcpy(graph, IBUF(b, CAGRA_GPU_FINAL_GRAPH),
									n_edges * sizeof(int32_t), cudaMemcpyDeviceToHost));
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
	if (p->knn_method != GNNVEC_CUDA_KNN_EXACT &&
		(p->knn_method != GNNVEC_CUDA_KNN_PARTITIONED || p->list_rows < 2 ||
		 p->list_probes < 1 ||
		 p->list_probes > GNNVEC_CUDA_MAX_CANDIDATES - CAGRA_GPU_PROBE_EXTRA))
		return set_error(sink, GNNVEC_CUDA_ERR_PARAM,
						 "invalid kNN method %d: list_rows %d must be at least 2, list_probes %d in 1..%d",
						 p->knn_method, p->list_rows, p->list_probes,
						 GNNVEC_CUDA_MAX_CANDIDATES - CAGRA_GPU_PROBE_EXTRA);
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

/* 90% of the free memory (after the context and cuBLAS handle), or less if asked. */
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

/* The plan for this build (cagra_gpu_plan.c), CUB's scratch included. */
static bool
make_plan(Build *b, size_t budget)
{
	char		msg[256];

	memset(&b->pin, 0, sizeof(b->pin));
	b->pin.n = b->n;
	b->pin.dim = b->dim;
	b->pin.intermediate_degree = b->p.intermediate_degree;
	b->pin.graph_degree = b->p.graph_degree;
	b->pin.knn_candidates = b->p.knn_candidates;
	b->pin.partitioned = b->p.knn_method == GNNVEC_CUDA_KNN_PARTITIONED;
	b->pin.list_rows = b->p.list_rows;
	b->pin.probes = b->p.list_probes;
	b->pin.budget = budget;
	b->pin.stream = b->p.stream_data != 0;
	if (!sort_scratch_bytes(b, &b->pin.sort_scratch_bytes))
		return false;
	if (!cagra_gpu_plan(&b->pin, &b->plan, msg, sizeof(msg)))
		return fail(b->sink, GNNVEC_CUDA_ERR_NOMEM, "%s", msg);
	b->partitioned = b->plan.n_lists > 1;
	return true;
}

static void
run_build(Build *b, int32_t *knn, int32_t *graph, GnnvecCudaCagraStats *stats)
{
	size_t		budget;
	double		t = now_seconds();

	/* context creation, the first CUDA call's cost, is reported apart */
	if (!select_device(b->p.device, b->sink) ||
		!cublas_ok(b->sink, cublasCreate(&b->blas), "cublasCreate"))
		return;
	b->blas_ready = true;
	if (!cublas_ok(b->sink, cublasSetMathMode(b->blas, CUBLAS_DEFAULT_MATH),
				   "cublasSetMathMode") ||
		!memory_budget(&b->p, b->sink, &budget) || !make_plan(b, budget))
		return;
	stats->data_resident = b->plan.resident;
	stats->n_lists = b->plan.n_lists;
	stats->planned_bytes = (int64_t) b->plan.peak_bytes;
	stats->budget_bytes = (int64_t) budget;

	/* our workspace for cuBLAS, so that the plan counts it */
	if (!stage_enter(b, b->partitioned ? CAGRA_GPU_STAGE_KMEANS : CAGRA_GPU_STAGE_EXACT_KNN) ||
		!cublas_ok(b->sink, cublasSetWorkspace(b->blas, b->buf[CAGRA_GPU_BLAS_WORKSPACE],
											   CAGRA_GPU_BLAS_WORKSPACE_BYTES),
				   "cublasSetWorkspace"))
		return;
	stats->setup_seconds = now_seconds() - t;

	t = now_seconds();
	if (!(b->partitioned ? partitioned_knn_stage(b, stats) : exact_knn_stage(b, stats)))
		return;
	if (knn != NULL &&
		!CUDA_OK(b->sink, cudaMemcpy(knn, IBUF(b, CAGRA_GPU_KNN_GRAPH),
									 (size_t) b->n * b->p.intermediate_degree * sizeof(int32_t),
									 cudaMemcpyDeviceToHost)))
		return;
	stats->knn_seconds = now_seconds() - t;

	t = now_seconds();
	if (!prune_stage(b))
		return;
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
