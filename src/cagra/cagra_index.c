/*
 * cagra_index.c
 *		CREATE INDEX ... USING gnnhnsw ... WITH (build_method = 'cagra'):
 *		level 0 of the HNSW graph built by CAGRA.
 *
 * CAGRA is the graph construction of Ootomo et al., "CAGRA: Highly Parallel
 * Graph Construction and Approximate Nearest Neighbor Search for GPUs"
 * (ICDE 2024): a kNN graph of degree I = intermediate_graph_degree, pruned
 * to degree d = graph_degree by detourable-route counts, with reverse edges
 * merged into the second half of every row (cagra.h).  hnswbuild.c calls
 * this file through cagra_level0_provider (hnsw.h):
 *
 *	cagra_prepare				options, the device (a missing GPU fails
 *								before the table scan), bytes per row
 *	(hnswbuild.c)				rows into the build graph, no edges
 *	cagra_link:
 *	  copy the vectors into one n x dim array
 *	  kNN -> prune -> merge		on the CPU (worker threads) or the GPU,
 *								while a thread of its own links the upper
 *								levels (HNSW insertion of the sampled
 *								nodes, hnsw_graph_link_upper)
 *	  cagra_hnsw_level0			level 0 = the CAGRA graph, plus long edges
 *								through the upper levels (cagra_hnsw.c)
 *	(hnswbuild.c)				reachability, pages, WAL
 *
 * CPU stages run in PostgreSQL-free code on 1 + max_parallel_maintenance_
 * workers threads (at most one per CPU).  The workers block every signal and
 * never call PostgreSQL; the calling thread polls QueryCancelPending and
 * ProcDiePending between chunks of work, and once the stage has stopped
 * turns the request into the usual ERROR or FATAL.  Every buffer of this
 * file is palloc'd in the caller's memory context, so an ERROR frees them;
 * the CAGRA core frees its own malloc'd scratch before it returns, on every
 * path.  The GPU build is a single call into cuda/gnnvec_cuda.so and cannot
 * be canceled while it runs.
 *
 * Memory: the build graph (its vectors in one array, which CAGRA reads in
 * place, hnsw_graph_pack_vectors) and the CAGRA graphs must all
 * fit in maintenance_work_mem; the collection stops with an ERROR as soon as
 * they would not (there is no on-disk fallback: CAGRA needs every row at
 * once).
 */
#include "postgres.h"

#include <cblas.h>

#include "cagra/cagra.h"
#include "commands/progress.h"
#include "hnsw/hnsw.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "vector/distance.h"

/*
 * Above this many rows the kNN graph comes from k-means lists searched
 * near each other instead of all pairs: at 50k x 128 on two cores the
 * exact stage takes 5.8 s and the lists 0.44 s, for a kNN recall of 0.99
 * (bench/bin/cagra_build).  Below it the exact stage costs well under a
 * second.
 */
#define CAGRA_INDEX_EXACT_MAX_ROWS	8000

/*
 * Bytes per row the CAGRA stages need on top of the build graph, whose
 * vectors they read in place (hnsw_graph_pack_vectors): the most any CPU
 * stage holds at once.  Each graph is allocated when its stage starts and
 * freed when the next one is done with it.  The kNN stage holds the kNN
 * graph and each row's list throughout; its lists' search also each row's
 * probed lists and a copy of the rows in list order (cagra_partition.c),
 * NN-descent after it the graph's distances and its scratch.  The copy is
 * floats under L1, else 16-bit codes with a scale a row.  At I 48, d 32 and
 * 128 dimensions: 734 bytes for the lists (L1: 995), 706 for NN-descent,
 * 591 for the pruning.
 */
