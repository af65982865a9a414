/*
 * cagra_partition.c
 *		Stage 1 of CAGRA without the O(n^2) cost: the kNN graph from k-means
 *		lists searched near each other.
 *
 * The exact stage compares every pair of rows, while a row's neighbours
 * all lie in a small region.  Here k-means splits the data into lists of
 * about list_rows rows (every row in the list of its nearest centroid), and
 * each row is searched among the rows of the `probes` lists whose
 * centroids are nearest the row itself, its own list first.  This is the
 * inverted-file search of Jegou et al. (IEEE TPAMI 2011) applied to the
 * data itself.  A row costs about probes x list_rows distances instead of
 * n.  The rows of one list mostly probe the same lists, so a list's search
 * meets each probed list with the rows that probe it together
 * (cagra_knn_segments_serial), on a copy of all rows made once in list
 * order and in panels: on the word vectors a list's rows together probe
 * 150 of the 162 lists, and gathering those for every list cost more than
 * the search.
 * Probes chosen per row rather than per list hold more of the neighbours
 * for the same work: on the word vectors 12 probes per row hold 0.87 of
 * the checked rows' neighbours, as many as the 39 lists nearest the row's
 * list did.  How many lists to probe depends on the data (1-2 hold 0.95 of
 * the neighbours on separated clusters, 64 hold 0.64 on tf-idf), so unless
 * the caller fixes it, it is read off a recall curve measured on a few
 * rows whose exact kNN is known (list_probe_recall).
 * cuVS builds its intermediate graph approximately too (IVF-PQ or
 * NN-descent); CAGRA's pruning is robust to a kNN graph that misses a few
 * true neighbours (Ootomo et al., ICDE 2024, sec. IV).  Where lists cut
 * through neighbourhoods (high intrinsic dimension), NN-descent
 * (cagra_refine.c) then finds the neighbours the lists missed among the
 * neighbours' neighbours.  bench/bin/cagra_build measures the recall of
 * this stage and of the final graph.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cagra/cagra.h"
#include "vector/distance.h"

#define KMEANS_ITERATIONS 5
#define KMEANS_SAMPLE_PER_CENTROID 32

typedef struct ListSize
{
	int64_t		size;
	int32_t		id;
} ListSize;

/* One worker thread's memory for the lists' searches (list_knn). */
typedef struct ListScratch
{
	CagraKnnScratch *knn;
	int32_t    *local_ids;		/* largest list x k */
	float	   *local_dists;
	uint64_t   *masks;			/* largest list x CAGRA_SEGMENT_WORDS(n_lists) */
	int32_t    *segment_of;		/* n_lists: a list's segment, -1: none */
	int32_t    *segment_list;	/* n_lists: a segment's list */
	ListSize   *probed;			/* n_lists: how many rows probe a segment */
} ListScratch;

typedef struct ListJob
{
	const float *data;
	int64_t		n;
	int			dim;
	CagraMetric metric;
	int			k;
	int			n_lists;
	int			probes;			/* lists searched per row */
	int			probe_stride;	/* lists ranked for the checked rows, >=
								 * probes */
	const CagraKnnCheck *check; /* NULL: probes as given */
	const int64_t *offsets;		/* list l: members[offsets[l] ..] */
	const int32_t *members;
	const int32_t *row_lists;	/* n x probes: each row's nearest lists, its
								 * own first */
	const int32_t *order;		/* lists, largest first */
	int64_t    *panel_offsets;	/* n_lists + 1: each list's first panel row */
	float	   *panels;			/* L1: members' rows in the search's form,
								 * each list in whole panels
								 * (list_panel_rows) */
	int16_t    *codes;			/* else: the same as codes (cagra_code_row) */
	float	   *code_scales;	/* and each panel row's 1 / s */
	float	   *norms;			/* L2: their squared lengths, else NULL */
	const float *centroids;		/* n_lists x dim */
	float	   *centres;		/* but L1: n_lists x dim, the mean of each
								 * list's rows in the search's form, which
								 * its codes are centred on */
	int32_t    *knn;
	float	   *dists;
	ListScratch *scratch;		/* one per thread */
} ListJob;

/* ---------------------------------------------------------------------- */
/* k-means */

static CagraMetric
partition_metric(CagraMetric metric)
{
	/* cosine clusters directions; everything else clusters positions */
	return metric == CAGRA_METRIC_COSINE ? CAGRA_METRIC_COSINE : CAGRA_METRIC_L2;
}

/*
 * How a row ranks the lists to probe.  Under inner product a row's
 * neighbours are the rows of largest x.y, which lie beyond it in its
 * direction, not around it: the lists whose centroids have the largest
 * x.c hold them (the inverted-file search for inner product, over lists
 * clustered by position).  On the word vectors, 32 probes so ranked hold
 * 0.91 of the checked rows' 48 neighbours, against 0.79 for the 32 nearest
 * centroids; on the 1000 clusters 16 hold 0.96 against 0.90.
 */
