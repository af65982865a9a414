/*
 * distance.c
 *		Distance kernels with run-time ISA dispatch.  No PostgreSQL includes.
 *
 * The SIMD versions are compiled with per-function target attributes, not
 * with -march flags, so one binary runs everywhere and uses what it finds.
 * They keep several independent accumulators so that the FMA latency
 * (4 cycles) does not serialise the loop.
 */
#include "distance.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define VEC_HAVE_X86 1
#include <immintrin.h>
#endif

VecKernels	vec_kernels;

/* ---------------------------------------------------------------------
 * Scalar kernels: the portable fallback, written so the compiler may
 * still unroll them but without reassociating the float sums.
 * --------------------------------------------------------------------- */
static float
l2_squared_scalar(const float *a, const float *b, int n)
{
	float		sum = 0.0f;

	for (int i = 0; i < n; i++)
	{
		float		d = a[i] - b[i];

		sum += d * d;
	}
	return sum;
}

static float
inner_product_scalar(const float *a, const float *b, int n)
{
	float		sum = 0.0f;

	for (int i = 0; i < n; i++)
		sum += a[i] * b[i];
	return sum;
}

static float
l1_scalar(const float *a, const float *b, int n)
{
	float		sum = 0.0f;

	for (int i = 0; i < n; i++)
		sum += fabsf(a[i] - b[i]);
	return sum;
}

static void
cosine_parts_scalar(const float *a, const float *b, int n,
					float *dot, float *norm_a, float *norm_b)
{
	float		ab = 0.0f,
				aa = 0.0f,
				bb = 0.0f;

	for (int i = 0; i < n; i++)
	{
		ab += a[i] * b[i];
		aa += a[i] * a[i];
		bb += b[i] * b[i];
	}
	*dot = ab;
	*norm_a = aa;
	*norm_b = bb;
}

static int32_t
dot_u8_i8_scalar(const uint8_t *a, const int8_t *b, int n)
{
	int32_t		sum = 0;

	for (int i = 0; i < n; i++)
		sum += (int32_t) a[i] * b[i];
	return sum;
}

static const VecKernels scalar_kernels = {
	l2_squared_scalar, inner_product_scalar, l1_scalar, cosine_parts_scalar,
	dot_u8_i8_scalar, VEC_ISA_SCALAR
};

#ifdef VEC_HAVE_X86

/* ---------------------------------------------------------------------
 * AVX2 + FMA: 8 lanes, 4 accumulators, scalar tail.
 * --------------------------------------------------------------------- */
#define AVX2_TARGET __attribute__((target("avx2,fma")))

AVX2_TARGET static inline float
hsum256(__m256 v)
{
	__m128		lo = _mm256_castps256_ps128(v);
	__m128		hi = _mm256_extractf128_ps(v, 1);

	lo = _mm_add_ps(lo, hi);
	lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
	lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
	return _mm_cvtss_f32(lo);
}

AVX2_TARGET static float
l2_squared_avx2(const float *a, const float *b, int n)
{
	__m256		s0 = _mm256_setzero_ps(),
				s1 = _mm256_setzero_ps(),
				s2 = _mm256_setzero_ps(),
				s3 = _mm256_setzero_ps();
	int			i = 0;
	float		sum;

	for (; i + 32 <= n; i += 32)
	{
		__m256		d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
		__m256		d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
		__m256		d2 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
		__m256		d3 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));

		s0 = _mm256_fmadd_ps(d0, d0, s0);
		s1 = _mm256_fmadd_ps(d1, d1, s1);
		s2 = _mm256_fmadd_ps(d2, d2, s2);
		s3 = _mm256_fmadd_ps(d3, d3, s3);
	}
	for (; i + 8 <= n; i += 8)
	{
		__m256		d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));

		s0 = _mm256_fmadd_ps(d, d, s0);
	}
	sum = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
	for (; i < n; i++)
	{
		float		d = a[i] - b[i];

		sum += d * d;
	}
	return sum;
}

AVX2_TARGET static float
inner_product_avx2(const float *a, const float *b, int n)
{
	__m256		s0 = _mm256_setzero_ps(),
				s1 = _mm256_setzero_ps(),
				s2 = _mm256_setzero_ps(),
				s3 = _mm256_setzero_ps();
	int			i = 0;
	float		sum;

	for (; i + 32 <= n; i += 32)
	{
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
		s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
		s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
		s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
	}
	for (; i + 8 <= n; i += 8)
		s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
	sum = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
	for (; i < n; i++)
		sum += a[i] * b[i];
	return sum;
}

