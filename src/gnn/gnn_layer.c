/*
 * gnn_layer.c
 *		RuvectorLayer forward and backward passes over a batch of nodes
 *		(seeds/gnn-architecture-analysis.txt section 1; equations in gnn.h).
 *
 * Every dense product runs as one OpenBLAS GEMM over the whole batch: the
 * message transform and the key/value projections over the vector table
 * (each vector once, however many nodes use it), the query, output,
 * aggregation and GRU maps over the nodes.  Only the attention itself,
 * which has a different neighbour list per node, loops per node.
 *
 * The backward pass is derived by hand from the forward equations, in
 * reverse order; each step names the forward quantity it differentiates.
 * test/unit/test_gnn_grad.c checks every parameter and input gradient
 * against central finite differences in the double build.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "gnn/gnn.h"

struct GnnLayerTape
{
	GnnGraph	g;				/* the caller's arrays, by reference */
	bool		has_mask;		/* dropout was applied */
	bool		approx;			/* activations by gnn_exp_approx (a scan's q') */
	size_t		cap;			/* gnn_reals allocated in buf */
	gnn_real   *buf;
	/* views into buf */
	gnn_real   *xs;				/* n_vectors x D: input rows at unit RMS */
	gnn_real   *xs_scale;		/* n_vectors: sqrt(D) / ||x||, 0 for x = 0 */
	gnn_real   *msg;			/* n_vectors x H: m = W_msg x + b_msg */
	gnn_real   *key;			/* n_vectors x H: W_k m */
	gnn_real   *val;			/* n_vectors x H: W_v m */
	gnn_real   *node_msg;		/* N x H: m of each node */
	gnn_real   *query;			/* N x H: W_q m */
	gnn_real   *ebar;			/* E: normalised edge weights */
	gnn_real   *alpha;			/* E x heads: attention, per node head-major */
	gnn_real   *heads_out;		/* N x H: concatenated head outputs */
	gnn_real   *comb;			/* N x H: att + agg */
	gnn_real   *t;				/* N x H: W_agg comb + b_agg */
	gnn_real   *gx;				/* N x 3H: W_gru t */
	gnn_real   *gh;				/* N x 2H: U_zr m */
	gnn_real   *ghn;			/* N x H: U_n (r * m) */
	gnn_real   *z;				/* N x H: update gate */
	gnn_real   *r;				/* N x H: reset gate */
	gnn_real   *rm;				/* N x H: r * m */
	gnn_real   *cand;			/* N x H: candidate state n */
	gnn_real   *mask;			/* N x H: dropout scale, 0 or 1/(1-p) */
	gnn_real   *xhat;			/* N x H: normalised LayerNorm input */
	gnn_real   *inv_std;		/* N */
};

/* ---- validation and workspace ---------------------------------------------- */

static GnnStatus
check_rows(const gnn_real *x, size_t n, const char *what, GnnError *err)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return gnn_error(err, GNN_ERR_ARG, "GNN input %s contains NaN or infinity",
							 what);
	return GNN_OK;
}

static GnnStatus
validate_graph(const GnnModel *model, const GnnGraph *g, GnnError *err)
{
	int			nv = g->n_vectors;
	int			n_edges;

	if (nv < 0 || g->n_nodes < 0)
		return gnn_error(err, GNN_ERR_ARG, "GNN graph sizes must not be negative");
	if ((nv > 0 && g->vectors == NULL) ||
		(g->n_nodes > 0 && (g->node == NULL || g->nbr_offset == NULL)))
		return gnn_error(err, GNN_ERR_ARG, "GNN graph is missing arrays");
	if (g->n_nodes == 0)
		return GNN_OK;
	if (g->nbr_offset[0] != 0)
		return gnn_error(err, GNN_ERR_ARG, "GNN graph nbr_offset[0] must be 0");
	for (int i = 0; i < g->n_nodes; i++)
	{
		if (g->node[i] < 0 || g->node[i] >= nv)
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN node %d refers to vector %d of %d", i, g->node[i], nv);
		if (g->nbr_offset[i + 1] < g->nbr_offset[i])
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN graph nbr_offset decreases at node %d", i);
	}
	n_edges = g->nbr_offset[g->n_nodes];
	if (n_edges > 0 && g->nbr == NULL)
		return gnn_error(err, GNN_ERR_ARG, "GNN graph is missing its neighbour array");
	for (int e = 0; e < n_edges; e++)
	{
		if (g->nbr[e] < 0 || g->nbr[e] >= nv)
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN neighbour entry %d refers to vector %d of %d",
							 e, g->nbr[e], nv);
		if (g->edge_w != NULL && !(g->edge_w[e] >= 0 && isfinite(g->edge_w[e])))
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN edge weight %d must be finite and >= 0", e);
	}
	return check_rows(g->vectors, (size_t) nv * model->cfg.in_dim, "vectors", err);
}

