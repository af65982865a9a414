/*
 * test_hnswgraph.c
 *		The in-memory HNSW graph: heaps, key set, recall of the insert
 *		algorithm against brute force for every metric, duplicates, and a
 *		level 0 given from outside (the CAGRA plug-in point).
 */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "unit.h"
#define HNSW_PURE
#include "hnsw/hnsw.h"

static void *
m_alloc(void *ctx, size_t size)
{
	void	   *p = malloc(size ? size : 1);

	(void) ctx;

	if (!p)
		abort();
	return p;
}

static void
m_free(void *ctx, void *p)
{
	(void) ctx;
	free(p);
}

static const HnswAllocator A = {m_alloc, m_free, NULL};

static unsigned long long rng = 88172645463325252ULL;

static float
urand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float) ((rng >> 11) * (1.0 / 9007199254740992.0));
}

static void
normalize(float *x, int d)
{
	double		s = 0;
	int			i;

	for (i = 0; i < d; i++)
		s += (double) x[i] * x[i];
	s = sqrt(s);
	for (i = 0; i < d; i++)
		x[i] /= s;
}

static void
test_heap(void)
{
	HnswHeap	h;
	int			i,
				ok = 1;
	float		last = -1;

	hnsw_heap_init(&h, false, 4, &A);
	for (i = 0; i < 1000; i++)
		hnsw_heap_push(&h, urand(), i);
	for (i = 0; i < 1000; i++)
	{
		HnswHeapItem it = hnsw_heap_pop(&h);

		if (it.dist < last)
			ok = 0;
		last = it.dist;
	}
	CHECK(ok && h.n == 0, "min-heap pops in ascending order");
	hnsw_heap_free(&h);

	hnsw_heap_init(&h, true, 4, &A);
	for (i = 0; i < 1000; i++)
		hnsw_heap_push(&h, urand(), i);
	last = 2;
	ok = 1;
	for (i = 0; i < 1000; i++)
	{
		HnswHeapItem it = hnsw_heap_pop(&h);

		if (it.dist > last)
			ok = 0;
		last = it.dist;
	}
	CHECK(ok, "max-heap pops in descending order");
	hnsw_heap_free(&h);
}

/* qsort's comparison for the order hnsw_rank_next must hand out */
static const double *rank_scores;

static int
cmp_rank(const void *a, const void *b)
{
	int			x = *(const int *) a;
	int			y = *(const int *) b;
	double		sx = fmax(rank_scores[x], -DBL_MAX);
	double		sy = fmax(rank_scores[y], -DBL_MAX);

	if (sx != sy)
		return sx > sy ? -1 : 1;
	return x - y;
}

/*
 * The rank order: descending score, ties by position, the same as a full
 * sort, for sizes around the heap's edge cases and with many ties (scores
 * drawn from a few values, the lowest -DBL_MAX as a gone candidate's).
 */
static void
test_rank(void)
{
	static const int sizes[] = {0, 1, 2, 3, 7, 8, 100, 1001};
	int			wrong = 0;

	for (int s = 0; s < (int) (sizeof(sizes) / sizeof(sizes[0])); s++)
		for (int levels = 1; levels <= 1000; levels *= 10)
		{
			int			n = sizes[s];
			double	   *scores = malloc(sizeof(double) * (n + 1));
			int		   *expect = malloc(sizeof(int) * (n + 1));
			void	   *space = malloc(hnsw_rank_size(n));
			HnswRank	r;

			for (int i = 0; i < n; i++)
			{
				int			v = (int) (urand() * levels);

				scores[i] = v == 0 ? -DBL_MAX : v - levels / 2.0;
				/* -inf ranks as -DBL_MAX: after the others, by position */
				if (v == 0 && i % 3 == 0)
					scores[i] = -INFINITY;
				expect[i] = i;
			}
			rank_scores = scores;
			qsort(expect, n, sizeof(int), cmp_rank);
			hnsw_rank_init(&r, scores, n, space);
			for (int i = 0; i < n; i++)
				if (hnsw_rank_next(&r) != expect[i])
					wrong++;
			if (hnsw_rank_next(&r) != -1)
				wrong++;
			free(scores);
			free(expect);
			free(space);
		}
	CHECK(wrong == 0, "the rank order is the sorted order (%d wrong)", wrong);
}

static void
test_keyset(void)
{
	HnswKeySet	s;
	uint64_t	k;
	int			ok = 1;

	hnsw_keyset_init(&s, 4, &A);
	for (k = 1; k <= 10000; k++)
		if (hnsw_keyset_test_and_add(&s, k * 65537))
			ok = 0;
	for (k = 1; k <= 10000; k++)
		if (!hnsw_keyset_test_and_add(&s, k * 65537))
			ok = 0;
	CHECK(ok && s.n == 10000, "key set adds each key once");
	CHECK(!hnsw_keyset_contains(&s, 3), "key set: absent key");
	hnsw_keyset_free(&s);
}

