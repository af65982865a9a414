/*
 * cagra_build.c
 *		Standalone CAGRA graph builder and quality report (no PostgreSQL).
 *
 * Builds the CAGRA graph (Ootomo et al., ICDE 2024) of a raw float32 file
 * (n x dim, row-major) or of generated clustered data, on the CPU or on a
 * GPU through cuda/gnnvec_cuda.so, and prints the time of every stage, the
 * recall of the kNN stage against a direct brute force on sampled rows, and
 * recall@10 of a beam search over the final graph at several ef, for both
 * detour definitions: from the build's single entry node, and from the
 * closest of 256 sampled nodes (what the HNSW upper levels provide).  The
 * GPU/CPU comparison uses the latter.  With --device gpu --compare-cpu it also builds on the
 * CPU and checks that the exact kNN graphs agree (up to distance ties),
 * that the GPU's prune and merge of its own kNN graph equal the CPU's bit
 * for bit, and that the final graphs of the exact kNN search equally well
 * (within 0.5 recall points).  With --knn partitioned the two kNN stages
 * differ in method: the CPU probes each row's nearest lists, the GPU each
 * list's nearest lists, so the CPU's kNN recall is higher for the same
 * probes; both recalls are printed, and --min-knn-recall is the check.
 *
 *	make bench/bin/cagra_build
 *	bench/bin/cagra_build --n 100000 --dim 128 --I 48 --d 32 --threads 2
 *	bench/bin/cagra_build --file x.f32 --n 1000000 --dim 128 --device gpu --compare-cpu
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cagra/cagra.h"
#define HNSW_PURE
#include "hnsw/hnsw.h"
#include "rng/rng.h"
#include "vector/distance.h"

#define RECALL_K 10
#define MAX_EFS 16

typedef struct Options
{
	const char *file;
	const char *dump;			/* write the data set here, then go on */
	int64_t		n;				/* base rows */
	int			dim;
	int			n_queries;		/* held out after the base rows */
	CagraParams params;
	int			detours;		/* bit 0: any rank (cuVS), bit 1: paper */
	CagraPruning prunings[3];	/* index: CAGRA builds, one per pruning */
	int			n_prunings;
	bool		gpu;
	bool		compare_cpu;
	bool		index;			/* compare HNSW- and CAGRA-built index graphs */
	bool		cagra_only;		/* --index without the HNSW-built graph */
	int			m;				/* index: HNSW m */
	int			ef_construction;	/* index: HNSW ef_construction */
	const char *cuda_lib;
	int			gpu_device;
	size_t		gpu_bytes;
	bool		gpu_stream;		/* stream the data even if it fits */
	int			efs[MAX_EFS];
	int			n_efs;
	int			knn_sample;
	uint64_t	seed;
	int64_t		distinct;		/* > 0: base rows repeat this many vectors */
	uint64_t	level_seed;		/* index: the sampled levels, both builds */
	/* GPU assertions (bench/cagra_gpu_check.sh) */
	const char *expect_mode;	/* "resident" or "streamed" */
	double		max_gpu_seconds;	/* kNN + prune + merge, 0: no limit */
	double		min_knn_recall;
} Options;

/* Everything one measurement needs. */
typedef struct Bench
{
	const Options *opt;
	const float *base;
	const float *queries;
	int32_t    *truth;			/* n_queries x RECALL_K */
	int32_t    *sample_rows;	/* rows whose kNN is checked */
	int32_t    *sample_knn;		/* their exact kNN, knn_sample x knn_degree */
} Bench;

static void
die(const char *what, const char *msg)
{
	fprintf(stderr, "cagra_build: %s: %s\n", what, msg);
	exit(1);
}

/* ---------------------------------------------------------------------- */
/* Data */

/*
 * 100 Gaussian clusters of different spreads in a 24-dimensional subspace
 * (fewer if dim is smaller), embedded in dim by a random Gaussian map, plus
 * isotropic noise: real embeddings have low intrinsic dimension and uneven
 * density, which uniform random data has not.
 */
static float *
generate_data(int64_t rows, int dim, uint64_t seed)
{
	int			sub = dim < 24 ? dim : 24;
	int			n_clusters = 100;
	double	   *embed = malloc((size_t) dim * sub * sizeof(double));
	double	   *centres = malloc((size_t) n_clusters * sub * sizeof(double));
	double	   *spread = malloc(n_clusters * sizeof(double));
	double	   *z = malloc(sub * sizeof(double));
	float	   *data = malloc((size_t) rows * dim * sizeof(float));
	uint64_t	state = seed;

	if (!embed || !centres || !spread || !z || !data)
		die("generate", "out of memory");
	for (int i = 0; i < dim * sub; i++)
		embed[i] = splitmix64_normal(&state) / sqrt((double) sub);
	for (int c = 0; c < n_clusters; c++)
	{
		for (int j = 0; j < sub; j++)
			centres[c * sub + j] = splitmix64_normal(&state);
		spread[c] = 0.3 + 0.5 * splitmix64_unit_open(&state);
	}
	for (int64_t i = 0; i < rows; i++)
	{
		int			c = (int) (splitmix64_next(&state) % n_clusters);

		for (int j = 0; j < sub; j++)
			z[j] = centres[c * sub + j] + spread[c] * splitmix64_normal(&state);
		for (int k = 0; k < dim; k++)
		{
			double		x = 0.05 * splitmix64_normal(&state);

			for (int j = 0; j < sub; j++)
				x += embed[k * sub + j] * z[j];
			data[i * dim + k] = (float) x;
		}
	}
	free(embed);
	free(centres);
	free(spread);
	free(z);
	return data;
}

static void
write_data(const char *path, const float *data, int64_t rows, int dim)
{
	FILE	   *f = fopen(path, "wb");

	if (f == NULL)
		die(path, "cannot create");
	if (fwrite(data, sizeof(float), (size_t) rows * dim, f) != (size_t) rows * dim ||
		fclose(f) != 0)
		die(path, "write failed");
}

static float *
read_data(const char *path, int64_t rows, int dim)
{
	FILE	   *f = fopen(path, "rb");
	float	   *data = malloc((size_t) rows * dim * sizeof(float));

	if (f == NULL)
		die(path, "cannot open");
	if (data == NULL)
		die(path, "out of memory");
	if (fread(data, sizeof(float), (size_t) rows * dim, f) != (size_t) rows * dim)
		die(path, "shorter than (n + queries) x dim floats");
	fclose(f);
	return data;
}

/*
 * Heavy duplicates: base row i becomes a copy of row (i * 7919) mod
 * distinct, so that every vector appears about n / distinct times, spread
 * over the ids (the queries stay as they are).
 */