/* Sizes the tape for this batch and points the views into one block. */
static GnnStatus
tape_reserve(GnnLayerTape *tp, const GnnModel *model, const GnnGraph *g,
			 GnnError *err)
{
	size_t		d = model->cfg.in_dim;
	size_t		h = model->cfg.hidden_dim;
	size_t		nv = g->n_vectors;
	size_t		n = g->n_nodes;
	size_t		ne = n > 0 ? g->nbr_offset[n] : 0;
	size_t		need = nv * (d + 1) + 3 * nv * h + 17 * n * h +
		ne * (1 + model->cfg.heads) + n;
	gnn_real   *p;

	if (need > tp->cap || tp->buf == NULL)
	{
		gnn_real   *nb = malloc((need > 0 ? need : 1) * sizeof(gnn_real));

		if (nb == NULL)
			return gnn_error(err, GNN_ERR_NOMEM,
							 "out of memory for GNN layer workspace (%zu values)", need);
		free(tp->buf);
		tp->buf = nb;
		tp->cap = need;
	}
	p = tp->buf;
#define TAKE(field, count) (tp->field = p, p += (count))
	TAKE(xs, nv * d);
	TAKE(xs_scale, nv);
	TAKE(msg, nv * h);
	TAKE(key, nv * h);
	TAKE(val, nv * h);
	TAKE(node_msg, n * h);
	TAKE(query, n * h);
	TAKE(heads_out, n * h);
	TAKE(comb, n * h);
	TAKE(t, n * h);
	TAKE(gx, 3 * n * h);
	TAKE(gh, 2 * n * h);
	TAKE(ghn, n * h);
	TAKE(z, n * h);
	TAKE(r, n * h);
	TAKE(rm, n * h);
	TAKE(cand, n * h);
	TAKE(mask, n * h);
	TAKE(xhat, n * h);
	TAKE(ebar, ne);
	TAKE(alpha, ne * model->cfg.heads);
	TAKE(inv_std, n);
#undef TAKE
	tp->g = *g;
	return GNN_OK;
}

void
gnn_layer_tape_free(GnnLayerTape *tape)
{
	if (tape == NULL)
		return;
	free(tape->buf);
	free(tape);
}

/* ---- activations ---------------------------------------------------------- */

/*
 * exp, four values at a time (SSE2, float build): x = n ln 2 + r with
 * |r| <= ln 2 / 2 (Cody & Waite's two-part ln 2), e^r by a degree-7
 * polynomial (Cephes' coefficients for expf), times 2^n from the exponent
 * bits.  Relative error under 3 * 2^-24 (test_gnn.c); arguments are
 * clamped to [-87, 88], where 2^n stays a normal float.  A reranked
 * scan's q' computes 448 activations (128 attention weights, 256 gate
 * values, 64 candidates): through libm they were about an eighth of the
 * rerank's time (docs/gnn.md, "Rerank latency").  Training and validation
 * keep libm's functions: approx is for gnn_layer_forward_projected only.
 */
#if defined(__SSE2__) && !defined(GNN_DOUBLE)
static inline __m128
exp4(__m128 x)
{
	const __m128 ln2_hi = _mm_set1_ps(0.693359375f);
	const __m128 ln2_lo = _mm_set1_ps(-2.12194440e-4f);
	__m128		fn,
				r,
				r2,
				p;
	__m128i		n;

	x = _mm_min_ps(_mm_max_ps(x, _mm_set1_ps(-87.0f)), _mm_set1_ps(88.0f));
	n = _mm_cvtps_epi32(_mm_mul_ps(x, _mm_set1_ps(1.44269504088896341f)));
	fn = _mm_cvtepi32_ps(n);
	r = _mm_sub_ps(_mm_sub_ps(x, _mm_mul_ps(fn, ln2_hi)), _mm_mul_ps(fn, ln2_lo));
	r2 = _mm_mul_ps(r, r);
	p = _mm_set1_ps(1.9875691500e-4f);
	p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.3981999507e-3f));
	p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(8.3334519073e-3f));
	p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(4.1665795894e-2f));
	p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(1.6666665459e-1f));
	p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(5.0000001201e-1f));
	p = _mm_add_ps(_mm_add_ps(_mm_mul_ps(p, r2), r), _mm_set1_ps(1.0f));
	return _mm_mul_ps(p, _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(n, _mm_set1_epi32(127)), 23)));
}
#endif

void
gnn_exp_approx(const gnn_real *in, int n, gnn_real *out)
{
	int			i = 0;

#if defined(__SSE2__) && !defined(GNN_DOUBLE)
	for (; i + 4 <= n; i += 4)
		_mm_storeu_ps(out + i, exp4(_mm_loadu_ps(in + i)));
	if (i < n)
	{
		float		buf[4] = {0, 0, 0, 0};

		memcpy(buf, in + i, (n - i) * sizeof(float));
		_mm_storeu_ps(buf, exp4(_mm_loadu_ps(buf)));
		memcpy(out + i, buf, (n - i) * sizeof(float));
		i = n;
	}
#endif
	for (; i < n; i++)
		out[i] = gnn_exp(in[i]);
}

/*
 * Logistic sigmoid and tanh of n values in place, by libm or, with
 * approx, gnn_exp_approx: sigm(x) = 1 / (1 + e^-x), tanh(x) = 1 - 2 /
 * (e^2x + 1) (absolute error about 2^-23 near 0, where libm's is relative).
 */
static void
sigmoid_rows(gnn_real *x, int n, bool approx)
{
	if (!approx)
	{
		for (int i = 0; i < n; i++)
			x[i] = gnn_sigmoid(x[i]);
		return;
	}
	for (int i = 0; i < n; i++)
		x[i] = -x[i];
	gnn_exp_approx(x, n, x);
	for (int i = 0; i < n; i++)
		x[i] = 1 / (1 + x[i]);
}

static void
tanh_rows(gnn_real *x, int n, bool approx)
{
	if (!approx)
	{
		for (int i = 0; i < n; i++)
			x[i] = gnn_tanh(x[i]);
		return;
	}
	for (int i = 0; i < n; i++)
		x[i] = 2 * x[i];
	gnn_exp_approx(x, n, x);
	for (int i = 0; i < n; i++)
		x[i] = 1 - 2 / (x[i] + 1);
}

