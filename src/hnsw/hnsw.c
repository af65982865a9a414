/*
 * hnsw.c
 *		gnnhnsw: the access method handler, reloptions, settings, cost
 *		estimation, opclass validation and the scan plug-in points.
 */
#include "postgres.h"

#include <float.h>
#include <math.h>

#include "access/amapi.h"
#include "access/reloptions.h"
#include "cagra/cagra.h"
#include "catalog/pg_amop.h"
#include "catalog/pg_amproc.h"
#include "catalog/pg_opclass.h"
#include "catalog/pg_type.h"
#include "commands/progress.h"
#include "commands/vacuum.h"
#include "hnsw/hnsw.h"
#include "optimizer/cost.h"
#include "optimizer/optimizer.h"
#include "utils/catcache.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

int			hnsw_ef_search = HNSW_DEFAULT_EF_SEARCH;
int			hnsw_iterative_scan = HNSW_ITERATIVE_SCAN_OFF;
int			hnsw_max_scan_tuples = 20000;
int			hnsw_scan_cache_kb = 65536;

static relopt_kind hnsw_relopt_kind;

static const struct config_enum_entry iterative_scan_options[] = {
	{"off", HNSW_ITERATIVE_SCAN_OFF, false},
	{"relaxed_order", HNSW_ITERATIVE_SCAN_RELAXED, false},
	{"strict_order", HNSW_ITERATIVE_SCAN_STRICT, false},
	{NULL, 0, false}
};

/* Reloption validators: called for every value given, at parse time. */
static void
validate_build_method(const char *value)
{
	if (value != NULL && strcmp(value, "hnsw") != 0 &&
		strcmp(value, "cagra") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for gnnhnsw option \"build_method\": \"%s\"",
						value),
				 errhint("Valid values are \"hnsw\" and \"cagra\".")));
}

static void
validate_device(const char *value)
{
	if (value != NULL && strcmp(value, "auto") != 0 &&
		strcmp(value, "cpu") != 0 && strcmp(value, "gpu") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for gnnhnsw option \"device\": \"%s\"",
						value),
				 errhint("Valid values are \"auto\", \"cpu\" and \"gpu\".")));
}

/*
 * Called from _PG_init: reloptions and settings.
 */