/* recall@10 of the graph against brute force, nq queries */
static double
recall(HnswGraph *g, const float *data, int n, int d, const float *queries,
	   int nq, int ef)
{
	int			hits = 0;
	int			q,
				i,
				j;

	for (q = 0; q < nq; q++)
	{
		const float *qv = queries + (size_t) q * d;
		int32_t		ids[10];
		float		dists[10];
		float		best[10];
		int			got = hnsw_graph_search(g, qv, 10, ef, ids, dists);

		for (i = 0; i < 10; i++)
			best[i] = INFINITY;
		for (i = 0; i < n; i++)
		{
			float		dd = hnsw_distance(g->metric, qv, data + (size_t) i * d, d);

			if (dd < best[9])
			{
				for (j = 9; j > 0 && best[j - 1] > dd; j--)
					best[j] = best[j - 1];
				best[j] = dd;
			}
		}
		for (i = 0; i < got; i++)
			if (dists[i] <= best[9])
				hits++;
	}
	return (double) hits / (10.0 * nq);
}

static void
test_recall(HnswMetric metric, const char *name)
{
	int			n = 3000,
				d = 24,
				nq = 100;
	float	   *data = malloc(sizeof(float) * n * d);
	float	   *qs = malloc(sizeof(float) * nq * d);
	HnswGraph  *g = hnsw_graph_create(d, 12, 64, metric, 16, 42, &A);
	int			i;
	bool		dup;
	double		r;

	for (i = 0; i < n * d; i++)
		data[i] = urand();
	for (i = 0; i < nq * d; i++)
		qs[i] = urand();
	if (metric == HNSW_METRIC_COSINE)
	{
		for (i = 0; i < n; i++)
			normalize(data + (size_t) i * d, d);
		for (i = 0; i < nq; i++)
			normalize(qs + (size_t) i * d, d);
	}
	for (i = 0; i < n; i++)
		hnsw_graph_insert(g, data + (size_t) i * d, hnsw_graph_random_level(g),
						  NULL, NULL, &dup);
	CHECK(g->n == n, "%s: all nodes inserted", name);
	r = recall(g, data, n, d, qs, nq, 64);
	CHECK(r >= (metric == HNSW_METRIC_IP ? 0.9 : 0.95), "%s: recall@10 %.3f at ef 64", name, r);
	{
		int			ok = 1;

		for (i = 0; i < g->n; i++)
			if (g->nodes[i].counts[0] == 0 || g->nodes[i].counts[0] > 2 * g->m)
				ok = 0;
		CHECK(ok, "%s: every node has 1..2m level-0 neighbours", name);
	}
	hnsw_graph_free(g);
	free(data);
	free(qs);
}

/*
 * Inner product over a mix of small- and large-norm vectors: pruning leaves
 * small-norm nodes without in-edges; hnsw_graph_connect must reach them all.
 */
static void
test_connect(void)
{
	int			n = 3000,
				d = 8,
				i,
				j;
	HnswGraph  *g = hnsw_graph_create(d, 4, 16, HNSW_METRIC_IP, 16, 3, &A);
	float		v[8];
	bool		dup;
	int64_t		unreached,
				added;

	for (i = 0; i < n; i++)
	{
		float		scale = (i % 2) ? 10.0f : 0.1f;

		for (j = 0; j < d; j++)
			v[j] = (urand() * 2 - 1) * scale;
		hnsw_graph_insert(g, v, hnsw_graph_random_level(g), NULL, NULL, &dup);
	}
	added = hnsw_graph_connect(g, &unreached);
	CHECK(added > 0, "inner product graph needed edges (%lld)", (long long) added);
	CHECK(unreached == 0, "every node reachable after connect (%lld left)", (long long) unreached);
	{
		int			ok = 1;

		for (i = 0; i < g->n; i++)
			if (g->nodes[i].counts[0] > 2 * g->m)
				ok = 0;
		CHECK(ok, "connect keeps level-0 lists within 2m");
	}
	hnsw_graph_free(g);
}

/*
 * Each row's deg nearest other rows under metric, nearest first (ties to
 * the earlier row): an exact kNN graph to give hnsw_graph_set_level0.
 */
static void
exact_lists(const float *data, int n, int d, HnswMetric metric, int deg,
			int32_t *lists)
{
	float	   *best = malloc(sizeof(float) * deg);

	for (int i = 0; i < n; i++)
	{
		for (int k = 0; k < deg; k++)
		{
			best[k] = INFINITY;
			lists[i * deg + k] = -1;
		}
		for (int j = 0; j < n; j++)
		{
			float		dd;
			int			k;

			if (j == i)
				continue;
			dd = hnsw_distance(metric, data + (size_t) i * d, data + (size_t) j * d, d);
			if (dd >= best[deg - 1])
				continue;
			for (k = deg - 1; k > 0 && best[k - 1] > dd; k--)
			{
				best[k] = best[k - 1];
				lists[i * deg + k] = lists[i * deg + k - 1];
			}
			best[k] = dd;
			lists[i * deg + k] = j;
		}
	}
	free(best);
}

/*
 * Full level-0 lists, as a CAGRA build leaves them: under inner product
 * each node lists its 8 largest products, so the 1,800 short rows are in
 * no list and the 200 long ones list each other, while counting the short
 * rows' edges into them.  Every connection then takes a slot.  Taking a
 * member's slot outright left rows unreachable (a member whose other
 * in-edges came from unreachable rows); moving the member behind the new
 * row keeps all reachable: none may be left, within 2m, one pass.
 */