/* ---- forward -------------------------------------------------------------- */

static void
softmax(const gnn_real *in, int n, gnn_real *out, bool approx)
{
	gnn_real	mx;
	gnn_real	sum = 0;

	if (n <= 0)
		return;
	mx = in[0];
	for (int i = 1; i < n; i++)
		if (in[i] > mx)
			mx = in[i];
	/* after subtracting the max the largest term is exp(0) = 1, so sum >= 1 */
	for (int i = 0; i < n; i++)
		out[i] = in[i] - mx;
	if (approx)
		gnn_exp_approx(out, n, out);
	else
		for (int i = 0; i < n; i++)
			out[i] = gnn_exp(out[i]);
	for (int i = 0; i < n; i++)
		sum += out[i];
	for (int i = 0; i < n; i++)
		out[i] /= sum;
}

void
gnn_softmax(const gnn_real *in, int n, gnn_real *out)
{
	softmax(in, n, out, false);
}

/*
 * xs = sqrt(D) x / ||x|| for every row of the vector table (a zero row stays
 * zero): the layer's input at unit root-mean-square coordinate, whatever
 * the scale of the metric's vectors (unit-norm for cosine, any magnitude
 * for L2).  Xavier initialisation assumes inputs of about unit variance;
 * at the norms of raw L2 embeddings (|x| ~ 25 in the benchmark) the GRU's
 * tanh would start saturated and the layer would barely train.  The
 * direction is what cos(q', c') compares; magnitudes stay in the raw
 * distance term of the score.  The norm is summed in double: float
 * inputs near FLT_MAX would overflow a float sum of squares.
 */
static void
normalise_inputs(const GnnGraph *g, int d, GnnLayerTape *tp)
{
	gnn_real	root_d = gnn_sqrt((gnn_real) d);

	for (int v = 0; v < g->n_vectors; v++)
	{
		const gnn_real *x = g->vectors + (size_t) v * d;
		gnn_real   *xs = tp->xs + (size_t) v * d;
		double		sq = 0;
		gnn_real	s;

		for (int c = 0; c < d; c++)
			sq += (double) x[c] * x[c];
		s = sq > 0 ? (gnn_real) (root_d / sqrt(sq)) : 0;
		tp->xs_scale[v] = s;
		for (int c = 0; c < d; c++)
			xs[c] = s * x[c];
	}
}

/* x W^T + b for all rows (b may be NULL). */
static void
linear_rows(const gnn_real *x, int n, int in, const gnn_real *w,
			const gnn_real *b, int out, gnn_real *y)
{
	gnn_gemm_xwt(x, n, in, w, out, 0, y, in, out);
	if (b != NULL)
		for (int i = 0; i < n; i++)
			for (int j = 0; j < out; j++)
				y[(size_t) i * out + j] += b[j];
}

/* ebar for node i: edge weights normalised to sum 1, uniform if all zero. */
static void
normalise_edges(GnnLayerTape *tp, int i)
{
	int			lo = tp->g.nbr_offset[i];
	int			n = tp->g.nbr_offset[i + 1] - lo;
	gnn_real	sum = 0;

	if (tp->g.edge_w != NULL)
		for (int j = 0; j < n; j++)
			sum += tp->g.edge_w[lo + j];
	for (int j = 0; j < n; j++)
		tp->ebar[lo + j] = sum > 0 ? tp->g.edge_w[lo + j] / sum : (gnn_real) 1 / n;
}

/*
 * y += alpha x (n values), four at a time where SSE2 is: each y[c] gets
 * alpha * x[c] rounded, then the sum rounded, as one at a time (no fused
 * multiply-add: the same values).  The compiler did not vectorise the
 * loop, y and x being able to overlap for all it knows.
 */
static inline void
add_scaled(gnn_real *y, gnn_real alpha, const gnn_real *x, int n)
{
	int			c = 0;

#if defined(__SSE2__) && !defined(GNN_DOUBLE)
	__m128		va = _mm_set1_ps(alpha);

	for (; c + 4 <= n; c += 4)
		_mm_storeu_ps(y + c, _mm_add_ps(_mm_loadu_ps(y + c),
										_mm_mul_ps(va, _mm_loadu_ps(x + c))));
#endif
	for (; c < n; c++)
		y[c] += alpha * x[c];
}

/*
 * Scaled dot-product attention of node i over its neighbours, per head
 * (Vaswani 2017), into heads_out[i]; the edge-weighted mean of the
 * neighbours' messages into comb[i].  No neighbours: both stay zero.
 */
