/*
 * gnn_model.c
 *		Model allocation and initialisation, the random number stream, error
 *		reporting and the OpenBLAS wrappers shared by src/gnn.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "gnn/gnn.h"
#include "rng/rng.h"
#include "vector/distance.h"

#ifdef GNN_DOUBLE
#define cblas_gemm cblas_dgemm
#define cblas_gemv cblas_dgemv
#else
#define cblas_gemm cblas_sgemm
#define cblas_gemv cblas_sgemv
#endif

static const char *const tensor_names[GNN_N_TENSORS] = {
	"w_msg", "b_msg", "w_q", "w_k", "w_v", "w_o", "w_agg", "b_agg",
	"w_gru", "u_gru", "b_gru", "ln_gamma", "ln_beta", "mix"
};

GnnStatus
gnn_error(GnnError *err, GnnStatus code, const char *fmt,...)
{
	va_list		ap;

	if (err != NULL)
	{
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->message, sizeof(err->message), fmt, ap);
		va_end(ap);
	}
	return code;
}

/* ---- random numbers ---------------------------------------------------- */

void
gnn_rng_seed(GnnRng *rng, uint64_t seed)
{
	rng->state = seed;
}

double
gnn_rng_uniform(GnnRng *rng)
{
	return splitmix64_unit(&rng->state);
}

/*
 * Box-Muller on [0, 1) draws, u1 flipped to (0, 1] for log(): not
 * splitmix64_normal, whose open-interval draws give other values, because a
 * model's initial weights for a given seed must not change.
 */
double
gnn_rng_normal(GnnRng *rng)
{
	double		u1 = 1.0 - gnn_rng_uniform(rng);
	double		u2 = gnn_rng_uniform(rng);

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Unbiased: rejects the top partial block of the 64-bit range. */
uint64_t
gnn_rng_below(GnnRng *rng, uint64_t bound)
{
	uint64_t	limit;
	uint64_t	x;

	if (bound <= 1)
		return 0;
	limit = UINT64_MAX - UINT64_MAX % bound;
	do
		x = splitmix64_next(&rng->state);
	while (x >= limit);
	return x % bound;
}

/*
 * ---- BLAS wrappers ------------------------------------------------------
 * Dimensions are >= 1 (the model has no empty tensors); an empty batch
 * (n = 0) is skipped, since BLAS rejects a leading dimension of 0.
 */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(GNN_DOUBLE)
#define GNN_HAVE_GEMV_AVX512
#include <immintrin.h>

/* y = the sixteen lanes of s summed, + beta y (y unread when beta = 0) */
__attribute__((target("avx512f")))
static inline void
gemv_store(float *y, __m512 s, float beta)
{
	*y = _mm512_reduce_add_ps(s) + (beta == 0 ? 0 : beta * *y);
}

/*
 * y = W x + beta y for one row x (W: out x in, row-major): four rows of W
 * at a time against sixteen values of x per step, each row's sixteen
 * lanes summed at its end.  OpenBLAS's sgemv took about twice as long at
 * the layer's sizes (64 x 64: 280 ns against 130, hot in cache; 192 x 64:
 * 950 against 485): a reranked scan makes seven such products for q'
 * (docs/gnn.md, "Rerank latency").
 */
__attribute__((target("avx512f")))
static void
gemv_avx512(const float *w, int out, int in, const float *x, float beta,
			float *y)
{
	__mmask16	tail = (__mmask16) ((1u << (in % 16)) - 1);
	int			full = in - in % 16;
	int			j = 0;

	for (; j + 4 <= out; j += 4)
	{
		const float *w0 = w + (size_t) j * in;
		const float *w1 = w0 + in;
		const float *w2 = w1 + in;
		const float *w3 = w2 + in;
		__m512		s0 = _mm512_setzero_ps(),
					s1 = _mm512_setzero_ps(),
					s2 = _mm512_setzero_ps(),
					s3 = _mm512_setzero_ps();
		__m512		xv;
		int			c;

		for (c = 0; c < full; c += 16)
		{
			xv = _mm512_loadu_ps(x + c);
			s0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + c), xv, s0);
			s1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + c), xv, s1);
			s2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + c), xv, s2);
			s3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + c), xv, s3);
		}
		if (tail)
		{
			xv = _mm512_maskz_loadu_ps(tail, x + c);
			s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w0 + c), xv, s0);
			s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w1 + c), xv, s1);
			s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w2 + c), xv, s2);
			s3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w3 + c), xv, s3);
		}
		gemv_store(&y[j], s0, beta);
		gemv_store(&y[j + 1], s1, beta);
		gemv_store(&y[j + 2], s2, beta);
		gemv_store(&y[j + 3], s3, beta);
	}
	for (; j < out; j++)
	{
		const float *wj = w + (size_t) j * in;
		__m512		s = _mm512_setzero_ps();
		int			c;

		for (c = 0; c < full; c += 16)
			s = _mm512_fmadd_ps(_mm512_loadu_ps(wj + c), _mm512_loadu_ps(x + c), s);
		if (tail)
			s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, wj + c),
								_mm512_maskz_loadu_ps(tail, x + c), s);
		gemv_store(&y[j], s, beta);
	}
}
#endif

