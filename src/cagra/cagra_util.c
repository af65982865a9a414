/*
 * cagra_util.c
 *		Parameters, errors, distances, the entry node, timing and the
 *		thread pool shared by the CAGRA stages.
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "cagra/cagra.h"
#include "vector/distance.h"

CagraStatus
cagra_error(CagraStatus status, char *errbuf, size_t errlen,
			const char *fmt,...)
{
	va_list		ap;

	if (errbuf != NULL && errlen > 0)
	{
		va_start(ap, fmt);
		vsnprintf(errbuf, errlen, fmt, ap);
		va_end(ap);
	}
	return status;
}

CagraStatus
cagra_graph_check(const int32_t *graph, int64_t n, int degree,
				  const char *name, char *errbuf, size_t errlen)
{
	for (int64_t i = 0; i < n * degree; i++)
		if (graph[i] < -1 || graph[i] >= n)
			return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
							   "%s row %lld holds node %d, not in 0..%lld",
							   name, (long long) (i / degree), (int) graph[i],
							   (long long) n - 1);
	return CAGRA_OK;
}

void
cagra_kernels_ready(void)
{
	/* vec_kernels is all NULL until someone picks the kernels */
	if (vec_kernels.l2_squared == NULL)
		vec_distance_init(VEC_ISA_AVX512);
}

void
cagra_params_default(CagraParams *params, int m)
{
	params->metric = CAGRA_METRIC_L2;
	params->knn_method = CAGRA_KNN_EXACT;
	params->list_rows = 0;
	params->list_probes = 0;
	params->refine_iterations = CAGRA_REFINE_ITERATIONS;
	params->intermediate_degree = 3 * m;
	params->graph_degree = 2 * m;
	params->detour = CAGRA_DETOUR_ANY_RANK;
	params->pruning = CAGRA_PRUNE_AUTO;
	params->guarantee_connectivity = false;
	params->entry = -1;
	params->n_threads = 0;
	params->interrupt.check = NULL;
	params->interrupt.arg = NULL;
}

CagraStatus
cagra_params_check(const CagraParams *params, int64_t n, int dim,
				   char *errbuf, size_t errlen)
{
	int			I = params->intermediate_degree;
	int			d = params->graph_degree;

	if (n < 2 || n > INT32_MAX)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "number of rows %lld is out of range 2..%d",
						   (long long) n, INT32_MAX);
	if (dim < 1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "dimension %d must be at least 1", dim);
	if ((unsigned) params->metric > CAGRA_METRIC_L1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "unknown metric %d", (int) params->metric);
	if ((unsigned) params->knn_method > CAGRA_KNN_PARTITIONED)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "unknown kNN method %d", (int) params->knn_method);
	if (params->list_rows < 0 || params->list_rows == 1 ||
		params->list_probes < 0 || params->refine_iterations < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "list_rows %d must be 0 or at least 2, list_probes %d and refine_iterations %d not negative",
						   params->list_rows, params->list_probes,
						   params->refine_iterations);
	if ((unsigned) params->pruning > CAGRA_PRUNE_DISTANCE)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "unknown pruning %d", (int) params->pruning);
	if ((unsigned) params->detour > CAGRA_DETOUR_RANK_BELOW)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "unknown detour definition %d",
						   (int) params->detour);
	if (d < 1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "graph_degree %d must be at least 1", d);
	if (d > I)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "graph_degree %d must not exceed intermediate_graph_degree %d",
						   d, I);
	if (I > CAGRA_MAX_DEGREE)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "intermediate_graph_degree %d exceeds %d",
						   I, CAGRA_MAX_DEGREE);
	if (I >= n)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "intermediate_graph_degree %d needs more than %d rows, got %lld",
						   I, I, (long long) n);
	if (params->n_threads < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "n_threads %d must not be negative",
						   params->n_threads);
	if (params->entry < -1 || params->entry >= n)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "entry node %d is not a row of %lld",
						   (int) params->entry, (long long) n);
	return CAGRA_OK;
}