static void
make_duplicates(float *data, int64_t rows, int dim, int64_t distinct)
{
	for (int64_t i = rows - 1; i >= 0; i--)
	{
		int64_t		src = (i * 7919) % distinct;

		if (src != i)
			memcpy(data + i * dim, data + src * dim, sizeof(float) * dim);
	}
}

/* Unit length for cosine, as the index stores the vectors (zero rows stay). */
static void
normalise_rows(float *data, int64_t rows, int dim)
{
	for (int64_t i = 0; i < rows; i++)
	{
		float	   *row = data + i * dim;
		double		norm = 0;

		for (int k = 0; k < dim; k++)
			norm += (double) row[k] * row[k];
		if (norm > 0)
			for (int k = 0; k < dim; k++)
				row[k] = (float) (row[k] / sqrt(norm));
	}
}

/* ---------------------------------------------------------------------- */
/* Quality */

/* Exact kNN of row q by the distance kernels alone (no GEMM). */
static void
direct_knn(const float *base, int64_t n, int dim, CagraMetric metric,
		   int64_t q, int k, int32_t *ids, float *dists)
{
	int			size = 0;

	for (int64_t i = 0; i < n; i++)
	{
		float		d;
		int			pos;

		if (i == q)
			continue;
		d = cagra_distance(metric, base + q * dim, base + i * dim, dim);
		if (size == k && d >= dists[k - 1])
			continue;
		pos = size < k ? size++ : k - 1;
		while (pos > 0 && dists[pos - 1] > d)
		{
			dists[pos] = dists[pos - 1];
			ids[pos] = ids[pos - 1];
			pos--;
		}
		dists[pos] = d;
		ids[pos] = (int32_t) i;
	}
}

static int
overlap(const int32_t *a, int na, const int32_t *b, int nb)
{
	int			hits = 0;

	for (int i = 0; i < na; i++)
		for (int j = 0; j < nb; j++)
			if (a[i] == b[j])
			{
				hits++;
				break;
			}
	return hits;
}

static void
bench_prepare(Bench *b)
{
	const Options *opt = b->opt;
	int			knn_degree = opt->params.intermediate_degree;
	float	   *dists = malloc(knn_degree * sizeof(float));
	char		err[256];
	double		t = cagra_now();

	b->truth = malloc((size_t) opt->n_queries * RECALL_K * sizeof(int32_t));
	if (cagra_brute_force(b->base, opt->n, b->queries, opt->n_queries, opt->dim,
						  opt->params.metric, RECALL_K, opt->params.n_threads,
						  NULL, b->truth, NULL, err, sizeof(err)) != CAGRA_OK)
		die("ground truth", err);
	printf("ground truth: %d queries, brute force %.2f s\n",
		   opt->n_queries, cagra_now() - t);

	t = cagra_now();
	b->sample_rows = malloc(opt->knn_sample * sizeof(int32_t));
	b->sample_knn = malloc((size_t) opt->knn_sample * knn_degree * sizeof(int32_t));
	for (int s = 0; s < opt->knn_sample; s++)
	{
		b->sample_rows[s] = (int32_t) ((opt->n * (2 * s + 1)) / (2 * opt->knn_sample));
		direct_knn(b->base, opt->n, opt->dim, opt->params.metric,
				   b->sample_rows[s], knn_degree, b->sample_knn + (int64_t) s * knn_degree, dists);
	}
	printf("kNN check: %d sampled rows, direct brute force %.2f s\n",
		   opt->knn_sample, cagra_now() - t);
	free(dists);
}

static double
knn_recall(const Bench *b, const int32_t *knn)
{
	int			knn_degree = b->opt->params.intermediate_degree;
	int64_t		hits = 0;

	for (int s = 0; s < b->opt->knn_sample; s++)
		hits += overlap(knn + (int64_t) b->sample_rows[s] * knn_degree, knn_degree,
						b->sample_knn + (int64_t) s * knn_degree, knn_degree);
	return (double) hits / ((double) b->opt->knn_sample * knn_degree);
}

#define ENTRY_SAMPLE 256

/*
 * The entry for a query when the graph is used on its own level: the
 * closest of ENTRY_SAMPLE evenly spaced nodes, a stand-in for the upper
 * levels of the HNSW index, which lead a search into the query's region.
 */
static int32_t
sampled_entry(const Bench *b, const float *query)
{
	const Options *opt = b->opt;
	int32_t		best = 0;
	float		best_dist = INFINITY;

	for (int s = 0; s < ENTRY_SAMPLE; s++)
	{
		int32_t		id = (int32_t) ((int64_t) s * opt->n / ENTRY_SAMPLE);
		float		dist = cagra_distance(opt->params.metric, query,
										  b->base + (int64_t) id * opt->dim, opt->dim);

		if (dist < best_dist)
		{
			best_dist = dist;
			best = id;
		}
	}
	return best;
}

/*
 * recall[e] at efs[e] from the build's single entry, sampled_recall[e]
 * from sampled entries; qps[e] single-threaded queries per second of the
 * latter, entry choice included.
 */
static void
search_quality(const Bench *b, const int32_t *graph, int32_t entry,
			   double *recall, double *sampled_recall, double *qps)
{
	const Options *opt = b->opt;
	int			d = opt->params.graph_degree;
	CagraSearch *search = cagra_search_create(opt->n, opt->efs[opt->n_efs - 1]);
	int32_t		found[RECALL_K];

	if (search == NULL)
		die("search", "out of memory");
	for (int e = 0; e < opt->n_efs; e++)
	{
		int64_t		hits = 0,
					sampled_hits = 0;
		double		t;

		for (int q = 0; q < opt->n_queries; q++)
		{
			const float *query = b->queries + (int64_t) q * opt->dim;
			int			got = cagra_search(search, graph, opt->n, d, b->base,
										   opt->dim, opt->params.metric, query,
										   entry, opt->efs[e], RECALL_K, found,
										   NULL);

			hits += overlap(found, got, b->truth + (int64_t) q * RECALL_K, RECALL_K);
		}
		t = cagra_now();
		for (int q = 0; q < opt->n_queries; q++)
		{
			const float *query = b->queries + (int64_t) q * opt->dim;
			int			got = cagra_search(search, graph, opt->n, d, b->base,
										   opt->dim, opt->params.metric, query,
										   sampled_entry(b, query), opt->efs[e],
										   RECALL_K, found, NULL);

			sampled_hits += overlap(found, got, b->truth + (int64_t) q * RECALL_K,
									RECALL_K);
		}
		qps[e] = opt->n_queries / (cagra_now() - t);
		recall[e] = (double) hits / ((double) opt->n_queries * RECALL_K);
		sampled_recall[e] = (double) sampled_hits / ((double) opt->n_queries * RECALL_K);
	}
	cagra_search_free(search);
}