static size_t
cagra_row_bytes(int intermediate, int degree, int dim, CagraMetric metric)
{
	size_t		copy = metric == CAGRA_METRIC_L1 ? sizeof(float) * dim :
		sizeof(int16) * CAGRA_CODE_DIM(dim) + sizeof(float);
	size_t		lists = sizeof(int32) * CAGRA_LIST_PROBES_MAX	/* probed lists */
		+ copy + sizeof(float)	/* the copy, its squared lengths */
		/* the copy's padding (up to a panel's rows less one a list), the
		 * lists' centres */
		+ (copy * (CAGRA_PANEL_ROWS - 1) + sizeof(float) * dim +
		   CAGRA_LIST_ROWS - 1) / CAGRA_LIST_ROWS
		+ sizeof(int32);		/* the rows in list order */
	size_t		refine = sizeof(float) * intermediate	/* the distances */
		+ cagra_knn_refine_row_bytes(intermediate, CAGRA_REFINE_SAMPLE);
	size_t		knn_stage = sizeof(int32) * intermediate	/* kNN graph */
		+ sizeof(int32) + CAGRA_SEARCHED_ROW_BYTES	/* each row's list, the
													 * searched pairs */
		+ Max(lists, refine);

	/*
	 * Pruning (cagra_prune_graph): the kNN graph, the final graph, the
	 * pruned graph and its reverse lists and counts; by distance also each
	 * pruned row's kept count, the order rows are taken in (and a byte a
	 * row while it is made) and under cosine the rows' reciprocal lengths.
	 */
	size_t		prune_stage = sizeof(int32) * (intermediate + 3 * degree + 1) +
		sizeof(uint16) + sizeof(int32) + 1 + sizeof(float);

	return Max(knn_stage, prune_stage);
}

static CagraMetric
cagra_metric_of(HnswMetric metric)
{
	switch (metric)
	{
		case HNSW_METRIC_L2:
			return CAGRA_METRIC_L2;
		case HNSW_METRIC_IP:
			return CAGRA_METRIC_INNER_PRODUCT;
		case HNSW_METRIC_COSINE:
			return CAGRA_METRIC_COSINE;
		case HNSW_METRIC_L1:
			return CAGRA_METRIC_L1;
	}
	elog(ERROR, "gnnhnsw: unknown metric %d", (int) metric);
	return CAGRA_METRIC_L2;		/* keep compiler quiet */
}

/* Polled by the CAGRA core on this thread: stop for a cancel or a kill. */
static bool
cagra_interrupt_requested(void *arg)
{
	return QueryCancelPending || ProcDiePending;
}

/* Turn CAGRA_ERR_* into an ERROR; CHECK_FOR_INTERRUPTS raises a cancel. */
static void
cagra_report(CagraStatus status, const char *where, const char *errbuf)
{
	if (status == CAGRA_OK)
		return;
	if (status == CAGRA_ERR_CANCELED)
	{
		CHECK_FOR_INTERRUPTS();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("canceling CAGRA graph build")));
	}
	if (status == CAGRA_ERR_NOMEM)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory in the CAGRA %s", where),
				 errdetail("%s", errbuf),
				 errhint("Lower intermediate_graph_degree, or build with build_method = 'hnsw'.")));
	ereport(ERROR,
			(errcode(status == CAGRA_ERR_DEVICE ?
					 ERRCODE_EXTERNAL_ROUTINE_EXCEPTION :
					 ERRCODE_INTERNAL_ERROR),
			 errmsg("CAGRA %s failed: %s", where, errbuf)));
}

/*
 * OpenBLAS picks its GEMM kernels from the CPU model when it loads; on
 * virtual machines that report a generic model it uses SSE3 ("Prescott")
 * kernels, several times slower than the AVX2/AVX-512 ones the CPU has.
 * The kNN stage is mostly GEMM, so say how to fix it.
 */