float
cagra_distance(CagraMetric metric, const float *a, const float *b, int dim)
{
	float		dot,
				na,
				nb;
	double		cosine;

	switch (metric)
	{
		case CAGRA_METRIC_L2:
			return vec_l2_squared(a, b, dim);
		case CAGRA_METRIC_INNER_PRODUCT:
			return -vec_inner_product(a, b, dim);
		case CAGRA_METRIC_L1:
			return vec_l1_distance(a, b, dim);
		case CAGRA_METRIC_COSINE:
			break;
	}
	vec_kernels.cosine_parts(a, b, dim, &dot, &na, &nb);
	/* a zero vector has no direction: put it at right angles to all */
	if (na == 0.0f || nb == 0.0f)
		return 1.0f;
	cosine = (double) dot / sqrt((double) na * (double) nb);
	if (cosine > 1.0)
		cosine = 1.0;
	if (cosine < -1.0)
		cosine = -1.0;
	return (float) (1.0 - cosine);
}

int32_t
cagra_entry_node(const float *data, int64_t n, int dim, CagraMetric metric)
{
	double	   *sum = calloc(dim, sizeof(double));
	float	   *mean = malloc(dim * sizeof(float));
	CagraMetric closeness;
	int32_t		best = 0;
	float		best_dist = INFINITY;

	/* without memory, any node is a correct (if slower) entry */
	if (sum == NULL || mean == NULL)
	{
		free(sum);
		free(mean);
		return 0;
	}
	cagra_kernels_ready();
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < dim; j++)
			sum[j] += data[i * dim + j];
	for (int j = 0; j < dim; j++)
		mean[j] = (float) (sum[j] / (double) n);

	/* cosine looks at directions only; every other metric at positions */
	closeness = metric == CAGRA_METRIC_COSINE ? CAGRA_METRIC_COSINE : CAGRA_METRIC_L2;
	for (int64_t i = 0; i < n; i++)
	{
		float		dist = cagra_distance(closeness, data + i * dim, mean, dim);

		if (dist < best_dist)
		{
			best_dist = dist;
			best = (int32_t) i;
		}
	}
	free(sum);
	free(mean);
	return best;
}

double
cagra_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

int
cagra_thread_count(int n_threads)
{
	long		cpus;

	if (n_threads > 0)
		return n_threads;
	cpus = sysconf(_SC_NPROCESSORS_ONLN);
	return cpus > 0 ? (int) cpus : 1;
}

/* ---------------------------------------------------------------------- */

typedef struct ParallelJob
{
	CagraRangeFn fn;
	void	   *arg;
	int64_t		n_items;
	int64_t		chunk;
	atomic_int_fast64_t next;	/* first item not yet handed out */
	atomic_int	result;			/* first failure, 0 while none */
	const CagraInterrupt *interrupt;
} ParallelJob;

typedef struct ParallelWorker
{
	ParallelJob *job;
	int			thread_no;
} ParallelWorker;

static bool
parallel_interrupted(const ParallelJob *job, int thread_no)
{
	const CagraInterrupt *interrupt = job->interrupt;

	/* only the caller's thread may run the caller's code */
	return thread_no == 0 && interrupt != NULL && interrupt->check != NULL &&
		interrupt->check(interrupt->arg);
}

/* Take chunks until none is left, some thread has failed, or a stop. */
static void
parallel_run_chunks(ParallelJob *job, int thread_no)
{
	for (;;)
	{
		int64_t		begin;
		int64_t		end;
		int			rc;
		int			none = 0;

		if (atomic_load(&job->result) != 0)
			return;
		if (parallel_interrupted(job, thread_no))
		{
			atomic_compare_exchange_strong(&job->result, &none, CAGRA_ERR_CANCELED);
			return;
		}
		begin = atomic_fetch_add(&job->next, job->chunk);
		if (begin >= job->n_items)
			return;
		end = begin + job->chunk < job->n_items ? begin + job->chunk : job->n_items;
		rc = job->fn(job->arg, thread_no, begin, end);
		if (rc != 0)
		{
			atomic_compare_exchange_strong(&job->result, &none, rc);
			return;
		}
	}
}