AVX2_TARGET static float
l1_avx2(const float *a, const float *b, int n)
{
	const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
	__m256		s0 = _mm256_setzero_ps(),
				s1 = _mm256_setzero_ps();
	int			i = 0;
	float		sum;

	for (; i + 16 <= n; i += 16)
	{
		__m256		d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
		__m256		d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));

		s0 = _mm256_add_ps(s0, _mm256_and_ps(d0, abs_mask));
		s1 = _mm256_add_ps(s1, _mm256_and_ps(d1, abs_mask));
	}
	for (; i + 8 <= n; i += 8)
	{
		__m256		d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));

		s0 = _mm256_add_ps(s0, _mm256_and_ps(d, abs_mask));
	}
	sum = hsum256(_mm256_add_ps(s0, s1));
	for (; i < n; i++)
		sum += fabsf(a[i] - b[i]);
	return sum;
}

AVX2_TARGET static void
cosine_parts_avx2(const float *a, const float *b, int n,
				  float *dot, float *norm_a, float *norm_b)
{
	__m256		ab0 = _mm256_setzero_ps(),
				ab1 = _mm256_setzero_ps(),
				aa0 = _mm256_setzero_ps(),
				aa1 = _mm256_setzero_ps(),
				bb0 = _mm256_setzero_ps(),
				bb1 = _mm256_setzero_ps();
	int			i = 0;
	float		ab,
				aa,
				bb;

	for (; i + 16 <= n; i += 16)
	{
		__m256		x0 = _mm256_loadu_ps(a + i);
		__m256		x1 = _mm256_loadu_ps(a + i + 8);
		__m256		y0 = _mm256_loadu_ps(b + i);
		__m256		y1 = _mm256_loadu_ps(b + i + 8);

		ab0 = _mm256_fmadd_ps(x0, y0, ab0);
		ab1 = _mm256_fmadd_ps(x1, y1, ab1);
		aa0 = _mm256_fmadd_ps(x0, x0, aa0);
		aa1 = _mm256_fmadd_ps(x1, x1, aa1);
		bb0 = _mm256_fmadd_ps(y0, y0, bb0);
		bb1 = _mm256_fmadd_ps(y1, y1, bb1);
	}
	for (; i + 8 <= n; i += 8)
	{
		__m256		x = _mm256_loadu_ps(a + i);
		__m256		y = _mm256_loadu_ps(b + i);

		ab0 = _mm256_fmadd_ps(x, y, ab0);
		aa0 = _mm256_fmadd_ps(x, x, aa0);
		bb0 = _mm256_fmadd_ps(y, y, bb0);
	}
	ab = hsum256(_mm256_add_ps(ab0, ab1));
	aa = hsum256(_mm256_add_ps(aa0, aa1));
	bb = hsum256(_mm256_add_ps(bb0, bb1));
	for (; i < n; i++)
	{
		ab += a[i] * b[i];
		aa += a[i] * a[i];
		bb += b[i] * b[i];
	}
	*dot = ab;
	*norm_a = aa;
	*norm_b = bb;
}

/*
 * 16 pairs at a time, both widened to 16 bits: pmaddwd adds products in
 * pairs into 32-bit lanes, exactly (pmaddubsw would saturate 16-bit sums).
 */
AVX2_TARGET static int32_t
dot_u8_i8_avx2(const uint8_t *a, const int8_t *b, int n)
{
	__m256i		s = _mm256_setzero_si256();
	__m128i		h;
	int			i = 0;
	int32_t		sum;

	for (; i + 16 <= n; i += 16)
	{
		__m256i		x = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *) (a + i)));
		__m256i		y = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *) (b + i)));

		s = _mm256_add_epi32(s, _mm256_madd_epi16(x, y));
	}
	h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
	h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
	sum = _mm_cvtsi128_si32(h);
	for (; i < n; i++)
		sum += (int32_t) a[i] * b[i];
	return sum;
}

static const VecKernels avx2_kernels = {
	l2_squared_avx2, inner_product_avx2, l1_avx2, cosine_parts_avx2,
	dot_u8_i8_avx2, VEC_ISA_AVX2
};