static void
print_quality(const Bench *b, const char *label, const CagraStats *st,
			  const int32_t *graph, double *recall)
{
	const Options *opt = b->opt;
	double		single[MAX_EFS];
	double		qps[MAX_EFS];

	search_quality(b, graph, st->entry, single, recall, qps);
	printf("%-14s prune %7.3f s  reverse %6.3f s  connect %6.3f s  "
		   "(entry %d, %lld unreachable, %lld repair edges)\n",
		   label, st->prune_seconds, st->reverse_seconds, st->connect_seconds,
		   (int) st->entry, (long long) st->unreachable,
		   (long long) st->repair_edges);
	for (int e = 0; e < opt->n_efs; e++)
		printf("    ef %4d  recall@%d %.4f from the entry, %.4f from the best of %d  %8.0f queries/s\n",
			   opt->efs[e], RECALL_K, single[e], recall[e], ENTRY_SAMPLE, qps[e]);
}

/* ---------------------------------------------------------------------- */
/* Builds */

static const char *
detour_name(int detour)
{
	return detour == CAGRA_DETOUR_ANY_RANK ? "cuvs-any-rank" : "paper-rank";
}

/* Stages 2-4 on the CPU from a kNN graph. */
static void
cpu_finish(const Bench *b, const int32_t *knn, CagraDetour detour,
		   int32_t *graph, CagraStats *st)
{
	const Options *opt = b->opt;
	CagraParams params = opt->params;
	int32_t    *pruned = malloc((size_t) opt->n * params.graph_degree * sizeof(int32_t));
	char		err[256];
	double		t;

	params.detour = detour;
	t = cagra_now();
	if (cagra_prune(knn, opt->n, params.intermediate_degree, params.graph_degree,
					detour, params.n_threads, NULL, pruned,
					err, sizeof(err)) != CAGRA_OK)
		die("prune", err);
	st->prune_seconds = cagra_now() - t;
	t = cagra_now();
	if (cagra_merge_reverse(pruned, opt->n, params.graph_degree, params.n_threads,
							graph, err, sizeof(err)) != CAGRA_OK)
		die("reverse edges", err);
	st->reverse_seconds = cagra_now() - t;
	if (cagra_finish(b->base, opt->n, opt->dim, &params, graph, st,
					 err, sizeof(err)) != CAGRA_OK)
		die("connectivity", err);
	free(pruned);
}

/* What the partitioned kNN measured and chose (nothing for the exact one). */
static void
print_knn_stats(const CagraKnnStats *st)
{
	if (st->n_lists == 0)
		return;
	printf("    %d of %d lists probed (check %.2f s, lists %.2f s); checked rows' "
		   "neighbours within p probes:", st->probes, st->n_lists,
		   st->check_seconds, st->list_seconds);
	for (int p = 1; p < st->n_probe_recall; p++)
		if (p <= 10 || p % 4 == 0 || p == st->n_probe_recall - 1)
			printf(" %d:%.3f", p, st->probe_recall[p]);
	printf("\n    NN-descent %d iterations %.2f s, checked kNN recall %.4f -> %.4f\n",
		   st->refine.iterations, st->refine_seconds, st->refine.recall_before,
		   st->refine.recall_after);
}

static int32_t *
cpu_knn(const Bench *b)
{
	const Options *opt = b->opt;
	int			knn_degree = opt->params.intermediate_degree;
	int32_t    *knn = malloc((size_t) opt->n * knn_degree * sizeof(int32_t));
	char		err[256];
	double		t = cagra_now();

	CagraKnnStats st;
	CagraStatus status;

	status = cagra_knn(b->base, opt->n, opt->dim, &opt->params, knn, &st,
					   err, sizeof(err));
	if (status != CAGRA_OK)
		die("kNN", err);
	printf("cpu kNN        %7.3f s  (%s, %d threads)  kNN recall %.4f\n",
		   cagra_now() - t,
		   opt->params.knn_method == CAGRA_KNN_PARTITIONED ? "partitioned" : "exact",
		   cagra_thread_count(opt->params.n_threads), knn_recall(b, knn));
	print_knn_stats(&st);
	return knn;
}

/* CPU: one kNN graph, then stages 2-4 for each detour definition. */
static void
run_cpu(const Bench *b, int32_t *knn, double recall[2][MAX_EFS])
{
	const Options *opt = b->opt;
	int32_t    *graph = malloc((size_t) opt->n * opt->params.graph_degree * sizeof(int32_t));

	for (int detour = 0; detour <= 1; detour++)
	{
		CagraStats	st = {0};
		char		label[32];

		if (!(opt->detours & (1 << detour)))
			continue;
		cpu_finish(b, knn, (CagraDetour) detour, graph, &st);
		snprintf(label, sizeof(label), "cpu %s", detour_name(detour));
		print_quality(b, label, &st, graph, recall[detour]);
	}
	free(graph);
}

/*
 * Rows of two kNN graphs agree when their ids match, or when the sorted
 * distances of the two lists match within float rounding (ties broken
 * differently by the two devices' rounding).
 */
static void
compare_knn(const Bench *b, const int32_t *gpu_knn, const int32_t *cpu_knn_graph)
{
	const Options *opt = b->opt;
	int			knn_degree = opt->params.intermediate_degree;
	int64_t		same = 0,
				ties = 0,
				differ = 0;

	for (int64_t i = 0; i < opt->n; i++)
	{
		const int32_t *g = gpu_knn + i * knn_degree;
		const int32_t *c = cpu_knn_graph + i * knn_degree;
		bool		tie = true;

		if (memcmp(g, c, knn_degree * sizeof(int32_t)) == 0)
		{
			same++;
			continue;
		}
		for (int j = 0; j < knn_degree && tie; j++)
		{
			float		dg = cagra_distance(opt->params.metric, b->base + i * opt->dim,
											b->base + (int64_t) g[j] * opt->dim, opt->dim);
			float		dc = cagra_distance(opt->params.metric, b->base + i * opt->dim,
											b->base + (int64_t) c[j] * opt->dim, opt->dim);

			tie = fabsf(dg - dc) <= 1e-5f * (fabsf(dc) + 1e-3f);
		}
		if (tie)
			ties++;
		else
			differ++;
	}
	printf("compare kNN: %lld rows identical, %lld differ by ties only, %lld differ: %s\n",
		   (long long) same, (long long) ties, (long long) differ,
		   differ == 0 ? "PASS" : "FAIL");
	if (differ != 0)
		exit(2);
}

