/*
 * vector.c
 *		The `vector` type: text and binary I/O, typmod, casts to and from
 *		arrays.  The formats are pgvector's, so dumps and client libraries
 *		written for pgvector work unchanged:
 *		  text   [1,2.5,3]
 *		  binary int16 dim, int16 0, dim x float4 (network byte order)
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "parser/scansup.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "vector/vector.h"

void
vector_init(void)
{
	vec_distance_init(VEC_ISA_AVX512);
}

Vector *
vector_new(int dim)
{
	Vector	   *v;

	vector_check_dim(dim);
	v = (Vector *) palloc0(VECTOR_SIZE(dim));
	SET_VARSIZE(v, VECTOR_SIZE(dim));
	v->dim = dim;
	return v;
}

void
vector_check_dim(int dim)
{
	if (dim < 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector must have at least 1 dimension")));
	if (dim > VECTOR_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("vector cannot have more than %d dimensions", VECTOR_MAX_DIM)));
}

void
vector_check_same_dims(const Vector *a, const Vector *b)
{
	if (a->dim != b->dim)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("different vector dimensions %d and %d", a->dim, b->dim),
				 errhint("Both operands must have the same number of dimensions.")));
}

void
vector_check_typmod(int dim, int32 typmod)
{
	if (typmod != -1 && dim != typmod)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("expected %d dimensions, not %d", typmod, dim)));
}

/* Every element must be a finite float4. */
static inline void
check_element(float value)
{
	if (isnan(value))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("NaN not allowed in vector")));
	if (isinf(value))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("infinite value not allowed in vector")));
}

static void syntax_error(const char *input, const char *detail) pg_attribute_noreturn();

static void
syntax_error(const char *input, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for type vector: \"%s\"", input),
			 errdetail("%s", detail),
			 errhint("Write vectors as a bracketed, comma-separated list of numbers, e.g. '[1,2.5,3]'.")));
}

static inline const char *
skip_space(const char *p)
{
	while (scanner_isspace(*p))
		p++;
	return p;
}

/*
 * Parse "[x1, x2, ...]" with optional whitespace around every token.
 * Elements go into a buffer of VECTOR_MAX_DIM + 1 so that one element too
 * many is detected without scanning the rest.
 */
PG_FUNCTION_INFO_V1(vector_in);
Datum
vector_in(PG_FUNCTION_ARGS)
{
	char	   *input = PG_GETARG_CSTRING(0);
	int32		typmod = PG_GETARG_INT32(2);
	float	   *values = palloc(sizeof(float) * (VECTOR_MAX_DIM + 1));
	int			dim = 0;
	const char *p = skip_space(input);
	Vector	   *result;

	if (*p != '[')
		syntax_error(input, "Vector contents must start with \"[\".");
	p = skip_space(p + 1);
	if (*p == ']')
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("vector must have at least 1 dimension")));

	for (;;)
	{
		char	   *end;
		float		value;

		if (dim == VECTOR_MAX_DIM)
			vector_check_dim(dim + 1);
		if (*p == '\0' || *p == ',' || *p == ']')
			syntax_error(input, "Expected a number.");

		errno = 0;
		value = strtof(p, &end);
		if (end == p)
			syntax_error(input, "Expected a number.");
		if (errno == ERANGE && isinf(value))
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("\"%.*s\" is out of range for type vector", (int) (end - p), p)));
		check_element(value);
		values[dim++] = value;

		p = skip_space(end);
		if (*p == ',')
			p = skip_space(p + 1);
		else if (*p == ']')
			break;
		else
			syntax_error(input, "Expected \",\" or \"]\" after a number.");
	}

	if (*skip_space(p + 1) != '\0')
		syntax_error(input, "Junk after closing right bracket.");

	vector_check_typmod(dim, typmod);
	result = vector_new(dim);
	memcpy(result->x, values, sizeof(float) * dim);
	pfree(values);
	PG_RETURN_VECTOR_P(result);
}

/* Shortest text that reads back as the same float4 (Ryu, via PostgreSQL). */
PG_FUNCTION_INFO_V1(vector_out);
Datum
vector_out(PG_FUNCTION_ARGS)
{
	Vector	   *v = PG_GETARG_VECTOR_P(0);
	char	   *buf = palloc(v->dim * (FLOAT_SHORTEST_DECIMAL_LEN + 1) + 2);
	char	   *p = buf;

	*p++ = '[';
	for (int i = 0; i < v->dim; i++)
	{
		if (i > 0)
			*p++ = ',';
		p += float_to_shortest_decimal_bufn(v->x[i], p);
	}
	*p++ = ']';
	*p = '\0';
	PG_FREE_IF_COPY(v, 0);
	PG_RETURN_CSTRING(buf);
}

