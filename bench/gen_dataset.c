/*
 * gen_dataset.c
 *		Deterministic synthetic embeddings with exact ground truth.
 *
 * Real embeddings are clustered and have a low intrinsic dimension: a few
 * dozen directions carry most of the variance of a 768-dimensional model.
 * This generator imitates that:
 *
 *   - `clusters` topic centres are drawn in an `intrinsic`-dimensional
 *     latent space (N(0, 1) per coordinate);
 *   - each point picks a topic (Zipf-like: topic t has weight 1/(1+t/8), so
 *     some topics are much larger than others), adds latent noise
 *     N(0, spread^2), and is mapped to `dim` dimensions by one fixed random
 *     Gaussian matrix (dim x intrinsic, scaled by 1/sqrt(intrinsic));
 *   - finally isotropic noise N(0, noise^2) is added in all `dim` dimensions.
 *
 * --plain 1 (intrinsic = dim) drops the map and the Zipf weights: topics of
 * equal size in the output space itself, the data of the demo (200 topics,
 * spread 1.5) or, with one topic and --centre-scale 0, Gaussian rows whose
 * directions are uniform (random rows under the cosine metric).
 *
 * Queries are drawn from the same distribution (not copies of base rows).
 * Ground truth is the exact top-k by L2 distance, computed with a GEMM pass
 * (OpenBLAS) for candidates and re-ranked in double precision.
 *
 * Output in DIR: base.f32 (n x dim), queries.f32 (q x dim), both raw
 * little-endian float32 row-major; gt.i32 (q x k, 0-based row ids, nearest
 * first); meta.txt (the parameters).  Same parameters, same bytes.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "rng/rng.h"

typedef struct Params
{
	long		n;
	int			dim;
	int			queries;
	int			clusters;
	int			intrinsic;
	int			k;
	double		spread;
	double		noise;
	double		centre_scale;	/* topic centres ~ N(0, centre_scale^2) */
	int			plain;			/* topics of equal weight, no random map */
	uint64_t	seed;
	const char *out;
} Params;

static void *
xmalloc(size_t size)
{
	void	   *p = malloc(size);

	if (p == NULL)
	{
		fprintf(stderr, "gen_dataset: out of memory (%zu bytes)\n", size);
		exit(1);
	}
	return p;
}