static void
attend_node(GnnLayerTape *tp, int i, int h, int heads)
{
	int			lo = tp->g.nbr_offset[i];
	int			n = tp->g.nbr_offset[i + 1] - lo;
	int			dk = h / heads;
	gnn_real	scale = 1 / gnn_sqrt((gnn_real) dk);
	const gnn_real *q = tp->query + (size_t) i * h;
	gnn_real   *o = tp->heads_out + (size_t) i * h;
	gnn_real   *agg = tp->comb + (size_t) i * h;

	memset(o, 0, h * sizeof(gnn_real));
	memset(agg, 0, h * sizeof(gnn_real));
	normalise_edges(tp, i);
	for (int hd = 0; hd < heads; hd++)
	{
		gnn_real   *a = tp->alpha + (size_t) lo * heads + (size_t) hd * n;
		int			c0 = hd * dk;
		int			j = 0;

		/*
		 * Four neighbours' scores at a time: four independent sums, each
		 * added in the order of c as one at a time would (the same
		 * values), where one sum's chain of additions bounded the loop.
		 */
		for (; j + 4 <= n; j += 4)
		{
			const gnn_real *k0 = tp->key + (size_t) tp->g.nbr[lo + j] * h + c0;
			const gnn_real *k1 = tp->key + (size_t) tp->g.nbr[lo + j + 1] * h + c0;
			const gnn_real *k2 = tp->key + (size_t) tp->g.nbr[lo + j + 2] * h + c0;
			const gnn_real *k3 = tp->key + (size_t) tp->g.nbr[lo + j + 3] * h + c0;
			gnn_real	s0 = 0,
						s1 = 0,
						s2 = 0,
						s3 = 0;

			for (int c = 0; c < dk; c++)
			{
				s0 += q[c0 + c] * k0[c];
				s1 += q[c0 + c] * k1[c];
				s2 += q[c0 + c] * k2[c];
				s3 += q[c0 + c] * k3[c];
			}
			a[j] = s0 * scale;
			a[j + 1] = s1 * scale;
			a[j + 2] = s2 * scale;
			a[j + 3] = s3 * scale;
		}
		for (; j < n; j++)
		{
			const gnn_real *k = tp->key + (size_t) tp->g.nbr[lo + j] * h + c0;
			gnn_real	s = 0;

			for (int c = 0; c < dk; c++)
				s += q[c0 + c] * k[c];
			a[j] = s * scale;
		}
		softmax(a, n, a, tp->approx);
		for (int j = 0; j < n; j++)
			add_scaled(o + c0, a[j], tp->val + (size_t) tp->g.nbr[lo + j] * h + c0, dk);
	}
	for (int j = 0; j < n; j++)
		add_scaled(agg, tp->ebar[lo + j], tp->msg + (size_t) tp->g.nbr[lo + j] * h, h);
}

/* GRU update (Cho 2014): input t, previous state m (the node's message). */
static void
gru_forward(GnnModel *model, GnnLayerTape *tp, int n, int h, gnn_real *hid)
{
	const gnn_real *wg = gnn_model_tensor(model, GNN_W_GRU);
	const gnn_real *ug = gnn_model_tensor(model, GNN_U_GRU);
	const gnn_real *bg = gnn_model_tensor(model, GNN_B_GRU);

	gnn_gemm_xwt(tp->t, n, h, wg, 3 * h, 0, tp->gx, h, 3 * h);
	gnn_gemm_xwt(tp->node_msg, n, h, ug, 2 * h, 0, tp->gh, h, 2 * h);
	/* the gates' pre-activations, then the activations of all at once */
	for (int i = 0; i < n; i++)
		for (int c = 0; c < h; c++)
		{
			size_t		k = (size_t) i * h + c;
			const gnn_real *gx = tp->gx + (size_t) i * 3 * h;
			const gnn_real *gh = tp->gh + (size_t) i * 2 * h;

			tp->z[k] = gx[c] + gh[c] + bg[c];
			tp->r[k] = gx[h + c] + gh[h + c] + bg[h + c];
		}
	sigmoid_rows(tp->z, n * h, tp->approx);
	sigmoid_rows(tp->r, n * h, tp->approx);
	for (size_t k = 0; k < (size_t) n * h; k++)
		tp->rm[k] = tp->r[k] * tp->node_msg[k];
	gnn_gemm_xwt(tp->rm, n, h, ug + (size_t) 2 * h * h, h, 0, tp->ghn, h, h);
	for (int i = 0; i < n; i++)
		for (int c = 0; c < h; c++)
		{
			size_t		k = (size_t) i * h + c;

			tp->cand[k] = tp->gx[(size_t) i * 3 * h + 2 * h + c] +
				tp->ghn[k] + bg[2 * h + c];
		}
	tanh_rows(tp->cand, n * h, tp->approx);
	for (size_t k = 0; k < (size_t) n * h; k++)
		hid[k] = (1 - tp->z[k]) * tp->node_msg[k] + tp->z[k] * tp->cand[k];
}

/* Inverted dropout in place (training only), then LayerNorm (Ba 2016). */
static void
dropout_layernorm(GnnModel *model, GnnLayerTape *tp, int n, int h,
				  bool training, gnn_real *x)
{
	const gnn_real *gamma = gnn_model_tensor(model, GNN_LN_GAMMA);
	const gnn_real *beta = gnn_model_tensor(model, GNN_LN_BETA);
	double		p = model->cfg.dropout;

	tp->has_mask = training && p > 0;
	for (size_t k = 0; tp->has_mask && k < (size_t) n * h; k++)
	{
		tp->mask[k] = gnn_rng_uniform(&model->dropout_rng) < p ? 0 :
			(gnn_real) (1 / (1 - p));
		x[k] *= tp->mask[k];
	}
	for (int i = 0; i < n; i++)
	{
		gnn_real   *row = x + (size_t) i * h;
		gnn_real   *xh = tp->xhat + (size_t) i * h;
		gnn_real	mean = 0,
					var = 0;

		for (int c = 0; c < h; c++)
			mean += row[c];
		mean /= h;
		for (int c = 0; c < h; c++)
			var += (row[c] - mean) * (row[c] - mean);
		var /= h;
		tp->inv_std[i] = 1 / gnn_sqrt(var + (gnn_real) model->cfg.ln_eps);
		for (int c = 0; c < h; c++)
		{
			xh[c] = (row[c] - mean) * tp->inv_std[i];
			row[c] = gamma[c] * xh[c] + beta[c];
		}
	}
}