/* ---------------------------------------------------------------------
 * AVX-512F: 16 lanes, masked loads for the tail (no scalar loop).
 * --------------------------------------------------------------------- */
#define AVX512_TARGET __attribute__((target("avx512f")))

AVX512_TARGET static inline __mmask16
tail_mask(int remaining)
{
	return (__mmask16) ((1u << remaining) - 1u);
}

AVX512_TARGET static float
l2_squared_avx512(const float *a, const float *b, int n)
{
	__m512		s0 = _mm512_setzero_ps(),
				s1 = _mm512_setzero_ps();
	int			i = 0;

	for (; i + 32 <= n; i += 32)
	{
		__m512		d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
		__m512		d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));

		s0 = _mm512_fmadd_ps(d0, d0, s0);
		s1 = _mm512_fmadd_ps(d1, d1, s1);
	}
	for (; i < n; i += 16)
	{
		__mmask16	m = (n - i >= 16) ? (__mmask16) 0xffff : tail_mask(n - i);
		__m512		d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i),
									  _mm512_maskz_loadu_ps(m, b + i));

		s0 = _mm512_fmadd_ps(d, d, s0);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512_TARGET static float
inner_product_avx512(const float *a, const float *b, int n)
{
	__m512		s0 = _mm512_setzero_ps(),
				s1 = _mm512_setzero_ps();
	int			i = 0;

	for (; i + 32 <= n; i += 32)
	{
		s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
		s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
	}
	for (; i < n; i += 16)
	{
		__mmask16	m = (n - i >= 16) ? (__mmask16) 0xffff : tail_mask(n - i);

		s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i),
							 _mm512_maskz_loadu_ps(m, b + i), s0);
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512_TARGET static float
l1_avx512(const float *a, const float *b, int n)
{
	const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
	__m512		s0 = _mm512_setzero_ps(),
				s1 = _mm512_setzero_ps();
	int			i = 0;

	for (; i + 32 <= n; i += 32)
	{
		__m512		d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
		__m512		d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));

		s0 = _mm512_add_ps(s0, _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(d0), abs_mask)));
		s1 = _mm512_add_ps(s1, _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(d1), abs_mask)));
	}
	for (; i < n; i += 16)
	{
		__mmask16	m = (n - i >= 16) ? (__mmask16) 0xffff : tail_mask(n - i);
		__m512		d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i),
									  _mm512_maskz_loadu_ps(m, b + i));

		s0 = _mm512_add_ps(s0, _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(d), abs_mask)));
	}
	return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

AVX512_TARGET static void
cosine_parts_avx512(const float *a, const float *b, int n,
					float *dot, float *norm_a, float *norm_b)
{
	__m512		ab = _mm512_setzero_ps(),
				aa = _mm512_setzero_ps(),
				bb = _mm512_setzero_ps();

	for (int i = 0; i < n; i += 16)
	{
		__mmask16	m = (n - i >= 16) ? (__mmask16) 0xffff : tail_mask(n - i);
		__m512		x = _mm512_maskz_loadu_ps(m, a + i);
		__m512		y = _mm512_maskz_loadu_ps(m, b + i);

		ab = _mm512_fmadd_ps(x, y, ab);
		aa = _mm512_fmadd_ps(x, x, aa);
		bb = _mm512_fmadd_ps(y, y, bb);
	}
	*dot = _mm512_reduce_add_ps(ab);
	*norm_a = _mm512_reduce_add_ps(aa);
	*norm_b = _mm512_reduce_add_ps(bb);
}

/*
 * 64 pairs per instruction: vpdpbusd multiplies unsigned by signed bytes
 * and adds each four products into a 32-bit lane, exactly.  AVX512-VNNI
 * (Cascade Lake and later); masked byte loads need AVX512BW.
 */
#define AVX512_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni,bmi2")))

AVX512_VNNI_TARGET static int32_t
dot_u8_i8_avx512_vnni(const uint8_t *a, const int8_t *b, int n)
{
	__m512i		s = _mm512_setzero_si512();
	int			i = 0;

	for (; i + 64 <= n; i += 64)
		s = _mm512_dpbusd_epi32(s, _mm512_loadu_si512(a + i), _mm512_loadu_si512(b + i));
	if (i < n)
	{
		__mmask64	m = _bzhi_u64(~(uint64_t) 0, n - i);

		s = _mm512_dpbusd_epi32(s, _mm512_maskz_loadu_epi8(m, a + i),
								_mm512_maskz_loadu_epi8(m, b + i));
	}
	return _mm512_reduce_add_epi32(s);
}