static CagraMetric
probe_metric(CagraMetric metric)
{
	return metric == CAGRA_METRIC_INNER_PRODUCT ? metric : partition_metric(metric);
}

/* New centroids: the means of their sample rows; an empty one stays. */
static void
kmeans_update(const float *sample, int64_t n_sample, int dim,
			  const int32_t *nearest, float *centroids, int n_parts,
			  double *sum, int64_t *count)
{
	memset(sum, 0, (size_t) n_parts * dim * sizeof(double));
	memset(count, 0, n_parts * sizeof(int64_t));
	for (int64_t i = 0; i < n_sample; i++)
	{
		count[nearest[i]]++;
		for (int j = 0; j < dim; j++)
			sum[(int64_t) nearest[i] * dim + j] += sample[i * dim + j];
	}
	for (int p = 0; p < n_parts; p++)
		if (count[p] > 0)
			for (int j = 0; j < dim; j++)
				centroids[(int64_t) p * dim + j] =
					(float) (sum[(int64_t) p * dim + j] / (double) count[p]);
}

/*
 * Lloyd's iterations on an evenly spaced sample, started from evenly spaced
 * rows: deterministic, and a handful of iterations is enough for a
 * partition (not a quantiser).
 */
static CagraStatus
kmeans_train(const float *data, int64_t n, int dim, CagraMetric metric,
			 int n_parts, int n_threads, const CagraInterrupt *interrupt,
			 float *centroids, char *errbuf, size_t errlen)
{
	int64_t		n_sample = (int64_t) n_parts * KMEANS_SAMPLE_PER_CENTROID;
	float	   *sample;
	int32_t    *nearest;
	double	   *sum;
	int64_t    *count;
	CagraStatus status = CAGRA_OK;

	if (n_sample > n)
		n_sample = n;
	sample = malloc((size_t) n_sample * dim * sizeof(float));
	nearest = malloc(n_sample * sizeof(int32_t));
	sum = malloc((size_t) n_parts * dim * sizeof(double));
	count = malloc(n_parts * sizeof(int64_t));
	if (sample == NULL || nearest == NULL || sum == NULL || count == NULL)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for k-means");
	for (int64_t i = 0; status == CAGRA_OK && i < n_sample; i++)
		memcpy(sample + i * dim, data + (i * n / n_sample) * dim, dim * sizeof(float));
	for (int p = 0; status == CAGRA_OK && p < n_parts; p++)
		memcpy(centroids + (int64_t) p * dim,
			   sample + ((int64_t) p * n_sample / n_parts) * dim, dim * sizeof(float));
	for (int it = 0; status == CAGRA_OK && it < KMEANS_ITERATIONS; it++)
	{
		status = cagra_brute_force(centroids, n_parts, sample, n_sample, dim,
								   metric, 1, n_threads, interrupt, nearest,
								   NULL, errbuf, errlen);
		if (status == CAGRA_OK)
			kmeans_update(sample, n_sample, dim, nearest, centroids, n_parts,
						  sum, count);
	}
	free(sample);
	free(nearest);
	free(sum);
	free(count);
	return status;
}


/* ---------------------------------------------------------------------- */
/* Lists */


static int
list_size_cmp(const void *a, const void *b)
{
	const ListSize *x = a;
	const ListSize *y = b;

	if (x->size != y->size)
		return x->size > y->size ? -1 : 1;
	return (x->id > y->id) - (x->id < y->id);
}

/*
 * CSR of the lists' members, and the lists largest first (so that the
 * long jobs do not come last).  sizes is scratch of n_lists entries.
 */
static void
list_members(const int32_t *assign, int64_t n, int n_lists, int64_t *offsets,
			 int32_t *members, int32_t *order, ListSize *sizes)
{
	memset(offsets, 0, (n_lists + 1) * sizeof(int64_t));
	for (int64_t i = 0; i < n; i++)
		offsets[assign[i] + 1]++;
	for (int l = 0; l < n_lists; l++)
		offsets[l + 1] += offsets[l];
	for (int l = 0; l < n_lists; l++)
		sizes[l].size = 0;
	for (int64_t i = 0; i < n; i++)
		members[offsets[assign[i]] + sizes[assign[i]].size++] = (int32_t) i;
	for (int l = 0; l < n_lists; l++)
		sizes[l].id = l;
	qsort(sizes, n_lists, sizeof(ListSize), list_size_cmp);
	for (int l = 0; l < n_lists; l++)
		order[l] = sizes[l].id;
}

/*
 * recall[p], p = 0 .. probe_stride: the share of the checked rows' exact
 * neighbours that lie in the row's p nearest lists (ranks: n_rows x
 * probe_stride, each checked row's lists nearest first; truth_list: the
 * list of each of its neighbours).  A row is ranked against every row of
 * the lists it probes, so that share is what its search with p probes
 * finds of them (up to the rounding of near ties): the recall of
 * every probe count, without searching.
 */
