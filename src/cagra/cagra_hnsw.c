/*
 * cagra_hnsw.c
 *		A CAGRA graph as level 0 of an HNSW graph (hnsw.h, pure half), made
 *		navigable: shared by the index build and bench/bin/cagra_build, so
 *		that the driver measures the graph the index writes.
 *
 * Why a CAGRA graph needs help.  Its rows are pruned kNN lists, so on
 * clustered data it is islands: at 100k x 128 in 1000 clusters almost no
 * edge leaves a cluster.  hnsw_graph_connect makes every node reachable,
 * but a search still has to find the query's cluster.  The upper levels
 * lead it there only greedily (ef = 1), and when they stop in a
 * neighbouring cluster, level 0 must carry the search across.  An HNSW-
 * built level 0 can: insertion gave every node, through the neighbour-
 * selection heuristic, edges in several directions, some of them long.
 * Measured on that set (bench/bin/cagra_build --index), a search starting
 * from the true nearest neighbour finds 99% of the top 10 in the CAGRA
 * graph; one starting where the upper levels end finds 5 points fewer
 * than in the HNSW-built graph at ef 20-40.
 *
 * The pass below gives every node such edges, at the price of its last
 * CAGRA slots (the lowest-priority ones, see cagra_merge_reverse).  The
 * nodes of level >= 1 are a sample of about 1/m of the rows whose level-1
 * graph, built by HNSW insertion, spans the whole set with long, diverse
 * edges.  For each node u, the sampled node nearest u is found as a
 * search descends to level 1 (greedily; under inner product a beam of m
 * at level 1, see LONG_EDGES_BEAM); it and its level-1 neighbours are u's
 * candidates, and the neighbour-selection heuristic keeps those in
 * distinct directions (under inner product filled up with the nearest of
 * the others, see LONG_EDGES_SELECT): up to m for a sampled node, m / 2
 * for the others.
 * Each node also accepts up to m / 4 (rounded up) of the long edges that
 * point at it, so that a cluster holding no sampled node
 * is entered from the clusters around it as well.  A search left in the
 * wrong cluster then meets edges towards the clusters around it within a
 * hop or two, as in an HNSW-built graph.  Measured costs and gains:
 * docs/cagra.md.
 *
 * Where the data have no cluster structure for the long edges to bridge
 * (the graphs pruned by distance, cagra_prune_graph), a long edge is kept
 * only when none of the node's CAGRA edges covers its direction (the
 * heuristic's test against the CAGRA row): on random rows and the demo's
 * topics the long edges took 8-12 of 32 slots for directions the row had,
 * about a point of recall@10 at ef 10-20.  On clustered data the same test
 * drops the edges between clusters (one of 32 CAGRA edges is nearly always
 * a little nearer to another cluster than the node is), up to 2 points
 * there, so it is not applied to graphs pruned by detour counts.
 */
#define HNSW_PURE
#include "hnsw/hnsw.h"

#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"

/* Level-0 lists hold 2m ids, counted in a uint8_t. */
#define LEVEL0_MAX_SLOTS 255

/* Long edges a node chooses, at most (and at most m). */
#define LONG_EDGES_MAX(m, level)	((level) >= 1 ? (m) : (m) / 2)
/*
 * Sampled nodes whose level-1 lists give a node its long-edge candidates:
 * the one nearest it under a metric.  Under inner product the greedy
 * descent ends at a node of large norm, not at one near u, and the long
 * edges it gives all point the same way: a beam of m and all their lists
 * (at 100k x 128 in 1000 clusters, recall@10 at ef 80 / 160 / 320 0.970 /
 * 0.983 / 0.989 against 0.953 / 0.965 / 0.976 from the nearest alone).
 * For the metrics the beam cost 3-8 times the CPU time for a worse graph
 * (docs/cagra.md).
 */
#define LONG_EDGES_BEAM(metric, m)	((metric) == HNSW_METRIC_IP ? (m) : 1)
/*
 * How a node keeps long edges of its candidates: the neighbour-selection
 * heuristic keeps those in distinct directions, and under inner product
 * then the nearest it passed over until LONG_EDGES_MAX (Alg. 4 with
 * keepPrunedConnections, as HNSW insertion fills every list).  The
 * heuristic's test, c nearer to a kept node k than to u, is no geometry
 * under inner product: it holds for nearly every c once k has a large
 * norm, so the heuristic alone kept 4.2 long edges a node of the 8 (16 for
 * sampled nodes) allowed at 100k x 128 in 1000 clusters, and recall@10 at
 * ef 80 / 160 / 320 was 0.970 / 0.983 / 0.989 against the HNSW-built
 * graph's 0.976 / 0.987 / 0.992; filled, 8.5 a node and 0.977 / 0.985 /
 * 0.989 (docs/cagra.md).
 */