/* the AVX-512 level without VNNI takes the AVX2 byte kernel */
static const VecKernels avx512_kernels = {
	l2_squared_avx512, inner_product_avx512, l1_avx512, cosine_parts_avx512,
	dot_u8_i8_avx2, VEC_ISA_AVX512
};

static const VecKernels avx512_vnni_kernels = {
	l2_squared_avx512, inner_product_avx512, l1_avx512, cosine_parts_avx512,
	dot_u8_i8_avx512_vnni, VEC_ISA_AVX512
};
#endif							/* VEC_HAVE_X86 */

const VecKernels *
vec_kernels_for(VecIsa isa)
{
	switch (isa)
	{
		case VEC_ISA_SCALAR:
			return &scalar_kernels;
#ifdef VEC_HAVE_X86
		case VEC_ISA_AVX2:
			__builtin_cpu_init();
			if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
				return &avx2_kernels;
			return NULL;
		case VEC_ISA_AVX512:
			__builtin_cpu_init();
			if (!__builtin_cpu_supports("avx512f"))
				return NULL;
			if (__builtin_cpu_supports("avx512bw") &&
				__builtin_cpu_supports("avx512vnni") &&
				__builtin_cpu_supports("bmi2"))
				return &avx512_vnni_kernels;
			return &avx512_kernels;
#else
		default:
			return NULL;
#endif
	}
	return NULL;
}

VecIsa
vec_distance_init(VecIsa isa_limit)
{
	for (int isa = isa_limit; isa > VEC_ISA_SCALAR; isa--)
	{
		const VecKernels *k = vec_kernels_for((VecIsa) isa);

		if (k != NULL)
		{
			vec_kernels = *k;
			return (VecIsa) isa;
		}
	}
	vec_kernels = scalar_kernels;
	return VEC_ISA_SCALAR;
}

const char *
vec_isa_name(VecIsa isa)
{
	switch (isa)
	{
		case VEC_ISA_AVX512:
			return "avx512";
		case VEC_ISA_AVX2:
			return "avx2+fma";
		case VEC_ISA_SCALAR:
			break;
	}
	return "scalar";
}

double
vec_cosine_distance(const float *a, const float *b, int n)
{
	float		dot,
				na,
				nb;
	double		sim;

	vec_kernels.cosine_parts(a, b, n, &dot, &na, &nb);
	sim = (double) dot / sqrt((double) na * (double) nb);
	/* rounding can push |sim| a little past 1 */
	if (sim > 1.0)
		sim = 1.0;
	else if (sim < -1.0)
		sim = -1.0;
	return 1.0 - sim;
}

/* ---------------------------------------------------------------------
 * Double-precision references.
 * --------------------------------------------------------------------- */
double
vec_l2_squared_ref(const float *a, const float *b, int n)
{
	double		sum = 0.0;

	for (int i = 0; i < n; i++)
	{
		double		d = (double) a[i] - (double) b[i];

		sum += d * d;
	}
	return sum;
}

double
vec_inner_product_ref(const float *a, const float *b, int n)
{
	double		sum = 0.0;

	for (int i = 0; i < n; i++)
		sum += (double) a[i] * (double) b[i];
	return sum;
}

int64_t
vec_dot_u8_i8_ref(const uint8_t *a, const int8_t *b, int n)
{
	int64_t		sum = 0;

	for (int i = 0; i < n; i++)
		sum += (int64_t) a[i] * b[i];
	return sum;
}

double
vec_l1_ref(const float *a, const float *b, int n)
{
	double		sum = 0.0;

	for (int i = 0; i < n; i++)
		sum += fabs((double) a[i] - (double) b[i]);
	return sum;
}

double
vec_cosine_distance_ref(const float *a, const float *b, int n)
{
	double		ab = vec_inner_product_ref(a, b, n);
	double		aa = vec_inner_product_ref(a, a, n);
	double		bb = vec_inner_product_ref(b, b, n);

	return 1.0 - ab / sqrt(aa * bb);
}
