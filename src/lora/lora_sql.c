/*
 * lora_sql.c
 *		SQL functions for MicroLoRA adapters and trajectories.
 *
 * Scopes are given as text: one of the 17 operator type names in any case,
 * or its number (the integer overloads in the extension script cast to
 * text).  Every function checks its arguments and raises a clear ERROR.
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "lora/lora.h"
#include "vector/vector.h"

#define SCOPE_HINT "Scopes are the operator type names listed by gnnvec_lora_scopes(), in any case, or their numbers 0 to 16."

/*
 * This backend's last input to each scope: what its gnnvec_lora_adapt and
 * gnnvec_lora_reward apply to.  It is kept here, not with the adapters,
 * which may be shared: a session adapts at its own input, never at the one
 * another session gave last.
 */
typedef struct LastInput
{
	int			dim;			/* 0: none */
	int			capacity;		/* floats x can hold */
	float	   *x;				/* in TopMemoryContext */
} LastInput;

static LastInput last_inputs[LORA_NUM_SCOPES];

static void
remember_input(int scope, const float *x, int dim)
{
	LastInput  *in = &last_inputs[scope];

	if (in->capacity < dim)
	{
		float	   *mem = MemoryContextAlloc(TopMemoryContext, sizeof(float) * dim);

		if (in->x != NULL)
			pfree(in->x);
		in->x = mem;
		in->capacity = dim;
	}
	memcpy(in->x, x, sizeof(float) * dim);
	in->dim = dim;
}

/* The input this backend gave the scope last, or NULL. */
static const float *
last_input(int scope)
{
	return last_inputs[scope].dim > 0 ? last_inputs[scope].x : NULL;
}

static int
scope_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *given = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	int			scope = lora_scope_parse(given);

	if (scope == LORA_SCOPE_OUT_OF_RANGE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("operator scope number %s is out of range", given),
				 errhint(SCOPE_HINT)));
	if (scope == LORA_SCOPE_UNKNOWN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown operator scope \"%s\"", given),
				 errhint(SCOPE_HINT)));
	return scope;
}

/* The adapter of this call that holds another dimension (see prepare_adapters). */
static void
report_dim_mismatch(LoraBank *bank, int scope, int dim)
{
	LoraAdapter *ads[2];
	int			n = lora_bank_adapters_for(bank, scope, ads);

	if (ads[0]->dim != 0 && ads[0]->dim != dim)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector has %d dimensions, but the %s adapter has %d",
						dim, lora_scope_name(scope), ads[0]->dim),
				 errhint("gnnvec_lora_reset('%s') lets the scope start over at a new dimension.",
						 lora_scope_name(scope))));
	Assert(n == 2);
	ereport(ERROR,
			(errcode(ERRCODE_DATA_EXCEPTION),
			 errmsg("vector has %d dimensions, but the %s category adapter, which scope %s falls back on, has %d",
					dim, lora_category_name(lora_scope_category(scope)),
					lora_scope_name(scope), ads[n - 1]->dim),
			 errhint("gnnvec_lora_reset_all() starts every adapter over; gnnvec_lora_category_fallback(false) makes scopes independent of their category.")));
}

/* ERROR for a status other than LORA_OK; called with the bank still held. */
static void
report_status(LoraStatus status, LoraBank *bank, int scope, int dim)
{
	const char *name = lora_scope_name(scope);

	switch (status)
	{
		case LORA_OK:
			return;
		case LORA_DIM_MISMATCH:
			report_dim_mismatch(bank, scope, dim);
			break;
		case LORA_DIM_TOO_LARGE:
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("vector has %d dimensions, more than the %d of shared MicroLoRA adapters",
							dim, lora_max_dim()),
					 errhint("Raise gnnvec.lora_max_dim in postgresql.conf and restart the server.")));
			break;
		case LORA_NO_INPUT:
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("scope %s has no input to adapt at", name),
					 errhint("Call gnnvec_lora_forward('%s', ...) first: gradients and rewards apply to the scope's last input.",
							 name)));
			break;
		case LORA_DIVERGED:
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("update of a %s adapter overflowed, so the adapter was reset", name),
					 errhint("Lower gnnvec.lora_learning_rate or gnnvec.lora_alpha, or scale the gradient down.")));
			break;
		case LORA_NOT_FINITE:
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("output of the %s adapter overflows for this vector", name),
					 errhint("Entries this close to the float4 limit cannot be adapted; scale the vector down.")));
			break;
	}
}