/* xs, then the message m of every row of the table. */
static void
project_messages(GnnModel *model, GnnLayerTape *tp)
{
	const GnnGraph *g = &tp->g;
	int			d = model->cfg.in_dim;

	normalise_inputs(g, d, tp);
	linear_rows(tp->xs, g->n_vectors, d, gnn_model_tensor(model, GNN_W_MSG),
				gnn_model_tensor(model, GNN_B_MSG), model->cfg.hidden_dim,
				tp->msg);
}

/* The per-vector half: xs, then m, k and v of every row of the table. */
static void
project_table(GnnModel *model, GnnLayerTape *tp)
{
	const GnnGraph *g = &tp->g;
	int			h = model->cfg.hidden_dim;

	project_messages(model, tp);
	linear_rows(tp->msg, g->n_vectors, h, gnn_model_tensor(model, GNN_W_K),
				NULL, h, tp->key);
	linear_rows(tp->msg, g->n_vectors, h, gnn_model_tensor(model, GNN_W_V),
				NULL, h, tp->val);
}

/* From the nodes' attention on: W_o, W_agg, GRU and LayerNorm. */
static void
nodes_finish(GnnModel *model, GnnLayerTape *tp, int n, bool training,
			 gnn_real *out)
{
	int			h = model->cfg.hidden_dim;

	/* comb = agg (filled by attend_node) + W_o heads_out */
	gnn_gemm_xwt(tp->heads_out, n, h, gnn_model_tensor(model, GNN_W_O), h, 1,
				 tp->comb, h, h);
	linear_rows(tp->comb, n, h, gnn_model_tensor(model, GNN_W_AGG),
				gnn_model_tensor(model, GNN_B_AGG), h, tp->t);
	gru_forward(model, tp, n, h, out);
	dropout_layernorm(model, tp, n, h, training, out);
}

/* The per-node half, from the table's m, k and v: attention, GRU, LN. */
static void
nodes_forward(GnnModel *model, GnnLayerTape *tp, bool training, gnn_real *out)
{
	const GnnGraph *g = &tp->g;
	int			h = model->cfg.hidden_dim;
	int			n = g->n_nodes;

	for (int i = 0; i < n; i++)
		memcpy(tp->node_msg + (size_t) i * h, tp->msg + (size_t) g->node[i] * h,
			   h * sizeof(gnn_real));
	linear_rows(tp->node_msg, n, h, gnn_model_tensor(model, GNN_W_Q), NULL, h,
				tp->query);
	for (int i = 0; i < n; i++)
		attend_node(tp, i, h, model->cfg.heads);
	nodes_finish(model, tp, n, training, out);
}

static void
layer_forward(GnnModel *model, GnnLayerTape *tp, bool training, gnn_real *out)
{
	project_table(model, tp);
	nodes_forward(model, tp, training, out);
}

GnnStatus
gnn_layer_forward(GnnModel *model, const GnnGraph *graph, bool training,
				  GnnLayerTape **tape, gnn_real *out, GnnError *err)
{
	GnnLayerTape *tp = tape != NULL ? *tape : NULL;
	GnnStatus	rc;

	if ((rc = validate_graph(model, graph, err)) != GNN_OK)
		return rc;
	if (tp == NULL && (tp = calloc(1, sizeof(GnnLayerTape))) == NULL)
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN layer tape");
	if (tape != NULL)
		*tape = tp;
	rc = tape_reserve(tp, model, graph, err);
	if (rc == GNN_OK)
		layer_forward(model, tp, training, out);
	if (tape == NULL)
		gnn_layer_tape_free(tp);
	return rc;
}

/* ---- the layer in two halves, for callers that cache the first ------------- */

GnnStatus
gnn_layer_project(GnnModel *model, const gnn_real *vectors, int n,
				  gnn_real *proj, GnnError *err)
{
	int			h = model->cfg.hidden_dim;
	int			node = 0;
	int			offsets[1] = {0};
	GnnGraph	g = {n, vectors, 0, &node, offsets, NULL, NULL};
	GnnLayerTape *tp;
	GnnStatus	rc;

	if (n < 0 || (n > 0 && vectors == NULL))
		return gnn_error(err, GNN_ERR_ARG, "GNN projection input is missing");
	if ((rc = check_rows(vectors, (size_t) n * model->cfg.in_dim, "vectors", err)) != GNN_OK)
		return rc;
	if ((tp = calloc(1, sizeof(GnnLayerTape))) == NULL)
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN layer tape");
	if ((rc = tape_reserve(tp, model, &g, err)) == GNN_OK)
	{
		project_table(model, tp);
		for (int v = 0; v < n; v++)
		{
			gnn_real   *row = proj + (size_t) v * 3 * h;

			memcpy(row, tp->msg + (size_t) v * h, h * sizeof(gnn_real));
			memcpy(row + h, tp->key + (size_t) v * h, h * sizeof(gnn_real));
			memcpy(row + 2 * h, tp->val + (size_t) v * h, h * sizeof(gnn_real));
		}
	}
	gnn_layer_tape_free(tp);
	return rc;
}

