/*
 * distance.h
 *		Distance kernels over float4 arrays: the PostgreSQL-free half of the
 *		vector subsystem (used by the type, the index, CAGRA and the GNN).
 *
 * Each kernel has a scalar, an AVX2+FMA and an AVX-512 version; the best one
 * the CPU supports is chosen once at run time (vec_distance_init), so the
 * shared library stays portable.  Results are float, accumulated in float
 * lanes like pgvector; callers that need double precision use the *_ref
 * functions (tests, brute-force ground truth).
 */
#ifndef GNNVEC_DISTANCE_H
#define GNNVEC_DISTANCE_H

#include <stdint.h>

typedef enum VecIsa
{
	VEC_ISA_SCALAR = 0,
	VEC_ISA_AVX2,
	VEC_ISA_AVX512
} VecIsa;

typedef struct VecKernels
{
	float		(*l2_squared) (const float *a, const float *b, int n);
	float		(*inner_product) (const float *a, const float *b, int n);
	float		(*l1) (const float *a, const float *b, int n);
	/* dot product and both squared norms in one pass (cosine distance) */
	void		(*cosine_parts) (const float *a, const float *b, int n,
								 float *dot, float *norm_a, float *norm_b);
	/*
	 * sum of a[i] * b[i] over unsigned and signed bytes (8-bit codes and a
	 * quantised query), exact for n <= 66000
	 */
	int32_t		(*dot_u8_i8) (const uint8_t *a, const int8_t *b, int n);
	VecIsa		isa;			/* the level of these kernels; other code
								 * with SIMD versions follows it */
} VecKernels;

/* The kernels in use; valid after vec_distance_init(). */
extern VecKernels vec_kernels;

/*
 * Pick kernels for this CPU.  isa_limit caps the choice (tests and benches
 * force a level); pass VEC_ISA_AVX512 for "best available".  Returns the
 * level chosen.  Safe to call more than once.
 */
extern VecIsa vec_distance_init(VecIsa isa_limit);
extern const char *vec_isa_name(VecIsa isa);

/* Kernel table for one level, or NULL if this CPU cannot run it. */
extern const VecKernels *vec_kernels_for(VecIsa isa);

/* Distances built on the kernels in use. */
static inline float
vec_l2_squared(const float *a, const float *b, int n)
{
	return vec_kernels.l2_squared(a, b, n);
}

static inline float
vec_inner_product(const float *a, const float *b, int n)
{
	return vec_kernels.inner_product(a, b, n);
}

static inline float
vec_l1_distance(const float *a, const float *b, int n)
{
	return vec_kernels.l1(a, b, n);
}

/* Start loading the cache line at p (a hint: no effect on results). */
#if defined(__GNUC__) || defined(__clang__)
#define vec_prefetch(p) __builtin_prefetch(p)
#else
#define vec_prefetch(p) ((void) 0)
#endif

/* Start loading a whole vector of n floats. */
static inline void
vec_prefetch_all(const float *v, int n)
{
	for (int off = 0; off < n; off += 16)
		vec_prefetch(v + off);
}

/*
 * Cosine distance 1 - a.b/(|a||b|), clamped to [0, 2].  NaN when either
 * vector is zero (the SQL layer decides what that means).
 */
extern double vec_cosine_distance(const float *a, const float *b, int n);

/* Double-precision scalar references, for tests and ground truth. */
extern double vec_l2_squared_ref(const float *a, const float *b, int n);
extern double vec_inner_product_ref(const float *a, const float *b, int n);
extern int64_t vec_dot_u8_i8_ref(const uint8_t *a, const int8_t *b, int n);
extern double vec_l1_ref(const float *a, const float *b, int n);
extern double vec_cosine_distance_ref(const float *a, const float *b, int n);

#endif							/* GNNVEC_DISTANCE_H */