static bool
list_probe_recall(const CagraKnnCheck *check, int n_lists, int stride,
				  const int32_t *ranks, const int32_t *truth_list, double *recall)
{
	int32_t    *rank = malloc(n_lists * sizeof(int32_t));
	int64_t    *within = calloc(stride + 1, sizeof(int64_t));

	if (rank == NULL || within == NULL)
	{
		free(rank);
		free(within);
		return false;
	}
	for (int l = 0; l < n_lists; l++)
		rank[l] = stride;		/* not probed */
	for (int64_t r = 0; r < check->n_rows; r++)
	{
		const int32_t *lists = ranks + r * stride;

		for (int j = 0; j < stride; j++)
			rank[lists[j]] = j;
		for (int j = 0; j < check->k; j++)
			within[rank[truth_list[r * check->k + j]]]++;
		for (int j = 0; j < stride; j++)
			rank[lists[j]] = stride;
	}
	recall[0] = 0.0;
	for (int p = 1; p <= stride; p++)
		recall[p] = recall[p - 1] +
			(double) within[p - 1] / ((double) check->n_rows * check->k);
	free(rank);
	free(within);
	return true;
}

int
cagra_list_choose_probes(const double *recall, int max_probes, double target,
						 double min_gain)
{
	for (int p = 1; p < max_probes; p++)
	{
		int			ahead = p + CAGRA_LIST_GAIN_WINDOW < max_probes ?
			p + CAGRA_LIST_GAIN_WINDOW : max_probes;

		if (recall[p] >= target)
			return p;
		if (recall[ahead] - recall[p] < min_gain * (ahead - p))
		{
			/* a few probes more still cost less than NN-descent's setup */
			for (int q = p + 1; q <= ahead; q++)
				if (recall[q] >= target)
					return q;
			return p;
		}
	}
	return max_probes;
}

/*
 * The lists that list l's rows probe, those probed by the most rows first
 * (l's own, since each of its rows is nearest its own centroid, then the
 * lists next to it), so that the rows' pools get tight bounds early; and
 * each row's mask of them, CAGRA_SEGMENT_WORDS(that many lists) words a
 * row.  Returns how many lists they probe together.
 */
static int
list_segments(const ListJob *job, int32_t l, ListScratch *ls)
{
	int64_t		words;
	const int32_t *members = job->members + job->offsets[l];
	int64_t		size = job->offsets[l + 1] - job->offsets[l];
	int			n_segments = 0;

	for (int64_t j = 0; j < size; j++)
		for (int t = 0; t < job->probes; t++)
		{
			int32_t		m = job->row_lists[(int64_t) members[j] * job->probes + t];

			if (ls->segment_of[m] < 0)
			{
				ls->segment_of[m] = n_segments;
				ls->probed[n_segments].size = 0;
				ls->probed[n_segments++].id = m;
			}
			ls->probed[ls->segment_of[m]].size++;
		}
	qsort(ls->probed, n_segments, sizeof(ListSize), list_size_cmp);
	words = CAGRA_SEGMENT_WORDS(n_segments);
	for (int s = 0; s < n_segments; s++)
	{
		ls->segment_list[s] = ls->probed[s].id;
		ls->segment_of[ls->probed[s].id] = s;
	}
	memset(ls->masks, 0, (size_t) size * words * sizeof(uint64_t));
	for (int64_t j = 0; j < size; j++)
		for (int t = 0; t < job->probes; t++)
		{
			int32_t		s = ls->segment_of[job->row_lists[(int64_t) members[j] * job->probes + t]];

			ls->masks[j * words + s / 64] |= UINT64_C(1) << (s % 64);
		}
	for (int s = 0; s < n_segments; s++)
		ls->segment_of[ls->segment_list[s]] = -1;
	return n_segments;
}

/* The kNN of the rows of lists order[begin .. end), each among its probes. */
static int
list_knn(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const ListJob *job = arg;
	ListScratch *ls = &job->scratch[thread_no];
	int			k = job->k;
	CagraKnnSegments segments = {0};

	segments.panels = job->panels;
	segments.codes = job->codes;
	segments.code_scales = job->code_scales;
	segments.norms = job->norms;
	segments.centres = job->centres;
	segments.offsets = job->offsets;
	segments.panel_offsets = job->panel_offsets;
	segments.dim = job->dim;
	segments.metric = job->metric;
	segments.segment_list = ls->segment_list;
	segments.masks = ls->masks;
	for (int64_t i = begin; i < end; i++)
	{
		int32_t		l = job->order[i];
		int64_t		first = job->offsets[l];
		int64_t		size = job->offsets[l + 1] - first;

		if (size == 0)
			continue;
		segments.query_list = l;
		segments.n_segments = list_segments(job, l, ls);
		segments.mask_words = CAGRA_SEGMENT_WORDS(segments.n_segments);
		if (!cagra_knn_segments_serial(&segments, k, ls->knn, ls->local_ids,
									   ls->local_dists))
			return CAGRA_ERR_NOMEM;
		for (int64_t j = 0; j < size; j++)
		{
			int64_t		row = job->members[first + j];

			for (int m = 0; m < k; m++)
			{
				int32_t		at = ls->local_ids[j * k + m];

				/* -1: the row's probed lists hold k or fewer rows */
				job->knn[row * k + m] = at < 0 ? -1 : job->members[at];
				if (job->dists)
					job->dists[row * k + m] = ls->local_dists[j * k + m];
			}
		}
	}
	return 0;
}

