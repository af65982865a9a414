/*
 * cagra_build.c
 *		The CPU CAGRA build: the four stages in a row, with their timings.
 */
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"

CagraStatus
cagra_finish(const float *data, int64_t n, int dim, const CagraParams *params,
			 int32_t *graph, CagraStats *stats, char *errbuf, size_t errlen)
{
	double		t = cagra_now();
	CagraStatus status = CAGRA_OK;
	int64_t		reached;

	stats->entry = params->entry >= 0 ? params->entry :
		cagra_entry_node(data, n, dim, params->metric);
	stats->repair_edges = 0;
	if (params->guarantee_connectivity)
		status = cagra_guarantee_connectivity(graph, n, params->graph_degree,
											  data, dim, params->metric,
											  stats->entry, &stats->unreachable,
											  &stats->repair_edges,
											  errbuf, errlen);
	else
	{
		/* report what a repair would have had to fix */
		reached = cagra_count_reachable(graph, n, params->graph_degree,
										stats->entry, errbuf, errlen);
		if (reached < 0)
			status = CAGRA_ERR_NOMEM;
		else
			stats->unreachable = n - reached;
	}
	stats->connect_seconds = cagra_now() - t;
	return status;
}

CagraStatus
cagra_build(const float *data, int64_t n, int dim, const CagraParams *params,
			int32_t *graph, CagraStats *stats, char *errbuf, size_t errlen)
{
	CagraStats	local;
	CagraStatus status;
	int32_t    *knn = NULL;
	int			I = params->intermediate_degree;
	double		t;

	if (stats == NULL)
		stats = &local;
	memset(stats, 0, sizeof(CagraStats));
	status = cagra_params_check(params, n, dim, errbuf, errlen);
	if (status != CAGRA_OK)
		return status;
	knn = malloc((size_t) n * I * sizeof(int32_t));
	if (knn == NULL)
	{
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for the kNN graph of %lld rows",
							 (long long) n);
		goto done;
	}

	t = cagra_now();
	status = cagra_knn(data, n, dim, params, knn, &stats->knn, errbuf, errlen);
	stats->knn_seconds = cagra_now() - t;
	if (status != CAGRA_OK)
		goto done;

	status = cagra_prune_graph(data, n, dim, params, knn, graph, &stats->prune,
							   errbuf, errlen);
	stats->prune_seconds = stats->prune.survey_seconds +
		stats->prune.detour_seconds + stats->prune.distance_seconds;
	stats->reverse_seconds = stats->prune.merge_seconds;
	if (status != CAGRA_OK)
		goto done;

	status = cagra_finish(data, n, dim, params, graph, stats, errbuf, errlen);

done:
	free(knn);
	return status;
}
