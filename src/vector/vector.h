/*
 * vector.h
 *		The `vector` SQL type: on-disk layout (identical to pgvector's, so
 *		dumps, binary COPY and client libraries interoperate) and helpers for
 *		the other subsystems.  The distance kernels are in distance.h.
 */
#ifndef GNNVEC_VECTOR_H
#define GNNVEC_VECTOR_H

#include "postgres.h"

#include "fmgr.h"
#include "vector/distance.h"

#define VECTOR_MAX_DIM 16000

typedef struct Vector
{
	int32		vl_len_;		/* varlena header (do not touch directly!) */
	int16		dim;			/* number of dimensions */
	int16		unused;			/* reserved, always zero */
	float		x[FLEXIBLE_ARRAY_MEMBER];
} Vector;

#define VECTOR_SIZE(_dim)		(offsetof(Vector, x) + sizeof(float) * (_dim))
#define DatumGetVector(x)		((Vector *) PG_DETOAST_DATUM(x))
#define PG_GETARG_VECTOR_P(x)	DatumGetVector(PG_GETARG_DATUM(x))
#define PG_RETURN_VECTOR_P(x)	PG_RETURN_POINTER(x)

extern Vector *vector_new(int dim);
extern void vector_check_dim(int dim);
extern void vector_check_same_dims(const Vector *a, const Vector *b);
extern void vector_check_typmod(int dim, int32 typmod);

/* Distances as SQL computes them (index support functions use these too). */
extern double vector_l2_distance_value(const Vector *a, const Vector *b);
extern double vector_cosine_distance_value(const Vector *a, const Vector *b);

/* Called from _PG_init: choose the distance kernels for this CPU. */
extern void vector_init(void);

#endif							/* GNNVEC_VECTOR_H */
