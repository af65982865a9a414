/*
 * cagra_partition.c
 *		Stage 1 of CAGRA without the O(n^2) cost: the kNN graph from
 *		overlapping partitions.
 *
 * The exact stage compares every pair of rows; its cost grows as n^2 while
 * a row's neighbours all lie in a small region.  Here k-means splits the
 * data into partitions of about partition_rows rows, every row joins the
 * partitions of its `overlap` nearest centroids (so that neighbours across
 * a boundary still meet), the exact kNN (cagra_knn_exact_serial) runs inside
 * every partition, and each row keeps the best k of the lists it got.  The
 * cost falls by about n_partitions / overlap^2.  cuVS builds its
 * intermediate graph approximately too (IVF-PQ or NN-descent); CAGRA's
 * pruning is robust to a kNN graph that misses a few true neighbours
 * (Ootomo et al., ICDE 2024, sec. IV).  bench/bin/cagra_build measures the
 * recall of this stage and of the final graph.
 */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"

#define KMEANS_ITERATIONS 10
#define KMEANS_SAMPLE_PER_CENTROID 32

typedef struct PartCandidate
{
	float		dist;
	int32_t		id;
} PartCandidate;

typedef struct PartitionJob
{
	const float *data;
	int64_t		n;
	int			dim;
	CagraMetric metric;
	int			k;
	int			overlap;
	const CagraInterrupt *interrupt;
	const int32_t *assign;		/* n x overlap partitions, nearest first */
	const int64_t *offsets;		/* partition p: members[offsets[p] ..] */
	const int32_t *members;
	const int32_t *order;		/* partitions, largest first */
	PartCandidate *cand;		/* n x overlap x k, id -1: none */
	int32_t    *knn;
	float	   *dists;
	int64_t    *short_rows;		/* rows left with fewer than k neighbours */
	/* per-thread scratch */
	float	  **vectors;		/* largest partition x dim */
	int32_t   **local_ids;		/* largest partition x k */
	float	  **local_dists;
	PartCandidate **merge_buf;	/* overlap x k */
} PartitionJob;