void
gnn_gemm_xwt(const gnn_real *x, int n, int in, const gnn_real *w, int out,
			 gnn_real beta, gnn_real *y, int ldx, int ldy)
{
	if (n == 0)
		return;

	/*
	 * One row (a query's layer call at search time): a matrix-vector
	 * product.  GEMM would first pack all of W into its blocked layout,
	 * which for a single row costs more than the product itself.  y is
	 * cleared first when beta = 0: some BLAS versions scale y by beta,
	 * which keeps a NaN already in an uninitialised buffer.  With AVX-512
	 * (when the distance kernels use it) our own loop, above.
	 */
	if (n == 1)
	{
#ifdef GNN_HAVE_GEMV_AVX512
		if (vec_kernels.isa == VEC_ISA_AVX512)
		{
			gemv_avx512(w, out, in, x, beta, y);
			return;
		}
#endif
		if (beta == 0)
			memset(y, 0, out * sizeof(gnn_real));
		cblas_gemv(CblasRowMajor, CblasNoTrans, out, in, 1, w, in, x, 1, beta,
				   y, 1);
		return;
	}
	cblas_gemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in,
			   1, x, ldx, w, in, beta, y, ldy);
}

void
gnn_gemm_dw(const gnn_real *dy, int n, int out, const gnn_real *x, int in,
			gnn_real *dw, int lddy, int ldx)
{
	if (n == 0)
		return;
	cblas_gemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n,
			   1, dy, lddy, x, ldx, 1, dw, in);
}

void
gnn_gemm_dx(const gnn_real *dy, int n, int out, const gnn_real *w, int in,
			gnn_real *dx, int lddy, int lddx)
{
	if (n == 0)
		return;
	cblas_gemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out,
			   1, dy, lddy, w, in, 1, dx, lddx);
}

gnn_real
gnn_sigmoid(gnn_real x)
{
	/* the branch keeps exp() from overflowing for large |x| */
	if (x >= 0)
		return 1 / (1 + gnn_exp(-x));
	else
	{
		gnn_real	e = gnn_exp(x);

		return e / (1 + e);
	}
}

/* ---- the model ------------------------------------------------------------ */

void
gnn_config_default(GnnConfig *cfg, int in_dim, int hidden_dim)
{
	cfg->in_dim = in_dim;
	cfg->hidden_dim = hidden_dim;
	cfg->heads = 4;
	cfg->dropout = 0.1;
	cfg->ln_eps = 1e-5;
	cfg->raw_weight = 1.0;
	cfg->gnn_weight = 1.0;
	cfg->smooth_weight = 0.0;
	cfg->seed = 42;
}