void
lora_apply(int scope, const float *x, float *y, int dim)
{
	LoraSettings settings;
	LoraBank   *bank;
	LoraStatus	status;

	lora_settings(&settings);
	bank = lora_bank_begin(true);
	lora_bank_reserve(bank, scope, dim);
	status = lora_bank_forward(bank, scope, x, dim, &settings, y);
	report_status(status, bank, scope, dim);
	lora_bank_end();
	remember_input(scope, x, dim);
}

PG_FUNCTION_INFO_V1(gnnvec_lora_forward);
Datum
gnnvec_lora_forward(PG_FUNCTION_ARGS)
{
	int			scope = scope_arg(fcinfo, 0);
	Vector	   *input = PG_GETARG_VECTOR_P(1);
	Vector	   *output = vector_new(input->dim);

	lora_notice_if_local();
	lora_apply(scope, input->x, output->x, input->dim);
	PG_RETURN_VECTOR_P(output);
}

PG_FUNCTION_INFO_V1(gnnvec_lora_adapt);
Datum
gnnvec_lora_adapt(PG_FUNCTION_ARGS)
{
	int			scope = scope_arg(fcinfo, 0);
	Vector	   *grad = PG_GETARG_VECTOR_P(1);
	LoraSettings settings;
	LoraBank   *bank;
	LoraStatus	status;

	if (last_input(scope) != NULL && last_inputs[scope].dim != grad->dim)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("gradient has %d dimensions, but this session's last input to scope %s has %d",
						grad->dim, lora_scope_name(scope), last_inputs[scope].dim),
				 errhint("The gradient is dL/dy at the last input that gnnvec_lora_forward('%s', ...) was given in this session.",
						 lora_scope_name(scope))));
	lora_notice_if_local();
	lora_settings(&settings);
	bank = lora_bank_begin(true);
	lora_bank_reserve(bank, scope, grad->dim);
	status = lora_bank_adapt(bank, scope, last_input(scope), grad->x, grad->dim,
							 &settings);
	report_status(status, bank, scope, grad->dim);
	lora_bank_end();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(gnnvec_lora_reward);
Datum
gnnvec_lora_reward(PG_FUNCTION_ARGS)
{
	int			scope = scope_arg(fcinfo, 0);
	double		improvement = PG_GETARG_FLOAT8(1);
	int			dim = last_inputs[scope].dim;
	LoraSettings settings;
	LoraBank   *bank;
	LoraStatus	status;

	if (!isfinite(improvement))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("improvement must be a finite number"),
				 errhint("Rewards are clipped to [-1, 1], so a large finite value is enough.")));
	lora_notice_if_local();
	lora_settings(&settings);
	bank = lora_bank_begin(true);
	/* the category adapter may see its first vector here */
	lora_bank_reserve(bank, scope, dim);
	status = lora_bank_reward(bank, scope, last_input(scope), dim, improvement,
							  &settings);
	report_status(status, bank, scope, dim);
	lora_bank_end();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(gnnvec_lora_reset);