static void
test_connect_full_lists(void)
{
	int			n = 2000,
				d = 8,
				deg = 8;
	HnswGraph  *g = hnsw_graph_create(d, 4, 16, HNSW_METRIC_IP, 16, 5, &A);
	float	   *data = malloc(sizeof(float) * n * d);
	int32_t    *lists = malloc(sizeof(int32_t) * n * deg);
	int64_t		unreached,
				added,
				again;
	int			over = 0;

	for (int i = 0; i < n; i++)
		for (int j = 0; j < d; j++)
			data[i * d + j] = (urand() * 2 - 1) * (i % 10 == 0 ? 10.0f : 0.1f);
	exact_lists(data, n, d, HNSW_METRIC_IP, deg, lists);
	for (int i = 0; i < n; i++)
		hnsw_graph_append(g, data + i * d, hnsw_graph_random_level(g));
	hnsw_graph_reserve_search(g);
	hnsw_graph_link_upper(g);
	hnsw_graph_set_level0(g, lists, deg);
	added = hnsw_graph_connect(g, &unreached);
	CHECK(added > 1000 && unreached == 0,
		  "full lists: %lld edges added, %lld rows left unreachable",
		  (long long) added, (long long) unreached);
	for (int i = 0; i < g->n; i++)
		over += g->nodes[i].counts[0] > 2 * g->m;
	CHECK(over == 0, "full lists: %d level-0 lists over 2m", over);
	again = hnsw_graph_connect(g, &unreached);
	CHECK(again == 0 && unreached == 0,
		  "full lists: a second pass adds %lld edges", (long long) again);
	hnsw_graph_free(g);
	free(data);
	free(lists);
}

static bool
always(void *arg, int32_t id)
{
	(void) id;
	(*(int *) arg)++;
	return true;
}

static void
test_duplicates(void)
{
	HnswGraph  *g = hnsw_graph_create(4, 4, 16, HNSW_METRIC_L2, 16, 1, &A);
	float		v[4] = {1, 2, 3, 4};
	float		w[4] = {1, 2, 3, 5};
	bool		dup;
	int			calls = 0;
	int32_t		a,
				b,
				c;

	a = hnsw_graph_insert(g, v, 0, always, &calls, &dup);
	c = hnsw_graph_insert(g, w, 0, always, &calls, &dup);
	b = hnsw_graph_insert(g, v, 2, always, &calls, &dup);
	CHECK(dup && b == a && g->n == 2 && c == 1, "identical vector is reported as a duplicate (%d %d %d %d)", dup, b, g->n, c);
	b = hnsw_graph_insert(g, v, 0, NULL, NULL, &dup);
	CHECK(!dup && b == 2 && g->n == 3, "without dup_ok a new node is made");
	hnsw_graph_free(g);
}

static void
test_level0(void)
{
	int			n = 2000,
				d = 16,
				deg = 16,
				i;
	float	   *data = malloc(sizeof(float) * n * d);
	int32_t    *knn = malloc(sizeof(int32_t) * n * deg);
	HnswGraph  *g = hnsw_graph_create(d, 8, 64, HNSW_METRIC_L2, 16, 7, &A);
	int64_t		dropped;
	double		r;

	for (i = 0; i < n * d; i++)
		data[i] = urand();
	/* exact kNN graph as the "elsewhere" level 0 */
	exact_lists(data, n, d, HNSW_METRIC_L2, deg, knn);
	/* vectors in one array, as CAGRA builds keep them: it grows once (to 2304) */
	hnsw_graph_pack_vectors(g, 0);
	CHECK(g->vecs != NULL && g->vecs_cap == 1024, "packed vectors: room for 1024 rows first");
	for (i = 0; i < n; i++)
		hnsw_graph_append(g, data + (size_t) i * d, hnsw_graph_random_level(g));
	{
		int			misplaced = 0;
		size_t		mem = sizeof(float) * d * (size_t) g->vecs_cap;

		for (i = 0; i < n; i++)
		{
			misplaced += g->nodes[i].vec != g->vecs + (size_t) i * d ||
				memcmp(g->nodes[i].vec, data + (size_t) i * d, sizeof(float) * d) != 0;
			mem += hnsw_graph_node_bytes(d, 8, g->nodes[i].level, true);
		}
		CHECK(g->vecs_cap == hnsw_graph_vecs_grown(1024) && misplaced == 0,
			  "packed vectors: grown to %d rows, %d nodes not at their row", g->vecs_cap, misplaced);
		CHECK(g->mem == mem, "packed vectors: %zu bytes counted, %zu expected", g->mem, mem);
	}
	knn[0] = n + 5;				/* out of range: dropped */
	hnsw_graph_reserve_search(g);
	hnsw_graph_link_upper(g);
	dropped = hnsw_graph_set_level0(g, knn, deg);
	CHECK(dropped == 1, "out-of-range level-0 edge dropped (%lld)", (long long) dropped);
	CHECK(g->entry >= 0 && g->nodes[g->entry].level == g->max_level,
		  "entry point is a top-level node");
	r = recall(g, data, n, d, data, 100, 64);
	CHECK(r >= 0.9, "given level 0: recall@10 %.3f >= 0.9", r);
	hnsw_graph_free(g);
	free(data);
	free(knn);
}


/*
 * The bounded-memory walk (hnswreach.c) reaches exactly what a plain
 * breadth-first search reaches, whatever its queue length: a random graph
 * of two components over 40 blocks x 7 slots, walked with queues of 1, 3
 * and 1000 slots.  Slots past the bitmap count as reached, never queued.
 */