static void
tensor_sizes(int d, int h, size_t *size)
{
	size_t		hh = (size_t) h * h;

	size[GNN_W_MSG] = (size_t) h * d;
	size[GNN_B_MSG] = h;
	size[GNN_W_Q] = hh;
	size[GNN_W_K] = hh;
	size[GNN_W_V] = hh;
	size[GNN_W_O] = hh;
	size[GNN_W_AGG] = hh;
	size[GNN_B_AGG] = h;
	size[GNN_W_GRU] = 3 * hh;
	size[GNN_U_GRU] = 3 * hh;
	size[GNN_B_GRU] = 3 * (size_t) h;
	size[GNN_LN_GAMMA] = h;
	size[GNN_LN_BETA] = h;
	size[GNN_MIX] = 3;
}

size_t
gnn_model_param_count(int in_dim, int hidden_dim)
{
	size_t		size[GNN_N_TENSORS];
	size_t		total = 0;

	tensor_sizes(in_dim, hidden_dim, size);
	for (int t = 0; t < GNN_N_TENSORS; t++)
		total += size[t];
	return total;
}

const char *
gnn_tensor_name(GnnTensor t)
{
	return (t >= 0 && t < GNN_N_TENSORS) ? tensor_names[t] : "?";
}

gnn_real *
gnn_model_tensor(GnnModel *model, GnnTensor t)
{
	return model->params + model->offset[t];
}

void
gnn_model_zero_grad(GnnModel *model)
{
	memset(model->grad, 0, model->n_params * sizeof(gnn_real));
}

static GnnStatus
check_config(const GnnConfig *cfg, GnnError *err)
{
	if (cfg->in_dim < 1 || cfg->in_dim > GNN_MAX_DIM ||
		cfg->hidden_dim < 1 || cfg->hidden_dim > GNN_MAX_DIM)
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN dimensions must be between 1 and %d, got in_dim %d, hidden_dim %d",
						 GNN_MAX_DIM, cfg->in_dim, cfg->hidden_dim);
	if (cfg->heads < 1 || cfg->heads > GNN_MAX_HEADS ||
		cfg->hidden_dim % cfg->heads != 0)
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN heads must be between 1 and %d and divide hidden_dim %d, got %d",
						 GNN_MAX_HEADS, cfg->hidden_dim, cfg->heads);
	if (!(cfg->dropout >= 0 && cfg->dropout < 1))
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN dropout must be in [0, 1), got %g", cfg->dropout);
	if (!(cfg->ln_eps > 0 && cfg->ln_eps < 1))
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN LayerNorm epsilon must be in (0, 1), got %g",
						 cfg->ln_eps);
	if (!(cfg->raw_weight > 0 && cfg->raw_weight < 1e6 &&
		  cfg->gnn_weight > 0 && cfg->gnn_weight < 1e6))
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN score weights must be in (0, 1e6), got %g and %g",
						 cfg->raw_weight, cfg->gnn_weight);
	if (!(cfg->smooth_weight >= 0 && cfg->smooth_weight < 1e6))
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN neighbourhood weight must be in [0, 1e6), got %g",
						 cfg->smooth_weight);
	return GNN_OK;
}

/* Allocates the model with every parameter zero. */
static GnnStatus
model_alloc(const GnnConfig *cfg, GnnModel **out, GnnError *err)
{
	size_t		size[GNN_N_TENSORS];
	GnnModel   *model;
	GnnStatus	rc;

	*out = NULL;
	if ((rc = check_config(cfg, err)) != GNN_OK)
		return rc;
	model = calloc(1, sizeof(GnnModel));
	if (model == NULL)
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN model");
	model->cfg = *cfg;
	tensor_sizes(cfg->in_dim, cfg->hidden_dim, size);
	for (int t = 0; t < GNN_N_TENSORS; t++)
		model->offset[t + 1] = model->offset[t] + size[t];
	model->n_params = model->offset[GNN_N_TENSORS];
	model->params = calloc(model->n_params, sizeof(gnn_real));
	model->grad = calloc(model->n_params, sizeof(gnn_real));
	if (model->params == NULL || model->grad == NULL)
	{
		size_t		n_params = model->n_params;

		gnn_model_free(model);
		return gnn_error(err, GNN_ERR_NOMEM,
						 "out of memory for %zu GNN parameters", n_params);
	}
	/* dropout gets its own stream, decorrelated from initialisation */
	gnn_rng_seed(&model->dropout_rng, cfg->seed ^ UINT64_C(0x5deece66d));
	*out = model;
	return GNN_OK;
}