static void
cagra_check_blas_kernels(CagraMetric metric)
{
	static const char *const generic[] = {"Prescott", "Core2", "Penryn",
	"Dunnington", "Nehalem", "Atom", "Katmai", "Northwood", "Banias"};
	VecIsa		isa = vec_distance_init(VEC_ISA_AVX512);
	const char *core = openblas_get_corename();

	if (metric == CAGRA_METRIC_L1 || isa == VEC_ISA_SCALAR || core == NULL)
		return;
	for (int i = 0; i < lengthof(generic); i++)
		if (strcmp(core, generic[i]) == 0)
		{
			ereport(NOTICE,
					(errmsg("OpenBLAS uses its generic \"%s\" kernels on a CPU with %s",
							core, vec_isa_name(isa)),
					 errdetail("The CAGRA kNN stage runs several times slower with them."),
					 errhint("Set OPENBLAS_CORETYPE=%s in the server's environment and restart it.",
							 isa == VEC_ISA_AVX512 ? "SkylakeX" : "Haswell")));
			return;
		}
}

/*
 * CPU: the three stages on this thread and its workers, phase by phase,
 * each graph allocated when its stage starts (cagra_row_bytes); returns
 * the final graph (n x graph_degree).
 */
static int32 *
cagra_build_cpu(const float *data, int64 n, int dim, const CagraParams *params,
				CagraPruning *pruning)
{
	int			inter = params->intermediate_degree;
	int			d = params->graph_degree;
	int32	   *knn = MemoryContextAllocHuge(CurrentMemoryContext,
											 sizeof(int32) * (Size) n * inter);
	int32	   *graph;
	char		errbuf[512];
	CagraKnnStats knn_stats;
	CagraPruneStats prune;
	CagraStatus status;
	double		t0 = cagra_now(),
				t1;

	cagra_check_blas_kernels(params->metric);

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE,
								 PROGRESS_HNSW_PHASE_CAGRA_KNN);
	status = cagra_knn(data, n, dim, params, knn, &knn_stats, errbuf,
					   sizeof(errbuf));
	cagra_report(status, "kNN graph", errbuf);
	t1 = cagra_now();
	graph = MemoryContextAllocHuge(CurrentMemoryContext,
								   sizeof(int32) * (Size) n * d);

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE,
								 PROGRESS_HNSW_PHASE_CAGRA_PRUNE);
	status = cagra_prune_graph(data, n, dim, params, knn, graph, &prune,
							   errbuf, sizeof(errbuf));
	cagra_report(status, "pruning", errbuf);
	pfree(knn);
	*pruning = prune.pruning;

	ereport(DEBUG1,
			(errmsg_internal("gnnhnsw cagra (cpu, %d threads, %s kNN, %d of %d lists probed, %d NN-descent iterations, checked kNN recall %.3f -> %.3f, pruned by %s, detour share %.3f): kNN %.2fs, survey %.2fs, prune by detours %.2fs, merge %.2fs, prune by distance %.2fs",
							 params->n_threads,
							 params->knn_method == CAGRA_KNN_EXACT ? "exact" : "partitioned",
							 knn_stats.probes, knn_stats.n_lists,
							 knn_stats.refine.iterations,
							 knn_stats.refine.recall_before,
							 knn_stats.refine.recall_after,
							 prune.pruning == CAGRA_PRUNE_DISTANCE ? "distance" : "detour counts",
							 prune.survey.detour_share,
							 t1 - t0, prune.survey_seconds,
							 prune.detour_seconds, prune.merge_seconds,
							 prune.distance_seconds)));
	return graph;
}

/*
 * The GPU to use, or NULL to build on the CPU.  device = 'gpu' insists;
 * 'auto' falls back with a NOTICE.
 */
static CagraGpu *
cagra_choose_gpu(HnswDevice device)
{
	CagraGpu   *gpu;
	char		errbuf[512];
	int			count = 0;

	if (device == HNSW_DEVICE_CPU)
		return NULL;
	gpu = cagra_gpu_module_try(errbuf, sizeof(errbuf));
	if (gpu != NULL &&
		cagra_gpu_device_count(gpu, &count, errbuf, sizeof(errbuf)) == CAGRA_OK &&
		count == 0)
		snprintf(errbuf, sizeof(errbuf), "the CUDA driver sees no GPU");
	if (gpu != NULL && count > 0)
		return gpu;

	if (device == HNSW_DEVICE_GPU)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("gnnhnsw cannot build on a GPU: %s", errbuf),
				 errhint("Build the index with device = 'cpu' or device = 'auto', or run the server where a CUDA GPU and gnnvec_cuda.so are present.")));
	ereport(NOTICE,
			(errmsg("gnnhnsw builds the CAGRA graph on the CPU: no usable GPU"),
			 errdetail("%s", errbuf)));
	return NULL;
}