/* Print a GPU build's times and kNN recall; exit 3 if it misses a target. */
static void
gpu_report(const Bench *b, const CagraStats *st, const int32_t *knn)
{
	const Options *opt = b->opt;
	const char *mode = st->gpu_data_resident ? "resident" : "streamed";
	double		seconds = st->knn_seconds + st->prune_seconds + st->reverse_seconds;
	double		recall = knn_recall(b, knn);

	printf("gpu setup      %7.3f s  kNN %7.3f s  prune %7.3f s  merge %7.3f s  "
		   "(%s kNN, %lld lists, %lld row blocks, data %s, plan %.1f of %.1f MiB)  "
		   "kNN recall %.4f\n",
		   st->setup_seconds, st->knn_seconds, st->prune_seconds,
		   st->reverse_seconds, st->gpu_lists > 0 ? "partitioned" : "exact",
		   (long long) st->gpu_lists, (long long) st->gpu_row_blocks, mode,
		   st->gpu_planned_bytes / 1048576.0, st->gpu_budget_bytes / 1048576.0,
		   recall);
	if (opt->expect_mode && strcmp(opt->expect_mode, mode) != 0)
	{
		printf("FAIL: the data was %s, expected %s\n", mode, opt->expect_mode);
		exit(3);
	}
	if (opt->max_gpu_seconds > 0 && seconds > opt->max_gpu_seconds)
	{
		printf("FAIL: kNN + prune + merge took %.3f s, limit %.3f s\n",
			   seconds, opt->max_gpu_seconds);
		exit(3);
	}
	if (recall < opt->min_knn_recall)
	{
		printf("FAIL: kNN recall %.4f below %.4f\n", recall, opt->min_knn_recall);
		exit(3);
	}
}

/*
 * Stages 2-4 on the CPU from the GPU's own kNN graph must give the GPU's
 * graph bit for bit: the prune and merge kernels make no choice of their
 * own (ties are broken by rank, then by id, on both).
 */
static void
compare_stages(const Bench *b, const int32_t *gpu_knn, const int32_t *gpu_graph,
			   CagraDetour detour)
{
	const Options *opt = b->opt;
	size_t		bytes = (size_t) opt->n * opt->params.graph_degree * sizeof(int32_t);
	int32_t    *graph = malloc(bytes);
	CagraStats	st = {0};
	int64_t		rows_differ = 0;

	cpu_finish(b, gpu_knn, detour, graph, &st);
	if (memcmp(graph, gpu_graph, bytes) != 0)
		for (int64_t i = 0; i < opt->n; i++)
			rows_differ += memcmp(graph + i * opt->params.graph_degree,
								  gpu_graph + i * opt->params.graph_degree,
								  opt->params.graph_degree * sizeof(int32_t)) != 0;
	printf("compare prune + merge (%s) from the same kNN graph: %lld rows differ: %s\n",
		   detour_name(detour), (long long) rows_differ,
		   rows_differ == 0 ? "PASS" : "FAIL");
	free(graph);
	if (rows_differ != 0)
		exit(2);
}

static void
run_gpu(const Bench *b, double recall[2][MAX_EFS], int32_t *knn)
{
	const Options *opt = b->opt;
	int32_t    *graph = malloc((size_t) opt->n * opt->params.graph_degree * sizeof(int32_t));
	char		err[512];
	char		name[256];
	size_t		total = 0;
	int			count = 0;
	CagraGpu   *gpu = cagra_gpu_open(opt->cuda_lib, err, sizeof(err));

	if (gpu == NULL)
		die("gpu", err);
	if (cagra_gpu_device_count(gpu, &count, err, sizeof(err)) != CAGRA_OK)
		die("gpu", err);
	if (count <= opt->gpu_device)
	{
		snprintf(err, sizeof(err), "no CUDA device %d (%d found)", opt->gpu_device, count);
		die("gpu", err);
	}
	if (cagra_gpu_device_info(gpu, opt->gpu_device, name, sizeof(name), &total,
							  err, sizeof(err)) != CAGRA_OK)
		die("gpu", err);
	printf("gpu: device %d of %d: %s, %.1f GiB\n", opt->gpu_device, count, name,
		   total / 1073741824.0);

	for (int detour = 0; detour <= 1; detour++)
	{
		CagraParams params = opt->params;
		CagraStats	st;
		char		label[32];

		if (!(opt->detours & (1 << detour)))
			continue;
		params.detour = (CagraDetour) detour;
		if (cagra_gpu_build(gpu, opt->gpu_device, opt->gpu_bytes, opt->gpu_stream,
							b->base, opt->n,
							opt->dim, &params, knn, graph, &st,
							err, sizeof(err)) != CAGRA_OK)
			die("gpu build", err);
		gpu_report(b, &st, knn);
		if (opt->compare_cpu)
			compare_stages(b, knn, graph, (CagraDetour) detour);
		snprintf(label, sizeof(label), "gpu %s", detour_name(detour));
		print_quality(b, label, &st, graph, recall[detour]);
	}
	cagra_gpu_close(gpu);
	free(graph);
}

/* ---------------------------------------------------------------------- */
/* Index graphs */

static const char *
pruning_name(CagraPruning pruning)
{
	return pruning == CAGRA_PRUNE_AUTO ? "auto" :
		pruning == CAGRA_PRUNE_DETOUR ? "detour" : "distance";
}

/* --prune: a comma-separated list of auto, detour, distance */
static void
parse_prunings(Options *opt, const char *list)
{
	char		buf[64];
	char	   *save = NULL;

	snprintf(buf, sizeof(buf), "%s", list);
	opt->n_prunings = 0;
	for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save))
	{
		if (opt->n_prunings == 3)
			die("--prune", "at most three prunings");
		if (strcmp(t, "auto") == 0)
			opt->prunings[opt->n_prunings++] = CAGRA_PRUNE_AUTO;
		else if (strcmp(t, "detour") == 0)
			opt->prunings[opt->n_prunings++] = CAGRA_PRUNE_DETOUR;
		else if (strcmp(t, "distance") == 0)
			opt->prunings[opt->n_prunings++] = CAGRA_PRUNE_DISTANCE;
		else
			die("--prune", "expected auto, detour or distance, comma-separated");
	}
	if (opt->n_prunings == 0)
		die("--prune", "expected auto, detour or distance, comma-separated");
}