#define REACH_BLOCKS	40
#define REACH_SLOTS		7
#define REACH_N			(REACH_BLOCKS * REACH_SLOTS)
#define REACH_DEG		3

static void
test_reach(void)
{
	static int	nbr[REACH_N][REACH_DEG];
	bool		ref[REACH_N];
	int			queue[REACH_N];
	int			qh = 0,
				qt = 0;
	int			caps[] = {1, 3, 1000};

	/* ids < REACH_N / 2 link among themselves, the rest among themselves */
	for (int i = 0; i < REACH_N; i++)
		for (int j = 0; j < REACH_DEG; j++)
		{
			int			half = REACH_N / 2;
			int			base = i < half ? 0 : half;

			nbr[i][j] = base + (int) (urand() * (half - 1));
		}
	memset(ref, 0, sizeof(ref));
	ref[0] = true;
	queue[qt++] = 0;
	while (qh < qt)
	{
		int			v = queue[qh++];

		for (int j = 0; j < REACH_DEG; j++)
			if (!ref[nbr[v][j]])
			{
				ref[nbr[v][j]] = true;
				queue[qt++] = nbr[v][j];
			}
	}

	for (int c = 0; c < 3; c++)
	{
		HnswReachWalk w;
		uint32_t	blk;
		uint16_t	off;
		int			expanded = 0,
					wrong = 0;

		hnsw_reach_init(&w, REACH_BLOCKS, REACH_SLOTS, caps[c], &A);
		hnsw_reach_add(&w, 0, 1);
		while (hnsw_reach_next(&w, &blk, &off))
		{
			int			v = (int) blk * REACH_SLOTS + off - 1;

			expanded++;
			for (int j = 0; j < REACH_DEG; j++)
				hnsw_reach_add(&w, (uint32_t) (nbr[v][j] / REACH_SLOTS),
							   (uint16_t) (nbr[v][j] % REACH_SLOTS + 1));
		}
		for (int v = 0; v < REACH_N; v++)
			if (hnsw_reach_contains(&w, (uint32_t) (v / REACH_SLOTS),
									(uint16_t) (v % REACH_SLOTS + 1)) != ref[v])
				wrong++;
		CHECK(wrong == 0, "queue %d: %d slots reached differently from BFS", caps[c], wrong);
		CHECK(expanded == qt, "queue %d: expanded %d, BFS reached %d", caps[c], expanded, qt);
		CHECK(hnsw_reach_contains(&w, REACH_BLOCKS, 1) &&
			  hnsw_reach_contains(&w, 0, REACH_SLOTS + 1),
			  "slots past the bitmap count as reached");
		hnsw_reach_add(&w, REACH_BLOCKS + 5, 1);
		CHECK(!hnsw_reach_next(&w, &blk, &off), "a slot past the bitmap is not queued");
		hnsw_reach_free(&w);
	}
	CHECK(qt < REACH_N, "the test graph has an unreachable part (%d of %d reached)", qt, REACH_N);
}

/*
 * The scan's vector cache (hnswcache.c): what goes in comes out, across
 * map and chunk growth; the budget, shared by two caches, is never
 * exceeded and puts are refused once it is spent; clearing gives it back.
 */
static void
test_vcache(void)
{
	HnswVecCache c1,
				c2;
	size_t		used = 0;
	size_t		limit = 400 * 1024;
	float		v[12];
	int			stored = 0,
				wrong = 0;

	hnsw_vcache_init(&c1, 12, false, &used, limit, &A);
	hnsw_vcache_init(&c2, 12, false, &used, limit, &A);
	for (int i = 1; i <= 3000; i++)
	{
		for (int d = 0; d < 12; d++)
			v[d] = (float) (i * 100 + d);
		if (hnsw_vcache_put(&c1, (uint64_t) i << 16 | 1, v, (uint64_t) i * 7))
			stored++;
	}
	CHECK(stored == 3000, "3000 vectors of 12 floats fit in 400 kB (%d stored)", stored);
	for (int i = 1; i <= 3000; i++)
	{
		const float *got = (const float *) hnsw_vcache_get(&c1, (uint64_t) i << 16 | 1);

		if (got == NULL || got[0] != (float) (i * 100) || got[11] != (float) (i * 100 + 11) ||
			hnsw_vcache_word(got) != (uint64_t) i * 7)
			wrong++;
	}
	CHECK(wrong == 0, "%d cached vectors came back wrong", wrong);
	CHECK(hnsw_vcache_get(&c1, 12345ULL << 16) == NULL, "an absent key is absent");

	stored = 0;
	for (int i = 1; i <= 20000; i++)
		if (hnsw_vcache_put(&c2, (uint64_t) i << 16 | 2, v, 0))
			stored++;
	CHECK(used <= limit, "the shared budget holds (%zu of %zu bytes)", used, limit);
	CHECK(stored > 0 && stored < 20000, "the second cache stops at the budget (%d stored)", stored);
	CHECK(used == c1.bytes + c2.bytes, "every byte is counted once");
	hnsw_vcache_clear(&c2);
	CHECK(used == c1.bytes && c2.n == 0, "clearing gives the budget back");
	CHECK(hnsw_vcache_get(&c1, 77ULL << 16 | 1) != NULL,
		  "clearing one cache leaves the other");
	hnsw_vcache_clear(&c1);
	CHECK(used == 0, "nothing is held after both are cleared (%zu)", used);
}