/*
 * Rows whose probed lists held k or fewer rows: an exact search over all
 * rows, k + 1 deep so that the row itself can be dropped.
 */
static CagraStatus
list_fill_short(ListJob *job, int n_threads, const CagraInterrupt *interrupt,
				char *errbuf, size_t errlen)
{
	int64_t		n_short = 0;
	int			k = job->k;
	int64_t    *short_rows;
	float	   *queries;
	int32_t    *ids;
	float	   *dists;
	CagraStatus status;

	for (int64_t row = 0; row < job->n; row++)
		n_short += job->knn[row * k + k - 1] < 0;
	if (n_short == 0)
		return CAGRA_OK;
	short_rows = malloc(n_short * sizeof(int64_t));
	queries = malloc((size_t) n_short * job->dim * sizeof(float));
	ids = malloc((size_t) n_short * (k + 1) * sizeof(int32_t));
	dists = malloc((size_t) n_short * (k + 1) * sizeof(float));
	if (short_rows == NULL || queries == NULL || ids == NULL || dists == NULL)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for %lld short rows", (long long) n_short);
	else
	{
		n_short = 0;
		for (int64_t row = 0; row < job->n; row++)
			if (job->knn[row * k + k - 1] < 0)
			{
				memcpy(queries + n_short * job->dim, job->data + row * job->dim,
					   job->dim * sizeof(float));
				short_rows[n_short++] = row;
			}
		status = cagra_brute_force(job->data, job->n, queries, n_short, job->dim,
								   job->metric, k + 1, n_threads, interrupt,
								   ids, dists, errbuf, errlen);
	}
	for (int64_t s = 0; status == CAGRA_OK && s < n_short; s++)
	{
		int64_t		row = short_rows[s];
		int			kept = 0;

		for (int j = 0; j <= k && kept < k; j++)
		{
			if (ids[s * (k + 1) + j] == row)
				continue;
			job->knn[row * k + kept] = ids[s * (k + 1) + j];
			if (job->dists)
				job->dists[row * k + kept] = dists[s * (k + 1) + j];
			kept++;
		}
	}
	free(short_rows);
	free(queries);
	free(ids);
	free(dists);
	return status;
}

/* ---------------------------------------------------------------------- */

static void
list_free_scratch(ListJob *job, int n_threads)
{
	for (int t = 0; job->scratch != NULL && t < n_threads; t++)
	{
		ListScratch *ls = &job->scratch[t];

		cagra_knn_scratch_free(ls->knn);
		free(ls->local_ids);
		free(ls->local_dists);
		free(ls->masks);
		free(ls->segment_of);
		free(ls->segment_list);
		free(ls->probed);
	}
	free(job->scratch);
	job->scratch = NULL;
}

/* Scratch for the largest list; false when out of memory. */
static bool
list_alloc_scratch(ListJob *job, int n_threads)
{
	int			n_lists = job->n_lists;
	int64_t		largest = 1;

	for (int l = 0; l < n_lists; l++)
		if (job->offsets[l + 1] - job->offsets[l] > largest)
			largest = job->offsets[l + 1] - job->offsets[l];
	job->scratch = calloc(n_threads, sizeof(ListScratch));
	if (job->scratch == NULL)
		return false;
	for (int t = 0; t < n_threads; t++)
	{
		ListScratch *ls = &job->scratch[t];

		ls->knn = cagra_knn_scratch_create();
		ls->local_ids = malloc((size_t) largest * job->k * sizeof(int32_t));
		ls->local_dists = malloc((size_t) largest * job->k * sizeof(float));
		ls->masks = malloc((size_t) largest * CAGRA_SEGMENT_WORDS(n_lists) *
						   sizeof(uint64_t));
		ls->segment_of = malloc(n_lists * sizeof(int32_t));
		ls->segment_list = malloc(n_lists * sizeof(int32_t));
		ls->probed = malloc(n_lists * sizeof(ListSize));
		if (!ls->knn || !ls->local_ids || !ls->local_dists || !ls->masks ||
			!ls->segment_of || !ls->segment_list || !ls->probed)
			return false;
		for (int l = 0; l < n_lists; l++)
			ls->segment_of[l] = -1;
	}
	return true;
}

/*
 * Set the bits of the pairs of lists (l, m) whose rows were all ranked
 * against each other: every row of l probed m.  A row of l that probed m
 * while another did not leaves the bit clear, so that NN-descent still
 * offers what the other missed.  Returns false when out of memory.
 */
