/*
 * microlora.c
 *		MicroLoRA adapters (Hu et al. 2021) and the scoped bank with
 *		category fallback.  No PostgreSQL includes; never allocates.
 *
 * For an adapter y = x + alpha * (x A) B and a loss L with gradient
 * g = dL/dy, writing h = x A (rank values):
 *
 *		y[j] = x[j] + alpha * sum_k h[k] B[k][j]
 *		dL/dB[k][j] = alpha * h[k] * g[j]
 *		dL/dA[i][k] = sum_j g[j] * alpha * B[k][j] * x[i] = alpha * x[i] * u[k],
 *			u[k] = sum_j B[k][j] g[j]
 *
 * so one SGD step is two rank-1 updates per rank row, O(rank * dim).  A is
 * stored transposed so that h and the A update run over contiguous rows.
 * Dot products use the extension's dispatched SIMD kernels
 * (vec_distance_init() must have run: _PG_init does it).
 */
#include <math.h>
#include <string.h>

#include "lora/lora.h"
#include "rng/rng.h"
#include "vector/distance.h"

size_t
lora_adapter_floats(int dim)
{
	return (size_t) dim * 2 * LORA_MAX_RANK;
}

void
lora_adapter_attach(LoraAdapter *ad, float *mem, int capacity, uint64_t seed)
{
	memset(ad, 0, sizeof(*ad));
	ad->mem = mem;
	ad->capacity = capacity;
	ad->seed = seed;
}

void
lora_adapter_reset(LoraAdapter *ad)
{
	ad->dim = 0;
	ad->rank = 0;
	ad->alpha = 0.0f;
	ad->forward_count = 0;
	ad->adapt_count = 0;
}

/* Uniform in [-1, 1) from the top 24 bits (a float's mantissa). */
static float
uniform_pm1(uint64_t *state)
{
	return (float) (splitmix64_next(state) >> 40) / 8388608.0f - 1.0f;
}

LoraStatus
lora_adapter_init(LoraAdapter *ad, int dim, int rank, float alpha)
{
	uint64_t	state = ad->seed;
	float		bound = 1.0f / sqrtf((float) dim);
	float	   *at;

	if (dim > ad->capacity)
		return LORA_DIM_TOO_LARGE;
	lora_adapter_reset(ad);
	ad->dim = dim;
	ad->rank = rank;
	ad->alpha = alpha;
	at = lora_adapter_at(ad);
	for (size_t i = 0; i < (size_t) rank * dim; i++)
		at[i] = bound * uniform_pm1(&state);
	memset(lora_adapter_b(ad), 0, sizeof(float) * rank * dim);
	return LORA_OK;
}

/*
 * y += c * x over n floats, in blocks of eight that the compiler turns into
 * vector instructions at -O2 (it does not vectorise the plain loop there).
 */
static void
axpy(float *restrict y, float c, const float *restrict x, int n)
{
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		for (int l = 0; l < 8; l++)
			y[i + l] += c * x[i + l];
	}
	for (; i < n; i++)
		y[i] += c * x[i];
}

void
lora_adapter_add_delta(const LoraAdapter *ad, const float *x, float weight,
					   float *y)
{
	const float *at = lora_adapter_at(ad);
	const float *b = lora_adapter_b(ad);
	float		scale = weight * ad->alpha;

	for (int k = 0; k < ad->rank; k++)
	{
		float		h = vec_inner_product(at + (size_t) k * ad->dim, x, ad->dim);

		axpy(y, scale * h, b + (size_t) k * ad->dim, ad->dim);
	}
}

/*
 * row -= c * v, returning the sum of |new values|, without a second pass:
 * infinite when an update overflowed (every input is finite), or when the
 * parameters add up to more than FLT_MAX, which is as diverged.
 * Eight partial sums keep the loop from waiting on one add chain.
 */
static float
descend(float *restrict row, float c, const float *restrict v, int n)
{
	float		acc[8] = {0};
	float		sum = 0.0f;
	int			i = 0;

	for (; i + 8 <= n; i += 8)
	{
		for (int l = 0; l < 8; l++)
		{
			row[i + l] -= c * v[i + l];
			acc[l] += fabsf(row[i + l]);
		}
	}
	for (; i < n; i++)
	{
		row[i] -= c * v[i];
		sum += fabsf(row[i]);
	}
	for (int l = 0; l < 8; l++)
		sum += acc[l];
	return sum;
}