GnnStatus
gnn_layer_forward_projected(GnnModel *model, const gnn_real *node_vector,
							const GnnProjections *nbr, const gnn_real *edge_w,
							gnn_real *out, GnnError *err)
{
	int			h = model->cfg.hidden_dim;
	int			n_nbr = nbr->n;
	int			node = 0;
	int			offsets[2] = {0, n_nbr};
	int		   *idx;
	GnnGraph	g;
	GnnLayerTape *tp;
	GnnStatus	rc;

	if (n_nbr < 0)
		return gnn_error(err, GNN_ERR_ARG, "GNN neighbour count must not be negative");
	for (int j = 0; edge_w != NULL && j < n_nbr; j++)
		if (!(edge_w[j] >= 0 && isfinite(edge_w[j])))
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN edge weight %d must be finite and >= 0", j);
	idx = malloc((n_nbr > 0 ? n_nbr : 1) * sizeof(int));
	tp = calloc(1, sizeof(GnnLayerTape));
	if (idx == NULL || tp == NULL)
	{
		free(idx);
		free(tp);
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN layer tape");
	}
	for (int j = 0; j < n_nbr; j++)
		idx[j] = j;
	/* a table of the node alone: the neighbours' rows are the caller's */
	g.n_vectors = 1;
	g.vectors = node_vector;
	g.n_nodes = 1;
	g.node = &node;
	g.nbr_offset = offsets;
	g.nbr = idx;
	g.edge_w = edge_w;
	if ((rc = check_rows(node_vector, model->cfg.in_dim, "vectors", err)) == GNN_OK &&
		(rc = tape_reserve(tp, model, &g, err)) == GNN_OK)
	{
		tp->approx = true;
		project_messages(model, tp);
		memcpy(tp->node_msg, tp->msg, h * sizeof(gnn_real));
		tp->msg = (gnn_real *) nbr->msg;	/* read only below */
		tp->key = (gnn_real *) nbr->key;
		tp->val = (gnn_real *) nbr->val;
		linear_rows(tp->node_msg, 1, h, gnn_model_tensor(model, GNN_W_Q), NULL,
					h, tp->query);
		attend_node(tp, 0, h, model->cfg.heads);
		nodes_finish(model, tp, 1, false, out);
	}
	gnn_layer_tape_free(tp);
	free(idx);
	return rc;
}

/* ---- backward ------------------------------------------------------------- */

/* Scratch of the backward pass: gradients of the tape's quantities. */
typedef struct LayerGrads
{
	gnn_real   *buf;
	gnn_real   *d_hid;			/* N x H: dL/dh (GRU output) */
	gnn_real   *d_node_msg;		/* N x H */
	gnn_real   *d_pre;			/* N x 3H: dL/d(gate pre-activations) z, r, n */
	gnn_real   *d_rm;			/* N x H */
	gnn_real   *d_t;			/* N x H */
	gnn_real   *d_comb;			/* N x H */
	gnn_real   *d_heads;		/* N x H */
	gnn_real   *d_query;		/* N x H */
	gnn_real   *d_msg;			/* n_vectors x H */
	gnn_real   *d_key;			/* n_vectors x H */
	gnn_real   *d_val;			/* n_vectors x H */
	gnn_real   *d_xs;			/* n_vectors x D, when input gradients are wanted */
} LayerGrads;

/* d_in: D when the caller wants input gradients, else 0 (no d_xs). */
static GnnStatus
grads_alloc(LayerGrads *lg, size_t nv, size_t n, size_t h, size_t d_in,
			GnnError *err)
{
	size_t		need = 3 * nv * h + 10 * n * h + nv * d_in;
	gnn_real   *p;

	lg->buf = calloc(need > 0 ? need : 1, sizeof(gnn_real));
	if (lg->buf == NULL)
		return gnn_error(err, GNN_ERR_NOMEM,
						 "out of memory for GNN backward workspace (%zu values)", need);
	p = lg->buf;
	lg->d_hid = p;
	p += n * h;
	lg->d_node_msg = p;
	p += n * h;
	lg->d_pre = p;
	p += 3 * n * h;
	lg->d_rm = p;
	p += n * h;
	lg->d_t = p;
	p += n * h;
	lg->d_comb = p;
	p += n * h;
	lg->d_heads = p;
	p += n * h;
	lg->d_query = p;
	p += n * h;
	lg->d_msg = p;
	p += nv * h;
	lg->d_key = p;
	p += nv * h;
	lg->d_val = p;
	p += nv * h;
	lg->d_xs = p;
	return GNN_OK;
}

/* Sum of the rows of x (n x h) added to b. */
static void
add_column_sums(const gnn_real *x, int n, int h, int ldx, gnn_real *b)
{
	for (int i = 0; i < n; i++)
		for (int c = 0; c < h; c++)
			b[c] += x[(size_t) i * ldx + c];
}

/*
 * LayerNorm and dropout backward: out = gamma * xhat + beta with
 * xhat = (u - mean) * inv_std, u = h * mask.  Standard result:
 * du = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
 */
static void
layernorm_backward(GnnModel *model, GnnLayerTape *tp, int n, int h,
				   const gnn_real *d_out, gnn_real *d_hid)
{
	const gnn_real *gamma = gnn_model_tensor(model, GNN_LN_GAMMA);
	gnn_real   *dgamma = model->grad + model->offset[GNN_LN_GAMMA];
	gnn_real   *dbeta = model->grad + model->offset[GNN_LN_BETA];

	for (int i = 0; i < n; i++)
	{
		const gnn_real *dy = d_out + (size_t) i * h;
		const gnn_real *xh = tp->xhat + (size_t) i * h;
		gnn_real   *du = d_hid + (size_t) i * h;
		gnn_real	mean_dx = 0,
					mean_dxx = 0;

		for (int c = 0; c < h; c++)
		{
			gnn_real	dxh = dy[c] * gamma[c];

			dgamma[c] += dy[c] * xh[c];
			dbeta[c] += dy[c];
			du[c] = dxh;
			mean_dx += dxh;
			mean_dxx += dxh * xh[c];
		}
		mean_dx /= h;
		mean_dxx /= h;
		for (int c = 0; c < h; c++)
		{
			du[c] = tp->inv_std[i] * (du[c] - mean_dx - xh[c] * mean_dxx);
			if (tp->has_mask)
				du[c] *= tp->mask[(size_t) i * h + c];
		}
	}
}