/*
 * --index: the graphs the index writes, searched as the index searches
 * them (hnsw.h, pure half): HNSW insertion of every row against CAGRA's
 * level 0 under upper levels linked by HNSW insertion, both from the same
 * sampled levels.  Identical vectors share one element of up to
 * INDEX_ROWS_PER_ELEMENT rows, as in the index: the HNSW build merges a
 * row into the element its insertion finds nearest when that holds the
 * same vector and has room (hnsw_graph_insert's dup_ok, as the serial
 * build does), the CAGRA build merges every row into an element of the
 * same vector with room (a hash table, as hnsw_build_add_unlinked does).
 * A search returns an element's rows in row order, as the index's scan
 * returns its heap TIDs, so recall@10 counts the rows a user gets.
 */
#define INDEX_LEVEL_CAP 16
#define INDEX_SEED 0x5DEECE66DULL
#define INDEX_ROWS_PER_ELEMENT 10	/* HNSW_HEAPTIDS */

/* The rows of each element (at most n elements). */
typedef struct IndexRows
{
	int32_t    *rows;			/* n x INDEX_ROWS_PER_ELEMENT */
	uint8_t    *count;			/* n */
	int64_t		n_elements;
	float	   *vectors;		/* the CAGRA build's: n_elements x dim */
} IndexRows;

static void
index_rows_init(IndexRows *r, int64_t n)
{
	r->rows = malloc((size_t) n * INDEX_ROWS_PER_ELEMENT * sizeof(int32_t));
	r->count = calloc(n, 1);
	r->n_elements = 0;
	r->vectors = NULL;
	if (r->rows == NULL || r->count == NULL)
		die("element rows", "out of memory");
}

static void
index_rows_free(IndexRows *r)
{
	free(r->rows);
	free(r->count);
	free(r->vectors);
}

static void
index_rows_add(IndexRows *r, int32_t element, int64_t row)
{
	if (r->count[element] == 0)
		r->n_elements++;
	r->rows[(int64_t) element * INDEX_ROWS_PER_ELEMENT + r->count[element]++] =
		(int32_t) row;
}

static bool
index_element_has_room(void *arg, int32_t element)
{
	const IndexRows *r = arg;

	return r->count[element] < INDEX_ROWS_PER_ELEMENT;
}