/*
 * A fixed cache (the shared scan cache's): its layout fits the bytes it is
 * given, and four threads putting overlapping keys at once while they read
 * never see an entry that is not its key's, never pass the capacity, and
 * leave every key they were told was stored readable.
 */
enum
{
	FIXED_DIM = 20,
	FIXED_CAPACITY = 3000,
	FIXED_KEYS = 4000,
	FIXED_THREADS = 4
};

typedef struct FixedWorker
{
	HnswVecCache *c;
	int			first;
	int			wrong;
	char		stored[FIXED_KEYS + 1];
} FixedWorker;

static void
fixed_vector(int key, float *v)
{
	for (int d = 0; d < FIXED_DIM; d++)
		v[d] = (float) (key * 32 + d);
}

static void *
fixed_worker(void *arg)
{
	FixedWorker *w = arg;
	float		v[FIXED_DIM];

	for (int i = 0; i < FIXED_KEYS; i++)
	{
		int			key = (w->first + i * 7) % FIXED_KEYS + 1;
		const float *got;

		fixed_vector(key, v);
		w->stored[key] = hnsw_vcache_put(w->c, (uint64_t) key << 16 | 1, v,
										 (uint64_t) key * 3);
		/* a key another thread stored, maybe a moment ago */
		key = (key * 13) % FIXED_KEYS + 1;
		got = hnsw_vcache_get(w->c, (uint64_t) key << 16 | 1);
		fixed_vector(key, v);
		if (got != NULL && (memcmp(got, v, sizeof(v)) != 0 ||
							hnsw_vcache_word(got) != (uint64_t) key * 3))
			w->wrong++;
	}
	return NULL;
}

static void
test_vcache_fixed(void)
{
	size_t		bytes = hnsw_vcache_fixed_bytes(FIXED_DIM, false, 0, FIXED_CAPACITY);
	char	   *mem = aligned_alloc(16, bytes + 64);
	HnswVecCache c;
	FixedWorker w[FIXED_THREADS];
	pthread_t	th[FIXED_THREADS];
	int			lost = 0,
				wrong = 0;
	float		v[FIXED_DIM];

	CHECK(hnsw_vcache_fixed_capacity(FIXED_DIM, false, 0, bytes) == FIXED_CAPACITY &&
		  hnsw_vcache_fixed_capacity(FIXED_DIM, false, 0, bytes - 1) < FIXED_CAPACITY,
		  "the capacity of the bytes a capacity takes is that capacity");
	CHECK(hnsw_vcache_fixed_capacity(FIXED_DIM, true, 0, bytes) > FIXED_CAPACITY,
		  "codes hold more 20-d vectors than floats in the same bytes");
	memset(mem + bytes, 0x5a, 64);
	hnsw_vcache_init_fixed(&c, FIXED_DIM, false, 0, FIXED_CAPACITY, mem);
	for (int t = 0; t < FIXED_THREADS; t++)
	{
		memset(&w[t], 0, sizeof(FixedWorker));
		w[t].c = &c;
		w[t].first = t * 1000;
		pthread_create(&th[t], NULL, fixed_worker, &w[t]);
	}
	for (int t = 0; t < FIXED_THREADS; t++)
	{
		pthread_join(th[t], NULL);
		wrong += w[t].wrong;
	}
	CHECK(wrong == 0, "%d entries read while others were put were not their key's", wrong);
	CHECK(hnsw_vcache_count(&c) == FIXED_CAPACITY,
		  "a fixed cache fills to its capacity and no further (%lld)",
		  (long long) hnsw_vcache_count(&c));
	for (int key = 1; key <= FIXED_KEYS; key++)
	{
		const float *got = hnsw_vcache_get(&c, (uint64_t) key << 16 | 1);
		bool		stored = false;

		for (int t = 0; t < FIXED_THREADS; t++)
			stored |= w[t].stored[key];
		fixed_vector(key, v);
		if (stored && (got == NULL || memcmp(got, v, sizeof(v)) != 0))
			lost++;
	}
	CHECK(lost == 0, "%d keys a put said were stored cannot be read back", lost);
	CHECK(((unsigned char *) mem)[bytes] == 0x5a && ((unsigned char *) mem)[bytes + 63] == 0x5a,
		  "nothing is written past the cache's bytes");
	hnsw_vcache_clear(&c);
	CHECK(hnsw_vcache_count(&c) == 0 && hnsw_vcache_get(&c, 5ULL << 16 | 1) == NULL,
		  "a cleared fixed cache is empty");
	fixed_vector(5, v);
	CHECK(hnsw_vcache_put(&c, 5ULL << 16 | 1, v, 15) &&
		  hnsw_vcache_get(&c, 5ULL << 16 | 1) != NULL,
		  "and takes puts again");
	free(mem);
}

/*
 * Neighbour lists in a fixed cache: read whole for their tag or a lower
 * one, never for a higher one, only raised by a writer, gone after a
 * clear; and under concurrent writers every list read is one a writer
 * wrote (a torn read would mix two).
 */
#define LINKS_N		32
#define LINKS_KEYS	64
#define LINKS_WRITES 20000