static bool
list_mark_searched(const ListJob *job, uint64_t *searched)
{
	int			n_lists = job->n_lists;
	int32_t    *count = calloc(n_lists, sizeof(int32_t));

	if (count == NULL)
		return false;
	memset(searched, 0, CAGRA_SEARCHED_WORDS(n_lists) * sizeof(uint64_t));
	for (int l = 0; l < n_lists; l++)
	{
		int64_t		size = job->offsets[l + 1] - job->offsets[l];

		for (int64_t j = job->offsets[l]; j < job->offsets[l + 1]; j++)
			for (int t = 0; t < job->probes; t++)
				count[job->row_lists[(int64_t) job->members[j] * job->probes + t]]++;
		/* the first row probing m decides the bit; then count[m] is reset */
		for (int64_t j = job->offsets[l]; j < job->offsets[l + 1]; j++)
			for (int t = 0; t < job->probes; t++)
			{
				int32_t		m = job->row_lists[(int64_t) job->members[j] * job->probes + t];
				uint64_t	bit = (uint64_t) l * n_lists + m;

				if (count[m] == size)
					searched[bit >> 6] |= UINT64_C(1) << (bit & 63);
				count[m] = 0;
			}
	}
	free(count);
	return true;
}

/*
 * The checked rows' recall over the probe count (stats->probe_recall), by
 * ranking the lists for each checked row (probe_metric) and finding its
 * neighbours' lists (partition_metric); then the probes it chooses, unless
 * the caller fixed them.
 */
static CagraStatus
list_probe_curve(ListJob *job, const float *centroids, int n_threads,
				 const CagraInterrupt *interrupt, CagraKnnStats *stats,
				 char *errbuf, size_t errlen)
{
	const CagraKnnCheck *check = job->check;
	int			stride = job->probe_stride;
	int64_t		n_truth = check->n_rows * check->k;
	float	   *rows = malloc((size_t) n_truth * job->dim * sizeof(float));
	int32_t    *ranks = malloc((size_t) check->n_rows * stride * sizeof(int32_t));
	int32_t    *truth_list = malloc((size_t) n_truth * sizeof(int32_t));
	CagraStatus status = CAGRA_OK;

	if (rows == NULL || ranks == NULL || truth_list == NULL)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for the lists' recall");
	for (int64_t r = 0; status == CAGRA_OK && r < check->n_rows; r++)
		memcpy(rows + r * job->dim, job->data + check->rows[r] * job->dim,
			   job->dim * sizeof(float));
	if (status == CAGRA_OK)
		status = cagra_brute_force(centroids, job->n_lists, rows, check->n_rows,
								   job->dim, probe_metric(job->metric), stride,
								   n_threads, interrupt, ranks, NULL, errbuf,
								   errlen);
	for (int64_t r = 0; status == CAGRA_OK && r < n_truth; r++)
		memcpy(rows + r * job->dim,
			   job->data + (int64_t) check->truth[r] * job->dim,
			   job->dim * sizeof(float));
	if (status == CAGRA_OK)
		status = cagra_brute_force(centroids, job->n_lists, rows, n_truth,
								   job->dim, partition_metric(job->metric), 1,
								   n_threads, interrupt, truth_list, NULL,
								   errbuf, errlen);
	if (status == CAGRA_OK &&
		!list_probe_recall(check, job->n_lists, stride, ranks, truth_list,
						   stats->probe_recall))
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for the lists' recall");
	if (status == CAGRA_OK)
	{
		stats->n_probe_recall = stride + 1;
		if (job->probes == 0)
			job->probes = cagra_list_choose_probes(stats->probe_recall, stride,
												   CAGRA_LIST_TARGET_RECALL,
												   CAGRA_LIST_MIN_GAIN);
	}
	free(rows);
	free(ranks);
	free(truth_list);
	return status;
}

/*
 * Every row, list after list, in the search's form (CagraKnnSegments): made
 * once, so that no list's search gathers and transforms the rows of the
 * lists its rows probe.  Those are nearly all lists on the word vectors,
 * whose rows within one list probe different lists.  The form: unit length
 * under cosine, as given else, less the list's centre but under L1, so
 * that the codes round relative to the rows' spread around it and not to
 * a component all rows share.  form: dim floats, codes:
 * CAGRA_CODE_DIM(dim), of room.
 */
static void
list_panel_form(const ListJob *job, int64_t at, const float *centre, float *form)
{
	int			dim = job->dim;
	const float *src = job->data + (int64_t) job->members[at] * dim;
	float		scale = 1.0f;

	if (job->metric == CAGRA_METRIC_COSINE)
	{
		float		length = sqrtf(vec_inner_product(src, src, dim));

		scale = length > 0.0f ? 1.0f / length : 0.0f;
	}
	for (int j = 0; j < dim; j++)
		form[j] = src[j] * scale - (centre ? centre[j] : 0.0f);
}