/* FNV-1a of a vector's bytes. */
static uint64_t
vector_hash(const float *v, int dim)
{
	const unsigned char *p = (const unsigned char *) v;
	uint64_t	h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < (size_t) dim * sizeof(float); i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

/*
 * The CAGRA build's elements: each row joins an element of the same vector
 * with room, else starts one; elements receives their vectors, in order.
 */
static void
index_merge_identical(const float *base, int64_t n, int dim, IndexRows *rows,
					  float *elements)
{
	uint64_t	size = 1024;
	int32_t    *slots;

	while (size < 2 * (uint64_t) n)
		size *= 2;
	slots = malloc(size * sizeof(int32_t));
	if (slots == NULL)
		die("element table", "out of memory");
	memset(slots, 0xFF, size * sizeof(int32_t));
	for (int64_t i = 0; i < n; i++)
	{
		const float *v = base + i * dim;
		uint64_t	at = vector_hash(v, dim) & (size - 1);
		int32_t		element;

		for (;; at = (at + 1) & (size - 1))
		{
			element = slots[at];
			if (element < 0 ||
				(rows->count[element] < INDEX_ROWS_PER_ELEMENT &&
				 memcmp(elements + (int64_t) element * dim, v, dim * sizeof(float)) == 0))
				break;
		}
		if (element < 0)
		{
			element = (int32_t) rows->n_elements;
			memcpy(elements + (int64_t) element * dim, v, dim * sizeof(float));
			slots[at] = element;
		}
		index_rows_add(rows, element, i);
	}
	free(slots);
}

static void *
index_alloc(void *ctx, size_t size)
{
	void	   *p = malloc(size);

	(void) ctx;
	if (p == NULL)
		die("index graph", "out of memory");
	return p;
}

static void
index_free(void *ctx, void *ptr)
{
	(void) ctx;
	free(ptr);
}

static const HnswAllocator index_allocator = {index_alloc, index_free, NULL};

static HnswGraph *
index_graph_new(const Options *opt)
{
	static const HnswMetric metrics[] = {HNSW_METRIC_L2, HNSW_METRIC_IP,
	HNSW_METRIC_COSINE, HNSW_METRIC_L1};

	return hnsw_graph_create(opt->dim, opt->m, opt->ef_construction,
							 metrics[opt->params.metric], INDEX_LEVEL_CAP,
							 opt->level_seed, &index_allocator);
}

/* CPU seconds of every thread of this process so far. */
static double
cpu_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static HnswGraph *
index_build_hnsw(const Bench *b, IndexRows *rows, double *seconds, double *cpu)
{
	const Options *opt = b->opt;
	HnswGraph  *g = index_graph_new(opt);
	double		t = cagra_now();
	double		c = cpu_seconds();
	int64_t		unreached;
	bool		dup;

	for (int64_t i = 0; i < opt->n; i++)
		index_rows_add(rows,
					   hnsw_graph_insert(g, b->base + i * opt->dim,
										 hnsw_graph_random_level(g),
										 index_element_has_room, rows, &dup),
					   i);
	hnsw_graph_connect(g, &unreached);
	*seconds = cagra_now() - t;
	*cpu = cpu_seconds() - c;
	printf("hnsw index graph: %lld rows unreachable\n", (long long) unreached);
	return g;
}

static void
index_link_upper(void *arg)
{
	hnsw_graph_link_upper((HnswGraph *) arg);
}

/* As cagra_index.c builds it: upper levels on a thread while level 0 is made. */
static HnswGraph *
index_build_cagra(const Bench *b, const CagraParams *params, IndexRows *rows,
				  double *seconds, double *cpu)
{
	const Options *opt = b->opt;
	HnswGraph  *g = index_graph_new(opt);
	int32_t    *graph = malloc((size_t) opt->n * opt->params.graph_degree * sizeof(int32_t));
	int64_t		n;
	CagraThread *upper;
	CagraStats	st;
	char		err[256];
	double		t = cagra_now();
	double		c = cpu_seconds();
	double		t_level0,
				c_graph,
				c_level0;
	int64_t		unreached,
				added,
				connected,
				dropped;

	rows->vectors = malloc((size_t) opt->n * opt->dim * sizeof(float));
	if (rows->vectors == NULL || graph == NULL)
		die("cagra index graph", "out of memory");
	index_merge_identical(b->base, opt->n, opt->dim, rows, rows->vectors);
	n = rows->n_elements;
	for (int64_t i = 0; i < n; i++)
		hnsw_graph_append(g, rows->vectors + i * opt->dim, hnsw_graph_random_level(g));
	hnsw_graph_reserve_search(g);
	upper = cagra_thread_start(index_link_upper, g);
	if (upper == NULL)
		hnsw_graph_link_upper(g);
	if (cagra_build(rows->vectors, n, opt->dim, params, graph, &st,
					err, sizeof(err)) != CAGRA_OK)
		die("cagra build", err);
	cagra_thread_join(upper);
	t_level0 = cagra_now();
	c_graph = cpu_seconds() - c;
	c_level0 = cpu_seconds();
	if (cagra_hnsw_level0(g, graph, opt->params.graph_degree,
						  st.prune.pruning == CAGRA_PRUNE_DISTANCE,
						  opt->params.n_threads, NULL, &dropped, &connected,
						  err, sizeof(err)) != CAGRA_OK)
		die("level 0", err);
	t_level0 = cagra_now() - t_level0;
	c_level0 = cpu_seconds() - c_level0;
	added = connected + hnsw_graph_connect(g, &unreached);
	*seconds = cagra_now() - t;
	*cpu = cpu_seconds() - c;
	printf("cagra index graph: kNN %.3f s, prune %.3f s, merge %.3f s, "
		   "level 0 with long edges %.3f s, %lld reachability edges added, "
		   "%lld rows unreachable\n"
		   "    CPU time: kNN, prune, merge and upper levels %.3f s, "
		   "level 0 with long edges %.3f s\n",
		   st.knn_seconds, st.prune_seconds, st.reverse_seconds, t_level0,
		   (long long) added, (long long) unreached, c_graph, c_level0);
	print_knn_stats(&st.knn);
	printf("pruning %s -> %s: survey of %lld rows: detour share %.4f, heuristic keeps %.2f of %d, "
		   "local intrinsic dimension %.2f; seconds: survey %.3f, detours %.3f, merge %.3f, distance %.3f\n",
		   pruning_name(params->pruning), pruning_name(st.prune.pruning),
		   (long long) st.prune.survey.rows,
		   st.prune.survey.detour_share, st.prune.survey.heuristic_kept,
		   params->intermediate_degree, st.prune.survey.lid,
		   st.prune.survey_seconds, st.prune.detour_seconds,
		   st.prune.merge_seconds, st.prune.distance_seconds);
	free(graph);
	return g;
}

/*
 * recall@RECALL_K of the rows of the elements found, as the scan returns
 * them.  A row counts when it is no farther than the query's RECALL_K-th
 * true neighbour (both by cagra_distance, so copies of a vector tie
 * exactly): among many copies at one distance any RECALL_K are right,
 * while recall by id would want the lowest ids.  Without ties it is recall
 * by id.
 */
static void
index_recall(const Bench *b, HnswGraph *g, const IndexRows *rows, double *recall)
{
	const Options *opt = b->opt;
	int32_t		ids[RECALL_K];
	float		dists[RECALL_K];
	float	   *kth = malloc(opt->n_queries * sizeof(float));

	if (kth == NULL)
		die("recall", "out of memory");
	for (int q = 0; q < opt->n_queries; q++)
	{
		kth[q] = -INFINITY;
		for (int j = 0; j < RECALL_K; j++)
		{
			float		d = cagra_distance(opt->params.metric,
										   b->queries + (int64_t) q * opt->dim,
										   b->base + (int64_t) b->truth[q * RECALL_K + j] * opt->dim,
										   opt->dim);

			if (d > kth[q])
				kth[q] = d;
		}
	}
	for (int e = 0; e < opt->n_efs; e++)
	{
		int64_t		hits = 0;

		for (int q = 0; q < opt->n_queries; q++)
		{
			int			got = hnsw_graph_search(g, b->queries + (int64_t) q * opt->dim,
												RECALL_K, opt->efs[e], ids, dists);
			int			n_rows = 0;

			for (int i = 0; i < got && n_rows < RECALL_K; i++)
				for (int r = 0; r < rows->count[ids[i]] && n_rows < RECALL_K; r++, n_rows++)
				{
					int64_t		row = rows->rows[(int64_t) ids[i] * INDEX_ROWS_PER_ELEMENT + r];

					hits += cagra_distance(opt->params.metric,
										   b->queries + (int64_t) q * opt->dim,
										   b->base + row * opt->dim, opt->dim) <= kth[q];
				}
		}
		recall[e] = (double) hits / ((double) opt->n_queries * RECALL_K);
	}
	free(kth);
}

static void
run_index(const Bench *b)
{
	const Options *opt = b->opt;
	double		hnsw_recall[MAX_EFS],
				cagra_recall[3][MAX_EFS];
	double		hnsw_seconds = 0,
				cagra_seconds[3],
				hnsw_cpu = 0,
				cagra_cpu[3];
	IndexRows	rows;
	int64_t		cagra_elements = opt->n,
				hnsw_elements = opt->n;
	HnswGraph  *g;

	for (int p = 0; p < opt->n_prunings; p++)
	{
		CagraParams params = opt->params;

		params.pruning = opt->prunings[p];
		index_rows_init(&rows, opt->n);
		g = index_build_cagra(b, &params, &rows, &cagra_seconds[p], &cagra_cpu[p]);
		index_recall(b, g, &rows, cagra_recall[p]);
		cagra_elements = rows.n_elements;
		hnsw_graph_free(g);
		index_rows_free(&rows);
	}
	if (!opt->cagra_only)
	{
		index_rows_init(&rows, opt->n);
		g = index_build_hnsw(b, &rows, &hnsw_seconds, &hnsw_cpu);
		index_recall(b, g, &rows, hnsw_recall);
		hnsw_elements = rows.n_elements;
		hnsw_graph_free(g);
		index_rows_free(&rows);
	}
	if (cagra_elements < opt->n || hnsw_elements < opt->n)
		printf("identical vectors merged: %lld rows in %lld elements (cagra), %lld (hnsw)\n",
			   (long long) opt->n, (long long) cagra_elements,
			   (long long) hnsw_elements);
	for (int p = 0; p < opt->n_prunings; p++)
	{
		const char *name = pruning_name(opt->prunings[p]);

		if (opt->cagra_only)
			printf("index build: cagra (%s) %.2f s (%d threads), CPU time %.2f s\n",
				   name, cagra_seconds[p],
				   cagra_thread_count(opt->params.n_threads), cagra_cpu[p]);
		else
			printf("index build: hnsw %.2f s (serial), cagra (%s) %.2f s (%d threads): %.2fx; "
				   "CPU time hnsw %.2f s, cagra %.2f s: %.2fx\n",
				   hnsw_seconds, name, cagra_seconds[p],
				   cagra_thread_count(opt->params.n_threads),
				   cagra_seconds[p] / hnsw_seconds, hnsw_cpu, cagra_cpu[p],
				   cagra_cpu[p] / hnsw_cpu);
		for (int e = 0; e < opt->n_efs; e++)
			if (opt->cagra_only)
				printf("    ef %4d  recall@%d cagra-built (%s) %.4f\n",
					   opt->efs[e], RECALL_K, name, cagra_recall[p][e]);
			else
				printf("    ef %4d  recall@%d hnsw-built %.4f  cagra-built (%s) %.4f  (%+.2f points)\n",
					   opt->efs[e], RECALL_K, hnsw_recall[e], name,
					   cagra_recall[p][e],
					   100.0 * (cagra_recall[p][e] - hnsw_recall[e]));
	}
}

/* ---------------------------------------------------------------------- */

static void
usage(void)
{
	fprintf(stderr,
			"usage: cagra_build [--file PATH] [--n N] [--dim D] [--queries Q]\n"
			"         [--metric l2|ip|cosine|l1] [--I DEGREE] [--d DEGREE]\n"
			"         [--detour cuvs|paper|both] [--connect] [--threads T]\n"
			"         [--knn exact|partitioned] [--list-rows R] [--probes P]\n"
			"         [--refine ITERATIONS]\n"
			"         [--device cpu|gpu] [--compare-cpu] [--cuda-lib PATH]\n"
			"         [--gpu-device N] [--gpu-mem-mb MB] [--gpu-stream]\n"
			"         [--ef 10,20,...]\n"
			"         [--knn-sample S] [--seed S] [--dump PATH]\n"
			"         [--index [--m M] [--ef-construction EF]] [--cagra-only]\n"
			"         [--prune auto|detour|distance[,...]]\n"
			"         [--expect-mode resident|streamed] [--max-gpu-seconds S]\n"
			"         [--min-knn-recall R] [--distinct N] [--level-seed S]\n"
			"The file holds (N + Q) x D float32, row-major; the last Q rows are\n"
			"the queries.  Without --file, clustered data is generated; --dump\n"
			"writes the data set in that format (for reference runs).  --index\n"
			"compares the HNSW-built and CAGRA-built index graphs instead\n"
			"(--cagra-only: the CAGRA-built one alone, for quick trials).  --distinct\n"
			"makes the base rows copies of N vectors (heavy duplicates); --index\n"
			"merges identical rows into elements as the index does, both builds.\n"
			"--level-seed draws other sampled levels for both builds: at ef 10\n"
			"a few queries more or fewer find their cluster (docs/cagra.md).\n");
	exit(1);
}

static void
parse_efs(Options *opt, const char *list)
{
	char	   *copy = strdup(list);

	opt->n_efs = 0;
	for (char *tok = strtok(copy, ","); tok && opt->n_efs < MAX_EFS; tok = strtok(NULL, ","))
		opt->efs[opt->n_efs++] = atoi(tok);
	free(copy);
	for (int e = 0; e < opt->n_efs; e++)
		if (opt->efs[e] < RECALL_K || (e > 0 && opt->efs[e] < opt->efs[e - 1]))
			die("--ef", "values must be increasing and at least 10");
	if (opt->n_efs == 0)
		usage();
}

static CagraMetric
parse_metric(const char *s)
{
	if (strcmp(s, "l2") == 0)
		return CAGRA_METRIC_L2;
	if (strcmp(s, "ip") == 0)
		return CAGRA_METRIC_INNER_PRODUCT;
	if (strcmp(s, "cosine") == 0)
		return CAGRA_METRIC_COSINE;
	if (strcmp(s, "l1") == 0)
		return CAGRA_METRIC_L1;
	die("--metric", "expected l2, ip, cosine or l1");
	return CAGRA_METRIC_L2;
}

static void
parse_args(Options *opt, int argc, char **argv)
{
	cagra_params_default(&opt->params, 16);
	opt->n = 100000;
	opt->dim = 128;
	opt->n_queries = 1000;
	opt->detours = 3;
	opt->prunings[0] = CAGRA_PRUNE_AUTO;
	opt->n_prunings = 1;
	opt->cuda_lib = "cuda/gnnvec_cuda.so";
	opt->knn_sample = 200;
	opt->seed = 42;
	opt->level_seed = INDEX_SEED;
	opt->m = 16;
	opt->ef_construction = 64;
	parse_efs(opt, "10,20,40,80,160");
	for (int i = 1; i < argc; i++)
	{
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(a, "--connect") == 0)
		{
			opt->params.guarantee_connectivity = true;
			continue;
		}
		if (strcmp(a, "--gpu-stream") == 0)
		{
			opt->gpu_stream = true;
			continue;
		}
		if (strcmp(a, "--compare-cpu") == 0)
		{
			opt->compare_cpu = true;
			continue;
		}
		if (strcmp(a, "--cagra-only") == 0)
		{
			opt->index = true;
			opt->cagra_only = true;
			continue;
		}
		if (strcmp(a, "--index") == 0)
		{
			opt->index = true;
			continue;
		}
		if (v == NULL)
			usage();
		else if (strcmp(a, "--file") == 0)
			opt->file = v;
		else if (strcmp(a, "--dump") == 0)
			opt->dump = v;
		else if (strcmp(a, "--n") == 0)
			opt->n = atoll(v);
		else if (strcmp(a, "--dim") == 0)
			opt->dim = atoi(v);
		else if (strcmp(a, "--queries") == 0)
			opt->n_queries = atoi(v);
		else if (strcmp(a, "--metric") == 0)
			opt->params.metric = parse_metric(v);
		else if (strcmp(a, "--I") == 0)
			opt->params.intermediate_degree = atoi(v);
		else if (strcmp(a, "--d") == 0)
			opt->params.graph_degree = atoi(v);
		else if (strcmp(a, "--knn") == 0)
			opt->params.knn_method = strcmp(v, "partitioned") == 0 ?
				CAGRA_KNN_PARTITIONED : CAGRA_KNN_EXACT;
		else if (strcmp(a, "--list-rows") == 0)
			opt->params.list_rows = atoi(v);
		else if (strcmp(a, "--probes") == 0)
			opt->params.list_probes = atoi(v);
		else if (strcmp(a, "--refine") == 0)
			opt->params.refine_iterations = atoi(v);
		else if (strcmp(a, "--threads") == 0)
			opt->params.n_threads = atoi(v);
		else if (strcmp(a, "--prune") == 0)
			parse_prunings(opt, v);
		else if (strcmp(a, "--detour") == 0)
			opt->detours = strcmp(v, "cuvs") == 0 ? 1 : strcmp(v, "paper") == 0 ? 2 : 3;
		else if (strcmp(a, "--device") == 0)
			opt->gpu = strcmp(v, "gpu") == 0;
		else if (strcmp(a, "--cuda-lib") == 0)
			opt->cuda_lib = v;
		else if (strcmp(a, "--gpu-device") == 0)
			opt->gpu_device = atoi(v);
		else if (strcmp(a, "--gpu-mem-mb") == 0)
			opt->gpu_bytes = (size_t) atoll(v) << 20;
		else if (strcmp(a, "--ef") == 0)
			parse_efs(opt, v);
		else if (strcmp(a, "--knn-sample") == 0)
			opt->knn_sample = atoi(v);
		else if (strcmp(a, "--distinct") == 0)
			opt->distinct = atoll(v);
		else if (strcmp(a, "--level-seed") == 0)
			opt->level_seed = strtoull(v, NULL, 0);
		else if (strcmp(a, "--expect-mode") == 0)
			opt->expect_mode = v;
		else if (strcmp(a, "--max-gpu-seconds") == 0)
			opt->max_gpu_seconds = atof(v);
		else if (strcmp(a, "--min-knn-recall") == 0)
			opt->min_knn_recall = atof(v);
		else if (strcmp(a, "--m") == 0)
			opt->m = atoi(v);
		else if (strcmp(a, "--ef-construction") == 0)
			opt->ef_construction = atoi(v);
		else if (strcmp(a, "--seed") == 0)
			opt->seed = strtoull(v, NULL, 10);
		else
			usage();
		i++;					/* the value */
	}
	if (opt->n_queries < 1 || opt->knn_sample < 1 || opt->knn_sample > opt->n)
		die("arguments", "need at least one query and 1 <= knn-sample <= n");
}

