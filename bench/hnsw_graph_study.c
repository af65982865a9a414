/*
 * hnsw_graph_study.c
 *		Offline study of a gnnhnsw build graph (no PostgreSQL): builds the
 *		in-memory graph the serial CREATE INDEX builds (hnswgraph.c, same
 *		seed, duplicates merged as the build merges them, then
 *		hnsw_graph_connect), or loads a graph dumped from another index
 *		(--load), and reports its shape (level-0 out- and in-degrees,
 *		reachability) and, for each ef, recall@10 of the same beam search
 *		(ef = 1 at the upper levels, ef at level 0) with the distances it
 *		computed per query: the graph's own efficiency, without any page
 *		or cache cost.
 *
 *	make bench/bin/hnsw_graph_study
 *	bench/bin/hnsw_graph_study --data bench/data/tfidf-gcide-256 --efs 10,20,40,80
 *
 * --load FILE [--rows FILE.rows] reads a graph written by
 * bench/pgv_graph_dump.py (pgvector's index): int32 n, int32 top level,
 * int32 entry; then per node: int32 row, int32 level, then per level int32
 * count and count node ids.  Rows index base.f32.  Its CPU times depend
 * on the machine; its distance and list counts are the graph's own.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HNSW_PURE
#include "hnsw/hnsw.h"
#include "vector/distance.h"

#define RECALL_K 10
#define MAX_ROWS_PER_NODE 10	/* HNSW_HEAPTIDS */
#define MAX_EFS 16