/* One SGD step with gradient grad_scale * grad (see lora_adapter_step). */
static LoraStatus
step_scaled(LoraAdapter *ad, const float *x, const float *grad,
			float grad_scale, float learning_rate)
{
	float	   *at = lora_adapter_at(ad);
	float	   *b = lora_adapter_b(ad);
	float		h[LORA_MAX_RANK];
	float		u[LORA_MAX_RANK];
	float		scale = learning_rate * ad->alpha * grad_scale;
	float		magnitude = 0.0f;

	/* Both gradients from the parameters before the step. */
	for (int k = 0; k < ad->rank; k++)
	{
		h[k] = vec_inner_product(at + (size_t) k * ad->dim, x, ad->dim);
		u[k] = vec_inner_product(b + (size_t) k * ad->dim, grad, ad->dim);
	}
	for (int k = 0; k < ad->rank; k++)
	{
		magnitude += descend(b + (size_t) k * ad->dim, scale * h[k], grad, ad->dim);
		magnitude += descend(at + (size_t) k * ad->dim, scale * u[k], x, ad->dim);
	}
	if (!isfinite(magnitude))
	{
		lora_adapter_reset(ad);
		return LORA_DIVERGED;
	}
	ad->adapt_count++;
	return LORA_OK;
}

LoraStatus
lora_adapter_step(LoraAdapter *ad, const float *x, const float *grad,
				  float learning_rate)
{
	return step_scaled(ad, x, grad, 1.0f, learning_rate);
}

static double
dot_double(const float *a, const float *b, int n)
{
	double		sum = 0.0;

	for (int i = 0; i < n; i++)
		sum += (double) a[i] * b[i];
	return sum;
}

/*
 * |alpha A B|_F^2 = alpha^2 trace(B^T A^T A B) = alpha^2 sum_kl G[k][l] H[k][l]
 * with G = A^T A and H = B B^T (both rank x rank and symmetric).
 */
double
lora_adapter_delta_norm(const LoraAdapter *ad)
{
	const float *at = lora_adapter_at(ad);
	const float *b = lora_adapter_b(ad);
	size_t		d = ad->dim;
	double		sum = 0.0;

	if (ad->dim == 0)
		return 0.0;
	for (int k = 0; k < ad->rank; k++)
	{
		for (int l = 0; l < ad->rank; l++)
			sum += dot_double(at + k * d, at + l * d, ad->dim) *
				dot_double(b + k * d, b + l * d, ad->dim);
	}
	/* rounding can leave a tiny negative for a delta of (nearly) zero */
	return fabs((double) ad->alpha) * sqrt(fmax(sum, 0.0));
}

int64_t
lora_adapter_param_count(const LoraAdapter *ad)
{
	return (int64_t) 2 * ad->rank * ad->dim;
}

/* ------------------------------------------------------------------------
 * The bank
 * ------------------------------------------------------------------------
 */

/* Fixed per-adapter seeds, so that a reset adapter starts where it did. */
#define LORA_SEED_BASE 0x4C6F5241ULL	/* "LoRA" */

void
lora_bank_init(LoraBank *bank, float *arena, int capacity)
{
	size_t		floats = lora_adapter_floats(capacity);

	bank->category_fallback = true;
	for (int i = 0; i < LORA_NUM_ADAPTERS; i++)
	{
		float	   *mem = arena ? arena + i * floats : NULL;

		lora_adapter_attach(lora_bank_adapter(bank, i), mem,
							arena ? capacity : 0, LORA_SEED_BASE + i);
	}
}

LoraAdapter *
lora_bank_adapter(LoraBank *bank, int index)
{
	if (index < LORA_NUM_SCOPES)
		return &bank->op[index];
	return &bank->cat[index - LORA_NUM_SCOPES];
}

double
lora_bank_scope_weight(const LoraBank *bank, int scope)
{
	double		adapts = (double) bank->op[scope].adapt_count;

	if (!bank->category_fallback)
		return 1.0;
	return fmin(adapts / LORA_FALLBACK_ADAPTS, 1.0);
}