typedef struct LinksWorker
{
	HnswVecCache *c;
	const void *entry;
	bool		writer;
	volatile int *writing;		/* writers not done yet */
	volatile int *ready;		/* threads started */
	int			torn;
	int			reads;
} LinksWorker;

/* The list a writer stores for tag: (tag % LINKS_N) + 1 copies of one slot. */
static int
links_for(uint64_t tag, int32_t *slots)
{
	int			n = (int) (tag % LINKS_N) + 1;

	for (int i = 0; i < n; i++)
		slots[i] = (int32_t) (tag % LINKS_KEYS);
	return n;
}

static void *
links_worker(void *arg)
{
	LinksWorker *w = arg;
	int32_t		slots[LINKS_N];

	/* all start together, so that reads and writes overlap */
	__atomic_fetch_add(w->ready, 1, __ATOMIC_ACQ_REL);
	while (__atomic_load_n(w->ready, __ATOMIC_ACQUIRE) < FIXED_THREADS)
		;
	if (w->writer)
	{
		for (uint64_t tag = 1; tag <= LINKS_WRITES; tag++)
		{
			int			n = links_for(tag, slots);

			/* the fingerprint written with the list: its first slot */
			hnsw_vcache_set_links(w->c, w->entry, tag, slots, n, (uint64_t) slots[0]);
			/* leave readers a moment between writes */
			for (volatile int spin = 0; spin < 200; spin++)
				;
		}
		__atomic_fetch_sub(w->writing, 1, __ATOMIC_RELEASE);
		return NULL;
	}
	while (__atomic_load_n(w->writing, __ATOMIC_ACQUIRE) > 0 || w->reads < 100)
	{
		uint64_t	sum;
		int			n = hnsw_vcache_links(w->c, w->entry, 1, slots, &sum);

		if (n < 0)
			continue;
		w->reads++;
		if (sum != (uint64_t) slots[0])
			w->torn++;
		for (int i = 0; i < n; i++)
			if (slots[i] != slots[0])
				w->torn++;
		/* LINKS_KEYS is a multiple of LINKS_N: the slot gives tag % LINKS_N */
		if (n != slots[0] % LINKS_N + 1)
			w->torn++;
	}
	return NULL;
}

static void
test_vcache_links(void)
{
	size_t		bytes = hnsw_vcache_fixed_bytes(FIXED_DIM, false, LINKS_N, 128);
	char	   *mem = aligned_alloc(16, bytes);
	HnswVecCache c;
	const void *entry[LINKS_KEYS + 1];
	int32_t		slots[LINKS_N],
				got[LINKS_N];
	float		v[FIXED_DIM];
	int			bad = 0,
				n;
	LinksWorker w[FIXED_THREADS];
	pthread_t	th[FIXED_THREADS];
	volatile int writing = 2,
				ready = 0;

	CHECK(bytes > hnsw_vcache_fixed_bytes(FIXED_DIM, false, 0, 128) &&
		  hnsw_vcache_fixed_capacity(FIXED_DIM, false, LINKS_N, bytes) == 128,
		  "lists take room, counted in the capacity");
	hnsw_vcache_init_fixed(&c, FIXED_DIM, false, LINKS_N, 128, mem);
	for (int key = 1; key <= LINKS_KEYS; key++)
	{
		int32_t		slot;

		fixed_vector(key, v);
		hnsw_vcache_put(&c, (uint64_t) key << 16 | 1, v, (uint64_t) key);
		entry[key] = hnsw_vcache_lookup(&c, (uint64_t) key << 16 | 1, &slot);
		bad += slot != key - 1;
	}
	CHECK(bad == 0, "slots are taken in order");

	/* key's list: the slots of the next three keys */
	for (int key = 1; key <= LINKS_KEYS; key++)
	{
		for (int i = 0; i < 3; i++)
			slots[i] = (key + i) % LINKS_KEYS;
		hnsw_vcache_set_links(&c, entry[key], 5, slots, 3, 1000 + key);
	}
	bad = 0;
	for (int key = 1; key <= LINKS_KEYS; key++)
	{
		uint64_t	sum = 0;

		n = hnsw_vcache_links(&c, entry[key], 5, got, &sum);
		bad += n != 3 || sum != (uint64_t) (1000 + key);
		for (int i = 0; i < 3 && n == 3; i++)
		{
			uint64_t	k;
			const float *e = hnsw_vcache_slot_entry(&c, got[i], &k);

			fixed_vector((int) (k >> 16), v);
			bad += k != ((uint64_t) ((key + i) % LINKS_KEYS + 1) << 16 | 1) ||
				memcmp(e, v, sizeof(v)) != 0;
		}
	}
	CHECK(bad == 0, "every list reads back with its neighbours' keys and vectors (%d wrong)", bad);
	CHECK(hnsw_vcache_links(&c, entry[7], 4, got, NULL) == 3 &&
		  hnsw_vcache_links(&c, entry[7], 6, got, NULL) == -1,
		  "a list serves its tag and lower ones, not a later one");
	slots[0] = 9;
	hnsw_vcache_set_links(&c, entry[7], 3, slots, 1, 0);
	CHECK(hnsw_vcache_links(&c, entry[7], 5, got, NULL) == 3,
		  "a writer with a lower tag does not replace a list");
	hnsw_vcache_set_links(&c, entry[7], 6, slots, 1, 0);
	CHECK(hnsw_vcache_links(&c, entry[7], 6, got, NULL) == 1 && got[0] == 9,
		  "a writer with a higher tag does");
	slots[0] = 100;
	hnsw_vcache_set_links(&c, entry[8], 6, slots, 1, 0);
	CHECK(hnsw_vcache_links(&c, entry[8], 6, got, NULL) == -1,
		  "a list naming a slot not taken is not read");
	hnsw_vcache_set_links(&c, entry[9], 6, slots, LINKS_N + 1, 0);
	CHECK(hnsw_vcache_links(&c, entry[9], 6, got, NULL) == -1,
		  "a list longer than the room is not stored");
	{
		/* a list being written (its tag claimed) is neither read nor taken over */
		HnswVecLinks *l = (HnswVecLinks *) ((const char *) entry[10] -
											sizeof(uint64_t) - c.links_size);

		l->tag = HNSW_LINKS_WRITING;
		slots[0] = 1;
		hnsw_vcache_set_links(&c, entry[10], 7, slots, 1, 0);
		CHECK(hnsw_vcache_links(&c, entry[10], 1, got, NULL) == -1 &&
			  l->tag == HNSW_LINKS_WRITING,
			  "a list being written is not read, nor written by another");
	}
	hnsw_vcache_clear(&c);
	fixed_vector(3, v);
	hnsw_vcache_put(&c, 3ULL << 16 | 1, v, 3);
	CHECK(hnsw_vcache_links(&c, hnsw_vcache_get(&c, 3ULL << 16 | 1), 1, got, NULL) == -1,
		  "a slot put after a clear has no list");
	for (int key = 4; key <= LINKS_KEYS + 1; key++)
	{
		fixed_vector(key, v);
		hnsw_vcache_put(&c, (uint64_t) key << 16 | 1, v, 0);
	}

	for (int t = 0; t < FIXED_THREADS; t++)
	{
		memset(&w[t], 0, sizeof(LinksWorker));
		w[t].c = &c;
		w[t].entry = hnsw_vcache_get(&c, 3ULL << 16 | 1);
		w[t].writer = t < 2;
		w[t].writing = &writing;
		w[t].ready = &ready;
		pthread_create(&th[t], NULL, links_worker, &w[t]);
	}
	bad = 0;
	n = 0;
	for (int t = 0; t < FIXED_THREADS; t++)
	{
		pthread_join(th[t], NULL);
		bad += w[t].torn;
		n += w[t].reads;
	}
	CHECK(bad == 0 && n > 0,
		  "lists read while two threads rewrite them are whole (%d reads, %d torn)",
		  n, bad);
	free(mem);
}