void
hnsw_init(void)
{
	hnsw_relopt_kind = add_reloption_kind();
	add_int_reloption(hnsw_relopt_kind, "m",
					  "Max number of connections per element and level (2m at level 0)",
					  HNSW_DEFAULT_M, HNSW_MIN_M, HNSW_MAX_M, AccessExclusiveLock);
	add_int_reloption(hnsw_relopt_kind, "ef_construction",
					  "Size of the dynamic candidate list for construction",
					  HNSW_DEFAULT_EF_CONSTRUCTION, HNSW_MIN_EF_CONSTRUCTION,
					  HNSW_MAX_EF_CONSTRUCTION, AccessExclusiveLock);

	/*
	 * The CAGRA options.  The string ones default to NULL (offset 0) and the
	 * degrees to 0, below their minimum, so that hnswoptions can tell an
	 * option given from one left out.
	 */
	add_string_reloption(hnsw_relopt_kind, "build_method",
						 "How CREATE INDEX builds the graph: hnsw (default) or cagra",
						 NULL, validate_build_method, AccessExclusiveLock);
	add_string_reloption(hnsw_relopt_kind, "device",
						 "Where a cagra build runs: auto (default), cpu or gpu",
						 NULL, validate_device, AccessExclusiveLock);
	add_int_reloption(hnsw_relopt_kind, "graph_degree",
					  "Degree of the CAGRA graph, at most 2m (default 2m)",
					  0, 1, 2 * HNSW_MAX_M, AccessExclusiveLock);
	add_int_reloption(hnsw_relopt_kind, "intermediate_graph_degree",
					  "Degree of the kNN graph CAGRA prunes, at least graph_degree (default 3m)",
					  0, 1, CAGRA_MAX_DEGREE, AccessExclusiveLock);

	DefineCustomIntVariable("gnnvec.ef_search",
							"Size of the dynamic candidate list for gnnhnsw scans.",
							"Larger is slower and finds more of the true nearest neighbours.",
							&hnsw_ef_search, HNSW_DEFAULT_EF_SEARCH,
							HNSW_MIN_EF_SEARCH, HNSW_MAX_EF_SEARCH,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("gnnvec.iterative_scan",
							 "Whether gnnhnsw scans continue past ef_search when more rows are needed.",
							 "relaxed_order may return rows slightly out of order; strict_order never does.",
							 &hnsw_iterative_scan, HNSW_ITERATIVE_SCAN_OFF,
							 iterative_scan_options, PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("gnnvec.max_scan_tuples",
							"Most index elements an iterative gnnhnsw scan visits.",
							NULL,
							&hnsw_max_scan_tuples, 20000, 1, INT_MAX,
							PGC_USERSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("gnnvec.scan_cache_size",
							"Memory each backend may keep gnnhnsw vectors in for its index scans.",
							"0 turns this backend's scan caches off, the shared one too; every visited element is then read from its page.",
							&hnsw_scan_cache_kb, 65536, 0, MAX_KILOBYTES,
							PGC_USERSET, GUC_UNIT_KB, NULL, NULL, NULL);
	hnsw_shared_cache_init();
}

/*
 * The metric of an index, from support function 1 of its opclass.
 */
HnswMetric
hnsw_get_metric(Relation index)
{
	FmgrInfo   *proc = index_getprocinfo(index, 1, HNSW_METRIC_PROC);
	int32		metric = DatumGetInt32(FunctionCall1(proc, (Datum) 0));

	if (metric < HNSW_METRIC_L2 || metric > HNSW_METRIC_L1)
		elog(ERROR, "gnnhnsw: support function 1 returned unknown metric %d",
			 metric);
	return (HnswMetric) metric;
}

/* SQL-callable support functions: FUNCTION 1 of each opclass. */
PG_FUNCTION_INFO_V1(gnnhnsw_l2_support);
Datum
gnnhnsw_l2_support(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(HNSW_METRIC_L2);
}

PG_FUNCTION_INFO_V1(gnnhnsw_ip_support);
Datum
gnnhnsw_ip_support(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(HNSW_METRIC_IP);
}

PG_FUNCTION_INFO_V1(gnnhnsw_cosine_support);
Datum
gnnhnsw_cosine_support(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(HNSW_METRIC_COSINE);
}

PG_FUNCTION_INFO_V1(gnnhnsw_l1_support);
Datum
gnnhnsw_l1_support(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(HNSW_METRIC_L1);
}

/* The CAGRA options of parsed reloptions (NULL: none), defaults filled in. */
static void
cagra_options_from(HnswOptions *opts, HnswCagraOptions *out)
{
	int			m = opts ? opts->m : HNSW_DEFAULT_M;
	const char *method = NULL;
	const char *device = NULL;

	if (opts && opts->buildMethodOffset != 0)
		method = (const char *) opts + opts->buildMethodOffset;
	if (opts && opts->deviceOffset != 0)
		device = (const char *) opts + opts->deviceOffset;

	out->method = (method && strcmp(method, "cagra") == 0) ?
		HNSW_BUILD_CAGRA : HNSW_BUILD_HNSW;
	if (device == NULL || strcmp(device, "auto") == 0)
		out->device = HNSW_DEVICE_AUTO;
	else if (strcmp(device, "cpu") == 0)
		out->device = HNSW_DEVICE_CPU;
	else
		out->device = HNSW_DEVICE_GPU;
	out->graphDegree = (opts && opts->graphDegree > 0) ?
		opts->graphDegree : 2 * m;
	out->intermediateDegree = (opts && opts->intermediateDegree > 0) ?
		opts->intermediateDegree : 3 * m;
}

/*
 * Checks that involve more than one option.  Level 0 holds 2m neighbours,
 * so a CAGRA graph of more is pointless; pruning needs at least as many
 * candidates as it keeps.  The row count is checked at build time.
 */
static void
check_cagra_options(HnswOptions *opts)
{
	HnswCagraOptions c;
	int			m = opts ? opts->m : HNSW_DEFAULT_M;

	cagra_options_from(opts, &c);
	if (c.method != HNSW_BUILD_CAGRA)
	{
		const char *given = NULL;

		if (opts && opts->deviceOffset != 0)
			given = "device";
		else if (opts && opts->graphDegree > 0)
			given = "graph_degree";
		else if (opts && opts->intermediateDegree > 0)
			given = "intermediate_graph_degree";
		if (given)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("gnnhnsw option \"%s\" applies only to build_method = 'cagra'",
							given),
					 errhint("Add build_method = 'cagra', or leave \"%s\" out.",
							 given)));
		return;
	}
	if (c.graphDegree > 2 * m)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("graph_degree must be less than or equal to 2 * m"),
				 errdetail("graph_degree is %d and m is %d; level 0 holds 2 * m neighbours.",
						   c.graphDegree, m),
				 errhint("Lower graph_degree to at most %d or raise m.", 2 * m)));
	if (c.intermediateDegree < c.graphDegree)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("intermediate_graph_degree must be greater than or equal to graph_degree"),
				 errdetail("intermediate_graph_degree is %d and graph_degree is %d.",
						   c.intermediateDegree, c.graphDegree),
				 errhint("Raise intermediate_graph_degree to at least %d or lower graph_degree.",
						 c.graphDegree)));
}