int
lora_bank_adapters_for(LoraBank *bank, int scope, LoraAdapter **out)
{
	out[0] = &bank->op[scope];
	if (!bank->category_fallback)
		return 1;
	out[1] = &bank->cat[lora_scope_category(scope)];
	return 2;
}

/*
 * Check every adapter a call will use before changing any, so that a
 * failing call leaves the bank as it was; then initialise the new ones.
 */
static LoraStatus
prepare_adapters(LoraAdapter **ads, int n, int dim,
				 const LoraSettings *settings)
{
	for (int i = 0; i < n; i++)
	{
		if (ads[i]->dim != 0 && ads[i]->dim != dim)
			return LORA_DIM_MISMATCH;
		if (ads[i]->dim == 0 && dim > ads[i]->capacity)
			return LORA_DIM_TOO_LARGE;
	}
	for (int i = 0; i < n; i++)
	{
		if (ads[i]->dim == 0)
			lora_adapter_init(ads[i], dim, settings->rank, settings->alpha);
	}
	return LORA_OK;
}

static bool
all_finite(const float *v, int n)
{
	bool		finite = true;

	for (int i = 0; i < n; i++)
		finite &= isfinite(v[i]) != 0;
	return finite;
}

LoraStatus
lora_bank_forward(LoraBank *bank, int scope, const float *x, int dim,
				  const LoraSettings *settings, float *y)
{
	LoraAdapter *ads[2];
	int			n = lora_bank_adapters_for(bank, scope, ads);
	double		w = lora_bank_scope_weight(bank, scope);
	LoraStatus	status = prepare_adapters(ads, n, dim, settings);

	if (status != LORA_OK)
		return status;

	memcpy(y, x, sizeof(float) * dim);
	if (w > 0.0)
		lora_adapter_add_delta(ads[0], x, (float) w, y);
	if (n > 1 && w < 1.0)
		lora_adapter_add_delta(ads[1], x, (float) (1.0 - w), y);
	if (!all_finite(y, dim))
		return LORA_NOT_FINITE;

	/* the scope was asked, even when only its category answered */
	ads[0]->forward_count++;
	if (n > 1 && w < 1.0)
		ads[1]->forward_count++;
	return LORA_OK;
}

LoraStatus
lora_bank_adapt(LoraBank *bank, int scope, const float *x, const float *grad,
				int dim, const LoraSettings *settings)
{
	LoraAdapter *ads[2];
	int			n = lora_bank_adapters_for(bank, scope, ads);
	LoraStatus	status;

	if (x == NULL)
		return LORA_NO_INPUT;
	status = prepare_adapters(ads, n, dim, settings);
	if (status != LORA_OK)
		return status;

	for (int i = 0; i < n; i++)
	{
		status = lora_adapter_step(ads[i], x, grad, settings->learning_rate);
		if (status != LORA_OK)
			return status;
	}
	return LORA_OK;
}

LoraStatus
lora_bank_reward(LoraBank *bank, int scope, const float *x, int dim,
				 double improvement, const LoraSettings *settings)
{
	LoraAdapter *ads[2];
	int			n = lora_bank_adapters_for(bank, scope, ads);
	double		norm;
	double		r = fmax(-LORA_MAX_REWARD, fmin(LORA_MAX_REWARD, improvement));
	LoraStatus	status;

	if (x == NULL)
		return LORA_NO_INPUT;
	status = prepare_adapters(ads, n, dim, settings);
	if (status != LORA_OK)
		return status;

	/* the gradient -r x/|x| is a multiple of x: no scratch vector needed */
	norm = sqrt(dot_double(x, x, dim));
	for (int i = 0; i < n; i++)
	{
		status = step_scaled(ads[i], x, x, norm > 0.0 ? (float) (-r / norm) : 0.0f,
							 settings->learning_rate);
		if (status != LORA_OK)
			return status;
	}
	return LORA_OK;
}

void
lora_bank_reset_scope(LoraBank *bank, int scope)
{
	lora_adapter_reset(&bank->op[scope]);
}

void
lora_bank_reset_all(LoraBank *bank)
{
	for (int i = 0; i < LORA_NUM_ADAPTERS; i++)
		lora_adapter_reset(lora_bank_adapter(bank, i));
}