/*
 * 8-bit codes: each coordinate decodes to within half a step of the
 * vector's own range, the distances read from codes stay within the bound
 * that error implies, for L2 and inner product, and a code takes a
 * quarter of a float vector's bytes (plus its header).
 */
static void
test_vcache_codes(void)
{
	enum
	{
		DIM = 100, N = 500
	};
	HnswVecCache c;
	HnswVecCache f;
	HnswVecQuery q;
	size_t		used = 0;
	static float vecs[N][DIM];
	float		query[DIM];
	int8_t		qcodes[DIM];
	int			bad_decode = 0,
				bad_l2 = 0,
				bad_ip = 0,
				exact = 0;

	hnsw_vcache_init(&c, DIM, true, &used, (size_t) 1 << 30, &A);
	hnsw_vcache_init(&f, DIM, false, &used, (size_t) 1 << 30, &A);
	for (int d = 0; d < DIM; d++)
		query[d] = 2.0f * urand() - 1.0f;
	hnsw_vcache_query(&q, query, DIM, qcodes);
	for (int i = 0; i < N; i++)
	{
		/* a spread that differs from vector to vector, offset from 0 */
		float		spread = 0.1f + (float) i / N * 10.0f;

		for (int d = 0; d < DIM; d++)
			vecs[i][d] = 3.0f + spread * (2.0f * urand() - 1.0f);
		hnsw_vcache_put(&c, (uint64_t) (i + 1) << 16, vecs[i], (uint64_t) i);
		hnsw_vcache_put(&f, (uint64_t) (i + 1) << 16, vecs[i], (uint64_t) i);
	}
	for (int i = 0; i < N; i++)
	{
		const void *e = hnsw_vcache_get(&c, (uint64_t) (i + 1) << 16);
		double		qerr = hnsw_vcache_error(&c, &q, e),
					l2 = vec_l2_squared_ref(query, vecs[i], DIM),
					ip = vec_inner_product_ref(query, vecs[i], DIM);
		float		got_l2 = hnsw_vcache_distance(&c, HNSW_METRIC_L2, &q, e),
					got_ip = hnsw_vcache_distance(&c, HNSW_METRIC_IP, &q, e);

		if (!hnsw_vcache_matches(&c, e, vecs[i]))
			bad_decode++;
		/* the dot within the bound; L2 moves by twice that */
		if (fabs(got_ip + ip) > qerr + 1e-3 * fabs(ip) + 1e-4)
			bad_ip++;
		if (fabs(got_l2 - l2) > 2 * qerr + 1e-4 * l2 + 1e-3)
			bad_l2++;
		if (hnsw_vcache_word(e) != (uint64_t) i)
			bad_decode++;
		e = hnsw_vcache_get(&f, (uint64_t) (i + 1) << 16);
		if (hnsw_vcache_distance(&f, HNSW_METRIC_L2, &q, e) == vec_l2_squared(query, vecs[i], DIM))
			exact++;
	}
	CHECK(bad_decode == 0, "codes: %d entries off their vectors or words", bad_decode);
	CHECK(bad_l2 == 0, "codes: %d L2 distances outside the bound", bad_l2);
	CHECK(bad_ip == 0, "codes: %d inner products outside the bound", bad_ip);
	CHECK(exact == N, "float entries give the exact distance (%d of %d)", exact, N);
	CHECK(hnsw_vcache_entry_bytes(&c) == sizeof(HnswVecCode) + 104 &&
		  hnsw_vcache_entry_bytes(&f) == sizeof(float) * DIM,
		  "a code is a header and dim bytes rounded up to 8");
	hnsw_vcache_clear(&c);
	hnsw_vcache_clear(&f);
	CHECK(used == 0, "codes give their budget back");
}

