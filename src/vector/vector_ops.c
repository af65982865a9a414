/*
 * vector_ops.c
 *		Distances, arithmetic, comparison and aggregates for `vector`.
 *		The distance loops are the SIMD kernels of distance.c.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "vector/vector.h"

/* ------------------------------------------------------------------------
 * Distances
 * ------------------------------------------------------------------------ */
static double
l2_squared_value(const Vector *a, const Vector *b)
{
	vector_check_same_dims(a, b);
	return (double) vec_l2_squared(a->x, b->x, a->dim);
}

static double
inner_product_value(const Vector *a, const Vector *b)
{
	vector_check_same_dims(a, b);
	return (double) vec_inner_product(a->x, b->x, a->dim);
}

double
vector_l2_distance_value(const Vector *a, const Vector *b)
{
	return sqrt(l2_squared_value(a, b));
}

/* NaN when either vector is zero: the angle is undefined (as pgvector). */
double
vector_cosine_distance_value(const Vector *a, const Vector *b)
{
	vector_check_same_dims(a, b);
	return vec_cosine_distance(a->x, b->x, a->dim);
}

PG_FUNCTION_INFO_V1(l2_distance);
Datum
l2_distance(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(vector_l2_distance_value(PG_GETARG_VECTOR_P(0),
											  PG_GETARG_VECTOR_P(1)));
}

/* Squared L2: the index orders by it and saves the sqrt. */
PG_FUNCTION_INFO_V1(vector_l2_squared_distance);
Datum
vector_l2_squared_distance(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(l2_squared_value(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1)));
}

PG_FUNCTION_INFO_V1(inner_product);
Datum
inner_product(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(inner_product_value(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1)));
}

PG_FUNCTION_INFO_V1(vector_negative_inner_product);
Datum
vector_negative_inner_product(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(-inner_product_value(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1)));
}

PG_FUNCTION_INFO_V1(cosine_distance);
Datum
cosine_distance(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(vector_cosine_distance_value(PG_GETARG_VECTOR_P(0),
												  PG_GETARG_VECTOR_P(1)));
}

PG_FUNCTION_INFO_V1(l1_distance);
Datum
l1_distance(PG_FUNCTION_ARGS)
{
	Vector	   *a = PG_GETARG_VECTOR_P(0);
	Vector	   *b = PG_GETARG_VECTOR_P(1);

	vector_check_same_dims(a, b);
	PG_RETURN_FLOAT8((double) vec_l1_distance(a->x, b->x, a->dim));
}

PG_FUNCTION_INFO_V1(vector_dims);
Datum
vector_dims(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(PG_GETARG_VECTOR_P(0)->dim);
}

static double
norm_of(const Vector *v)
{
	double		sum = 0.0;

	for (int i = 0; i < v->dim; i++)
		sum += (double) v->x[i] * (double) v->x[i];
	return sqrt(sum);
}

PG_FUNCTION_INFO_V1(vector_norm);
Datum
vector_norm(PG_FUNCTION_ARGS)
{
	PG_RETURN_FLOAT8(norm_of(PG_GETARG_VECTOR_P(0)));
}

/* A zero vector normalises to itself (there is no direction to keep). */
PG_FUNCTION_INFO_V1(l2_normalize);
Datum
l2_normalize(PG_FUNCTION_ARGS)
{
	Vector	   *v = PG_GETARG_VECTOR_P(0);
	double		norm = norm_of(v);
	Vector	   *result = vector_new(v->dim);

	if (norm > 0)
		for (int i = 0; i < v->dim; i++)
			result->x[i] = (float) (v->x[i] / norm);
	PG_RETURN_VECTOR_P(result);
}