static void
list_panel_row(const ListJob *job, int64_t l, int64_t at, float *form,
			   int16_t *codes)
{
	int			dim = job->dim;
	int64_t		row = job->panel_offsets[l] + at - job->offsets[l];

	list_panel_form(job, at, job->centres ? job->centres + l * dim : NULL, form);
	if (job->norms)
		job->norms[at] = vec_inner_product(form, form, dim);
	if (job->metric == CAGRA_METRIC_L1)
	{
		float	   *dst = job->panels + cagra_panel_index(row, dim);

		for (int j = 0; j < dim; j++)
			dst[(int64_t) j * CAGRA_PANEL_ROWS] = form[j];
		return;
	}
	job->code_scales[row] = cagra_code_row(form, dim, codes);
	for (int p = 0; p < CAGRA_CODE_DIM(dim) / 2; p++)
		memcpy(job->codes + cagra_code_index(row, dim) + p * 2 * CAGRA_PANEL_ROWS,
			   codes + 2 * p, 2 * sizeof(int16_t));
}

/* List l's centre: the mean of its rows in the search's form. */
static void
list_centre(const ListJob *job, int64_t l, float *form)
{
	int			dim = job->dim;
	float	   *centre = job->centres + l * dim;
	int64_t		size = job->offsets[l + 1] - job->offsets[l];

	memset(centre, 0, dim * sizeof(float));
	for (int64_t at = job->offsets[l]; at < job->offsets[l + 1]; at++)
	{
		list_panel_form(job, at, NULL, form);
		for (int j = 0; j < dim; j++)
			centre[j] += form[j];
	}
	for (int j = 0; size > 0 && j < dim; j++)
		centre[j] /= (float) size;
}

/* Lists begin .. end in panels, the rows past a list's end zero. */
static int
list_panel_rows(void *arg, int thread_no, int64_t begin, int64_t end)
{
	const ListJob *job = arg;
	int			dim = job->dim;
	float	   *form = malloc(dim * sizeof(float));
	int16_t    *codes = malloc(CAGRA_CODE_DIM(dim) * sizeof(int16_t));

	(void) thread_no;			/* no per-thread scratch */
	if (form == NULL || codes == NULL)
	{
		free(form);
		free(codes);
		return CAGRA_ERR_NOMEM;
	}
	for (int64_t l = begin; l < end; l++)
	{
		int64_t		size = job->offsets[l + 1] - job->offsets[l];
		int64_t		last = job->panel_offsets[l + 1] - CAGRA_PANEL_ROWS;
		bool		padded = job->panel_offsets[l + 1] - job->panel_offsets[l] > size;

		if (padded && job->metric == CAGRA_METRIC_L1)
			memset(job->panels + last * dim, 0,
				   (size_t) CAGRA_PANEL_ROWS * dim * sizeof(float));
		else if (padded)
		{
			memset(job->codes + last * CAGRA_CODE_DIM(dim), 0,
				   (size_t) CAGRA_PANEL_ROWS * CAGRA_CODE_DIM(dim) * sizeof(int16_t));
			memset(job->code_scales + last, 0, CAGRA_PANEL_ROWS * sizeof(float));
		}
		if (job->centres)
			list_centre(job, l, form);
		for (int64_t at = job->offsets[l]; at < job->offsets[l + 1]; at++)
			list_panel_row(job, l, at, form, codes);
	}
	free(form);
	free(codes);
	return 0;
}

/*
 * Room for the copy in panels (each list's rows rounded up to whole
 * panels): floats for L1, else codes and their scales.
 */
static bool
list_panels_alloc(ListJob *job)
{
	int64_t    *panel_offsets = job->panel_offsets;
	int64_t		rows;

	panel_offsets[0] = 0;
	for (int l = 0; l < job->n_lists; l++)
		panel_offsets[l + 1] = panel_offsets[l] +
			CAGRA_PANEL_ROUND(job->offsets[l + 1] - job->offsets[l]);
	rows = panel_offsets[job->n_lists];
	if (job->metric == CAGRA_METRIC_L1)
		return (job->panels = malloc((size_t) rows * job->dim * sizeof(float))) != NULL;
	job->codes = malloc((size_t) rows * CAGRA_CODE_DIM(job->dim) * sizeof(int16_t));
	job->code_scales = malloc((size_t) rows * sizeof(float));
	job->centres = malloc((size_t) job->n_lists * job->dim * sizeof(float));
	return job->codes != NULL && job->code_scales != NULL && job->centres != NULL;
}