static void *
sys_alloc(void *ctx, size_t size)
{
	void	   *p = malloc(size);

	(void) ctx;
	if (p == NULL)
	{
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	return p;
}

static void
sys_free(void *ctx, void *p)
{
	(void) ctx;
	free(p);
}

static const HnswAllocator allocator = {sys_alloc, sys_free, NULL};

static float *
read_f32(const char *dir, const char *name, int64_t rows, int dim)
{
	char		path[4096];
	FILE	   *f;
	float	   *x = sys_alloc(NULL, sizeof(float) * rows * dim);

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (f == NULL || fread(x, sizeof(float) * dim, rows, f) != (size_t) rows)
	{
		fprintf(stderr, "cannot read %lld rows of %s\n", (long long) rows, path);
		exit(1);
	}
	fclose(f);
	return x;
}

static long
meta_value(const char *dir, const char *key, char *text, size_t len)
{
	char		path[4096];
	char		line[1024];
	FILE	   *f;
	size_t		kl = strlen(key);

	snprintf(path, sizeof(path), "%s/meta.txt", dir);
	f = fopen(path, "r");
	if (f == NULL)
	{
		fprintf(stderr, "cannot read %s\n", path);
		exit(1);
	}
	while (fgets(line, sizeof(line), f))
	{
		if (strncmp(line, key, kl) == 0 && line[kl] == '=')
		{
			fclose(f);
			if (text)
			{
				snprintf(text, len, "%s", line + kl + 1);
				text[strcspn(text, "\n")] = 0;
			}
			return atol(line + kl + 1);
		}
	}
	fclose(f);
	fprintf(stderr, "%s: no %s\n", path, key);
	exit(1);
}

/* As the index stores cosine vectors (hnswutils.c, hnsw_normalize). */
static void
normalize(float *x, int dim)
{
	double		norm = 0;

	for (int i = 0; i < dim; i++)
		norm += (double) x[i] * x[i];
	norm = sqrt(norm);
	if (norm > 0)
		for (int i = 0; i < dim; i++)
			x[i] = (float) (x[i] / norm);
}

static double
cpu_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/*
 * Every distance the build computes goes through vec_kernels: counted
 * here, a measure of build work that does not depend on the machine's load.
 */
static int64_t kernel_calls;
static VecKernels kernels;

static float
counted_l2(const float *a, const float *b, int n)
{
	kernel_calls++;
	return kernels.l2_squared(a, b, n);
}

static float
counted_ip(const float *a, const float *b, int n)
{
	kernel_calls++;
	return kernels.inner_product(a, b, n);
}

/* The graph and a distance counter, for the counting search below. */
typedef struct Study
{
	HnswGraph  *g;
	int64_t		ndist;			/* distances computed (kernel calls) */
	int64_t		nexpand;		/* lists read at level 0 */
	int64_t		nslots;			/* their members, visited or not */
} Study;

static const float *
study_vector_of(void *arg, int32_t id)
{
	return ((Study *) arg)->g->nodes[id].vec;
}

static int
study_neighbors_of(void *arg, int32_t id, int level, const int32_t **list)
{
	Study	   *st = arg;
	int			n = hnsw_graph_neighbors_of(st->g, id, level, list);

	if (level == 0)
	{
		st->nexpand++;
		st->nslots += n;
	}
	return n;
}

/* The search a scan does: ef 1 above level 0, then ef; counts distances. */
static int
study_search(Study *st, const float *q, int ef, HnswHeapItem *out)
{
	HnswGraph  *g = st->g;
	HnswLayerSearch ls = {g->metric, g->dim, study_neighbors_of, study_vector_of, st,
	&g->cand, &g->res, g->visited, 0};
	int32_t		ep = g->entry;
	float		epdist;
	HnswHeapItem best;

	epdist = hnsw_distance(g->metric, q, g->nodes[ep].vec, g->dim);
	for (int lc = g->max_level; lc > 0; lc--)
	{
		ls.tag = ++g->visit_tag;
		hnsw_layer_search(&ls, q, ep, epdist, 1, lc, &best);
		ep = best.id;
		epdist = best.dist;
	}
	ls.tag = ++g->visit_tag;
	return hnsw_layer_search(&ls, q, ep, epdist, ef, 0, out);
}

typedef struct Rows
{
	int32_t    *rows;			/* node -> up to MAX_ROWS_PER_NODE rows */
	uint8_t    *nrows;
	int32_t		cap;
} Rows;

static void
rows_add(Rows *r, int32_t node, int32_t row)
{
	if (node >= r->cap)
	{
		int32_t		cap = r->cap ? r->cap * 2 : 1024;

		while (cap <= node)
			cap *= 2;
		r->rows = realloc(r->rows, sizeof(int32_t) * MAX_ROWS_PER_NODE * cap);
		r->nrows = realloc(r->nrows, cap);
		memset(r->nrows + r->cap, 0, cap - r->cap);
		r->cap = cap;
	}
	r->rows[node * MAX_ROWS_PER_NODE + r->nrows[node]++] = row;
}

static Rows *dup_rows;

static bool
dup_has_room(void *arg, int32_t id)
{
	(void) arg;
	return dup_rows->nrows[id] < MAX_ROWS_PER_NODE;
}

static HnswGraph *
build(const float *base, int64_t n, int dim, HnswMetric metric, int m,
	  int efc, Rows *rows)
{
	HnswGraph  *g = hnsw_graph_create(dim, m, efc, metric, HNSW_PURE_MAX_LEVELS - 1,
									  0x5DEECE66DULL, &allocator);

	dup_rows = rows;
	for (int64_t i = 0; i < n; i++)
	{
		bool		is_dup;
		int32_t		id = hnsw_graph_insert(g, base + i * dim,
										   hnsw_graph_random_level(g),
										   dup_has_room, NULL, &is_dup);

		rows_add(rows, id, (int32_t) i);
	}
	return g;
}

/* A graph dumped from another index (see the header comment). */
static HnswGraph *
load(const char *path, const float *base, int dim, HnswMetric metric, int m,
	 Rows *rows)
{
	FILE	   *f = fopen(path, "rb");
	int32_t		hdr[3];
	HnswGraph  *g;
	int64_t		dropped = 0;

	if (f == NULL || fread(hdr, sizeof(int32_t), 3, f) != 3)
	{
		fprintf(stderr, "cannot read %s\n", path);
		exit(1);
	}
	g = hnsw_graph_create(dim, m, 64, metric, HNSW_PURE_MAX_LEVELS - 1, 1, &allocator);
	for (int32_t i = 0; i < hdr[0]; i++)
	{
		int32_t		rl[2];
		int32_t		id;

		if (fread(rl, sizeof(int32_t), 2, f) != 2)
			exit(1);
		id = hnsw_graph_append(g, base + (int64_t) rl[0] * dim, rl[1]);
		rows_add(rows, id, rl[0]);
		for (int l = 0; l <= rl[1]; l++)
		{
			int32_t		cnt;
			int32_t		buf[256];
			int			slots = hnsw_level_slots(m, l);
			HnswGraphNode *node = &g->nodes[id];

			if (fread(&cnt, sizeof(int32_t), 1, f) != 1 || cnt > 256 ||
				fread(buf, sizeof(int32_t), cnt, f) != (size_t) cnt)
				exit(1);
			for (int k = 0; k < cnt; k++)
			{
				if (node->counts[l] >= slots)
				{
					dropped++;
					continue;
				}
				node->nbrs[hnsw_level_offset(m, l) + node->counts[l]++] = buf[k];
			}
		}
	}
	g->max_level = hdr[1];
	g->entry = hdr[2];
	fclose(f);
	if (dropped)
		fprintf(stderr, "%lld edges beyond the slots dropped\n", (long long) dropped);
	return g;
}

/* Extra rows of the dump's heap TIDs: int32 node, int32 row pairs. */
static void
load_rows(const char *path, Rows *rows)
{
	FILE	   *f = fopen(path, "rb");
	int32_t		pair[2];

	if (f == NULL)
		return;
	while (fread(pair, sizeof(int32_t), 2, f) == 2)
		rows_add(rows, pair[0], pair[1]);
	fclose(f);
}

static int
cmp_int(const void *a, const void *b)
{
	return *(const int32_t *) a - *(const int32_t *) b;
}

static void
report_shape(HnswGraph *g)
{
	int32_t    *indeg = calloc(g->n, sizeof(int32_t));
	int32_t    *outdeg = malloc(sizeof(int32_t) * g->n);
	int64_t		sum = 0,
				full = 0,
				zero_in = 0;
	int			hist[8] = {0};
	int64_t		upper = 0,
				upper_sum = 0;

	for (int32_t i = 0; i < g->n; i++)
	{
		HnswGraphNode *node = &g->nodes[i];

		outdeg[i] = node->counts[0];
		sum += node->counts[0];
		full += node->counts[0] == 2 * g->m;
		for (int j = 0; j < node->counts[0]; j++)
			indeg[node->nbrs[j]]++;
		for (int l = 1; l <= node->level; l++)
		{
			upper++;
			upper_sum += node->counts[l];
		}
	}
	for (int32_t i = 0; i < g->n; i++)
	{
		int			b = outdeg[i] * 8 / (2 * g->m + 1);

		hist[b]++;
		zero_in += indeg[i] == 0;
	}
	qsort(indeg, g->n, sizeof(int32_t), cmp_int);
	printf("nodes %d, levels %d, level-0 out-degree mean %.2f, full (2m) %.1f%%, upper-level mean %.2f\n",
		   g->n, g->max_level + 1, (double) sum / g->n, 100.0 * full / g->n,
		   upper ? (double) upper_sum / upper : 0.0);
	printf("out-degree by eighths of 2m:");
	for (int b = 0; b < 8; b++)
		printf(" %d", hist[b]);
	printf("\nin-degree: zero %lld, median %d, p99 %d, p99.9 %d, max %d\n",
		   (long long) zero_in, indeg[g->n / 2], indeg[(int64_t) g->n * 99 / 100],
		   indeg[(int64_t) g->n * 999 / 1000], indeg[g->n - 1]);
	{
		uint8_t    *seen = calloc(g->n, 1);
		int32_t    *queue = malloc(sizeof(int32_t) * g->n);
		int64_t		head = 0,
					tail = 0;

		seen[g->entry] = 1;
		queue[tail++] = g->entry;
		while (head < tail)
		{
			HnswGraphNode *node = &g->nodes[queue[head++]];

			for (int j = 0; j < node->counts[0]; j++)
				if (!seen[node->nbrs[j]])
				{
					seen[node->nbrs[j]] = 1;
					queue[tail++] = node->nbrs[j];
				}
		}
		printf("reachable at level 0 from the entry: %lld of %d\n", (long long) tail, g->n);
		free(seen);
		free(queue);
	}
	free(indeg);
	free(outdeg);
}

int
main(int argc, char **argv)
{
	const char *dir = NULL;
	const char *loadpath = NULL;
	const char *rowspath = NULL;
	int			m = 16,
				efc = 64;
	int			efs[MAX_EFS] = {10, 20, 40, 80, 120, 200, 400};
	int			nefs = 7;
	int64_t		n;
	int			nq,
				k,
				dim;
	char		metric_name[64];
	HnswMetric	metric;
	float	   *base,
			   *queries;
	int32_t    *gt;
	Rows		rows = {0};
	HnswGraph  *g;
	Study		st;
	HnswHeapItem *found;
	double		t0;

	for (int i = 1; i < argc; i++)
	{
		if (!strcmp(argv[i], "--data") && i + 1 < argc)
			dir = argv[++i];
		else if (!strcmp(argv[i], "--load") && i + 1 < argc)
			loadpath = argv[++i];
		else if (!strcmp(argv[i], "--rows") && i + 1 < argc)
			rowspath = argv[++i];
		else if (!strcmp(argv[i], "--m") && i + 1 < argc)
			m = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--efc") && i + 1 < argc)
			efc = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--efs") && i + 1 < argc)
		{
			char	   *s = argv[++i];

			for (nefs = 0; s && *s && nefs < MAX_EFS; nefs++)
			{
				efs[nefs] = atoi(s);
				s = strchr(s, ',');
				s = s ? s + 1 : NULL;
			}
		}
		else
		{
			fprintf(stderr, "usage: %s --data DIR [--load GRAPH [--rows ROWS]] [--m M] [--efc EF] [--efs 10,20,...]\n", argv[0]);
			return 2;
		}
	}
	if (dir == NULL)
	{
		fprintf(stderr, "--data is required\n");
		return 2;
	}
	vec_distance_init(VEC_ISA_AVX512);
	kernels = vec_kernels;
	vec_kernels.l2_squared = counted_l2;
	vec_kernels.inner_product = counted_ip;
	n = meta_value(dir, "n", NULL, 0);
	dim = (int) meta_value(dir, "dim", NULL, 0);
	nq = (int) meta_value(dir, "queries", NULL, 0);
	k = (int) meta_value(dir, "k", NULL, 0);
	meta_value(dir, "metric", metric_name, sizeof(metric_name));
	metric = strcmp(metric_name, "cosine") == 0 ? HNSW_METRIC_COSINE : HNSW_METRIC_L2;
	base = read_f32(dir, "base.f32", n, dim);
	queries = read_f32(dir, "queries.f32", nq, dim);
	gt = sys_alloc(NULL, sizeof(int32_t) * nq * k);
	{
		char		path[4096];
		FILE	   *f;

		snprintf(path, sizeof(path), "%s/gt.i32", dir);
		f = fopen(path, "rb");
		if (f == NULL || fread(gt, sizeof(int32_t) * k, nq, f) != (size_t) nq)
		{
			fprintf(stderr, "cannot read %s\n", path);
			return 1;
		}
		fclose(f);
	}
	if (metric == HNSW_METRIC_COSINE)
	{
		for (int64_t i = 0; i < n; i++)
			normalize(base + i * dim, dim);
		for (int i = 0; i < nq; i++)
			normalize(queries + (int64_t) i * dim, dim);
	}

	t0 = cpu_seconds();
	if (loadpath)
	{
		g = load(loadpath, base, dim, metric, m, &rows);
		if (rowspath)
			load_rows(rowspath, &rows);
		printf("loaded %s\n", loadpath);
	}
	else
	{
		int64_t		unreached,
					added;

		g = build(base, n, dim, metric, m, efc, &rows);
		printf("built m %d ef_construction %d: %.1f CPU s, %.1f distances per row\n",
			   m, efc, cpu_seconds() - t0, (double) kernel_calls / n);
		added = hnsw_graph_connect(g, &unreached);
		printf("connect: %lld edges added, %lld unreachable\n", (long long) added, (long long) unreached);
	}
	report_shape(g);

	st.g = g;
	found = sys_alloc(NULL, sizeof(HnswHeapItem) * 1001);
	hnsw_heap_free(&g->res);
	hnsw_heap_init(&g->res, true, 1001, &allocator);
	printf("%6s %8s %12s %12s %12s %10s\n", "ef", "recall", "dists/query", "lists/query", "slots/query", "CPU ms/q");
	for (int e = 0; e < nefs; e++)
	{
		int64_t		hits = 0;
		double		c0 = cpu_seconds();
		int64_t		calls0 = kernel_calls;

		st.nexpand = st.nslots = 0;
		for (int qi = 0; qi < nq; qi++)
		{
			int			nf = study_search(&st, queries + (int64_t) qi * dim, efs[e], found);
			int32_t		got[RECALL_K];
			int			ngot = 0;

			for (int i = 0; i < nf && ngot < RECALL_K; i++)
				for (int r = 0; r < rows.nrows[found[i].id] && ngot < RECALL_K; r++)
					got[ngot++] = rows.rows[found[i].id * MAX_ROWS_PER_NODE + r];
			for (int i = 0; i < ngot; i++)
				for (int j = 0; j < RECALL_K; j++)
					if (got[i] == gt[(int64_t) qi * k + j])
					{
						hits++;
						break;
					}
		}
		st.ndist = kernel_calls - calls0;
		printf("%6d %8.4f %12.1f %12.1f %12.1f %10.4f\n", efs[e], (double) hits / (nq * RECALL_K),
			   (double) st.ndist / nq, (double) st.nexpand / nq, (double) st.nslots / nq,
			   (cpu_seconds() - c0) * 1000 / nq);
	}
	return 0;
}