/* subvector(v, start, count): 1-based, clipped to the vector like substr. */
PG_FUNCTION_INFO_V1(subvector);
Datum
subvector(PG_FUNCTION_ARGS)
{
	Vector	   *v = PG_GETARG_VECTOR_P(0);
	int64		start = PG_GETARG_INT32(1);
	int64		end = start + (int64) PG_GETARG_INT32(2);
	Vector	   *result;

	if (PG_GETARG_INT32(2) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("subvector count must not be negative")));
	if (start < 1)
		start = 1;
	if (end > (int64) v->dim + 1)
		end = (int64) v->dim + 1;
	if (end <= start)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector must have at least 1 dimension"),
				 errhint("subvector(v, start, count) selects elements start .. start+count-1 of a %d-dimensional vector.",
						 v->dim)));
	result = vector_new((int) (end - start));
	memcpy(result->x, v->x + (start - 1), sizeof(float) * result->dim);
	PG_RETURN_VECTOR_P(result);
}

/* ------------------------------------------------------------------------
 * Arithmetic: elementwise, with overflow reported rather than stored
 * ------------------------------------------------------------------------ */
typedef enum
{
	VECTOR_ADD,
	VECTOR_SUB,
	VECTOR_MUL
} VectorArith;

static Vector *
vector_arith(const Vector *a, const Vector *b, VectorArith op)
{
	Vector	   *r;

	vector_check_same_dims(a, b);
	r = vector_new(a->dim);
	for (int i = 0; i < a->dim; i++)
	{
		switch (op)
		{
			case VECTOR_ADD:
				r->x[i] = a->x[i] + b->x[i];
				break;
			case VECTOR_SUB:
				r->x[i] = a->x[i] - b->x[i];
				break;
			case VECTOR_MUL:
				r->x[i] = a->x[i] * b->x[i];
				if (r->x[i] == 0.0f && a->x[i] != 0.0f && b->x[i] != 0.0f)
					float_underflow_error();
				break;
		}
		if (isinf(r->x[i]))
			float_overflow_error();
	}
	return r;
}

PG_FUNCTION_INFO_V1(vector_add);
Datum
vector_add(PG_FUNCTION_ARGS)
{
	PG_RETURN_VECTOR_P(vector_arith(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1), VECTOR_ADD));
}

PG_FUNCTION_INFO_V1(vector_sub);
Datum
vector_sub(PG_FUNCTION_ARGS)
{
	PG_RETURN_VECTOR_P(vector_arith(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1), VECTOR_SUB));
}

PG_FUNCTION_INFO_V1(vector_mul);
Datum
vector_mul(PG_FUNCTION_ARGS)
{
	PG_RETURN_VECTOR_P(vector_arith(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1), VECTOR_MUL));
}

PG_FUNCTION_INFO_V1(vector_concat);
Datum
vector_concat(PG_FUNCTION_ARGS)
{
	Vector	   *a = PG_GETARG_VECTOR_P(0);
	Vector	   *b = PG_GETARG_VECTOR_P(1);
	Vector	   *r = vector_new(a->dim + b->dim);

	memcpy(r->x, a->x, sizeof(float) * a->dim);
	memcpy(r->x + a->dim, b->x, sizeof(float) * b->dim);
	PG_RETURN_VECTOR_P(r);
}

/* ------------------------------------------------------------------------
 * Comparison (btree): elementwise, then shorter first
 * ------------------------------------------------------------------------ */
static int
vector_cmp_internal(const Vector *a, const Vector *b)
{
	int			n = Min(a->dim, b->dim);

	for (int i = 0; i < n; i++)
	{
		if (a->x[i] < b->x[i])
			return -1;
		if (a->x[i] > b->x[i])
			return 1;
	}
	return (a->dim > b->dim) - (a->dim < b->dim);
}

#define VECTOR_CMP_FN(name, expr) \
PG_FUNCTION_INFO_V1(name); \
Datum \
name(PG_FUNCTION_ARGS) \
{ \
	int			c = vector_cmp_internal(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1)); \
	PG_RETURN_BOOL(expr); \
}