/* GPU: stages 1-3 in one call; returns the final graph (n x graph_degree). */
static int32 *
cagra_build_gpu(CagraGpu *gpu, const float *data, int64 n, int dim,
				const CagraParams *params)
{
	int32	   *graph = MemoryContextAllocHuge(CurrentMemoryContext,
											   sizeof(int32) * (Size) n *
											   params->graph_degree);
	CagraStats	stats;
	char		errbuf[512];
	CagraStatus status;

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE,
								 PROGRESS_HNSW_PHASE_CAGRA_GPU);
	status = cagra_gpu_build(gpu, 0, 0, false, data, n, dim, params, NULL, graph,
							 &stats, errbuf, sizeof(errbuf));
	if (status == CAGRA_ERR_NOMEM)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of GPU memory building the CAGRA graph"),
				 errdetail("%s", errbuf),
				 errhint("Build the index with device = 'cpu', or lower intermediate_graph_degree.")));
	cagra_report(status, "GPU build", errbuf);
	ereport(DEBUG1,
			(errmsg_internal("gnnhnsw cagra (gpu): setup %.2fs, kNN %.2fs, prune %.2fs, merge %.2fs",
							 stats.setup_seconds, stats.knn_seconds,
							 stats.prune_seconds, stats.reverse_seconds)));
	return graph;
}

/* The upper levels' thread (cagra_thread_start). */
static void
cagra_link_upper_main(void *arg)
{
	hnsw_graph_link_upper((HnswGraph *) arg);
}

/*
 * Level 0, on the GPU or the CPU (returned), and the upper levels of
 * bs->graph.  The upper levels need only the vectors and the sampled
 * levels, not level 0: they are linked meanwhile, on a thread of their
 * own, in the graph's own scratch (no allocation, no error), while level 0
 * is built from the copy.  Their insertion is serial; overlapped, it stops
 * adding to the build's time (0.18 s of 1.4 s at 100k x 128).  The thread
 * is joined on every path, an ERROR included, before the graph can go.
 */
static int32 *
cagra_build_levels(HnswBuildState *bs, CagraGpu *gpu, const float *data,
				   int64 n, const CagraParams *params, CagraPruning *pruning)
{
	CagraThread *upper;
	int32	   *volatile graph = NULL;

	hnsw_graph_reserve_search(bs->graph);
	upper = cagra_thread_start(cagra_link_upper_main, bs->graph);
	if (upper == NULL)
		hnsw_graph_link_upper(bs->graph);
	PG_TRY();
	{
		/* the GPU prunes by detour counts */
		*pruning = CAGRA_PRUNE_DETOUR;
		if (gpu != NULL)
			graph = cagra_build_gpu(gpu, data, n, bs->dim, params);
		else
			graph = cagra_build_cpu(data, n, bs->dim, params, pruning);
	}
	PG_FINALLY();
	{
		cagra_thread_join(upper);
	}
	PG_END_TRY();
	return graph;
}

static void
cagra_fill_params(CagraParams *params, HnswBuildState *bs,
				  const HnswCagraOptions *opts, int64 n)
{
	cagra_params_default(params, bs->m);
	params->metric = cagra_metric_of(bs->metric);
	params->intermediate_degree = opts->intermediateDegree;
	params->graph_degree = opts->graphDegree;
	params->knn_method = n > CAGRA_INDEX_EXACT_MAX_ROWS ?
		CAGRA_KNN_PARTITIONED : CAGRA_KNN_EXACT;

	/*
	 * hnsw_build_finish makes every node reachable from the HNSW entry
	 * point, which is not CAGRA's, so CAGRA's own repair would be wasted.
	 */
	params->guarantee_connectivity = false;
	params->n_threads = Min(1 + max_parallel_maintenance_workers,
							cagra_thread_count(0));
	params->interrupt.check = cagra_interrupt_requested;
	params->interrupt.arg = NULL;
}

