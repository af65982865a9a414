/*
 * cagra_connect.c
 *		Stage 4 of CAGRA: make every node reachable from the entry node.
 *
 * cuVS gets there with a degree-constrained minimum spanning tree over the
 * kNN graph before pruning.  We repair the final graph instead, which is
 * what the index uses, and keep its degree d:
 *
 *	1. A breadth-first search from the entry marks the reachable nodes and
 *	   records, for each, the edge it was first reached by (its parent).
 *	   These tree edges are never removed, so a reached node stays reached.
 *	2. For each node u still unreached, in id order, a beam search for u's
 *	   own vector runs from the entry over the graph (which only visits
 *	   reached nodes); the closest node r it returns that has a slot free of
 *	   tree edges gets the edge r -> u, in an empty slot or else in its last
 *	   non-tree slot (the lowest-priority reverse edge).  That is where a
 *	   search for u would have ended, so the new edge is also a useful one.
 *	3. A breadth-first search from u over unreached nodes extends the tree.
 *
 * A slot free of tree edges always exists among reached nodes: R reached
 * nodes hold R * d slots but only R - 1 tree edges.  Each unreached
 * component costs one search and one edge.
 */
#include <stdlib.h>

#include "cagra/cagra.h"

#define REPAIR_EF 64

typedef struct ConnectState
{
	int32_t    *graph;
	int64_t		n;
	int			d;
	int32_t    *parent;			/* tree parent, -1: not reached */
	int32_t    *queue;
	int64_t		n_reached;
} ConnectState;

/* Mark everything reachable from start, itself reached already. */
static void
connect_bfs(ConnectState *st, int32_t start)
{
	int64_t		head = 0;
	int64_t		tail = 0;

	st->queue[tail++] = start;
	while (head < tail)
	{
		int32_t		node = st->queue[head++];
		const int32_t *row = st->graph + (int64_t) node * st->d;

		for (int j = 0; j < st->d; j++)
		{
			int32_t		nb = row[j];

			if (nb < 0 || nb >= st->n || st->parent[nb] >= 0)
				continue;
			st->parent[nb] = node;
			st->n_reached++;
			st->queue[tail++] = nb;
		}
	}
}

/*
 * A slot of node that holds no tree edge, preferring an empty one (-1, or
 * an id out of range, which no search follows), or -1 if there is none.
 */
static int
connect_free_slot(const ConnectState *st, int32_t node)
{
	const int32_t *row = st->graph + (int64_t) node * st->d;

	for (int j = 0; j < st->d; j++)
		if (row[j] < 0 || row[j] >= st->n)
			return j;
	for (int j = st->d - 1; j >= 0; j--)
		if (st->parent[row[j]] != node)
			return j;
	return -1;
}

/* Link u from the best reached node with a free slot. */
static void
connect_attach(ConnectState *st, CagraSearch *search, const float *data,
			   int dim, CagraMetric metric, int32_t entry, int32_t u)
{
	int32_t		found[REPAIR_EF];
	int			n_found;
	int32_t		host = -1;
	int			slot = -1;

	n_found = cagra_search(search, st->graph, st->n, st->d, data, dim, metric,
						   data + (int64_t) u * dim, entry, REPAIR_EF,
						   REPAIR_EF, found, NULL);
	for (int i = 0; i < n_found && slot < 0; i++)
	{
		host = found[i];
		slot = connect_free_slot(st, host);
	}
	/* all nearby slots hold tree edges: any reached node will do */
	for (int64_t i = 0; i < st->n && slot < 0; i++)
	{
		host = (int32_t) i;
		if (st->parent[i] >= 0)
			slot = connect_free_slot(st, host);
	}
	st->graph[(int64_t) host * st->d + slot] = u;
	st->parent[u] = host;
	st->n_reached++;
	connect_bfs(st, u);
}

CagraStatus
cagra_guarantee_connectivity(int32_t *graph, int64_t n, int d,
							 const float *data, int dim, CagraMetric metric,
							 int32_t entry, int64_t *unreachable,
							 int64_t *repair_edges, char *errbuf, size_t errlen)
{
	ConnectState st;
	CagraSearch *search = NULL;
	int64_t		added = 0;
	CagraStatus status = CAGRA_OK;

	if (n < 1 || n > INT32_MAX || d < 1 || dim < 1 || entry < 0 || entry >= n ||
		(unsigned) metric > CAGRA_METRIC_L1)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "invalid connectivity repair: %lld rows, degree %d, dimension %d, entry %d",
						   (long long) n, d, dim, (int) entry);
	st.graph = graph;
	st.n = n;
	st.d = d;
	st.parent = malloc(n * sizeof(int32_t));
	st.queue = malloc(n * sizeof(int32_t));
	if (st.parent == NULL || st.queue == NULL)
	{
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for the connectivity repair");
		goto done;
	}
	for (int64_t i = 0; i < n; i++)
		st.parent[i] = -1;
	st.parent[entry] = entry;
	st.n_reached = 1;
	connect_bfs(&st, entry);
	if (unreachable)
		*unreachable = n - st.n_reached;
	if (st.n_reached == n)
		goto done;

	search = cagra_search_create(n, REPAIR_EF);
	if (search == NULL)
	{
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for the connectivity repair");
		goto done;
	}
	for (int64_t u = 0; u < n && st.n_reached < n; u++)
	{
		if (st.parent[u] >= 0)
			continue;
		connect_attach(&st, search, data, dim, metric, entry, (int32_t) u);
		added++;
	}

done:
	if (repair_edges)
		*repair_edges = added;
	cagra_search_free(search);
	free(st.parent);
	free(st.queue);
	return status;
}

int64_t
cagra_count_reachable(const int32_t *graph, int64_t n, int d, int32_t entry,
					  char *errbuf, size_t errlen)
{
	ConnectState st;
	int64_t		reached;

	if (n < 1 || d < 1 || entry < 0 || entry >= n)
	{
		cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
					"invalid reachability count: %lld rows, degree %d, entry %d",
					(long long) n, d, (int) entry);
		return -1;
	}
	st.graph = (int32_t *) graph;
	st.n = n;
	st.d = d;
	st.parent = malloc(n * sizeof(int32_t));
	st.queue = malloc(n * sizeof(int32_t));
	if (st.parent == NULL || st.queue == NULL)
	{
		free(st.parent);
		free(st.queue);
		cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
					"out of memory counting reachable nodes");
		return -1;
	}
	for (int64_t i = 0; i < n; i++)
		st.parent[i] = -1;
	st.parent[entry] = entry;
	st.n_reached = 1;
	connect_bfs(&st, entry);
	reached = st.n_reached;
	free(st.parent);
	free(st.queue);
	return reached;
}