/* The search of every list, on n_threads workers. */
static CagraStatus
list_search(ListJob *job, int n_threads, const CagraInterrupt *interrupt,
			char *errbuf, size_t errlen)
{
	int			rc;

	if (!list_alloc_scratch(job, n_threads))
	{
		list_free_scratch(job, n_threads);
		return cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
						   "out of memory for the lists' scratch");
	}
	rc = cagra_parallel_for(n_threads, job->n_lists, 1, list_knn, job, interrupt);
	list_free_scratch(job, n_threads);
	if (rc != 0)
		return cagra_error((CagraStatus) rc, errbuf, errlen,
						   rc == CAGRA_ERR_CANCELED ? "kNN search canceled" :
						   "out of memory in a list's kNN");
	return CAGRA_OK;
}

/*
 * Lists, each row's probes, the search of every list: all allocations
 * made here except assign (n: each row's list) and searched (NULL, or the
 * bits of the pairs of lists searched, for NN-descent), which the caller
 * keeps.  A row's probes are the lists of its own nearest centroids, not
 * its list's: on the word vectors 14 such probes hold as many of the
 * checked rows' neighbours (0.87) as 39 lists nearest the row's list did.
 * Its list is the first of them, except under inner product, whose probes
 * are ranked otherwise (probe_metric): there it is its nearest centroid's.
 */
static CagraStatus
list_run(ListJob *job, int n_threads, const CagraInterrupt *interrupt,
		 int32_t *assign, uint64_t *searched, CagraKnnStats *stats,
		 char *errbuf, size_t errlen)
{
	int			n_lists = job->n_lists;
	CagraMetric pmetric = partition_metric(job->metric);
	float	   *centroids = malloc((size_t) n_lists * job->dim * sizeof(float));
	int64_t    *offsets = malloc((n_lists + 1) * sizeof(int64_t));
	int32_t    *members = malloc((size_t) job->n * sizeof(int32_t));
	int32_t    *order = malloc(n_lists * sizeof(int32_t));
	ListSize   *sizes = malloc(n_lists * sizeof(ListSize));
	int32_t    *row_lists = NULL;
	int64_t    *panel_offsets = malloc((n_lists + 1) * sizeof(int64_t));
	float	   *norms = job->metric == CAGRA_METRIC_L2 ?
		malloc((size_t) job->n * sizeof(float)) : NULL;
	CagraStatus status = CAGRA_OK;

	if (!centroids || !offsets || !members || !order || !sizes || !panel_offsets ||
		(job->metric == CAGRA_METRIC_L2 && !norms))
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for %d lists of %lld rows",
							 n_lists, (long long) job->n);
	if (status == CAGRA_OK)
		status = kmeans_train(job->data, job->n, job->dim, pmetric, n_lists,
							  n_threads, interrupt, centroids, errbuf, errlen);
	/* a fixed count above CAGRA_LIST_PROBES_MAX gets no curve */
	if (status == CAGRA_OK && job->check != NULL &&
		job->probe_stride <= CAGRA_LIST_PROBES_MAX)
		status = list_probe_curve(job, centroids, n_threads, interrupt, stats,
								  errbuf, errlen);
	stats->probes = job->probes;
	if (status == CAGRA_OK)
	{
		row_lists = malloc((size_t) job->n * job->probes * sizeof(int32_t));
		if (row_lists == NULL)
			status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
								 "out of memory for %d probes of %lld rows",
								 job->probes, (long long) job->n);
	}
	if (status == CAGRA_OK)
		status = cagra_brute_force(centroids, n_lists, job->data, job->n, job->dim,
								   probe_metric(job->metric), job->probes,
								   n_threads, interrupt, row_lists, NULL,
								   errbuf, errlen);
	if (status == CAGRA_OK && probe_metric(job->metric) != pmetric)
		status = cagra_brute_force(centroids, n_lists, job->data, job->n, job->dim,
								   pmetric, 1, n_threads, interrupt, assign, NULL,
								   errbuf, errlen);
	else if (status == CAGRA_OK)
		for (int64_t row = 0; row < job->n; row++)
			assign[row] = row_lists[row * job->probes];
	if (status == CAGRA_OK)
	{
		list_members(assign, job->n, n_lists, offsets, members, order, sizes);
		job->offsets = offsets;
		job->members = members;
		job->order = order;
		job->row_lists = row_lists;
		job->norms = norms;
		job->centroids = centroids;
		job->panel_offsets = panel_offsets;
		if (!list_panels_alloc(job))
			status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
								 "out of memory for a copy of %lld rows",
								 (long long) job->n);
		else if (searched != NULL && !list_mark_searched(job, searched))
			status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
								 "out of memory for the lists' searched pairs");
	}
	if (status == CAGRA_OK)
		status = cagra_parallel_for(n_threads, n_lists, 16, list_panel_rows, job,
									interrupt);
	if (status == CAGRA_ERR_CANCELED)
		status = cagra_error(CAGRA_ERR_CANCELED, errbuf, errlen,
							 "kNN search canceled");
	else if (status == CAGRA_ERR_NOMEM)
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for a copy of %lld rows",
							 (long long) job->n);
	if (status == CAGRA_OK)
		status = list_search(job, n_threads, interrupt, errbuf, errlen);
	if (status == CAGRA_OK)
		status = list_fill_short(job, n_threads, interrupt, errbuf, errlen);
	free(centroids);
	free(offsets);
	free(members);
	free(order);
	free(sizes);
	free(row_lists);
	free(panel_offsets);
	free(job->panels);
	free(job->codes);
	free(job->code_scales);
	free(job->centres);
	free(norms);
	return status;
}

