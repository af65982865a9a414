/*
 * cagra_search.c
 *		Greedy beam search over a flat graph: HNSW's search-layer
 *		(Malkov & Yashunin 2018, algorithm 2) on a single level.  The
 *		driver measures graph quality with it, and the connectivity repair
 *		uses it to place new edges where a search would look.
 */
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"

typedef struct SearchItem
{
	float		dist;
	int32_t		id;
} SearchItem;

struct CagraSearch
{
	int64_t		n;
	int			max_ef;
	uint32_t	epoch;			/* visited[i] == epoch: seen in this search */
	uint32_t   *visited;
	SearchItem *candidates;		/* min-heap; each node enters at most once */
	SearchItem *results;		/* max-heap of at most ef */
};

static inline bool
item_less(SearchItem a, SearchItem b)
{
	return a.dist < b.dist || (a.dist == b.dist && a.id < b.id);
}

/* Binary heap; min-heap when max_heap is false. */
static void
heap_push(SearchItem *heap, int *size, SearchItem item, bool max_heap)
{
	int			i = (*size)++;

	while (i > 0)
	{
		int			parent = (i - 1) / 2;

		if (max_heap ? !item_less(heap[parent], item) : !item_less(item, heap[parent]))
			break;
		heap[i] = heap[parent];
		i = parent;
	}
	heap[i] = item;
}

static SearchItem
heap_pop(SearchItem *heap, int *size, bool max_heap)
{
	SearchItem	top = heap[0];
	SearchItem	last = heap[--(*size)];
	int			i = 0;

	for (;;)
	{
		int			child = 2 * i + 1;

		if (child >= *size)
			break;
		if (child + 1 < *size &&
			(max_heap ? item_less(heap[child], heap[child + 1]) :
			 item_less(heap[child + 1], heap[child])))
			child++;
		if (max_heap ? !item_less(last, heap[child]) : !item_less(heap[child], last))
			break;
		heap[i] = heap[child];
		i = child;
	}
	heap[i] = last;
	return top;
}

CagraSearch *
cagra_search_create(int64_t n, int max_ef)
{
	CagraSearch *search;

	if (n < 1 || max_ef < 1)
		return NULL;
	search = calloc(1, sizeof(CagraSearch));
	if (search == NULL)
		return NULL;
	search->n = n;
	search->max_ef = max_ef;
	search->visited = calloc(n, sizeof(uint32_t));
	search->candidates = malloc(n * sizeof(SearchItem));
	search->results = malloc((max_ef + 1) * sizeof(SearchItem));
	if (search->visited == NULL || search->candidates == NULL ||
		search->results == NULL)
	{
		cagra_search_free(search);
		return NULL;
	}
	return search;
}

void
cagra_search_free(CagraSearch *search)
{
	if (search == NULL)
		return;
	free(search->visited);
	free(search->candidates);
	free(search->results);
	free(search);
}

static int
item_cmp(const void *a, const void *b)
{
	const SearchItem *x = a;
	const SearchItem *y = b;

	return item_less(*x, *y) ? -1 : item_less(*y, *x) ? 1 : 0;
}

static void
search_new_epoch(CagraSearch *search)
{
	if (++search->epoch == 0)
	{
		memset(search->visited, 0, search->n * sizeof(uint32_t));
		search->epoch = 1;
	}
}

int
cagra_search(CagraSearch *search, const int32_t *graph, int64_t n, int d,
			 const float *data, int dim, CagraMetric metric,
			 const float *query, int32_t entry, int ef, int k,
			 int32_t *ids, float *dists)
{
	SearchItem *cand = search->candidates;
	SearchItem *res = search->results;
	int			n_cand = 0;
	int			n_res = 0;
	SearchItem	item;

	if (n != search->n || entry < 0 || entry >= n || k < 1 || ef < k ||
		ef > search->max_ef || d < 1)
		return -1;
	cagra_kernels_ready();
	search_new_epoch(search);

	item.id = entry;
	item.dist = cagra_distance(metric, query, data + (int64_t) entry * dim, dim);
	search->visited[entry] = search->epoch;
	heap_push(cand, &n_cand, item, false);
	heap_push(res, &n_res, item, true);

	while (n_cand > 0)
	{
		SearchItem	closest = heap_pop(cand, &n_cand, false);
		const int32_t *row = graph + (int64_t) closest.id * d;

		/* every candidate left is farther than the ef-th result */
		if (n_res == ef && item_less(res[0], closest))
			break;
		for (int j = 0; j < d; j++)
		{
			int32_t		nb = row[j];

			if (nb < 0 || nb >= n || search->visited[nb] == search->epoch)
				continue;
			search->visited[nb] = search->epoch;
			item.id = nb;
			item.dist = cagra_distance(metric, query, data + (int64_t) nb * dim, dim);
			if (n_res < ef || item_less(item, res[0]))
			{
				heap_push(cand, &n_cand, item, false);
				heap_push(res, &n_res, item, true);
				if (n_res > ef)
					heap_pop(res, &n_res, true);
			}
		}
	}

	qsort(res, n_res, sizeof(SearchItem), item_cmp);
	if (k > n_res)
		k = n_res;
	for (int i = 0; i < k; i++)
	{
		ids[i] = res[i].id;
		if (dists)
			dists[i] = res[i].dist;
	}
	return k;
}