static int
part_candidate_cmp(const void *a, const void *b)
{
	const PartCandidate *x = a;
	const PartCandidate *y = b;

	if (x->dist != y->dist)
		return x->dist < y->dist ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/* ---------------------------------------------------------------------- */
/* k-means */

static CagraMetric
partition_metric(CagraMetric metric)
{
	/* cosine clusters directions; everything else clusters positions */
	return metric == CAGRA_METRIC_COSINE ? CAGRA_METRIC_COSINE : CAGRA_METRIC_L2;
}

/* New centroids: the means of their sample rows; an empty one stays. */
static void
kmeans_update(const float *sample, int64_t n_sample, int dim,
			  const int32_t *nearest, float *centroids, int n_parts,
			  double *sum, int64_t *count)
{
	memset(sum, 0, (size_t) n_parts * dim * sizeof(double));
	memset(count, 0, n_parts * sizeof(int64_t));
	for (int64_t i = 0; i < n_sample; i++)
	{
		count[nearest[i]]++;
		for (int j = 0; j < dim; j++)
			sum[(int64_t) nearest[i] * dim + j] += sample[i * dim + j];
	}
	for (int p = 0; p < n_parts; p++)
		if (count[p] > 0)
			for (int j = 0; j < dim; j++)
				centroids[(int64_t) p * dim + j] =
					(float) (sum[(int64_t) p * dim + j] / (double) count[p]);
}

/*
 * Lloyd's iterations on an evenly spaced sample, started from evenly spaced
 * rows: deterministic, and a handful of iterations is enough for a
 * partition (not a quantiser).
 */
static CagraStatus
kmeans_train(const float *data, int64_t n, int dim, CagraMetric metric,
			 int n_parts, int n_threads, const CagraInterrupt *interrupt,
			 float *centroids, char *errbuf, size_t errlen)
{
	int64_t		n_sample = (int64_t) n_parts * KMEANS_SAMPLE_PER_CENTROID;
	float	   *sample;
	int32_t    *nearest;
	double	   *sum;
	int64_t    *count;
	CagraStatus status = CAGRA_OK;

	if (n_sample > n)
		n_sample = n;
	sample = malloc((size_t) n_sample * dim * sizeof(float));
	nearest = malloc(n_sample * sizeof(int32_t));
	sum = malloc((size_t) n_parts * dim * sizeof(double));
	count = malloc(n_parts * sizeof(int64_t));
	if (sample == NULL || nearest == NULL || sum == NULL || count == NULL)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for k-means");
	for (int64_t i = 0; status == CAGRA_OK && i < n_sample; i++)
		memcpy(sample + i * dim, data + (i * n / n_sample) * dim, dim * sizeof(float));
	for (int p = 0; status == CAGRA_OK && p < n_parts; p++)
		memcpy(centroids + (int64_t) p * dim,
			   sample + ((int64_t) p * n_sample / n_parts) * dim, dim * sizeof(float));
	for (int it = 0; status == CAGRA_OK && it < KMEANS_ITERATIONS; it++)
	{
		status = cagra_brute_force(centroids, n_parts, sample, n_sample, dim,
								   metric, 1, n_threads, interrupt, nearest,
								   NULL, errbuf, errlen);
		if (status == CAGRA_OK)
			kmeans_update(sample, n_sample, dim, nearest, centroids, n_parts,
						  sum, count);
	}
	free(sample);
	free(nearest);
	free(sum);
	free(count);
	return status;
}

/* ---------------------------------------------------------------------- */
/* Partitions */

typedef struct PartitionSize
{
	int64_t		size;
	int32_t		id;
} PartitionSize;

static int
partition_size_cmp(const void *a, const void *b)
{
	const PartitionSize *x = a;
	const PartitionSize *y = b;

	if (x->size != y->size)
		return x->size > y->size ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/*
 * CSR of the partitions' members, and the partitions largest first (so
 * that the long jobs do not come last).  fill and sizes are scratch of
 * n_parts entries.
 */
static void
partition_members(const int32_t *assign, int64_t n, int overlap, int n_parts,
				  int64_t *offsets, int32_t *members, int32_t *order,
				  int64_t *fill, PartitionSize *sizes)
{
	memset(offsets, 0, (n_parts + 1) * sizeof(int64_t));
	memset(fill, 0, n_parts * sizeof(int64_t));
	for (int64_t i = 0; i < n * overlap; i++)
		offsets[assign[i] + 1]++;
	for (int p = 0; p < n_parts; p++)
		offsets[p + 1] += offsets[p];
	for (int64_t i = 0; i < n * overlap; i++)
	{
		int32_t		p = assign[i];

		members[offsets[p] + fill[p]++] = (int32_t) (i / overlap);
	}
	for (int p = 0; p < n_parts; p++)
	{
		sizes[p].size = offsets[p + 1] - offsets[p];
		sizes[p].id = p;
	}
	qsort(sizes, n_parts, sizeof(PartitionSize), partition_size_cmp);
	for (int p = 0; p < n_parts; p++)
		order[p] = sizes[p].id;
}

/* Which of row's memberships is partition p. */
static int
membership_slot(const PartitionJob *job, int32_t row, int32_t p)
{
	for (int q = 0; q < job->overlap; q++)
		if (job->assign[(int64_t) row * job->overlap + q] == p)
			return q;
	return 0;					/* not reached: row is a member of p */
}

/* The exact kNN inside partitions order[begin .. end). */
static int
partition_knn(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const PartitionJob *job = arg;
	float	   *vectors = job->vectors[thread_no];
	int32_t    *local_ids = job->local_ids[thread_no];
	float	   *local_dists = job->local_dists[thread_no];

	for (int64_t i = begin; i < end; i++)
	{
		int32_t		p = job->order[i];
		const int32_t *mem = job->members + job->offsets[p];
		int64_t		size = job->offsets[p + 1] - job->offsets[p];
		int			kk = size - 1 < job->k ? (int) size - 1 : job->k;

		if (kk < 1)
			continue;
		for (int64_t j = 0; j < size; j++)
			memcpy(vectors + j * job->dim, job->data + (int64_t) mem[j] * job->dim,
				   job->dim * sizeof(float));
		if (cagra_knn_exact_serial(vectors, size, job->dim, job->metric, kk,
								   local_ids, local_dists, NULL, 0) != CAGRA_OK)
			return CAGRA_ERR_NOMEM;
		for (int64_t j = 0; j < size; j++)
		{
			int			slot = membership_slot(job, mem[j], p);
			PartCandidate *out = job->cand +
				((int64_t) mem[j] * job->overlap + slot) * job->k;

			for (int l = 0; l < kk; l++)
			{
				out[l].id = mem[local_ids[j * kk + l]];
				out[l].dist = local_dists[j * kk + l];
			}
		}
	}
	return 0;
}

/* Each row: the best k distinct candidates of its lists. */
static int
partition_merge(void *arg, int thread_no, int64_t begin, int64_t end)
{
	PartitionJob *job = arg;
	PartCandidate *buf = job->merge_buf[thread_no];
	int			k = job->k;

	for (int64_t row = begin; row < end; row++)
	{
		const PartCandidate *cand = job->cand + row * job->overlap * k;
		int			m = 0;
		int			kept = 0;

		for (int i = 0; i < job->overlap * k; i++)
			if (cand[i].id >= 0)
				buf[m++] = cand[i];
		qsort(buf, m, sizeof(PartCandidate), part_candidate_cmp);
		for (int i = 0; i < m && kept < k; i++)
		{
			/* the same pair has the same distance: duplicates are adjacent */
			if (kept > 0 && job->knn[row * k + kept - 1] == buf[i].id)
				continue;
			job->knn[row * k + kept] = buf[i].id;
			if (job->dists)
				job->dists[row * k + kept] = buf[i].dist;
			kept++;
		}
		for (int i = kept; i < k; i++)
			job->knn[row * k + i] = -1;
	}
	return 0;
}

/*
 * Rows left short of k neighbours (their partitions were tiny): an exact
 * search over all rows, k + 1 deep so that the row itself can be dropped.
 */
static CagraStatus
partition_fill_short(PartitionJob *job, int n_threads, char *errbuf, size_t errlen)
{
	int64_t		n_short = 0;
	int			k = job->k;
	float	   *queries;
	int32_t    *ids;
	float	   *dists;
	CagraStatus status;

	for (int64_t row = 0; row < job->n; row++)
		if (job->knn[row * k + k - 1] < 0)
			job->short_rows[n_short++] = row;
	if (n_short == 0)
		return CAGRA_OK;
	queries = malloc((size_t) n_short * job->dim * sizeof(float));
	ids = malloc((size_t) n_short * (k + 1) * sizeof(int32_t));
	dists = malloc((size_t) n_short * (k + 1) * sizeof(float));
	if (queries == NULL || ids == NULL || dists == NULL)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for %lld short rows", (long long) n_short);
	else
	{
		for (int64_t s = 0; s < n_short; s++)
			memcpy(queries + s * job->dim, job->data + job->short_rows[s] * job->dim,
				   job->dim * sizeof(float));
		status = cagra_brute_force(job->data, job->n, queries, n_short, job->dim,
								   job->metric, k + 1, n_threads, job->interrupt,
								   ids, dists, errbuf, errlen);
	}
	for (int64_t s = 0; status == CAGRA_OK && s < n_short; s++)
	{
		int64_t		row = job->short_rows[s];
		int			kept = 0;

		for (int j = 0; j <= k && kept < k; j++)
		{
			if (ids[s * (k + 1) + j] == row)
				continue;
			job->knn[row * k + kept] = ids[s * (k + 1) + j];
			if (job->dists)
				job->dists[row * k + kept] = dists[s * (k + 1) + j];
			kept++;
		}
	}
	free(queries);
	free(ids);
	free(dists);
	return status;
}

/* ---------------------------------------------------------------------- */

static void
partition_free_scratch(PartitionJob *job, int n_threads)
{
	for (int t = 0; t < n_threads; t++)
	{
		if (job->vectors)
			free(job->vectors[t]);
		if (job->local_ids)
			free(job->local_ids[t]);
		if (job->local_dists)
			free(job->local_dists[t]);
		if (job->merge_buf)
			free(job->merge_buf[t]);
	}
	free(job->vectors);
	free(job->local_ids);
	free(job->local_dists);
	free(job->merge_buf);
}

static bool
partition_alloc_scratch(PartitionJob *job, int n_threads, int64_t largest)
{
	job->vectors = calloc(n_threads, sizeof(float *));
	job->local_ids = calloc(n_threads, sizeof(int32_t *));
	job->local_dists = calloc(n_threads, sizeof(float *));
	job->merge_buf = calloc(n_threads, sizeof(PartCandidate *));
	if (!job->vectors || !job->local_ids || !job->local_dists || !job->merge_buf)
		return false;
	for (int t = 0; t < n_threads; t++)
	{
		job->vectors[t] = malloc((size_t) largest * job->dim * sizeof(float));
		job->local_ids[t] = malloc((size_t) largest * job->k * sizeof(int32_t));
		job->local_dists[t] = malloc((size_t) largest * job->k * sizeof(float));
		job->merge_buf[t] = malloc((size_t) job->overlap * job->k * sizeof(PartCandidate));
		if (!job->vectors[t] || !job->local_ids[t] || !job->local_dists[t] ||
			!job->merge_buf[t])
			return false;
	}
	return true;
}

static int64_t
largest_partition(const int64_t *offsets, int n_parts)
{
	int64_t		largest = 1;

	for (int p = 0; p < n_parts; p++)
		if (offsets[p + 1] - offsets[p] > largest)
			largest = offsets[p + 1] - offsets[p];
	return largest;
}

/* Partition, join within partitions, merge: all allocations made here. */
static CagraStatus
partitioned_run(PartitionJob *job, int n_parts, int n_threads,
				char *errbuf, size_t errlen)
{
	CagraMetric pmetric = partition_metric(job->metric);
	float	   *centroids = malloc((size_t) n_parts * job->dim * sizeof(float));
	int32_t    *assign = malloc((size_t) job->n * job->overlap * sizeof(int32_t));
	int64_t    *offsets = malloc((n_parts + 1) * sizeof(int64_t));
	int32_t    *members = malloc((size_t) job->n * job->overlap * sizeof(int32_t));
	int32_t    *order = malloc(n_parts * sizeof(int32_t));
	int64_t    *fill = malloc(n_parts * sizeof(int64_t));
	PartitionSize *sizes = malloc(n_parts * sizeof(PartitionSize));
	CagraStatus status = CAGRA_OK;

	job->cand = malloc((size_t) job->n * job->overlap * job->k * sizeof(PartCandidate));
	job->short_rows = malloc(job->n * sizeof(int64_t));
	if (!centroids || !assign || !offsets || !members || !order || !fill ||
		!sizes || !job->cand || !job->short_rows)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for %d partitions of %lld rows",
							 n_parts, (long long) job->n);
	if (status == CAGRA_OK)
		status = kmeans_train(job->data, job->n, job->dim, pmetric, n_parts,
							  n_threads, job->interrupt, centroids,
							  errbuf, errlen);
	if (status == CAGRA_OK)
		status = cagra_brute_force(centroids, n_parts, job->data, job->n, job->dim,
								   pmetric, job->overlap, n_threads,
								   job->interrupt, assign, NULL, errbuf, errlen);
	if (status == CAGRA_OK)
	{
		partition_members(assign, job->n, job->overlap, n_parts, offsets,
						  members, order, fill, sizes);
		job->assign = assign;
		job->offsets = offsets;
		job->members = members;
		job->order = order;
		for (int64_t i = 0; i < job->n * job->overlap * job->k; i++)
			job->cand[i].id = -1;
		if (!partition_alloc_scratch(job, n_threads, largest_partition(offsets, n_parts)))
			status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
								 "out of memory for partition scratch");
	}
	if (status == CAGRA_OK)
	{
		int			blas_threads = openblas_get_num_threads();
		int			rc;

		openblas_set_num_threads(1);
		rc = cagra_parallel_for(n_threads, n_parts, 1, partition_knn, job,
								job->interrupt);
		openblas_set_num_threads(blas_threads);
		if (rc != 0)
			status = cagra_error((CagraStatus) rc, errbuf, errlen,
								 rc == CAGRA_ERR_CANCELED ? "kNN search canceled" :
								 "out of memory in a partition's kNN");
	}
	if (status == CAGRA_OK &&
		cagra_parallel_for(n_threads, job->n, 4096, partition_merge, job,
						   job->interrupt) == CAGRA_ERR_CANCELED)
		status = cagra_error(CAGRA_ERR_CANCELED, errbuf, errlen,
							 "kNN search canceled");
	if (status == CAGRA_OK)
		status = partition_fill_short(job, n_threads, errbuf, errlen);
	partition_free_scratch(job, n_threads);
	free(centroids);
	free(assign);
	free(offsets);
	free(members);
	free(order);
	free(fill);
	free(sizes);
	free(job->cand);
	free(job->short_rows);
	return status;
}