CagraStatus
cagra_knn_partitioned(const float *data, int64_t n, int dim, CagraMetric metric,
					  int k, int list_rows, int probes, int refine_iterations,
					  int n_threads, const CagraInterrupt *interrupt,
					  int32_t *knn, float *dists, CagraKnnStats *stats,
					  char *errbuf, size_t errlen)
{
	ListJob		job = {0};
	CagraKnnCheck check = {0};
	CagraKnnStats local;
	int32_t    *assign = NULL;
	uint64_t   *searched = NULL;
	bool		keep_searched;
	int64_t		n_lists;
	CagraStatus status = CAGRA_OK;
	double		t;

	if (stats == NULL)
		stats = &local;
	memset(stats, 0, sizeof(CagraKnnStats));
	stats->refine.recall_before = stats->refine.recall_after = -1.0;
	if (list_rows == 0)
		list_rows = CAGRA_LIST_ROWS;
	if (n < 2 || n > INT32_MAX || dim < 1 || k < 1 || k >= n ||
		(unsigned) metric > CAGRA_METRIC_L1 || n_threads < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "invalid partitioned kNN: %lld rows, dimension %d, k %d",
						   (long long) n, dim, k);
	if (list_rows < 2 || probes < 0 || refine_iterations < 0)
		return cagra_error(CAGRA_ERR_PARAM, errbuf, errlen,
						   "list_rows %d must be at least 2, probes %d and refine_iterations %d not negative",
						   list_rows, probes, refine_iterations);
	n_lists = (n + list_rows - 1) / list_rows;
	if (n_lists <= 1)
		return cagra_knn_exact(data, n, dim, metric, k, n_threads, interrupt,
							   knn, dists, errbuf, errlen);
	cagra_kernels_ready();
	job.data = data;
	job.n = n;
	job.dim = dim;
	job.metric = metric;
	job.k = k;
	job.n_lists = (int) n_lists;
	job.probes = probes < n_lists ? probes : (int) n_lists;
	job.probe_stride = n_lists < CAGRA_LIST_PROBES_MAX ? (int) n_lists :
		CAGRA_LIST_PROBES_MAX;
	if (job.probe_stride < job.probes)
		job.probe_stride = job.probes;
	job.knn = knn;
	job.dists = dists;
	stats->n_lists = (int) n_lists;
	if (probes == 0 || refine_iterations > 0)
	{
		t = cagra_now();
		status = cagra_knn_check_prepare(&check, data, n, dim, metric, k,
										 n_threads, interrupt, errbuf, errlen);
		job.check = &check;
		stats->check_seconds = cagra_now() - t;
	}
	assign = malloc((size_t) n * sizeof(int32_t));
	keep_searched = refine_iterations > 0 &&
		CAGRA_SEARCHED_WORDS(n_lists) * sizeof(uint64_t) <=
		(uint64_t) n * CAGRA_SEARCHED_ROW_BYTES;
	if (keep_searched)
		searched = malloc(CAGRA_SEARCHED_WORDS(n_lists) * sizeof(uint64_t));
	if (status == CAGRA_OK && (assign == NULL || (keep_searched && searched == NULL)))
		status = cagra_error(CAGRA_ERR_NOMEM, errbuf, errlen,
							 "out of memory for the lists of %lld rows",
							 (long long) n);
	t = cagra_now();
	if (status == CAGRA_OK)
		status = list_run(&job, cagra_thread_count(n_threads), interrupt,
						  assign, searched, stats, errbuf, errlen);
	stats->list_seconds = cagra_now() - t;
	if (status == CAGRA_OK && refine_iterations > 0)
		stats->refine.recall_before = stats->refine.recall_after =
			cagra_knn_check_recall(&check, knn);
	/* lists already at the target: NN-descent's setup alone would cost */
	if (status == CAGRA_OK && refine_iterations > 0 &&
		stats->refine.recall_before < CAGRA_REFINE_TARGET_RECALL)
	{
		CagraSearchedPairs pairs = {(int) n_lists, assign, searched};
		CagraRefineOptions refine = {refine_iterations, CAGRA_REFINE_SAMPLE,
			CAGRA_REFINE_TARGET_RECALL, &check, searched ? &pairs : NULL};

		t = cagra_now();
		status = cagra_knn_refine(data, n, dim, metric, k, &refine, n_threads,
								  interrupt, knn, dists, &stats->refine,
								  errbuf, errlen);
		stats->refine_seconds = cagra_now() - t;
	}
	cagra_knn_check_free(&check);
	free(assign);
	free(searched);
	return status;
}