/*
 * OpenBLAS picks its kernels from the CPU model, and on virtual machines
 * that report a generic model it falls back to SSE3 ("Prescott"): 4-5x
 * slower GEMM on a CPU that has AVX-512.  The choice is made when the
 * library loads, so the only cure is OPENBLAS_CORETYPE in the environment:
 * when it is unset and the distance kernels found AVX2 or AVX-512 that
 * OpenBLAS does not use, run this program again with it set.
 */
static void
fix_blas_kernels(char **argv, VecIsa isa)
{
	static const char *const generic[] = {"Prescott", "Core2", "Penryn",
	"Dunnington", "Nehalem", "Atom", "Katmai", "Northwood", "Banias"};
	const char *core = openblas_get_corename();
	const char *want = isa == VEC_ISA_AVX512 ? "SkylakeX" : "Haswell";

	if (getenv("OPENBLAS_CORETYPE") != NULL || isa == VEC_ISA_SCALAR)
		return;
	for (size_t i = 0; i < sizeof(generic) / sizeof(generic[0]); i++)
		if (strcmp(core, generic[i]) == 0)
		{
			printf("cagra_build: OpenBLAS chose %s kernels on a %s CPU; "
				   "running again with OPENBLAS_CORETYPE=%s\n",
				   core, vec_isa_name(isa), want);
			fflush(stdout);
			setenv("OPENBLAS_CORETYPE", want, 1);
			execv("/proc/self/exe", argv);
			return;				/* exec failed: go on with slow kernels */
		}
}