CagraStatus
cagra_knn_partitioned(const float *data, int64_t n, int dim, CagraMetric metric,
					  int k, int partition_rows, int overlap, int n_threads,
					  const CagraInterrupt *interrupt, int32_t *knn,
					  float *dists, char *errbuf, size_t errlen)
{
	PartitionJob job = {0};
	int64_t		n_parts;

	if (partition_rows == 0)
		partition_rows = 1024;
	if (overlap == 0)
		overlap = 3;
	if (n < 2 || n > INT32_MAX || dim < 1 || k < 1 || k >= n ||
		(unsigned) metric > CAGRA_METRIC_L1 || n_threads < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "invalid partitioned kNN: %lld rows, dimension %d, k %d",
						   (long long) n, dim, k);
	if (partition_rows < 2 || overlap < 1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "partition_rows %d must be at least 2 and overlap %d at least 1",
						   partition_rows, overlap);
	n_parts = (n + partition_rows - 1) / partition_rows;
	if (n_parts <= 1)
		return cagra_knn_exact(data, n, dim, metric, k, n_threads, interrupt,
							   knn, dists, errbuf, errlen);
	cagra_kernels_ready();
	job.data = data;
	job.n = n;
	job.dim = dim;
	job.metric = metric;
	job.k = k;
	job.overlap = overlap < n_parts ? overlap : (int) n_parts;
	job.interrupt = interrupt;
	job.knn = knn;
	job.dists = dists;
	return partitioned_run(&job, (int) n_parts, cagra_thread_count(n_threads),
						   errbuf, errlen);
}