static int
pick_topic(uint64_t *s, const double *cumulative, int clusters)
{
	double		u = splitmix64_unit_open(s) * cumulative[clusters - 1];
	int			lo = 0,
				hi = clusters - 1;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (cumulative[mid] < u)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void
generate(const Params *p, uint64_t *s, const double *centres, const double *cumulative,
		 const double *proj, float *out, long rows)
{
	double	   *latent = xmalloc(sizeof(double) * p->intrinsic);

	for (long r = 0; r < rows; r++)
	{
		int			t = pick_topic(s, cumulative, p->clusters);
		float	   *row = out + r * p->dim;

		for (int j = 0; j < p->intrinsic; j++)
			latent[j] = centres[(long) t * p->intrinsic + j] + p->spread * splitmix64_normal(s);
		for (int d = 0; d < p->dim; d++)
		{
			double		v = 0.0;

			for (int j = 0; j < p->intrinsic; j++)
				v += proj[(long) d * p->intrinsic + j] * latent[j];
			row[d] = (float) (v + p->noise * splitmix64_normal(s));
		}
	}
	free(latent);
}

typedef struct Cand
{
	double		dist;
	int32_t		id;
} Cand;

static int
cand_cmp(const void *a, const void *b)
{
	const Cand *x = a,
			   *y = b;

	if (x->dist != y->dist)
		return x->dist < y->dist ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/* Keep the `cap` smallest of a stream in a max-heap. */
static void
heap_push(Cand *heap, int *size, int cap, double dist, int32_t id)
{
	int			i;

	if (*size == cap)
	{
		if (dist >= heap[0].dist)
			return;
		/* replace the root and sift down */
		i = 0;
		for (;;)
		{
			int			l = 2 * i + 1,
						r = l + 1,
						m = i;

			if (l < cap && heap[l].dist > (m == i ? dist : heap[m].dist))
				m = l;
			if (r < cap && heap[r].dist > (m == i ? dist : heap[m].dist))
				m = r;
			if (m == i)
				break;
			heap[i] = heap[m];
			i = m;
		}
		heap[i].dist = dist;
		heap[i].id = id;
		return;
	}
	i = (*size)++;
	while (i > 0 && heap[(i - 1) / 2].dist < dist)
	{
		heap[i] = heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	heap[i].dist = dist;
	heap[i].id = id;
}

/*
 * Exact top-k by L2: float GEMM gives |x|^2 - 2 x.q for every pair, the best
 * 2k per query are kept and re-ranked by distances computed in double.
 */
static void
ground_truth(const Params *p, const float *base, const float *queries, int32_t *gt)
{
	const long	tile = 4096;
	int			cap = 2 * p->k;
	float	   *norms = xmalloc(sizeof(float) * p->n);
	float	   *dots = xmalloc(sizeof(float) * tile * p->queries);
	Cand	   *heaps = xmalloc(sizeof(Cand) * cap * p->queries);
	int		   *sizes = calloc(p->queries, sizeof(int));

	for (long i = 0; i < p->n; i++)
		norms[i] = cblas_sdot(p->dim, base + i * p->dim, 1, base + i * p->dim, 1);

	for (long start = 0; start < p->n; start += tile)
	{
		long		rows = (p->n - start < tile) ? p->n - start : tile;

		/* dots (queries x rows) = Q * B_tile^T */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->queries, rows, p->dim,
					1.0f, queries, p->dim, base + start * p->dim, p->dim,
					0.0f, dots, rows);
		for (int q = 0; q < p->queries; q++)
			for (long r = 0; r < rows; r++)
				heap_push(heaps + (long) q * cap, &sizes[q], cap,
						  (double) norms[start + r] - 2.0 * dots[(long) q * rows + r],
						  (int32_t) (start + r));
	}

	for (int q = 0; q < p->queries; q++)
	{
		Cand	   *h = heaps + (long) q * cap;
		const float *qv = queries + (long) q * p->dim;

		for (int c = 0; c < sizes[q]; c++)
		{
			const float *x = base + (long) h[c].id * p->dim;
			double		sum = 0.0;

			for (int d = 0; d < p->dim; d++)
			{
				double		diff = (double) x[d] - (double) qv[d];

				sum += diff * diff;
			}
			h[c].dist = sum;
		}
		qsort(h, sizes[q], sizeof(Cand), cand_cmp);
		for (int c = 0; c < p->k; c++)
			gt[(long) q * p->k + c] = h[c].id;
	}
	free(norms);
	free(dots);
	free(heaps);
	free(sizes);
}

static void
write_file(const char *dir, const char *name, const void *data, size_t bytes)
{
	char		path[4096];
	FILE	   *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (f == NULL || fwrite(data, 1, bytes, f) != bytes || fclose(f) != 0)
	{
		fprintf(stderr, "gen_dataset: cannot write %s: %s\n", path, strerror(errno));
		exit(1);
	}
}

static void
usage(void)
{
	fprintf(stderr,
			"usage: gen_dataset --out DIR [--n 100000] [--dim 128] [--queries 1000]\n"
			"       [--clusters 100] [--intrinsic 16] [--k 100] [--spread 0.35]\n"
			"       [--noise 0.05] [--centre-scale 1] [--plain 0|1] [--seed 42]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	Params		p = {100000, 128, 1000, 100, 16, 100, 0.35, 0.05, 1.0, 0, 42, NULL};
	uint64_t	s;
	double	   *centres,
			   *cumulative,
			   *proj;
	float	   *base,
			   *queries;
	int32_t    *gt;
	char		meta[1024];

	for (int i = 1; i + 1 < argc; i += 2)
	{
		const char *k = argv[i],
				   *v = argv[i + 1];

		if (!strcmp(k, "--n"))
			p.n = atol(v);
		else if (!strcmp(k, "--dim"))
			p.dim = atoi(v);
		else if (!strcmp(k, "--queries"))
			p.queries = atoi(v);
		else if (!strcmp(k, "--clusters"))
			p.clusters = atoi(v);
		else if (!strcmp(k, "--intrinsic"))
			p.intrinsic = atoi(v);
		else if (!strcmp(k, "--k"))
			p.k = atoi(v);
		else if (!strcmp(k, "--spread"))
			p.spread = atof(v);
		else if (!strcmp(k, "--noise"))
			p.noise = atof(v);
		else if (!strcmp(k, "--centre-scale"))
			p.centre_scale = atof(v);
		else if (!strcmp(k, "--plain"))
			p.plain = atoi(v);
		else if (!strcmp(k, "--seed"))
			p.seed = strtoull(v, NULL, 10);
		else if (!strcmp(k, "--out"))
			p.out = v;
		else
			usage();
	}
	if (p.out == NULL || p.n < p.k || p.dim < 1 || p.queries < 1 || p.clusters < 1 ||
		p.intrinsic < 1 || p.k < 1 || (p.plain && p.intrinsic != p.dim))
		usage();
	mkdir(p.out, 0755);

	s = p.seed;
	centres = xmalloc(sizeof(double) * p.clusters * p.intrinsic);
	cumulative = xmalloc(sizeof(double) * p.clusters);
	proj = xmalloc(sizeof(double) * p.dim * p.intrinsic);
	for (long i = 0; i < (long) p.clusters * p.intrinsic; i++)
		centres[i] = p.centre_scale * splitmix64_normal(&s);
	for (int t = 0; t < p.clusters; t++)
		cumulative[t] = (t ? cumulative[t - 1] : 0.0) +
			(p.plain ? 1.0 : 1.0 / (1.0 + t / 8.0));
	for (long i = 0; i < (long) p.dim * p.intrinsic; i++)
		proj[i] = p.plain ? (double) (i / p.intrinsic == i % p.intrinsic) :
			splitmix64_normal(&s) / sqrt((double) p.intrinsic);

	base = xmalloc(sizeof(float) * p.n * p.dim);
	queries = xmalloc(sizeof(float) * p.queries * p.dim);
	gt = xmalloc(sizeof(int32_t) * p.queries * p.k);
	generate(&p, &s, centres, cumulative, proj, base, p.n);
	generate(&p, &s, centres, cumulative, proj, queries, p.queries);
	ground_truth(&p, base, queries, gt);

	write_file(p.out, "base.f32", base, sizeof(float) * p.n * p.dim);
	write_file(p.out, "queries.f32", queries, sizeof(float) * p.queries * p.dim);
	write_file(p.out, "gt.i32", gt, sizeof(int32_t) * p.queries * p.k);
	snprintf(meta, sizeof(meta),
			 "n=%ld\ndim=%d\nqueries=%d\nk=%d\nclusters=%d\nintrinsic=%d\n"
			 "spread=%g\nnoise=%g\ncentre_scale=%g\nplain=%d\nseed=%llu\nmetric=l2\n",
			 p.n, p.dim, p.queries, p.k, p.clusters, p.intrinsic, p.spread, p.noise,
			 p.centre_scale, p.plain,
			 (unsigned long long) p.seed);
	write_file(p.out, "meta.txt", meta, strlen(meta));
	printf("wrote %s: %ld x %d base, %d queries, top-%d ground truth\n",
		   p.out, p.n, p.dim, p.queries, p.k);
	return 0;
}