static bytea *
hnswoptions(Datum reloptions, bool validate)
{
	static const relopt_parse_elt tab[] = {
		{"m", RELOPT_TYPE_INT, offsetof(HnswOptions, m)},
		{"ef_construction", RELOPT_TYPE_INT, offsetof(HnswOptions, efConstruction)},
		{"build_method", RELOPT_TYPE_STRING, offsetof(HnswOptions, buildMethodOffset)},
		{"device", RELOPT_TYPE_STRING, offsetof(HnswOptions, deviceOffset)},
		{"graph_degree", RELOPT_TYPE_INT, offsetof(HnswOptions, graphDegree)},
		{"intermediate_graph_degree", RELOPT_TYPE_INT, offsetof(HnswOptions, intermediateDegree)},
	};
	HnswOptions *opts;

	opts = (HnswOptions *) build_reloptions(reloptions, validate,
											hnsw_relopt_kind,
											sizeof(HnswOptions), tab,
											lengthof(tab));
	if (validate)
		check_cagra_options(opts);
	return (bytea *) opts;
}

void
hnsw_get_options(Relation index, int *m, int *efConstruction)
{
	HnswOptions *opts = (HnswOptions *) index->rd_options;

	*m = opts ? opts->m : HNSW_DEFAULT_M;
	*efConstruction = opts ? opts->efConstruction : HNSW_DEFAULT_EF_CONSTRUCTION;
}

void
hnsw_get_cagra_options(Relation index, HnswCagraOptions *opts)
{
	cagra_options_from((HnswOptions *) index->rd_options, opts);
}

/*
 * Elements the first round of a scan reads in a graph of ntuples: ef * 2m
 * neighbours at level 0 plus m per upper level if none repeated, fewer as
 * neighbourhoods overlap; never more than the graph.
 */
static double
first_round_elements(double ntuples, int ef, int m)
{
	double		levels = log(ntuples) / log((double) m);
	double		reads = 2.0 * m * ef + levels * m;

	return ntuples * -expm1(-reads / ntuples);
}

/*
 * Cost of a scan.  Every element read costs its tuples and one distance;
 * every element expanded costs its neighbour tuple and 2m visited-set
 * probes.  The distance is priced as the planner prices the ORDER BY
 * expression in any other plan (cost_qual_eval: cpu_operator_cost times
 * the operator's procost), which is what Seq Scan + Sort pays per row for
 * the same distance.  Its real cost grows with dims in both plans alike
 * (the seq scan detoasts each vector too), so one price keeps the
 * comparison fair; pricing it higher in the index alone made the planner
 * choose a seq scan 20-150x slower on 30k x 784 rows.
 *
 * A vector index that is queried stays cached, so its pages cost CPU, not
 * I/O, except the share of the index that exceeds effective_cache_size.
 *
 * Startup is the first round, all done before the first row.  The total is
 * what returning every row takes: reading and expanding the whole graph,
 * as an iterative scan would (a plain scan stops after the first round).
 */