/*
 * GRU backward.  From h = (1-z) m + z n, n = tanh(W_n t + U_n (r m) + b_n),
 * z = sigm(W_z t + U_z m + b_z), r = sigm(W_r t + U_r m + b_r): gradients of
 * the three pre-activations into d_pre, then of W_gru, U_gru, b_gru, t and m.
 */
static void
gru_backward(GnnModel *model, GnnLayerTape *tp, LayerGrads *lg, int n, int h)
{
	const gnn_real *wg = gnn_model_tensor(model, GNN_W_GRU);
	const gnn_real *ug = gnn_model_tensor(model, GNN_U_GRU);
	gnn_real   *dwg = model->grad + model->offset[GNN_W_GRU];
	gnn_real   *dug = model->grad + model->offset[GNN_U_GRU];
	const gnn_real *un = ug + (size_t) 2 * h * h;
	gnn_real   *dun = dug + (size_t) 2 * h * h;

	for (int i = 0; i < n; i++)
		for (int c = 0; c < h; c++)
		{
			size_t		k = (size_t) i * h + c;
			gnn_real   *dp = lg->d_pre + (size_t) i * 3 * h;
			gnn_real	dh = lg->d_hid[k];
			gnn_real	z = tp->z[k];
			gnn_real	nc = tp->cand[k];

			lg->d_node_msg[k] = dh * (1 - z);
			dp[c] = dh * (nc - tp->node_msg[k]) * z * (1 - z);
			dp[2 * h + c] = dh * z * (1 - nc * nc);
		}
	/* n's pre-activation holds U_n (r m): back to r and to m */
	gnn_gemm_dx(lg->d_pre + 2 * h, n, h, un, h, lg->d_rm, 3 * h, h);
	gnn_gemm_dw(lg->d_pre + 2 * h, n, h, tp->rm, h, dun, 3 * h, h);
	for (int i = 0; i < n; i++)
		for (int c = 0; c < h; c++)
		{
			size_t		k = (size_t) i * h + c;
			gnn_real	r = tp->r[k];

			lg->d_node_msg[k] += lg->d_rm[k] * r;
			lg->d_pre[(size_t) i * 3 * h + h + c] =
				lg->d_rm[k] * tp->node_msg[k] * r * (1 - r);
		}
	add_column_sums(lg->d_pre, n, 3 * h, 3 * h,
					model->grad + model->offset[GNN_B_GRU]);
	/* input weights act on t for all three gates */
	gnn_gemm_dw(lg->d_pre, n, 3 * h, tp->t, h, dwg, 3 * h, h);
	gnn_gemm_dx(lg->d_pre, n, 3 * h, wg, h, lg->d_t, 3 * h, h);
	/* state weights of z and r act on m (U_n was handled above) */
	gnn_gemm_dw(lg->d_pre, n, 2 * h, tp->node_msg, h, dug, 3 * h, h);
	gnn_gemm_dx(lg->d_pre, n, 2 * h, ug, h, lg->d_node_msg, 3 * h, h);
}

/*
 * Attention and aggregation backward for node i.  Per head, with
 * s_j = q . k_j * scale, a = softmax(s), o = sum_j a_j v_j:
 *	 da_j = do . v_j,  dv_j += a_j do,  ds_j = a_j (da_j - sum_l a_l da_l),
 *	 dq += scale * sum_j ds_j k_j,  dk_j += scale * ds_j q.
 * Aggregation agg = sum_j ebar_j m_j gives dm_j += ebar_j dcomb.
 */
static void
attend_node_backward(GnnLayerTape *tp, LayerGrads *lg, int i, int h, int heads)
{
	int			lo = tp->g.nbr_offset[i];
	int			n = tp->g.nbr_offset[i + 1] - lo;
	int			dk = h / heads;
	gnn_real	scale = 1 / gnn_sqrt((gnn_real) dk);
	const gnn_real *q = tp->query + (size_t) i * h;
	const gnn_real *dout = lg->d_heads + (size_t) i * h;
	const gnn_real *dcomb = lg->d_comb + (size_t) i * h;
	gnn_real   *dq = lg->d_query + (size_t) i * h;

	for (int hd = 0; hd < heads; hd++)
	{
		const gnn_real *a = tp->alpha + (size_t) lo * heads + (size_t) hd * n;
		int			c0 = hd * dk;
		gnn_real	sum_ada = 0;

		for (int j = 0; j < n; j++)
		{
			const gnn_real *v = tp->val + (size_t) tp->g.nbr[lo + j] * h + c0;
			gnn_real	da = 0;

			for (int c = 0; c < dk; c++)
				da += dout[c0 + c] * v[c];
			sum_ada += a[j] * da;
		}
		for (int j = 0; j < n; j++)
		{
			size_t		row = (size_t) tp->g.nbr[lo + j] * h + c0;
			const gnn_real *v = tp->val + row;
			const gnn_real *k = tp->key + row;
			gnn_real	da = 0;
			gnn_real	ds;

			for (int c = 0; c < dk; c++)
				da += dout[c0 + c] * v[c];
			ds = a[j] * (da - sum_ada) * scale;
			for (int c = 0; c < dk; c++)
			{
				lg->d_val[row + c] += a[j] * dout[c0 + c];
				dq[c0 + c] += ds * k[c];
				lg->d_key[row + c] += ds * q[c0 + c];
			}
		}
	}
	for (int j = 0; j < n; j++)
	{
		gnn_real   *dm = lg->d_msg + (size_t) tp->g.nbr[lo + j] * h;

		for (int c = 0; c < h; c++)
			dm[c] += tp->ebar[lo + j] * dcomb[c];
	}
}