Datum
gnnvec_lora_reset(PG_FUNCTION_ARGS)
{
	int			scope = scope_arg(fcinfo, 0);
	LoraBank   *bank;

	lora_notice_if_local();
	bank = lora_bank_begin(true);
	lora_bank_reset_scope(bank, scope);
	lora_bank_end();
	/* this session starts over too; others keep their inputs */
	last_inputs[scope].dim = 0;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(gnnvec_lora_reset_all);
Datum
gnnvec_lora_reset_all(PG_FUNCTION_ARGS)
{
	LoraBank   *bank;

	lora_notice_if_local();
	bank = lora_bank_begin(true);
	lora_bank_reset_all(bank);
	lora_bank_end();
	for (int i = 0; i < LORA_NUM_SCOPES; i++)
		last_inputs[i].dim = 0;
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(gnnvec_lora_category_fallback);
Datum
gnnvec_lora_category_fallback(PG_FUNCTION_ARGS)
{
	bool		enabled = PG_GETARG_BOOL(0);
	LoraBank   *bank;

	lora_notice_if_local();
	bank = lora_bank_begin(true);
	bank->category_fallback = enabled;
	lora_bank_end();
	PG_RETURN_VOID();
}

/* One row of gnnvec_lora_stats, read under the lock. */
typedef struct AdapterRow
{
	LoraAdapter ad;
	double		delta_norm;
	double		weight;
} AdapterRow;

static void
put_adapter_row(Tuplestorestate *store, TupleDesc desc, const AdapterRow *row,
				int index)
{
	const LoraAdapter *ad = &row->ad;
	bool		is_scope = index < LORA_NUM_SCOPES;
	int			category = is_scope ? (int) lora_scope_category(index) :
		index - LORA_NUM_SCOPES;
	Datum		values[12];
	bool		nulls[12] = {0};

	values[0] = Int32GetDatum(index);
	nulls[0] = !is_scope;
	values[1] = CStringGetTextDatum(is_scope ? lora_scope_name(index) :
									lora_category_name(category));
	values[2] = CStringGetTextDatum(lora_category_name(category));
	values[3] = CStringGetTextDatum(is_scope ? "operator" : "category");
	values[4] = Int32GetDatum(ad->dim);
	values[5] = Int32GetDatum(ad->rank);
	values[6] = Float4GetDatum(ad->alpha);
	nulls[4] = nulls[5] = nulls[6] = ad->dim == 0;
	values[7] = Int64GetDatum((int64) ad->forward_count);
	values[8] = Int64GetDatum((int64) ad->adapt_count);
	values[9] = Float8GetDatum(row->delta_norm);
	values[10] = Int64GetDatum(lora_adapter_param_count(ad));
	values[11] = Float8GetDatum(row->weight);
	nulls[11] = !is_scope;
	tuplestore_putvalues(store, desc, values, nulls);
}

PG_FUNCTION_INFO_V1(gnnvec_lora_stats);
Datum
gnnvec_lora_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AdapterRow	rows[LORA_NUM_ADAPTERS];
	LoraBank   *bank;

	lora_notice_if_local();
	InitMaterializedSRF(fcinfo, 0);
	bank = lora_bank_begin(false);
	for (int i = 0; i < LORA_NUM_ADAPTERS; i++)
	{
		rows[i].ad = *lora_bank_adapter(bank, i);
		rows[i].delta_norm = lora_adapter_delta_norm(&rows[i].ad);
		rows[i].weight = i < LORA_NUM_SCOPES ? lora_bank_scope_weight(bank, i) : 0.0;
	}
	lora_bank_end();
	for (int i = 0; i < LORA_NUM_ADAPTERS; i++)
		put_adapter_row(rsinfo->setResult, rsinfo->setDesc, &rows[i], i);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(gnnvec_lora_scopes);
Datum
gnnvec_lora_scopes(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int scope = 0; scope < LORA_NUM_SCOPES; scope++)
	{
		const char *nodes = lora_scope_plan_nodes(scope);
		Datum		values[4];
		bool		nulls[4] = {0};

		values[0] = Int32GetDatum(scope);
		values[1] = CStringGetTextDatum(lora_scope_name(scope));
		values[2] = CStringGetTextDatum(lora_category_name(lora_scope_category(scope)));
		values[3] = nodes ? CStringGetTextDatum(nodes) : (Datum) 0;
		nulls[3] = nodes == NULL;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* A trajectory copied out of the ring, with its embedding as a vector. */
typedef struct TrajectoryRow
{
	LoraTrajectory t;
	Vector	   *embedding;
} TrajectoryRow;

static void
put_trajectory_row(Tuplestorestate *store, TupleDesc desc, const TrajectoryRow *row)
{
	const LoraTrajectory *t = &row->t;
	Datum		values[9];
	bool		nulls[9] = {0};

	values[0] = Int64GetDatum((int64) t->id);
	values[1] = CStringGetTextDatum(lora_scope_name(t->op));
	values[2] = Float8GetDatum(t->exec_ms);
	values[3] = Float8GetDatum(t->baseline_ms);
	values[4] = Float8GetDatum(t->improvement);
	values[5] = Float8GetDatum(t->rows);
	values[6] = Float8GetDatum(t->loops);
	values[7] = PointerGetDatum(row->embedding);
	nulls[7] = row->embedding == NULL;
	values[8] = TimestampTzGetDatum((TimestampTz) t->recorded_at);
	tuplestore_putvalues(store, desc, values, nulls);
}

PG_FUNCTION_INFO_V1(gnnvec_trajectories);
Datum
gnnvec_trajectories(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LoraRing   *ring;
	TrajectoryRow *rows;
	int			n;

	lora_notice_if_local();
	InitMaterializedSRF(fcinfo, 0);

	/* copy out under the lock; the tuplestore may spill to disk */
	ring = lora_ring_begin(false);
	n = lora_ring_count(ring);
	rows = palloc(sizeof(TrajectoryRow) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		rows[i].t = *lora_ring_get(ring, i);
		rows[i].embedding = NULL;
		if (rows[i].t.emb_dim > 0)
		{
			rows[i].embedding = vector_new(rows[i].t.emb_dim);
			memcpy(rows[i].embedding->x, lora_ring_embedding(ring, i),
				   sizeof(float) * rows[i].t.emb_dim);
		}
	}
	lora_ring_end();

	for (int i = 0; i < n; i++)
		put_trajectory_row(rsinfo->setResult, rsinfo->setDesc, &rows[i]);
	return (Datum) 0;
}

/* {"SeqScan": 2, "Sort": 1}: operators with at least one record. */
static Datum
count_by_operator_jsonb(const LoraTrajectoryStats *stats)
{
	StringInfoData buf;
	bool		first = true;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int op = 0; op < LORA_NUM_SCOPES; op++)
	{
		if (stats->by_op[op] == 0)
			continue;
		appendStringInfo(&buf, "%s\"%s\": %d", first ? "" : ", ",
						 lora_scope_name(op), stats->by_op[op]);
		first = false;
	}
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

PG_FUNCTION_INFO_V1(gnnvec_trajectory_stats);
Datum
gnnvec_trajectory_stats(PG_FUNCTION_ARGS)
{
	double		threshold = PG_GETARG_FLOAT8(0);
	LoraTrajectoryStats stats;
	LoraRing   *ring;
	TupleDesc	desc;
	Datum		values[9];
	bool		nulls[9] = {0};

	if (isnan(threshold))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("high-quality threshold must not be NaN")));
	lora_notice_if_local();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	ring = lora_ring_begin(false);
	lora_ring_stats(ring, threshold, &stats);
	lora_ring_end();

	values[0] = Int64GetDatum((int64) stats.total);
	values[1] = Int32GetDatum(stats.buffered);
	values[2] = Float8GetDatum(stats.mean_improvement);
	values[3] = Float8GetDatum(stats.best_improvement);
	values[4] = Float8GetDatum(stats.success_rate);
	values[5] = Float8GetDatum(stats.variance);
	/* no records: no mean, best, rate or variance to speak of */
	nulls[2] = nulls[3] = nulls[4] = nulls[5] = stats.buffered == 0;
	values[6] = Int32GetDatum(stats.high_quality);
	values[7] = Int64GetDatum((int64) stats.embeddings_dropped);
	values[8] = count_by_operator_jsonb(&stats);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc),
													  values, nulls)));
}

PG_FUNCTION_INFO_V1(gnnvec_trajectory_reset);
Datum
gnnvec_trajectory_reset(PG_FUNCTION_ARGS)
{
	LoraRing   *ring;

	lora_notice_if_local();
	ring = lora_ring_begin(true);
	lora_ring_reset(ring);
	lora_ring_end();
	PG_RETURN_VOID();
}