static void
hnswcostestimate(PlannerInfo *root, IndexPath *path, double loop_count,
				 Cost *indexStartupCost, Cost *indexTotalCost,
				 Selectivity *indexSelectivity, double *indexCorrelation,
				 double *indexPages)
{
	IndexOptInfo *index = path->indexinfo;
	double		ntuples = Max(index->tuples, 1.0);
	Relation	rel;
	HnswMetaPageData meta;
	int			ef;
	QualCost	dist;
	double		tuplesPerElement;
	double		readCost;
	double		expandCost;
	double		first;
	double		uncached = 0;

	if (path->indexorderbys == NIL)
	{
		*indexStartupCost = get_float8_infinity();
		*indexTotalCost = get_float8_infinity();
		*indexSelectivity = 0;
		*indexCorrelation = 0;
		*indexPages = 0;
		return;
	}

	rel = index_open(index->indexoid, NoLock);
	hnsw_read_meta(rel, &meta);
	ef = hnsw_scan_ef(rel);
	index_close(rel, NoLock);

	cost_qual_eval_node(&dist, (Node *) linitial(path->indexorderbys), root);
	tuplesPerElement = 1 + hnsw_data_tuples(meta.dims);
	readCost = cpu_index_tuple_cost * tuplesPerElement + dist.per_tuple;
	expandCost = cpu_index_tuple_cost + 2.0 * meta.m * cpu_operator_cost;
	if (index->pages > (BlockNumber) effective_cache_size)
	{
		uncached = 1.0 - (double) effective_cache_size / index->pages;
		readCost += random_page_cost * uncached * tuplesPerElement;
		expandCost += random_page_cost * uncached;
	}

	first = first_round_elements(ntuples, ef, meta.m);
	*indexStartupCost = dist.startup + first * readCost +
		first / meta.m * expandCost;
	*indexTotalCost = dist.startup + ntuples * (readCost + expandCost);
	/* no index quals: every row comes back */
	*indexSelectivity = 1.0;
	*indexCorrelation = 0;
	*indexPages = ceil(index->pages * first / ntuples);
}

/*
 * Validate an opclass: support function 1 (int4 metric from internal) and
 * ordering operators only.
 */
static bool
hnswvalidate(Oid opclassoid)
{
	bool		result = true;
	HeapTuple	classtup;
	Form_pg_opclass classform;
	Oid			opfamilyoid;
	CatCList   *proclist,
			   *oprlist;
	int			i;
	bool		has_proc1 = false;

	classtup = SearchSysCache1(CLAOID, ObjectIdGetDatum(opclassoid));
	if (!HeapTupleIsValid(classtup))
		elog(ERROR, "cache lookup failed for operator class %u", opclassoid);
	classform = (Form_pg_opclass) GETSTRUCT(classtup);
	opfamilyoid = classform->opcfamily;

	proclist = SearchSysCacheList1(AMPROCNUM, ObjectIdGetDatum(opfamilyoid));
	for (i = 0; i < proclist->n_members; i++)
	{
		Form_pg_amproc procform = (Form_pg_amproc) GETSTRUCT(&proclist->members[i]->tuple);

		if (procform->amprocnum == HNSW_METRIC_PROC)
			has_proc1 = true;
		else
		{
			ereport(INFO,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("gnnhnsw operator family contains function %u with invalid support number %d",
							procform->amproc, procform->amprocnum)));
			result = false;
		}
	}
	oprlist = SearchSysCacheList1(AMOPSTRATEGY, ObjectIdGetDatum(opfamilyoid));
	for (i = 0; i < oprlist->n_members; i++)
	{
		Form_pg_amop oprform = (Form_pg_amop) GETSTRUCT(&oprlist->members[i]->tuple);

		if (oprform->amoppurpose != AMOP_ORDER || oprform->amopstrategy != 1)
		{
			ereport(INFO,
					(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
					 errmsg("gnnhnsw operator family contains operator %u that is not ordering operator 1",
							oprform->amopopr)));
			result = false;
		}
	}
	if (!has_proc1)
	{
		ereport(INFO,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("gnnhnsw operator class %u lacks support function 1",
						opclassoid)));
		result = false;
	}
	ReleaseCatCacheList(proclist);
	ReleaseCatCacheList(oprlist);
	ReleaseSysCache(classtup);
	return result;
}

