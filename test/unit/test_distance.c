/*
 * test_distance.c
 *		Every kernel at every ISA level this CPU has, against the
 *		double-precision scalar reference, for dimensions 1..2100.
 */
#include <math.h>
#include <string.h>

#include "unit.h"
#include "vector/distance.h"

#define MAX_DIM 2100

static unsigned int rng_state = 12345;

static float
rand_float(void)
{
	rng_state = rng_state * 1103515245u + 12345u;
	return ((float) ((rng_state >> 8) & 0xffff) / 32768.0f) - 1.0f;
}

/*
 * Float accumulation error grows with the sum of the magnitudes of the
 * terms; allow a few ulps of that, never of the (possibly cancelling) result.
 */
static int
close_enough(double got, double want, double magnitude, int n)
{
	double		tol = 4e-7 * magnitude * sqrt((double) n) + 1e-6;

	return fabs(got - want) <= tol;
}

static void
check_level(VecIsa isa, const float *a, const float *b, const uint8_t *codes,
			const int8_t *qcodes)
{
	const VecKernels *k = vec_kernels_for(isa);
	int			bad_l2 = 0,
				bad_ip = 0,
				bad_l1 = 0,
				bad_cos = 0,
				bad_u8 = 0;

	if (k == NULL)
	{
		printf("  %s: not supported by this CPU, skipped\n", vec_isa_name(isa));
		return;
	}
	for (int n = 1; n <= MAX_DIM; n++)
	{
		double		l2 = vec_l2_squared_ref(a, b, n);
		double		ip = vec_inner_product_ref(a, b, n);
		double		l1 = vec_l1_ref(a, b, n);
		double		absip = 0.0;
		float		dot,
					na,
					nb;

		for (int i = 0; i < n; i++)
		{
			absip += fabs((double) a[i] * b[i]);
		}

		if (!close_enough(k->l2_squared(a, b, n), l2, l2, n))
			bad_l2++;
		if (!close_enough(k->inner_product(a, b, n), ip, absip, n))
			bad_ip++;
		if (!close_enough(k->l1(a, b, n), l1, l1, n))
			bad_l1++;
		k->cosine_parts(a, b, n, &dot, &na, &nb);
		if (!close_enough(dot, ip, absip, n) ||
			!close_enough(na, vec_inner_product_ref(a, a, n), na, n) ||
			!close_enough(nb, vec_inner_product_ref(b, b, n), nb, n))
			bad_cos++;
		if (k->dot_u8_i8(codes, qcodes, n) != vec_dot_u8_i8_ref(codes, qcodes, n))
			bad_u8++;
	}
	CHECK(bad_l2 == 0, "%s l2: %d dims wrong", vec_isa_name(isa), bad_l2);
	CHECK(bad_ip == 0, "%s inner product: %d dims wrong", vec_isa_name(isa), bad_ip);
	CHECK(bad_l1 == 0, "%s l1: %d dims wrong", vec_isa_name(isa), bad_l1);
	CHECK(bad_cos == 0, "%s cosine parts: %d dims wrong", vec_isa_name(isa), bad_cos);
	CHECK(bad_u8 == 0, "%s byte x signed byte dot: %d dims wrong", vec_isa_name(isa), bad_u8);
}

int
main(void)
{
	static float a[MAX_DIM],
				b[MAX_DIM];
	static uint8_t codes[MAX_DIM];
	static int8_t qcodes[MAX_DIM];
	VecIsa		best;

	for (int i = 0; i < MAX_DIM; i++)
	{
		a[i] = rand_float();
		b[i] = rand_float() * 3.0f;
		codes[i] = (uint8_t) (rng_state >> 13);	/* 0..255, all of it */
		qcodes[i] = (int8_t) (rng_state >> 21);	/* -128..127 */
	}
	for (int isa = VEC_ISA_SCALAR; isa <= VEC_ISA_AVX512; isa++)
		check_level((VecIsa) isa, a, b, codes, qcodes);

	/* the byte dot's extremes, where 16-bit sums would saturate */
	{
		static uint8_t hi[MAX_DIM];
		static int8_t lo[MAX_DIM];

		memset(hi, 255, sizeof(hi));
		memset(lo, -128, sizeof(lo));
		for (int isa = VEC_ISA_SCALAR; isa <= VEC_ISA_AVX512; isa++)
		{
			const VecKernels *k = vec_kernels_for((VecIsa) isa);

			if (k != NULL)
				CHECK(k->dot_u8_i8(hi, lo, MAX_DIM) == -255 * 128 * MAX_DIM,
					  "%s byte dot extremes", vec_isa_name((VecIsa) isa));
		}
	}

	/* the kernels read nothing past n: an unaligned slice at the end */
	best = vec_distance_init(VEC_ISA_AVX512);
	CHECK(fabs(vec_l2_squared(a + MAX_DIM - 3, b + MAX_DIM - 3, 3) -
			   vec_l2_squared_ref(a + MAX_DIM - 3, b + MAX_DIM - 3, 3)) < 1e-5,
		  "tail slice");

	/* cosine: identical vectors give 0, opposite give 2, clamped */
	CHECK(vec_cosine_distance(a, a, 777) >= 0.0 &&
		  vec_cosine_distance(a, a, 777) < 1e-6, "cosine self");
	for (int i = 0; i < 64; i++)
		b[i] = -a[i];
	CHECK(fabs(vec_cosine_distance(a, b, 64) - 2.0) < 1e-6, "cosine opposite");
	CHECK(fabs(vec_cosine_distance(a, b, 64) -
			   vec_cosine_distance_ref(a, b, 64)) < 1e-6, "cosine vs reference");
	printf("  best kernels: %s\n", vec_isa_name(best));
	return unit_report("distance");
}