static void *
parallel_worker_main(void *arg)
{
	ParallelWorker *worker = arg;

	parallel_run_chunks(worker->job, worker->thread_no);
	return NULL;
}

struct CagraThread
{
	pthread_t	thread;
	void		(*fn) (void *arg);
	void	   *arg;
};

static void *
side_thread_main(void *arg)
{
	CagraThread *t = arg;

	t->fn(t->arg);
	return NULL;
}

CagraThread *
cagra_thread_start(void (*fn) (void *arg), void *arg)
{
	CagraThread *t = malloc(sizeof(CagraThread));
	sigset_t	all_signals;
	sigset_t	caller_signals;
	int			rc;

	if (t == NULL)
		return NULL;
	t->fn = fn;
	t->arg = arg;
	sigfillset(&all_signals);
	pthread_sigmask(SIG_BLOCK, &all_signals, &caller_signals);
	rc = pthread_create(&t->thread, NULL, side_thread_main, t);
	pthread_sigmask(SIG_SETMASK, &caller_signals, NULL);
	if (rc != 0)
	{
		free(t);
		return NULL;
	}
	return t;
}

void
cagra_thread_join(CagraThread *t)
{
	if (t == NULL)
		return;
	pthread_join(t->thread, NULL);
	free(t);
}

int
cagra_parallel_for(int n_threads, int64_t n_items, int64_t chunk,
				   CagraRangeFn fn, void *arg, const CagraInterrupt *interrupt)
{
	ParallelJob job;
	pthread_t  *threads;
	ParallelWorker *workers;
	int			started = 0;
	sigset_t	all_signals;
	sigset_t	caller_signals;

	if (n_threads < 1)
		n_threads = 1;
	if (chunk < 1)
		chunk = 1;
	job.fn = fn;
	job.arg = arg;
	job.n_items = n_items;
	job.chunk = chunk;
	job.interrupt = interrupt;
	atomic_init(&job.next, 0);
	atomic_init(&job.result, 0);

	threads = malloc(n_threads * sizeof(pthread_t));
	workers = malloc(n_threads * sizeof(ParallelWorker));
	if (threads == NULL || workers == NULL)
		n_threads = 1;			/* the caller alone still does the work */

	/* workers inherit the mask: block everything while creating them */
	sigfillset(&all_signals);
	pthread_sigmask(SIG_BLOCK, &all_signals, &caller_signals);
	for (int t = 1; t < n_threads; t++)
	{
		workers[started].job = &job;
		workers[started].thread_no = t;
		if (pthread_create(&threads[started], NULL, parallel_worker_main,
						   &workers[started]) != 0)
			break;
		started++;
	}
	pthread_sigmask(SIG_SETMASK, &caller_signals, NULL);
	parallel_run_chunks(&job, 0);
	for (int t = 0; t < started; t++)
		pthread_join(threads[t], NULL);
	free(threads);
	free(workers);
	return atomic_load(&job.result);
}

/*
 * The rows of a graph in breadth-first order (from row 0, then from the
 * first row not reached, and so on).  A stage that treats every row on
 * its own and reads its neighbours' vectors takes the rows in this order
 * so that consecutive rows, neighbours of one row, find most of those
 * vectors in the cache: at a million rows they are far larger than it.
 */
bool
cagra_locality_order(const int32_t *graph, int64_t n, int width,
					 int32_t *order)
{
	unsigned char *seen = calloc(n, 1);
	int64_t		head = 0,
				tail = 0;

	if (seen == NULL)
		return false;
	for (int64_t start = 0; start < n; start++)
	{
		if (seen[start])
			continue;
		seen[start] = 1;
		order[tail++] = (int32_t) start;
		while (head < tail)
		{
			const int32_t *row = graph + (int64_t) order[head++] * width;

			for (int r = 0; r < width; r++)
				if (row[r] >= 0 && !seen[row[r]])
				{
					seen[row[r]] = 1;
					order[tail++] = row[r];
				}
		}
	}
	free(seen);
	return true;
}