#define LONG_EDGES_SELECT(metric) \
	((metric) == HNSW_METRIC_IP ? hnsw_select_keep_pruned : hnsw_heuristic_select)
/* Reverse long edges a node accepts, at most (one at least). */
#define LONG_EDGES_IN(m)			(((m) + 3) / 4)

/* One thread's searches: the long edges', or the reachability pass's. */
typedef struct SearchThread
{
	HnswHeap	cand;
	HnswHeap	res;
	uint32_t   *visited;
	uint32_t	tag;
	HnswHeapItem *found;		/* ef + 1 */
	HnswHeapItem *kept;			/* long edges: m */
	HnswHeapItem *cands;		/* long edges: (m + 1) x (m + 1), found and
								 * their lists */
} SearchThread;

typedef struct LongEdgeJob
{
	HnswGraph  *g;
	SearchThread *threads;
	const int32_t *order;		/* the nodes in the order they are chosen for */
	int32_t    *out;			/* n x m: the long edges each node chose */
	uint8_t    *n_out;
	int32_t    *in;				/* n x LONG_EDGES_IN: chosen by others */
	uint8_t    *n_in;
	bool		drop_covered;	/* drop long edges a CAGRA edge covers */
	bool		write_rows;		/* second pass: rewrite the level-0 rows */
} LongEdgeJob;

static void *
malloc_alloc(void *ctx, size_t size)
{
	(void) ctx;
	return malloc(size);
}

static void
malloc_free(void *ctx, void *ptr)
{
	(void) ctx;
	free(ptr);
}

/* Worker threads allocate with malloc, never with the server's allocator. */
static const HnswAllocator long_edge_allocator = {
	malloc_alloc, malloc_free, NULL
};

