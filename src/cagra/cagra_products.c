/*
 * cagra_products.c
 *		Products of scattered rows in tiles: the dot products or squared
 *		differences of every row of one small set with every row of another.
 *
 * NN-descent's local join and the pruning by distance compare every pair
 * among a few dozen rows picked from anywhere in the data.  One pair at a
 * time, a product reads both rows for one multiply-add per element, and at
 * 256 dimensions the two rows (2 kB) come from L2: the pair waits on loads,
 * not on arithmetic.  A tile of 3 rows against 4 loads 7 rows for 12
 * products (2 rows against 4 for squared differences, which need a
 * register more per element), the usual register blocking of a matrix
 * product applied to rows given by pointer.
 *
 * Every entry is computed the same way wherever it falls in a tile and on
 * whichever side its rows are: one 8-lane accumulator per pair, the rows'
 * elements in order, the last partial block by a masked load, the lanes
 * summed in one fixed order.  So a pair gives the same float from any call,
 * which the callers rely on (a list entry's distance must equal the one
 * computed when it is offered again).  Products of a and b equal those of
 * b and a exactly (a multiply-add and a square of a difference are
 * symmetric).  The plain C version sums each pair's elements in order; a
 * build uses one version throughout.
 */
#include <stdbool.h>

#include "cagra/cagra.h"
#include "vector/distance.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define PRODUCTS_HAVE_X86
#include <immintrin.h>
#endif

#define TILE_COLS 4

static float
product_plain(const float *a, const float *b, int dim, bool squared_difference)
{
	float		sum = 0.0f;

	if (squared_difference)
		for (int i = 0; i < dim; i++)
		{
			float		diff = a[i] - b[i];

			sum += diff * diff;
		}
	else
		for (int i = 0; i < dim; i++)
			sum += a[i] * b[i];
	return sum;
}

#ifdef PRODUCTS_HAVE_X86