VECTOR_CMP_FN(vector_lt, c < 0)
VECTOR_CMP_FN(vector_le, c <= 0)
VECTOR_CMP_FN(vector_eq, c == 0)
VECTOR_CMP_FN(vector_ne, c != 0)
VECTOR_CMP_FN(vector_ge, c >= 0)
VECTOR_CMP_FN(vector_gt, c > 0)

PG_FUNCTION_INFO_V1(vector_cmp);
Datum
vector_cmp(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(vector_cmp_internal(PG_GETARG_VECTOR_P(0), PG_GETARG_VECTOR_P(1)));
}

/* ------------------------------------------------------------------------
 * avg(vector): the state is float8[] {count, sum_1 .. sum_dim}, so partial
 * states combine (parallel aggregation) and sums do not lose precision.
 * ------------------------------------------------------------------------ */
static float8 *
accum_state(ArrayType *state, int *n)
{
	if (ARR_NDIM(state) != 1 || ARR_HASNULL(state) || ARR_ELEMTYPE(state) != FLOAT8OID)
		elog(ERROR, "avg(vector): malformed transition state");
	*n = ARR_DIMS(state)[0];
	return (float8 *) ARR_DATA_PTR(state);
}

static ArrayType *
make_state(const float8 *values, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Float8GetDatum(values[i]);
	return construct_array(d, n, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

PG_FUNCTION_INFO_V1(vector_accum);
Datum
vector_accum(PG_FUNCTION_ARGS)
{
	ArrayType  *state = PG_GETARG_ARRAYTYPE_P(0);
	Vector	   *v = PG_GETARG_VECTOR_P(1);
	int			n;
	float8	   *s = accum_state(state, &n);
	float8	   *next;

	if (n == 1)
	{
		next = palloc0(sizeof(float8) * (v->dim + 1));
		n = v->dim + 1;
	}
	else
	{
		if (n - 1 != v->dim)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_EXCEPTION),
					 errmsg("different vector dimensions %d and %d", n - 1, v->dim),
					 errhint("avg(vector) needs all vectors to have the same number of dimensions.")));
		next = palloc(sizeof(float8) * n);
		memcpy(next, s, sizeof(float8) * n);
	}
	next[0] = s[0] + 1.0;
	for (int i = 0; i < v->dim; i++)
		next[i + 1] += v->x[i];
	PG_RETURN_ARRAYTYPE_P(make_state(next, n));
}

PG_FUNCTION_INFO_V1(vector_combine);
Datum
vector_combine(PG_FUNCTION_ARGS)
{
	int			na,
				nb;
	float8	   *a = accum_state(PG_GETARG_ARRAYTYPE_P(0), &na);
	float8	   *b = accum_state(PG_GETARG_ARRAYTYPE_P(1), &nb);
	float8	   *sum;

	if (na == 1)
		PG_RETURN_ARRAYTYPE_P(make_state(b, nb));
	if (nb == 1)
		PG_RETURN_ARRAYTYPE_P(make_state(a, na));
	if (na != nb)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("different vector dimensions %d and %d", na - 1, nb - 1)));
	sum = palloc(sizeof(float8) * na);
	for (int i = 0; i < na; i++)
		sum[i] = a[i] + b[i];
	PG_RETURN_ARRAYTYPE_P(make_state(sum, na));
}

PG_FUNCTION_INFO_V1(vector_avg);
Datum
vector_avg(PG_FUNCTION_ARGS)
{
	int			n;
	float8	   *s = accum_state(PG_GETARG_ARRAYTYPE_P(0), &n);
	Vector	   *r;

	if (s[0] == 0.0)
		PG_RETURN_NULL();
	r = vector_new(n - 1);
	for (int i = 0; i < r->dim; i++)
	{
		r->x[i] = (float) (s[i + 1] / s[0]);
		if (isinf(r->x[i]))
			float_overflow_error();
	}
	PG_RETURN_VECTOR_P(r);
}
