/*
 * lora_hook.c
 *		ExecutorStart/ExecutorEnd hooks that record trajectories: for every
 *		executed plan node of an operator scope type, its time, rows and
 *		loops, the running baseline of its type, and the query embedding
 *		when the plan orders by a vector distance.
 *
 * Timing needs per-node instrumentation, which costs a clock read per node
 * per row, so it is asked for only while gnnvec.record_trajectories is on.
 * Times are EXPLAIN ANALYZE's "actual total time" times loops: inclusive of
 * the node's children, summed over its loops (and over parallel workers,
 * which add theirs into the leader's nodes; workers record nothing).
 *
 * The query embedding is the constant vector argument (a Const, or an
 * external parameter such as $1 of a prepared statement) of a distance
 * operator (<->, <#>, <=>, <+>) that an index scan orders by or that a Sort
 * sorts on; the first such in the plan, pre-order.  Every node recorded for
 * the query carries it.
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "executor/executor.h"
#include "executor/instrument.h"
#include "nodes/nodeFuncs.h"
#include "parser/parsetree.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "lora/lora.h"
#include "vector/vector.h"

static ExecutorStart_hook_type prev_ExecutorStart = NULL;
static ExecutorEnd_hook_type prev_ExecutorEnd = NULL;

typedef struct NodeRecord
{
	int			scope;
	double		exec_ms;
	double		rows;
	double		loops;
} NodeRecord;

typedef struct RecordContext
{
	NodeRecord *records;
	int			count;
	int			size;
} RecordContext;

/* Index scans by access method: gnnhnsw, pgvector's ivfflat, the rest. */
static int
index_scan_scope(Relation index)
{
	char	   *amname;
	int			scope = LORA_INDEX_SCAN;

	if (index == NULL)
		return scope;
	amname = get_am_name(index->rd_rel->relam);
	if (amname != NULL && strcmp(amname, "gnnhnsw") == 0)
		scope = LORA_HNSW_SCAN;
	else if (amname != NULL && strcmp(amname, "ivfflat") == 0)
		scope = LORA_IVFFLAT_SCAN;
	return scope;
}

/* The scope a plan node is recorded under, or -1 (see lora.h). */
static int
planstate_scope(PlanState *ps)
{
	switch (nodeTag(ps))
	{
		case T_SeqScanState:
			return LORA_SEQ_SCAN;
		case T_IndexScanState:
			return index_scan_scope(((IndexScanState *) ps)->iss_RelationDesc);
		case T_IndexOnlyScanState:
			return index_scan_scope(((IndexOnlyScanState *) ps)->ioss_RelationDesc);
		case T_BitmapHeapScanState:
			return LORA_INDEX_SCAN;
		case T_NestLoopState:
			return LORA_NESTED_LOOP_JOIN;
		case T_HashJoinState:
			return LORA_HASH_JOIN;
		case T_MergeJoinState:
			return LORA_MERGE_JOIN;
		case T_AggState:
			return ((Agg *) ps->plan)->aggstrategy == AGG_PLAIN ?
				LORA_AGGREGATE : LORA_GROUP_BY;
		case T_GroupState:
			return LORA_GROUP_BY;
		case T_ProjectSetState:
			return LORA_PROJECT;
		case T_SortState:
		case T_IncrementalSortState:
			return LORA_SORT;
		case T_LimitState:
			return LORA_LIMIT;
		case T_MaterialState:
			return LORA_MATERIALIZE;
		case T_ResultState:
			return LORA_RESULT;
		default:
			return -1;
	}
}

static bool
collect_nodes(PlanState *ps, RecordContext *ctx)
{
	Instrumentation *instr = ps->instrument;
	int			scope;

	if (instr != NULL)
	{
		/* what EXPLAIN ANALYZE does before reading; a no-op the second time */
		InstrEndLoop(instr);
		scope = instr->nloops > 0 ? planstate_scope(ps) : -1;
		if (scope >= 0)
		{
			NodeRecord *r;

			if (ctx->count == ctx->size)
			{
				ctx->size *= 2;
				ctx->records = repalloc(ctx->records, sizeof(NodeRecord) * ctx->size);
			}
			r = &ctx->records[ctx->count++];
			r->scope = scope;
			r->exec_ms = instr->total * 1000.0;
			r->rows = instr->ntuples;
			r->loops = instr->nloops;
		}
	}
	return planstate_tree_walker(ps, collect_nodes, ctx);
}

static bool
is_vector_type(Oid typid)
{
	HeapTuple	tuple = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	bool		result;

	if (!HeapTupleIsValid(tuple))
		return false;
	result = strcmp(NameStr(((Form_pg_type) GETSTRUCT(tuple))->typname), "vector") == 0;
	ReleaseSysCache(tuple);
	return result;
}

/* The value of external parameter $id if it is set and of type typid. */
static bool
extern_param_value(ParamListInfo params, int id, Oid typid, Datum *value)
{
	ParamExternData workspace;
	ParamExternData *prm;

	if (params == NULL || id <= 0 || id > params->numParams)
		return false;
	if (params->paramFetch != NULL)
		prm = params->paramFetch(params, id, true, &workspace);
	else
		prm = &params->params[id - 1];
	if (prm == NULL || prm->isnull || prm->ptype != typid)
		return false;
	*value = prm->value;
	return true;
}

