/*
 * cagra_check.c
 *		How good an approximate kNN graph is: the exact neighbours of a few
 *		evenly spaced rows, and the share of them that the graph's rows hold.
 *
 * The partitioned kNN stage measures with it how many lists to probe
 * (cagra_partition.c), and NN-descent when to stop (cagra_refine.c): both
 * decide from the data set at hand instead of from a constant.  The exact
 * neighbours come from one brute-force pass of the checked rows against all
 * rows (a GEMM of CAGRA_KNN_CHECK_ROWS x n), about a second at 100k x 128
 * on two loaded cores.
 */
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"

CagraStatus
cagra_knn_check_prepare(CagraKnnCheck *check, const float *data, int64_t n,
						int dim, CagraMetric metric, int k, int n_threads,
						const CagraInterrupt *interrupt, char *errbuf,
						size_t errlen)
{
	int64_t		rows = n < CAGRA_KNN_CHECK_ROWS ? n : CAGRA_KNN_CHECK_ROWS;
	float	   *queries = malloc((size_t) rows * dim * sizeof(float));
	int32_t    *found = malloc((size_t) rows * (k + 1) * sizeof(int32_t));
	CagraStatus status;

	memset(check, 0, sizeof(CagraKnnCheck));
	check->rows = malloc(rows * sizeof(int64_t));
	check->truth = malloc((size_t) rows * k * sizeof(int32_t));
	if (!queries || !found || !check->rows || !check->truth)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for the kNN check");
	else if (k < 1 || k >= n)
		status = cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
							 "kNN check: k %d out of range 1..%lld", k,
							 (long long) n - 1);
	else
	{
		for (int64_t r = 0; r < rows; r++)
		{
			check->rows[r] = r * n / rows;
			memcpy(queries + r * dim, data + check->rows[r] * dim,
				   dim * sizeof(float));
		}
		status = cagra_brute_force(data, n, queries, rows, dim, metric, k + 1,
								   n_threads, interrupt, found, NULL,
								   errbuf, errlen);
	}
	for (int64_t r = 0; status == CAGRA_OK && r < rows; r++)
	{
		int			kept = 0;

		/* the row itself is left out (k + 1 were found for that) */
		for (int j = 0; j <= k && kept < k; j++)
			if (found[r * (k + 1) + j] != check->rows[r])
				check->truth[r * k + kept++] = found[r * (k + 1) + j];
	}
	free(queries);
	free(found);
	if (status == CAGRA_OK)
	{
		check->n_rows = rows;
		check->k = k;
	}
	else
		cagra_knn_check_free(check);
	return status;
}

double
cagra_knn_check_recall(const CagraKnnCheck *check, const int32_t *knn)
{
	int			k = check->k;
	int64_t		hits = 0;

	for (int64_t r = 0; r < check->n_rows; r++)
	{
		const int32_t *row = knn + check->rows[r] * k;

		for (int j = 0; j < k; j++)
			for (int m = 0; m < k; m++)
				if (row[m] == check->truth[r * k + j])
				{
					hits++;
					break;
				}
	}
	return (double) hits / ((double) check->n_rows * k);
}

void
cagra_knn_check_free(CagraKnnCheck *check)
{
	free(check->rows);
	free(check->truth);
	check->rows = NULL;
	check->truth = NULL;
	check->n_rows = 0;
}