__attribute__((always_inline, target("avx2,fma")))
static inline float
products_lane_sum(__m256 v)
{
	__m128		s = _mm_add_ps(_mm256_castps256_ps128(v),
							   _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/*
 * One block of 8 elements from i of ROWS rows of a and TILE_COLS rows of b
 * into the accumulators; masked, only the lanes below dim.
 */
__attribute__((always_inline, target("avx2,fma")))
static inline void
products_block_avx2(const float *const *a, const float *const *b, int i,
					int dim, bool masked, bool squared_difference, int ROWS,
					__m256 acc[3][TILE_COLS])
{
	__m256i		lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32(dim - i),
										   _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
	__m256		av[3];

#pragma GCC unroll 3
	for (int r = 0; r < ROWS; r++)
		av[r] = masked ? _mm256_maskload_ps(a[r] + i, lanes) :
			_mm256_loadu_ps(a[r] + i);
#pragma GCC unroll 4
	for (int c = 0; c < TILE_COLS; c++)
	{
		__m256		bv = masked ? _mm256_maskload_ps(b[c] + i, lanes) :
			_mm256_loadu_ps(b[c] + i);

#pragma GCC unroll 3
		for (int r = 0; r < ROWS; r++)
		{
			if (squared_difference)
			{
				__m256		diff = _mm256_sub_ps(av[r], bv);

				acc[r][c] = _mm256_fmadd_ps(diff, diff, acc[r][c]);
			}
			else
				acc[r][c] = _mm256_fmadd_ps(av[r], bv, acc[r][c]);
		}
	}
}

/*
 * ROWS rows of a against TILE_COLS rows of b; ROWS is a constant at every
 * call, so the accumulators stay in registers.
 */
__attribute__((always_inline, target("avx2,fma")))
static inline void
products_tile_avx2(const float *const *a, const float *const *b, int dim,
				   bool squared_difference, int ROWS, float *out, int ld)
{
	__m256		acc[3][TILE_COLS];
	int			i = 0;

#pragma GCC unroll 3
	for (int r = 0; r < ROWS; r++)
#pragma GCC unroll 4
		for (int c = 0; c < TILE_COLS; c++)
			acc[r][c] = _mm256_setzero_ps();
	for (; i + 8 <= dim; i += 8)
		products_block_avx2(a, b, i, dim, false, squared_difference, ROWS,
							acc);
	if (i < dim)
		products_block_avx2(a, b, i, dim, true, squared_difference, ROWS,
							acc);
#pragma GCC unroll 3
	for (int r = 0; r < ROWS; r++)
#pragma GCC unroll 4
		for (int c = 0; c < TILE_COLS; c++)
			out[r * ld + c] = products_lane_sum(acc[r][c]);
}

__attribute__((target("avx2,fma")))
static void
products_tile_dot3(const float *const *a, const float *const *b, int dim,
				   float *out, int ld)
{
	products_tile_avx2(a, b, dim, false, 3, out, ld);
}

__attribute__((target("avx2,fma")))
static void
products_tile_diff2(const float *const *a, const float *const *b, int dim,
					float *out, int ld)
{
	products_tile_avx2(a, b, dim, true, 2, out, ld);
}

__attribute__((target("avx2,fma")))
static void
products_tile_one(const float *const *a, const float *const *b, int dim,
				  bool squared_difference, float *out, int ld)
{
	if (squared_difference)
		products_tile_avx2(a, b, dim, true, 1, out, ld);
	else
		products_tile_avx2(a, b, dim, false, 1, out, ld);
}

/*
 * The tiles of rows [r0, r0 + rows) of a: b padded to whole tiles by
 * repeating its last row, whose extra products are dropped.  With upper,
 * tiles wholly at or below the diagonal are skipped.
 */
static void
products_rows_avx2(const float *const *a, int r0, int rows,
				   const float *const *b, int nb, int dim,
				   bool squared_difference, bool upper, float *out, int ld)
{
	for (int c0 = 0; c0 < nb; c0 += TILE_COLS)
	{
		const float *cols[TILE_COLS];
		float		tile[3 * TILE_COLS];
		int			width = nb - c0 < TILE_COLS ? nb - c0 : TILE_COLS;

		if (upper && c0 + TILE_COLS - 1 <= r0)
			continue;
		for (int c = 0; c < TILE_COLS; c++)
			cols[c] = b[c0 + (c < width ? c : width - 1)];
		if (rows == 1)
			products_tile_one(a + r0, cols, dim, squared_difference, tile,
							  TILE_COLS);
		else if (squared_difference)
			products_tile_diff2(a + r0, cols, dim, tile, TILE_COLS);
		else
			products_tile_dot3(a + r0, cols, dim, tile, TILE_COLS);
		for (int r = 0; r < rows; r++)
			for (int c = 0; c < width; c++)
				out[(r0 + r) * ld + c0 + c] = tile[r * TILE_COLS + c];
	}
}
#endif

void
cagra_row_products(const float *const *a, int na, const float *const *b,
				   int nb, int dim, bool squared_difference, bool upper,
				   float *out, int ld)
{
#ifdef PRODUCTS_HAVE_X86
	if (vec_kernels.isa != VEC_ISA_SCALAR)
	{
		int			rows = squared_difference ? 2 : 3;
		int			r0 = 0;

		for (; r0 + rows <= na; r0 += rows)
			products_rows_avx2(a, r0, rows, b, nb, dim, squared_difference,
							   upper, out, ld);
		for (; r0 < na; r0++)
			products_rows_avx2(a, r0, 1, b, nb, dim, squared_difference,
							   upper, out, ld);
		return;
	}
#endif
	for (int r = 0; r < na; r++)
		for (int c = upper ? r + 1 : 0; c < nb; c++)
			out[r * ld + c] = product_plain(a[r], b[c], dim, squared_difference);
}