PG_FUNCTION_INFO_V1(vector_typmod_in);
Datum
vector_typmod_in(PG_FUNCTION_ARGS)
{
	ArrayType  *ta = PG_GETARG_ARRAYTYPE_P(0);
	int32	   *mods;
	int			n;

	mods = ArrayGetIntegerTypmods(ta, &n);
	if (n != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid type modifier"),
				 errhint("Declare vectors as vector(n), with one dimension count.")));
	if (mods[0] < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dimensions for type vector must be at least 1")));
	if (mods[0] > VECTOR_MAX_DIM)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("dimensions for type vector cannot exceed %d", VECTOR_MAX_DIM)));
	PG_RETURN_INT32(mods[0]);
}

PG_FUNCTION_INFO_V1(vector_recv);
Datum
vector_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	int32		typmod = PG_GETARG_INT32(2);
	int16		dim = (int16) pq_getmsgint(buf, sizeof(int16));
	int16		unused = (int16) pq_getmsgint(buf, sizeof(int16));
	Vector	   *result;

	vector_check_dim(dim);
	if (unused != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_BINARY_REPRESENTATION),
				 errmsg("expected unused to be 0, not %d", unused),
				 errhint("The binary format is int16 dim, int16 0, then dim float4 values.")));
	vector_check_typmod(dim, typmod);

	result = vector_new(dim);
	for (int i = 0; i < dim; i++)
	{
		result->x[i] = pq_getmsgfloat4(buf);
		check_element(result->x[i]);
	}
	PG_RETURN_VECTOR_P(result);
}

PG_FUNCTION_INFO_V1(vector_send);
Datum
vector_send(PG_FUNCTION_ARGS)
{
	Vector	   *v = PG_GETARG_VECTOR_P(0);
	StringInfoData buf;

	pq_begintypsend(&buf);
	pq_sendint16(&buf, v->dim);
	pq_sendint16(&buf, v->unused);
	for (int i = 0; i < v->dim; i++)
		pq_sendfloat4(&buf, v->x[i]);
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* Length coercion: vector -> vector(n). */
PG_FUNCTION_INFO_V1(vector);
Datum
vector(PG_FUNCTION_ARGS)
{
	Vector	   *v = PG_GETARG_VECTOR_P(0);

	vector_check_typmod(v->dim, PG_GETARG_INT32(1));
	PG_RETURN_VECTOR_P(v);
}

/* One array element as a float4, by the array's element type. */
static float
array_element_to_float(Datum d, Oid elemtype)
{
	switch (elemtype)
	{
		case INT4OID:
			return (float) DatumGetInt32(d);
		case FLOAT4OID:
			return DatumGetFloat4(d);
		case FLOAT8OID:
			{
				double		v = DatumGetFloat8(d);

				if (!isinf(v) && isinf((float) v))
					ereport(ERROR,
							(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
							 errmsg("value out of range for type vector: %g", v)));
				return (float) v;
			}
		case NUMERICOID:
			return DatumGetFloat4(DirectFunctionCall1(numeric_float4, d));
		default:
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("unsupported array element type %s for vector",
							format_type_be(elemtype)),
					 errhint("Use integer[], real[], double precision[] or numeric[].")));
	}
	pg_unreachable();
}

PG_FUNCTION_INFO_V1(array_to_vector);
Datum
array_to_vector(PG_FUNCTION_ARGS)
{
	ArrayType  *array = PG_GETARG_ARRAYTYPE_P(0);
	int32		typmod = PG_GETARG_INT32(1);
	Oid			elemtype = ARR_ELEMTYPE(array);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	Vector	   *result;

	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("array must be 1-D")));
	if (ARR_HASNULL(array) && array_contains_nulls(array))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("array must not contain nulls")));

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(array, elemtype, typlen, typbyval, typalign, &elems, &nulls, &n);
	vector_check_dim(n);
	vector_check_typmod(n, typmod);

	result = vector_new(n);
	for (int i = 0; i < n; i++)
	{
		result->x[i] = array_element_to_float(elems[i], elemtype);
		check_element(result->x[i]);
	}
	PG_RETURN_VECTOR_P(result);
}

/*
 * vector -> real[], double precision[] or numeric[]: the element type is
 * the declared result type of the SQL function that called us.
 */
PG_FUNCTION_INFO_V1(vector_to_array);
Datum
vector_to_array(PG_FUNCTION_ARGS)
{
	Vector	   *v = PG_GETARG_VECTOR_P(0);
	Oid			elemtype = get_element_type(get_fn_expr_rettype(fcinfo->flinfo));
	Datum	   *elems = palloc(sizeof(Datum) * v->dim);
	int16		typlen;
	bool		typbyval;
	char		typalign;

	for (int i = 0; i < v->dim; i++)
	{
		switch (elemtype)
		{
			case FLOAT4OID:
				elems[i] = Float4GetDatum(v->x[i]);
				break;
			case FLOAT8OID:
				elems[i] = Float8GetDatum((double) v->x[i]);
				break;
			case NUMERICOID:
				elems[i] = DirectFunctionCall1(float4_numeric, Float4GetDatum(v->x[i]));
				break;
			default:
				elog(ERROR, "vector_to_array called for unsupported type %u", elemtype);
		}
	}
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, v->dim, elemtype, typlen, typbyval, typalign));
}