static void
layer_backward(GnnModel *model, GnnLayerTape *tp, LayerGrads *lg,
			   const gnn_real *d_out, gnn_real *d_vectors)
{
	const GnnGraph *g = &tp->g;
	int			d = model->cfg.in_dim;
	int			h = model->cfg.hidden_dim;
	int			n = g->n_nodes;
	int			nv = g->n_vectors;
	gnn_real   *grad = model->grad;

	layernorm_backward(model, tp, n, h, d_out, lg->d_hid);
	gru_backward(model, tp, lg, n, h);
	/* t = W_agg comb + b_agg */
	add_column_sums(lg->d_t, n, h, h, grad + model->offset[GNN_B_AGG]);
	gnn_gemm_dw(lg->d_t, n, h, tp->comb, h, grad + model->offset[GNN_W_AGG], h, h);
	gnn_gemm_dx(lg->d_t, n, h, gnn_model_tensor(model, GNN_W_AGG), h,
				lg->d_comb, h, h);
	/* comb = W_o heads_out + agg */
	gnn_gemm_dw(lg->d_comb, n, h, tp->heads_out, h, grad + model->offset[GNN_W_O],
				h, h);
	gnn_gemm_dx(lg->d_comb, n, h, gnn_model_tensor(model, GNN_W_O), h,
				lg->d_heads, h, h);
	for (int i = 0; i < n; i++)
		attend_node_backward(tp, lg, i, h, model->cfg.heads);
	/* query = W_q node_msg */
	gnn_gemm_dw(lg->d_query, n, h, tp->node_msg, h, grad + model->offset[GNN_W_Q],
				h, h);
	gnn_gemm_dx(lg->d_query, n, h, gnn_model_tensor(model, GNN_W_Q), h,
				lg->d_node_msg, h, h);
	for (int i = 0; i < n; i++)
		for (int c = 0; c < h; c++)
			lg->d_msg[(size_t) g->node[i] * h + c] += lg->d_node_msg[(size_t) i * h + c];
	/* key = W_k msg, val = W_v msg */
	gnn_gemm_dw(lg->d_key, nv, h, tp->msg, h, grad + model->offset[GNN_W_K], h, h);
	gnn_gemm_dx(lg->d_key, nv, h, gnn_model_tensor(model, GNN_W_K), h,
				lg->d_msg, h, h);
	gnn_gemm_dw(lg->d_val, nv, h, tp->msg, h, grad + model->offset[GNN_W_V], h, h);
	gnn_gemm_dx(lg->d_val, nv, h, gnn_model_tensor(model, GNN_W_V), h,
				lg->d_msg, h, h);
	/* msg = W_msg xs + b_msg */
	add_column_sums(lg->d_msg, nv, h, h, grad + model->offset[GNN_B_MSG]);
	gnn_gemm_dw(lg->d_msg, nv, h, tp->xs, d, grad + model->offset[GNN_W_MSG],
				h, d);
	if (d_vectors == NULL)
		return;

	/*
	 * xs = s x with s = sqrt(D) / ||x||: dxs/dx = s (I - xs xs^T / D), so
	 * dL/dx = s (g - xs (xs . g) / D) with g = dL/dxs = dmsg W_msg.
	 */
	gnn_gemm_dx(lg->d_msg, nv, h, gnn_model_tensor(model, GNN_W_MSG), d,
				lg->d_xs, h, d);
	for (int v = 0; v < nv; v++)
	{
		const gnn_real *xs = tp->xs + (size_t) v * d;
		const gnn_real *gv = lg->d_xs + (size_t) v * d;
		gnn_real   *dx = d_vectors + (size_t) v * d;
		gnn_real	s = tp->xs_scale[v];
		gnn_real	dot = 0;

		for (int c = 0; c < d; c++)
			dot += xs[c] * gv[c];
		for (int c = 0; c < d; c++)
			dx[c] += s * (gv[c] - xs[c] * dot / d);
	}
}

GnnStatus
gnn_layer_backward(GnnModel *model, GnnLayerTape *tape, const gnn_real *d_out,
				   gnn_real *d_vectors, GnnError *err)
{
	LayerGrads	lg;
	GnnStatus	rc;

	if (tape == NULL || tape->buf == NULL)
		return gnn_error(err, GNN_ERR_ARG, "GNN backward pass without a forward pass");
	memset(&lg, 0, sizeof(lg));
	rc = grads_alloc(&lg, tape->g.n_vectors, tape->g.n_nodes,
					 model->cfg.hidden_dim,
					 d_vectors != NULL ? model->cfg.in_dim : 0, err);
	if (rc != GNN_OK)
		return rc;
	layer_backward(model, tape, &lg, d_out, d_vectors);
	free(lg.buf);
	return GNN_OK;
}