/*
 * hnsw_list_add against a full re-selection: a stream of candidates (not
 * yet members) into one list, from an unknown state and from the state
 * each re-selection leaves, must give the members
 * hnsw_select_keep_pruned gives over the old members and the candidate in
 * ascending (distance, id) order, the heuristic's first; clustered points
 * so that both the heuristic and the fill decide.
 */
static long list_vectors_read;

static const float *
list_vector_of(void *arg, int32_t id)
{
	list_vectors_read++;
	return (const float *) arg + (size_t) id * 8;
}

static int
cmp_heap_item(const void *a, const void *b)
{
	const HnswHeapItem *x = a,
			   *y = b;

	if (x->dist != y->dist)
		return x->dist < y->dist ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static void
test_list_add(void)
{
	enum
	{
		DIM = 8, N = 2000, MAX = 32
	};
	static float vecs[N + 1][DIM];
	int32_t		ids[MAX];
	float		dists[MAX];
	uint8_t		nkept = HNSW_KEPT_UNKNOWN;
	HnswHeapItem scratch[2 * (MAX + 1)];
	HnswHeapItem cands[MAX + 1];
	HnswHeapItem want[MAX];
	int			cnt = 0,
				wrong = 0,
				known = 0;
	long		before,
				full_reads = 0,
				incremental_reads = 0;

	for (int i = 0; i <= N; i++)
		for (int d = 0; d < DIM; d++)
			vecs[i][d] = (i % 7) * 0.3f + urand();
	/* node N owns the list; 0..N-1 arrive in turn */
	for (int32_t id = 0; id < N; id++)
	{
		float		dist = hnsw_distance(HNSW_METRIC_L2, vecs[N], vecs[id], DIM);
		int			nwant = 0,
					nh = 0;

		if (cnt == MAX)
		{
			for (int i = 0; i < cnt; i++)
			{
				cands[i].id = ids[i];
				cands[i].dist = dists[i];
			}
			cands[cnt].id = id;
			cands[cnt].dist = dist;
			qsort(cands, cnt + 1, sizeof(HnswHeapItem), cmp_heap_item);
			before = list_vectors_read;
			nwant = hnsw_select_list(HNSW_METRIC_L2, DIM, cands, cnt + 1, MAX,
									 list_vector_of, vecs, want, &nh);
			if (nkept != HNSW_KEPT_UNKNOWN)
			{
				known++;
				full_reads += list_vectors_read - before;
			}
		}
		before = list_vectors_read;
		{
			bool		was_known = cnt == MAX && nkept != HNSW_KEPT_UNKNOWN;

			cnt = hnsw_list_add(HNSW_METRIC_L2, DIM, ids, dists, &nkept, cnt, MAX,
								id, dist, list_vector_of, vecs, scratch);
			if (was_known)
				incremental_reads += list_vectors_read - before;
		}
		if (nwant > 0)
		{
			bool		same = cnt == nwant && nkept == nh;

			for (int i = 0; i < nwant && same; i++)
				same = ids[i] == want[i].id && dists[i] == want[i].dist;
			wrong += !same;
		}
		/* now and then an append-like reset, as the builds' other writers do */
		if (id % 500 == 499)
			nkept = HNSW_KEPT_UNKNOWN;
	}
	CHECK(cnt == MAX, "the list is full (%d)", cnt);
	CHECK(known > N / 2, "most re-selections started from a known state (%d)", known);
	CHECK(wrong == 0, "%d incremental re-selections differ from the full one", wrong);
	CHECK(incremental_reads * 4 < full_reads,
		  "from a known state a re-selection reads a quarter of the vectors or fewer (%ld of %ld)",
		  incremental_reads, full_reads);
}

int
main(void)
{
	vec_distance_init(VEC_ISA_AVX512);
	test_heap();
	test_rank();
	test_keyset();
	test_recall(HNSW_METRIC_L2, "l2");
	test_recall(HNSW_METRIC_IP, "ip");
	test_recall(HNSW_METRIC_COSINE, "cosine");
	test_recall(HNSW_METRIC_L1, "l1");
	test_duplicates();
	test_connect();
	test_connect_full_lists();
	test_level0();
	test_reach();
	test_vcache();
	test_vcache_fixed();
	test_vcache_links();
	test_vcache_codes();
	test_list_add();
	return unit_report("hnswgraph");
}