/* A constant's or external parameter's vector value, or NULL. */
static Vector *
constant_vector(Node *arg, ParamListInfo params)
{
	Datum		value;
	Vector	   *v;

	if (IsA(arg, Const))
	{
		Const	   *c = (Const *) arg;

		if (c->constisnull || !is_vector_type(c->consttype))
			return NULL;
		value = c->constvalue;
	}
	else if (IsA(arg, Param) && ((Param *) arg)->paramkind == PARAM_EXTERN)
	{
		Param	   *p = (Param *) arg;

		if (!is_vector_type(p->paramtype) ||
			!extern_param_value(params, p->paramid, p->paramtype, &value))
			return NULL;
	}
	else
		return NULL;

	/* a type of another extension called vector must have our layout */
	v = DatumGetVector(value);
	if (VARSIZE_ANY(v) < VECTOR_SIZE(0) || v->dim < 1 || v->dim > VECTOR_MAX_DIM ||
		VARSIZE_ANY(v) < VECTOR_SIZE(v->dim))
		return NULL;
	return v;
}

static const char *const distance_operators[] = {"<->", "<#>", "<=>", "<+>"};

/* The constant vector of a distance operator expression, or NULL. */
static Vector *
distance_query(Node *expr, ParamListInfo params)
{
	OpExpr	   *op;
	char	   *name;
	bool		is_distance = false;
	ListCell   *lc;

	if (expr == NULL || !IsA(expr, OpExpr) || list_length(((OpExpr *) expr)->args) != 2)
		return NULL;
	op = (OpExpr *) expr;
	name = get_opname(op->opno);
	for (int i = 0; name != NULL && i < lengthof(distance_operators); i++)
		is_distance |= strcmp(name, distance_operators[i]) == 0;
	if (!is_distance)
		return NULL;
	foreach(lc, op->args)
	{
		Vector	   *v = constant_vector(lfirst(lc), params);

		if (v != NULL)
			return v;
	}
	return NULL;
}

/* The distance query a node orders by: index ORDER BY or sort keys. */
static Vector *
node_order_query(Plan *plan, ParamListInfo params)
{
	ListCell   *lc;
	Sort	   *sort;
	Plan	   *input;

	if (IsA(plan, IndexScan))
	{
		foreach(lc, ((IndexScan *) plan)->indexorderbyorig)
		{
			Vector	   *v = distance_query(lfirst(lc), params);

			if (v != NULL)
				return v;
		}
		return NULL;
	}
	if (!IsA(plan, Sort) && !IsA(plan, IncrementalSort))
		return NULL;
	/* IncrementalSort begins with a Sort; keys name the input's columns */
	sort = (Sort *) plan;
	input = outerPlan(plan);
	for (int i = 0; input != NULL && i < sort->numCols; i++)
	{
		TargetEntry *tle = get_tle_by_resno(input->targetlist, sort->sortColIdx[i]);
		Vector	   *v = tle ? distance_query((Node *) tle->expr, params) : NULL;

		if (v != NULL)
			return v;
	}
	return NULL;
}

typedef struct QueryVectorContext
{
	ParamListInfo params;
	Vector	   *found;
} QueryVectorContext;

static bool
find_query_vector(PlanState *ps, QueryVectorContext *ctx)
{
	ctx->found = node_order_query(ps->plan, ctx->params);
	if (ctx->found != NULL)
		return true;
	return planstate_tree_walker(ps, find_query_vector, ctx);
}

static void
record_query(QueryDesc *queryDesc)
{
	RecordContext ctx;
	QueryVectorContext qv = {queryDesc->params, NULL};
	TimestampTz now;
	LoraRing   *ring;
	MemoryContext oldcxt;

	/* freed with the executor state a moment later */
	oldcxt = MemoryContextSwitchTo(queryDesc->estate->es_query_cxt);
	ctx.size = 16;
	ctx.count = 0;
	ctx.records = palloc(sizeof(NodeRecord) * ctx.size);
	collect_nodes(queryDesc->planstate, &ctx);
	if (ctx.count == 0)
	{
		MemoryContextSwitchTo(oldcxt);
		return;
	}
	find_query_vector(queryDesc->planstate, &qv);
	now = GetCurrentTimestamp();

	ring = lora_ring_begin(true);
	for (int i = 0; i < ctx.count; i++)
		lora_ring_record(ring, ctx.records[i].scope, ctx.records[i].exec_ms,
						 ctx.records[i].rows, ctx.records[i].loops,
						 qv.found ? qv.found->x : NULL,
						 qv.found ? qv.found->dim : 0, now);
	lora_ring_end();
	MemoryContextSwitchTo(oldcxt);
}

static void
lora_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (lora_recording() && !IsParallelWorker() &&
		(eflags & EXEC_FLAG_EXPLAIN_ONLY) == 0)
		queryDesc->instrument_options |= INSTRUMENT_TIMER | INSTRUMENT_ROWS;

	if (prev_ExecutorStart)
		prev_ExecutorStart(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * Before the executor shuts the plan down (index relations are still open
 * then).  A query started before recording was switched on has no timers,
 * and is skipped.
 */
static void
lora_ExecutorEnd(QueryDesc *queryDesc)
{
	if (lora_recording() && !IsParallelWorker() && queryDesc->planstate != NULL &&
		(queryDesc->instrument_options & INSTRUMENT_TIMER) != 0)
		record_query(queryDesc);

	if (prev_ExecutorEnd)
		prev_ExecutorEnd(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

void
lora_hook_install(void)
{
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = lora_ExecutorStart;
	prev_ExecutorEnd = ExecutorEnd_hook;
	ExecutorEnd_hook = lora_ExecutorEnd;
}