static int
item_cmp(const void *a, const void *b)
{
	const HnswHeapItem *x = a;
	const HnswHeapItem *y = b;

	if (x->dist != y->dist)
		return x->dist < y->dist ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/*
 * A search for v from the entry point down to level bottom: a beam of 1
 * above it, of ef at it.  th->found gets the nodes found at bottom,
 * nearest first; returns how many.
 */
static int
search_descend(HnswGraph *g, SearchThread *th, const float *v, int bottom,
			   int ef)
{
	HnswLayerSearch ls = {g->metric, g->dim, hnsw_graph_neighbors_of, hnsw_graph_vector_of, g,
	&th->cand, &th->res, th->visited, 0};
	int32_t		ep = g->entry;
	float		epdist = hnsw_distance(g->metric, v, g->nodes[ep].vec, g->dim);
	int			nfound = 0;

	for (int lc = g->max_level; lc >= bottom; lc--)
	{
		ls.tag = ++th->tag;
		nfound = hnsw_layer_search(&ls, v, ep, epdist, lc == bottom ? ef : 1,
								   lc, th->found);
		ep = th->found[0].id;
		epdist = th->found[0].dist;
	}
	return nfound;
}

/*
 * u's candidates: the nfound nodes in th->found and their level-1
 * neighbours, u itself excepted, once each, in ascending distance.
 */
static int
long_edges_candidates(HnswGraph *g, SearchThread *th, int32_t u, int nfound)
{
	const float *v = g->nodes[u].vec;
	uint32_t	tag = ++th->tag;
	int			nc = 0;

	for (int i = 0; i < nfound; i++)
	{
		const int32_t *list;
		int			cnt = hnsw_graph_neighbors_of(g, th->found[i].id, 1, &list);

		if (th->found[i].id != u && th->visited[th->found[i].id] != tag)
		{
			th->visited[th->found[i].id] = tag;
			th->cands[nc++] = th->found[i];
		}
		for (int j = 0; j < cnt; j++)
		{
			int32_t		c = list[j];

			if (c == u || th->visited[c] == tag)
				continue;
			th->visited[c] = tag;
			th->cands[nc].id = c;
			th->cands[nc].dist = hnsw_distance(g->metric, v, g->nodes[c].vec,
											   g->dim);
			nc++;
		}
	}
	qsort(th->cands, nc, sizeof(HnswHeapItem), item_cmp);
	return nc;
}

/*
 * Whether one of u's CAGRA edges already leads towards long-edge candidate
 * c: c is nearer to it than to u, the test of the neighbour-selection
 * heuristic.  Such a long edge would take a slot from a CAGRA edge for a
 * direction the row covers.
 */
static bool
long_edge_covered(HnswGraph *g, int32_t u, const HnswHeapItem *c)
{
	const HnswGraphNode *node = &g->nodes[u];
	const float *cv = g->nodes[c->id].vec;

	for (int j = 0; j < node->counts[0]; j++)
		if (node->nbrs[j] == c->id ||
			hnsw_distance(g->metric, cv, g->nodes[node->nbrs[j]].vec,
						  g->dim) < c->dist)
			return true;
	return false;
}

/*
 * u's long edges: the nodes of level >= 1 nearest u, found as a search
 * descends (greedily down to level 2, then a beam of LONG_EDGES_BEAM at
 * level 1), with their level-1 neighbours, of which the heuristic keeps
 * those in distinct directions.
 */
static void
long_edges_choose(const LongEdgeJob *job, SearchThread *th, int32_t u)
{
	HnswGraph  *g = job->g;
	int			m = g->m;
	int			nfound;
	int			n;

	nfound = search_descend(g, th, g->nodes[u].vec, 1,
							LONG_EDGES_BEAM(g->metric, m));
	nfound = long_edges_candidates(g, th, u, nfound);
	n = LONG_EDGES_SELECT(g->metric) (g->metric, g->dim, th->cands, nfound,
									  LONG_EDGES_MAX(m, g->nodes[u].level),
									  hnsw_graph_vector_of, g, th->kept);
	job->n_out[u] = 0;
	for (int i = 0; i < n; i++)
		if (!job->drop_covered || !long_edge_covered(g, u, &th->kept[i]))
			job->out[(int64_t) u * m + job->n_out[u]++] = th->kept[i].id;
}

/*
 * u's new level-0 list: its first CAGRA edges, its long edges out and in,
 * then the rest of its CAGRA edges while slots remain.
 */
static void
long_edges_write_row(const LongEdgeJob *job, int32_t u)
{
	HnswGraph  *g = job->g;
	HnswGraphNode *node = &g->nodes[u];
	int			m = g->m;
	int			cnt = node->counts[0];
	const int32_t *out = job->out + (int64_t) u * m;
	const int32_t *in = job->in + (int64_t) u * LONG_EDGES_IN(m);
	int			front = 2 * m - job->n_out[u] - job->n_in[u];
	int32_t		row[LEVEL0_MAX_SLOTS];
	int			len;

	front = front < cnt ? front : cnt;
	memcpy(row, node->nbrs, sizeof(int32_t) * front);
	len = front;
	for (int j = 0; j < job->n_out[u]; j++)
		if (!hnsw_list_has(row, len, out[j]))
			row[len++] = out[j];
	for (int j = 0; j < job->n_in[u]; j++)
		if (!hnsw_list_has(row, len, in[j]))
			row[len++] = in[j];
	for (int j = front; j < cnt && len < 2 * m; j++)
		if (!hnsw_list_has(row, len, node->nbrs[j]))
			row[len++] = node->nbrs[j];
	memcpy(node->nbrs, row, sizeof(int32_t) * len);
	node->counts[0] = (uint8_t) len;
}

/*
 * Both passes read the upper levels and write only node u's own data, so
 * the nodes are independent.  Long edges are chosen in breadth-first order
 * of the CAGRA graph (consecutive nodes are near one another, and their
 * searches pass the same upper nodes, which stay in the cache); the rows
 * are rewritten by id.
 */
static int
long_edges_range(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const LongEdgeJob *job = arg;

	for (int64_t pos = begin; pos < end; pos++)
	{
		int32_t		u = job->write_rows ? (int32_t) pos : job->order[pos];

		if (job->write_rows)
			long_edges_write_row(job, u);
		else
			long_edges_choose(job, &job->threads[thread_no], u);
	}
	return 0;
}

/*
 * The reverse long edges: node v accepts those of u -> v whose rank in u's
 * list is lowest, then by u, up to LONG_EDGES_IN(m): a node of a cluster
 * without sampled nodes is thereby entered from the clusters around it too.
 */
static void
long_edges_reverse(LongEdgeJob *job)
{
	HnswGraph  *g = job->g;
	int			m = g->m;

	for (int rank = 0; rank < m; rank++)
		for (int32_t u = 0; u < g->n; u++)
		{
			int32_t		v;

			if (rank >= job->n_out[u])
				continue;
			v = job->out[(int64_t) u * m + rank];
			if (job->n_in[v] < LONG_EDGES_IN(m))
				job->in[(int64_t) v * LONG_EDGES_IN(m) + job->n_in[v]++] = u;
		}
}

/*
 * A thread's scratch for searches of beam ef, its candidate heap starting
 * at cand_cap (it grows); with long_edges, room for a node's candidates.
 */
static bool
search_thread_init(SearchThread *th, const HnswGraph *g, int cand_cap, int ef,
				   bool long_edges)
{
	int			m = g->m;

	memset(th, 0, sizeof(SearchThread));
	hnsw_heap_init(&th->cand, false, cand_cap, &long_edge_allocator);
	hnsw_heap_init(&th->res, true, ef + 1, &long_edge_allocator);
	th->visited = calloc(g->n, sizeof(uint32_t));
	th->found = malloc(sizeof(HnswHeapItem) * (ef + 1));
	if (long_edges)
	{
		th->kept = malloc(sizeof(HnswHeapItem) * m);
		th->cands = malloc(sizeof(HnswHeapItem) * (m + 1) * (m + 1));
	}
	return th->cand.items != NULL && th->res.items != NULL &&
		th->visited != NULL && th->found != NULL &&
		(!long_edges || (th->kept != NULL && th->cands != NULL));
}

static void
search_thread_free(SearchThread *th)
{
	if (th->cand.items)
		hnsw_heap_free(&th->cand);
	if (th->res.items)
		hnsw_heap_free(&th->res);
	free(th->visited);
	free(th->found);
	free(th->kept);
	free(th->cands);
}

/*
 * The end of a stage searching on threads: free threads[0 .. n_ready) and
 * turn its outcome rc into a status, "out of memory for <what> N nodes" or
 * "<name> canceled".
 */
static CagraStatus
search_stage_end(SearchThread *threads, int n_ready, int rc, const char *what,
				 const char *name, int64_t n, char *errbuf, size_t errlen)
{
	for (int t = 0; t < n_ready; t++)
		search_thread_free(&threads[t]);
	free(threads);
	if (rc == CAGRA_ERR_NOMEM)
		return cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
						   "out of memory for %s %lld nodes", what,
						   (long long) n);
	if (rc == CAGRA_ERR_CANCELED)
		return cagra_error(CAGRA_ERR_CANCELED, errbuf, errlen, "%s canceled",
						   name);
	return CAGRA_OK;
}