static char *
hnswbuildphasename(int64 phasenum)
{
	switch (phasenum)
	{
		case PROGRESS_CREATEIDX_SUBPHASE_INITIALIZE:
			return "initializing";
		case PROGRESS_HNSW_PHASE_LOAD:
			return "loading tuples";
		case PROGRESS_HNSW_PHASE_WRITE:
			return "writing pages";
		case PROGRESS_HNSW_PHASE_CAGRA_KNN:
			return "building CAGRA kNN graph";
		case PROGRESS_HNSW_PHASE_CAGRA_PRUNE:
			return "pruning CAGRA graph";
		case PROGRESS_HNSW_PHASE_CAGRA_MERGE:
			return "merging CAGRA reverse edges";
		case PROGRESS_HNSW_PHASE_CAGRA_GPU:
			return "building CAGRA graph on GPU";
		case PROGRESS_HNSW_PHASE_CAGRA_UPPER:
			return "building upper levels";
		default:
			return NULL;
	}
}

PG_FUNCTION_INFO_V1(gnnhnsw_handler);
Datum
gnnhnsw_handler(PG_FUNCTION_ARGS)
{
	IndexAmRoutine *amroutine = makeNode(IndexAmRoutine);

	amroutine->amstrategies = 0;
	amroutine->amsupport = 1;
	amroutine->amoptsprocnum = 0;
	amroutine->amcanorder = false;
	amroutine->amcanorderbyop = true;
	amroutine->amcanbackward = false;
	amroutine->amcanunique = false;
	amroutine->amcanmulticol = false;
	amroutine->amoptionalkey = true;
	amroutine->amsearcharray = false;
	amroutine->amsearchnulls = false;
	amroutine->amstorage = false;
	amroutine->amclusterable = false;
	amroutine->ampredlocks = false;
	amroutine->amcanparallel = false;
	amroutine->amcaninclude = false;
	amroutine->amusemaintenanceworkmem = false;
#if PG_VERSION_NUM >= 160000
	amroutine->amsummarizing = false;
#endif
#if PG_VERSION_NUM >= 170000
	amroutine->amcanbuildparallel = false;
#endif
	amroutine->amparallelvacuumoptions = VACUUM_OPTION_PARALLEL_BULKDEL;
	amroutine->amkeytype = InvalidOid;

	amroutine->ambuild = hnswbuild;
	amroutine->ambuildempty = hnswbuildempty;
	amroutine->aminsert = hnswinsert;
#if PG_VERSION_NUM >= 170000
	amroutine->aminsertcleanup = NULL;
#endif
	amroutine->ambulkdelete = hnswbulkdelete;
	amroutine->amvacuumcleanup = hnswvacuumcleanup;
	amroutine->amcanreturn = NULL;
	amroutine->amcostestimate = hnswcostestimate;
	amroutine->amoptions = hnswoptions;
	amroutine->amproperty = NULL;
	amroutine->ambuildphasename = hnswbuildphasename;
	amroutine->amvalidate = hnswvalidate;
#if PG_VERSION_NUM >= 140000
	amroutine->amadjustmembers = NULL;
#endif
	amroutine->ambeginscan = hnswbeginscan;
	amroutine->amrescan = hnswrescan;
	amroutine->amgettuple = hnswgettuple;
	amroutine->amgetbitmap = NULL;
	amroutine->amendscan = hnswendscan;
	amroutine->ammarkpos = NULL;
	amroutine->amrestrpos = NULL;
	amroutine->amestimateparallelscan = NULL;
	amroutine->aminitparallelscan = NULL;
	amroutine->amparallelrescan = NULL;

	PG_RETURN_POINTER(amroutine);
}