/* What cagra_prepare decided, for cagra_link. */
typedef struct CagraBuildState
{
	HnswCagraOptions opts;
	CagraGpu   *gpu;			/* NULL: the CPU */
} CagraBuildState;

static size_t
cagra_prepare(HnswBuildState *bs, void **state)
{
	CagraBuildState *cs = palloc(sizeof(CagraBuildState));

	hnsw_get_cagra_options(bs->index, &cs->opts);
	cs->gpu = cagra_choose_gpu(cs->opts.device);
	*state = cs;
	return cagra_row_bytes(cs->opts.intermediateDegree, cs->opts.graphDegree,
						   bs->dim, cagra_metric_of(bs->metric));
}

/*
 * Level 0 of the CAGRA graph plus long edges (only those no CAGRA edge
 * covers in a graph pruned by distance), every node reachable; reports
 * dropped and added edges.
 */
static void
cagra_set_level0(HnswBuildState *bs, const int32 *graph, int degree,
				 CagraPruning pruning, const CagraParams *params)
{
	char		errbuf[512];
	int64		dropped;
	int64		connected;
	CagraStatus status;

	status = cagra_hnsw_level0(bs->graph, graph, degree,
							   pruning == CAGRA_PRUNE_DISTANCE,
							   params->n_threads, &params->interrupt, &dropped,
							   &connected, errbuf, sizeof(errbuf));
	cagra_report(status, "level 0", errbuf);
	if (dropped > 0)
		elog(DEBUG1, "gnnhnsw: %lld level-0 edges dropped (out of range or beyond 2m)",
			 (long long) dropped);
	if (connected > 0)
		elog(DEBUG1, "gnnhnsw cagra: %lld level-0 edges added for reachability",
			 (long long) connected);
}

static void
cagra_link(HnswBuildState *bs, void *state)
{
	CagraBuildState *cs = state;
	CagraParams params;
	CagraPruning pruning;
	int32	   *graph;
	int64		n = bs->graph->n;
	char		errbuf[512];
	double		t_start = cagra_now(),
				t_graph;

	if (n <= cs->opts.intermediateDegree)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("gnnhnsw build_method 'cagra' needs more rows than intermediate_graph_degree"),
				 errdetail("The table has %lld rows to index and intermediate_graph_degree is %d.",
						   (long long) n, cs->opts.intermediateDegree),
				 errhint("Build with build_method = 'hnsw', lower intermediate_graph_degree, or create the index before loading the table.")));

	cagra_fill_params(&params, bs, &cs->opts, n);
	if (cagra_params_check(&params, n, bs->dim, errbuf, sizeof(errbuf)) != CAGRA_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid CAGRA parameters: %s", errbuf)));

	/* the collected rows, one n x dim array, the layout CAGRA reads */
	Assert(bs->graph->vecs != NULL);
	graph = cagra_build_levels(bs, cs->gpu, bs->graph->vecs, n, &params,
							   &pruning);
	t_graph = cagra_now();

	pgstat_progress_update_param(PROGRESS_CREATEIDX_SUBPHASE,
								 PROGRESS_HNSW_PHASE_CAGRA_UPPER);
	cagra_set_level0(bs, graph, cs->opts.graphDegree, pruning, &params);
	pfree(graph);
	pfree(cs);
	ereport(DEBUG1,
			(errmsg_internal("gnnhnsw cagra: graph and upper levels %.2fs, level 0 with long edges %.2fs",
							 t_graph - t_start, cagra_now() - t_graph)));
}

const HnswLevel0Provider cagra_level0_provider = {cagra_prepare, cagra_link};