static CagraStatus
add_long_edges(HnswGraph *g, const int32_t *graph, int degree,
			   bool drop_covered, int n_threads,
			   const CagraInterrupt *interrupt, char *errbuf, size_t errlen)
{
	LongEdgeJob job = {0};
	int32_t    *order = malloc(sizeof(int32_t) * (size_t) g->n);
	int			m = g->m;
	int32_t		n_upper = 0;
	int			n_ready = 0;
	bool		ok;
	int			rc = 0;

	cagra_kernels_ready();		/* hnsw_distance's kernels, before threads */
	n_threads = cagra_thread_count(n_threads);
	for (int32_t i = 0; i < g->n; i++)
		n_upper += g->nodes[i].level >= 1;
	job.g = g;
	job.drop_covered = drop_covered;
	job.threads = calloc(n_threads, sizeof(SearchThread));
	job.out = malloc(sizeof(int32_t) * (size_t) g->n * m);
	job.n_out = calloc(g->n, 1);
	job.in = malloc(sizeof(int32_t) * (size_t) g->n * LONG_EDGES_IN(m));
	job.n_in = calloc(g->n, 1);
	ok = job.threads != NULL && job.out != NULL && job.n_out != NULL &&
		job.in != NULL && job.n_in != NULL && order != NULL &&
		cagra_locality_order(graph, g->n, degree, order);
	job.order = order;
	for (; ok && n_ready < n_threads; n_ready++)
		/* the candidate heap never holds more than every upper node once */
		ok = search_thread_init(&job.threads[n_ready], g, n_upper + 1, m,
								true);

	/* no upper level (a tiny graph): nothing to reach through */
	if (ok && g->max_level >= 1)
	{
		rc = cagra_parallel_for(n_threads, g->n, 256, long_edges_range, &job,
								interrupt);
		if (rc == 0)
		{
			long_edges_reverse(&job);
			job.write_rows = true;
			rc = cagra_parallel_for(n_threads, g->n, 1024, long_edges_range,
									&job, interrupt);
		}
	}
	free(job.out);
	free(job.n_out);
	free(job.in);
	free(job.n_in);
	free(order);
	return search_stage_end(job.threads, n_ready, ok ? rc : CAGRA_ERR_NOMEM,
							"the long edges of", "long edges", g->n, errbuf,
							errlen);
}