/*
 * The GRU update gate's initial bias: z = sigm(2) ~ 0.88 at the start, so
 * a fresh layer's output is mostly the aggregated neighbourhood and a
 * little of the node itself, i.e. it starts as neighbourhood smoothing, the
 * operation graph refinement rests on (Kipf & Welling 2017), and training
 * learns how much of the node to keep.  With a zero bias (z ~ 0.5) half
 * the output is the node's own noisy message and training must first
 * discover the gate.  Gate-bias initialisation as a prior is the same
 * device as the LSTM forget-gate bias of Jozefowicz et al. (2015).
 */
#define GNN_UPDATE_GATE_BIAS 2.0

static void
xavier_fill(gnn_real *w, int rows, int cols, GnnRng *rng)
{
	double		sd = sqrt(2.0 / (rows + cols));

	for (size_t i = 0; i < (size_t) rows * cols; i++)
		w[i] = (gnn_real) (sd * gnn_rng_normal(rng));
}

GnnStatus
gnn_model_create(const GnnConfig *cfg, GnnModel **out, GnnError *err)
{
	GnnModel   *model;
	GnnRng		rng;
	int			d = cfg->in_dim;
	int			h = cfg->hidden_dim;
	GnnStatus	rc;

	if ((rc = model_alloc(cfg, &model, err)) != GNN_OK)
		return rc;
	gnn_rng_seed(&rng, cfg->seed);
	xavier_fill(gnn_model_tensor(model, GNN_W_MSG), h, d, &rng);
	xavier_fill(gnn_model_tensor(model, GNN_W_Q), h, h, &rng);
	xavier_fill(gnn_model_tensor(model, GNN_W_K), h, h, &rng);
	xavier_fill(gnn_model_tensor(model, GNN_W_V), h, h, &rng);
	xavier_fill(gnn_model_tensor(model, GNN_W_O), h, h, &rng);
	xavier_fill(gnn_model_tensor(model, GNN_W_AGG), h, h, &rng);
	/* each GRU gate is its own H x H map, initialised as such */
	for (int g = 0; g < 3; g++)
	{
		xavier_fill(gnn_model_tensor(model, GNN_W_GRU) + (size_t) g * h * h,
					h, h, &rng);
		xavier_fill(gnn_model_tensor(model, GNN_U_GRU) + (size_t) g * h * h,
					h, h, &rng);
	}
	for (int i = 0; i < h; i++)
	{
		gnn_model_tensor(model, GNN_LN_GAMMA)[i] = 1;
		gnn_model_tensor(model, GNN_B_GRU)[i] = GNN_UPDATE_GATE_BIAS;
	}
	gnn_model_tensor(model, GNN_MIX)[0] = (gnn_real) log(cfg->raw_weight);
	gnn_model_tensor(model, GNN_MIX)[1] = (gnn_real) log(cfg->gnn_weight);
	gnn_model_tensor(model, GNN_MIX)[2] = cfg->smooth_weight > 0 ?
		(gnn_real) log(cfg->smooth_weight) : -GNN_SCORE_LOG_LIMIT;
	*out = model;
	return GNN_OK;
}

GnnStatus
gnn_model_create_empty(const GnnConfig *cfg, GnnModel **out, GnnError *err)
{
	return model_alloc(cfg, out, err);
}

void
gnn_model_free(GnnModel *model)
{
	if (model == NULL)
		return;
	free(model->params);
	free(model->grad);
	free(model);
}