int
main(int argc, char **argv)
{
	Options		opt = {0};
	Bench		b = {0};
	float	   *all;
	char		err[256];
	double		cpu_recall[2][MAX_EFS];
	double		gpu_recall[2][MAX_EFS];
	int32_t    *knn;

	fix_blas_kernels(argv, vec_distance_init(VEC_ISA_AVX512));
	parse_args(&opt, argc, argv);
	if (cagra_params_check(&opt.params, opt.n, opt.dim, err, sizeof(err)) != CAGRA_OK)
		die("parameters", err);
	printf("cagra_build: distance kernels %s, OpenBLAS kernels %s\n",
		   vec_isa_name(vec_distance_init(VEC_ISA_AVX512)), openblas_get_corename());
	all = opt.file ? read_data(opt.file, opt.n + opt.n_queries, opt.dim) :
		generate_data(opt.n + opt.n_queries, opt.dim, opt.seed);
	printf("data: %lld x %d (%s), %d queries, metric %d, I %d, d %d, connectivity %s\n",
		   (long long) opt.n, opt.dim, opt.file ? opt.file : "generated clusters",
		   opt.n_queries, (int) opt.params.metric, opt.params.intermediate_degree,
		   opt.params.graph_degree, opt.params.guarantee_connectivity ? "on" : "off");
	if (opt.dump)
		write_data(opt.dump, all, opt.n + opt.n_queries, opt.dim);
	if (opt.distinct > 0)
		make_duplicates(all, opt.n, opt.dim, opt.distinct);
	if (opt.params.metric == CAGRA_METRIC_COSINE)
		normalise_rows(all, opt.n + opt.n_queries, opt.dim);
	b.opt = &opt;
	b.base = all;
	b.queries = all + opt.n * opt.dim;
	bench_prepare(&b);
	if (opt.index)
	{
		run_index(&b);
		free(all);
		return 0;
	}

	knn = malloc((size_t) opt.n * opt.params.intermediate_degree * sizeof(int32_t));
	if (opt.gpu)
		run_gpu(&b, gpu_recall, knn);
	if (!opt.gpu || opt.compare_cpu)
	{
		int32_t    *cpu_knn_graph = cpu_knn(&b);

		run_cpu(&b, cpu_knn_graph, cpu_recall);
		/*
		 * The partitioned kNN graphs come from different searches (the CPU
		 * probes per row, the GPU per list) of two k-means runs, so their
		 * recalls are a report; the GPU's own floor is --min-knn-recall.
		 */
		if (opt.gpu && opt.params.knn_method != CAGRA_KNN_EXACT)
			printf("partitioned kNN recall (not compared: the CPU probes per row, the GPU per list): gpu %.4f, cpu %.4f\n",
				   knn_recall(&b, knn), knn_recall(&b, cpu_knn_graph));
		else if (opt.gpu)
		{
			bool		ok = true;

			/* the exact kNN graphs must agree up to ties */
			compare_knn(&b, knn, cpu_knn_graph);
			for (int detour = 0; detour <= 1; detour++)
				for (int e = 0; e < opt.n_efs && (opt.detours & (1 << detour)); e++)
					ok &= fabs(gpu_recall[detour][e] - cpu_recall[detour][e]) <= 0.005;
			printf("compare search recall (|gpu - cpu| <= 0.005 at every ef): %s\n",
				   ok ? "PASS" : "FAIL");
			if (!ok)
				return 2;
		}
		free(cpu_knn_graph);
	}
	free(knn);
	free(all);
	return 0;
}