/*
 * Every node reachable from the entry point.  Under inner product, rows of
 * small length are nobody's near neighbour, and many nodes end up with no
 * in-edge: at 100k x 128 in 1000 clusters, 22,692.  hnsw_graph_connect
 * searches for each of them in turn, which took 2.4 s of a 6.5 s build on
 * 2 threads there; the same pass with its searches run on the build's
 * threads (hnsw_graph_connect_batched), each thread with scratch of its
 * own.  The index build's own pass afterwards then finds nothing to do.
 */
typedef struct ConnectJob
{
	SearchThread *threads;		/* made at the first batch */
	int			n_threads;
	int			n_ready;		/* threads' scratch made (to free) */
	const CagraInterrupt *interrupt;
	HnswGraph  *g;
	const int32_t *nodes;		/* this batch's nodes, their results: */
	int			k;
	int32_t    *ids;
	int		   *found;
} ConnectJob;

/* Each node's k nearest from the entry point: greedy above, ef k at 0. */
static int
connect_search_range(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const ConnectJob *job = arg;
	SearchThread *th = &job->threads[thread_no];
	HnswGraph  *g = job->g;

	for (int64_t b = begin; b < end; b++)
	{
		int			nfound = search_descend(g, th, g->nodes[job->nodes[b]].vec,
											0, job->k);

		job->found[b] = nfound;
		for (int j = 0; j < nfound; j++)
			job->ids[b * job->k + j] = th->found[j].id;
	}
	return 0;
}

/* Each thread's heaps and visited marks; false when out of memory. */
static bool
connect_threads_init(ConnectJob *job, const HnswGraph *g)
{
	job->threads = calloc(job->n_threads, sizeof(SearchThread));
	if (job->threads == NULL)
		return false;
	while (job->n_ready < job->n_threads)
		if (!search_thread_init(&job->threads[job->n_ready++], g, 1024,
								g->ef_construction, false))
			return false;
	return true;
}

/* The scratch is made at the first batch: most graphs need none. */
static int
connect_search_batch(void *arg, HnswGraph *g, const int32_t *nodes, int count,
					 int k, int32_t *ids, int *found)
{
	ConnectJob *job = arg;

	if (job->threads == NULL && !connect_threads_init(job, g))
		return CAGRA_ERR_NOMEM;
	job->g = g;
	job->nodes = nodes;
	job->k = k;
	job->ids = ids;
	job->found = found;
	return cagra_parallel_for(job->n_threads, count, 64, connect_search_range,
							  job, job->interrupt);
}

static CagraStatus
connect_all(HnswGraph *g, int n_threads, const CagraInterrupt *interrupt,
			int64_t *connected, char *errbuf, size_t errlen)
{
	ConnectJob	job = {0};
	int64_t		unreached;
	int			rc;

	job.n_threads = cagra_thread_count(n_threads);
	job.interrupt = interrupt;
	rc = hnsw_graph_connect_batched(g, connect_search_batch, &job, connected,
									&unreached);
	return search_stage_end(job.threads, job.n_ready, rc, "connecting",
							"connecting", g->n, errbuf, errlen);
}

CagraStatus
cagra_hnsw_level0(struct HnswGraph *g, const int32_t *graph, int degree,
				  bool drop_covered_long_edges, int n_threads,
				  const CagraInterrupt *interrupt, int64_t *dropped,
				  int64_t *connected, char *errbuf, size_t errlen)
{
	CagraStatus status;

	*connected = 0;
	if (g->n > 0 && g->entry < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "the upper levels must be linked before level 0");
	if (2 * g->m > LEVEL0_MAX_SLOTS)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "m = %d leaves more than %d level-0 slots",
						   g->m, LEVEL0_MAX_SLOTS);
	*dropped = hnsw_graph_set_level0(g, graph, degree);
	status = add_long_edges(g, graph, degree, drop_covered_long_edges,
							n_threads, interrupt, errbuf, errlen);
	if (status != CAGRA_OK || g->n == 0)
		return status;
	return connect_all(g, n_threads, interrupt, connected, errbuf, errlen);
}
