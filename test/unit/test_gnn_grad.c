/*
 * test_gnn_grad.c
 *		Built with -DGNN_DOUBLE: the GNN forward pass against a naive
 *		reference written straight from the equations in gnn.h, and every
 *		hand-derived gradient (each parameter of the layer, its inputs, the
 *		losses, EWC, the scoring model) against central finite differences,
 *		relative error below 1e-3.
 */
#include <math.h>
#include <string.h>

#include "gnn/gnn.h"
#include "gnn_test_model.h"
#include "unit.h"

#ifndef GNN_DOUBLE
#error "test_gnn_grad.c needs the double-precision build (-DGNN_DOUBLE)"
#endif

#define FD_STEP		1e-5
#define REL_TOL		1e-3
/* gradients below this size are compared absolutely against it */
#define GRAD_FLOOR	1e-6

static GnnRng test_rng;

static void
fill_normal(gnn_real *x, size_t n, double scale)
{
	for (size_t i = 0; i < n; i++)
		x[i] = scale * gnn_rng_normal(&test_rng);
}

static double
rel_error(double a, double n)
{
	return fabs(a - n) / fmax(fmax(fabs(a), fabs(n)), GRAD_FLOOR);
}

/* A loss evaluated at the current values of whatever is being perturbed. */
typedef double (*LossFn) (void *ctx);

/*
 * Compares analytic[i] with the fourth-order central difference of f in
 * x[i] (truncation error O(h^4), so h can be large enough to keep rounding
 * small), for all i; returns the largest relative error and checks it.
 */
static double
check_gradient(const char *what, gnn_real *x, size_t n,
			   const gnn_real *analytic, LossFn f, void *ctx)
{
	double		worst = 0;
	size_t		worst_at = 0;

	for (size_t i = 0; i < n; i++)
	{
		gnn_real	saved = x[i];
		double		l[4];
		static const double at[4] = {-2, -1, 1, 2};
		double		err;

		for (int k = 0; k < 4; k++)
		{
			x[i] = saved + at[k] * FD_STEP;
			l[k] = f(ctx);
		}
		x[i] = saved;
		err = rel_error(analytic[i],
						(l[0] - 8 * l[1] + 8 * l[2] - l[3]) / (12 * FD_STEP));
		if (err > worst)
		{
			worst = err;
			worst_at = i;
		}
	}
	printf("  grad %-22s %6zu values, max rel err %.2e\n", what, n, worst);
	CHECK(worst < REL_TOL, "%s: gradient %zu off by relative %.3g (analytic %.6g)",
		  what, worst_at, worst, analytic[worst_at]);
	return worst;
}

static double max_rel_err_seen;

static void
note(double err)
{
	if (err > max_rel_err_seen)
		max_rel_err_seen = err;
}

/* ---- the layer ------------------------------------------------------------- */

#define D	5
#define H	8
#define HEADS 2
#define NV	7
#define NN	5

typedef struct LayerCase
{
	GnnModel   *model;
	GnnGraph	graph;
	gnn_real	vectors[NV * D];
	int			node[NN];
	int			nbr_offset[NN + 1];
	int			nbr[32];
	gnn_real	edge_w[32];
	gnn_real	proj[NN * H];	/* loss = sum proj * out */
	GnnRng		rng_at_start;	/* the same dropout mask every time */
	bool		training;
} LayerCase;

static double
layer_loss(void *ctx)
{
	LayerCase  *lc = ctx;
	gnn_real	out[NN * H];
	double		loss = 0;
	GnnError	err;

	lc->model->dropout_rng = lc->rng_at_start;
	if (gnn_layer_forward(lc->model, &lc->graph, lc->training, NULL, out, &err) != GNN_OK)
		return NAN;
	for (int i = 0; i < NN * H; i++)
		loss += lc->proj[i] * out[i];
	return loss;
}

/*
 * Nodes: 0 has three neighbours, 1 none, 2 six (one of them itself and one
 * repeated), 3 shares node 0's vector with other neighbours and zero edge
 * weights (the uniform fallback), 4 a single neighbour.
 */
static void
layer_case_init(LayerCase *lc, GnnModel *model, bool training)
{
	static const int node[NN] = {0, 1, 2, 0, 6};
	static const int counts[NN] = {3, 0, 6, 4, 1};
	static const int nbr[] = {1, 2, 3, 2, 4, 5, 6, 4, 2, 1, 3, 5, 6, 3};
	int			e = 0;

	memset(lc, 0, sizeof(LayerCase));
	lc->model = model;
	lc->training = training;
	fill_normal(lc->vectors, NV * D, 1.0);
	fill_normal(lc->proj, NN * H, 1.0);
	memcpy(lc->node, node, sizeof(node));
	for (int i = 0; i < NN; i++)
	{
		lc->nbr_offset[i + 1] = lc->nbr_offset[i] + counts[i];
		for (int j = 0; j < counts[i]; j++, e++)
		{
			lc->nbr[e] = nbr[e];
			lc->edge_w[e] = i == 3 ? 0 : 0.2 + gnn_rng_uniform(&test_rng);
		}
	}
	lc->graph.n_vectors = NV;
	lc->graph.vectors = lc->vectors;
	lc->graph.n_nodes = NN;
	lc->graph.node = lc->node;
	lc->graph.nbr_offset = lc->nbr_offset;
	lc->graph.nbr = lc->nbr;
	lc->graph.edge_w = lc->edge_w;
	lc->rng_at_start = model->dropout_rng;
}

/* A test model for gradient checks (see below). */
static GnnModel *
make_model(int d, int h, int heads, double dropout, uint64_t seed)
{
	GnnModel   *model = gnn_test_model(d, h, heads, dropout, seed);

	/* move biases, gains and score weights off their special initial values */
	for (int t = GNN_B_MSG; t < GNN_N_TENSORS; t++)
		if (t == GNN_B_MSG || t == GNN_B_AGG || t == GNN_B_GRU ||
			t == GNN_LN_GAMMA || t == GNN_LN_BETA || t == GNN_MIX)
			for (size_t i = model->offset[t]; i < model->offset[t + 1]; i++)
				model->params[i] += 0.3 * gnn_rng_normal(&test_rng);
	return model;
}

static void
test_layer_gradients(bool training)
{
	GnnModel   *model = make_model(D, H, HEADS, 0.3, 7);
	LayerCase	lc;
	GnnLayerTape *tape = NULL;
	gnn_real	out[NN * H];
	gnn_real	d_vectors[NV * D] = {0};
	GnnError	err;

	printf("layer, %s:\n", training ? "training (dropout 0.3)" : "inference");
	layer_case_init(&lc, model, training);
	gnn_model_zero_grad(model);
	CHECK(gnn_layer_forward(model, &lc.graph, training, &tape, out, &err) == GNN_OK,
		  "forward: %s", err.message);
	CHECK(gnn_layer_backward(model, tape, lc.proj, d_vectors, &err) == GNN_OK,
		  "backward: %s", err.message);
	for (int t = 0; t < GNN_N_TENSORS; t++)
		note(check_gradient(gnn_tensor_name(t), model->params + model->offset[t],
							model->offset[t + 1] - model->offset[t],
							model->grad + model->offset[t], layer_loss, &lc));
	note(check_gradient("input vectors", lc.vectors, NV * D, d_vectors,
						layer_loss, &lc));
	gnn_layer_tape_free(tape);
	gnn_model_free(model);
}

/* ---- the forward pass against the equations -------------------------------- */

static double
sigm(double x)
{
	return 1 / (1 + exp(-x));
}

/* y = W x (+ b), W rows x cols */
static void
matvec(const gnn_real *w, const gnn_real *b, const double *x, int rows,
	   int cols, double *y)
{
	for (int i = 0; i < rows; i++)
	{
		y[i] = b != NULL ? b[i] : 0;
		for (int j = 0; j < cols; j++)
			y[i] += w[(size_t) i * cols + j] * x[j];
	}
}

/* x sqrt(D) / ||x||: the layer's input scaling (gnn.h) */
static void
unit_rms(const gnn_real *v, double *x)
{
	double		sq = 0;

	for (int c = 0; c < D; c++)
		sq += (double) v[c] * v[c];
	for (int c = 0; c < D; c++)
		x[c] = sq > 0 ? v[c] * sqrt(D / sq) : 0;
}

/* One node, naively, from the equations in gnn.h (no dropout). */
static void
reference_node(GnnModel *m, const LayerCase *lc, int i, double *out)
{
	double		x[D],
				mv[H],
				q[H],
				att_in[H] = {0},
				comb[H] = {0},
				att[H],
				t[H],
				gx[3 * H],
				gh[3 * H],
				rm[H],
				hn[H],
				hid[H];
	double		mu[8][H],
				k[8][H],
				v[8][H];
	int			lo = lc->nbr_offset[i],
				n = lc->nbr_offset[i + 1] - lo;
	int			dk = H / HEADS;
	double		wsum = 0,
				mean = 0,
				var = 0;

	unit_rms(lc->vectors + lc->node[i] * D, x);
	matvec(gnn_model_tensor(m, GNN_W_MSG), gnn_model_tensor(m, GNN_B_MSG), x, H, D, mv);
	matvec(gnn_model_tensor(m, GNN_W_Q), NULL, mv, H, H, q);
	for (int j = 0; j < n; j++)
	{
		unit_rms(lc->vectors + lc->nbr[lo + j] * D, x);
		matvec(gnn_model_tensor(m, GNN_W_MSG), gnn_model_tensor(m, GNN_B_MSG), x, H, D, mu[j]);
		matvec(gnn_model_tensor(m, GNN_W_K), NULL, mu[j], H, H, k[j]);
		matvec(gnn_model_tensor(m, GNN_W_V), NULL, mu[j], H, H, v[j]);
		wsum += lc->edge_w[lo + j];
	}
	for (int hd = 0; hd < HEADS; hd++)
	{
		double		s[8],
					mx = -INFINITY,
					z = 0;

		for (int j = 0; j < n; j++)
		{
			s[j] = 0;
			for (int c = hd * dk; c < (hd + 1) * dk; c++)
				s[j] += q[c] * k[j][c];
			s[j] /= sqrt(dk);
			mx = fmax(mx, s[j]);
		}
		for (int j = 0; j < n; j++)
			z += exp(s[j] - mx);
		for (int j = 0; j < n; j++)
			for (int c = hd * dk; c < (hd + 1) * dk; c++)
				att_in[c] += exp(s[j] - mx) / z * v[j][c];
	}
	matvec(gnn_model_tensor(m, GNN_W_O), NULL, att_in, H, H, att);
	for (int j = 0; j < n; j++)
		for (int c = 0; c < H; c++)
			comb[c] += (wsum > 0 ? lc->edge_w[lo + j] / wsum : 1.0 / n) * mu[j][c];
	for (int c = 0; c < H; c++)
		comb[c] += n > 0 ? att[c] : 0;
	matvec(gnn_model_tensor(m, GNN_W_AGG), gnn_model_tensor(m, GNN_B_AGG), comb, H, H, t);
	matvec(gnn_model_tensor(m, GNN_W_GRU), gnn_model_tensor(m, GNN_B_GRU), t, 3 * H, H, gx);
	matvec(gnn_model_tensor(m, GNN_U_GRU), NULL, mv, 2 * H, H, gh);
	for (int c = 0; c < H; c++)
		rm[c] = sigm(gx[H + c] + gh[H + c]) * mv[c];
	matvec(gnn_model_tensor(m, GNN_U_GRU) + 2 * H * H, NULL, rm, H, H, hn);
	for (int c = 0; c < H; c++)
	{
		double		z = sigm(gx[c] + gh[c]);

		hid[c] = (1 - z) * mv[c] + z * tanh(gx[2 * H + c] + hn[c]);
		mean += hid[c] / H;
	}
	for (int c = 0; c < H; c++)
		var += (hid[c] - mean) * (hid[c] - mean) / H;
	for (int c = 0; c < H; c++)
		out[c] = gnn_model_tensor(m, GNN_LN_GAMMA)[c] * (hid[c] - mean) /
			sqrt(var + m->cfg.ln_eps) + gnn_model_tensor(m, GNN_LN_BETA)[c];
}

static void
test_forward_matches_equations(void)
{
	GnnModel   *model = make_model(D, H, HEADS, 0.3, 11);
	LayerCase	lc;
	gnn_real	out[NN * H];
	double		ref[H];
	double		worst = 0;
	GnnError	err;

	layer_case_init(&lc, model, false);
	CHECK(gnn_layer_forward(model, &lc.graph, false, NULL, out, &err) == GNN_OK,
		  "forward: %s", err.message);
	for (int i = 0; i < NN; i++)
	{
		reference_node(model, &lc, i, ref);
		for (int c = 0; c < H; c++)
			worst = fmax(worst, fabs(ref[c] - out[i * H + c]));
	}
	printf("forward vs naive reference: max abs diff %.2e\n", worst);
	CHECK(worst < 1e-10, "forward differs from the equations by %g", worst);
	gnn_model_free(model);
}

/*
 * The layer in two halves (projections, then one node from them) gives
 * the batched forward's output for every node, with and without edge
 * weights and for the node without neighbours.
 */
static void
test_projected_forward_matches(void)
{
	GnnModel   *model = make_model(D, H, HEADS, 0.3, 17);
	LayerCase	lc;
	gnn_real	out[NN * H],
				proj[NV * 3 * H],
				nbr_part[3][8 * H],
				one[H];
	GnnProjections nbr = {0, nbr_part[0], nbr_part[1], nbr_part[2]};
	double		worst = 0;
	GnnError	err;

	layer_case_init(&lc, model, false);
	CHECK(gnn_layer_forward(model, &lc.graph, false, NULL, out, &err) == GNN_OK &&
		  gnn_layer_project(model, lc.vectors, NV, proj, &err) == GNN_OK,
		  "forward and projections: %s", err.message);
	for (int i = 0; i < NN; i++)
	{
		int			lo = lc.nbr_offset[i],
					n = lc.nbr_offset[i + 1] - lo;

		for (int j = 0; j < n; j++)
			for (int part = 0; part < 3; part++)
				memcpy(nbr_part[part] + j * H, proj + lc.nbr[lo + j] * 3 * H + part * H,
					   sizeof(gnn_real) * H);
		nbr.n = n;
		CHECK(gnn_layer_forward_projected(model, lc.vectors + lc.node[i] * D,
										  &nbr, lc.edge_w + lo, one,
										  &err) == GNN_OK,
			  "projected forward: %s", err.message);
		for (int c = 0; c < H; c++)
			worst = fmax(worst, fabs(one[c] - out[i * H + c]));
	}
	printf("projected forward vs batched forward: max abs diff %.2e\n", worst);
	CHECK(worst < 1e-12, "the projected forward differs by %g", worst);
	gnn_model_free(model);
}

/* ---- losses ---------------------------------------------------------------- */

#define LD 6
#define NNEG 5

typedef struct LossCase
{
	gnn_real	anchor[LD],
				pos[LD],
				neg[NNEG * LD];
	int			which;			/* 0 InfoNCE, 1 local contrastive */
} LossCase;

static double
loss_value(void *ctx)
{
	LossCase   *c = ctx;

	if (c->which == 0)
		return gnn_infonce_loss(c->anchor, c->pos, c->neg, NNEG, LD, 0.2, NULL,
								NULL, NULL);
	/* local contrastive: pos and the first two negatives are neighbours */
	return gnn_local_contrastive_loss(c->anchor, c->neg, 2, c->neg + 2 * LD,
									  NNEG - 2, LD, 0.2, NULL, NULL, NULL);
}

static void
test_loss_gradients(void)
{
	LossCase	c;
	gnn_real	da[LD] = {0},
				dp[LD] = {0},
				dn[NNEG * LD] = {0};
	gnn_real	logits[6],
				dl[6] = {0};
	double		a;

	printf("losses:\n");
	fill_normal(c.anchor, LD, 1);
	fill_normal(c.pos, LD, 1);
	fill_normal(c.neg, NNEG * LD, 1);
	c.which = 0;
	a = gnn_infonce_loss(c.anchor, c.pos, c.neg, NNEG, LD, 0.2, da, dp, dn);
	CHECK(fabs(a - loss_value(&c)) < 1e-12, "InfoNCE value depends on gradients");
	note(check_gradient("InfoNCE anchor", c.anchor, LD, da, loss_value, &c));
	note(check_gradient("InfoNCE positive", c.pos, LD, dp, loss_value, &c));
	note(check_gradient("InfoNCE negatives", c.neg, NNEG * LD, dn, loss_value, &c));

	c.which = 1;
	memset(da, 0, sizeof(da));
	memset(dn, 0, sizeof(dn));
	gnn_local_contrastive_loss(c.anchor, c.neg, 2, c.neg + 2 * LD, NNEG - 2, LD,
							   0.2, da, dn, dn + 2 * LD);
	note(check_gradient("local contrastive node", c.anchor, LD, da, loss_value, &c));
	note(check_gradient("local contrastive rest", c.neg, NNEG * LD, dn, loss_value, &c));

	/* the softmax cross-entropy on its own, with a large spread of logits */
	fill_normal(logits, 6, 3);
	gnn_softmax_xent(logits, 6, 2, 0.5, 1, dl);
	for (int i = 0; i < 6; i++)
	{
		gnn_real	saved = logits[i];
		double		lp,
					lm;

		logits[i] = saved + FD_STEP;
		lp = gnn_softmax_xent(logits, 6, 2, 0.5, 0, NULL);
		logits[i] = saved - FD_STEP;
		lm = gnn_softmax_xent(logits, 6, 2, 0.5, 0, NULL);
		logits[i] = saved;
		note(rel_error(dl[i], (lp - lm) / (2 * FD_STEP)));
		CHECK(rel_error(dl[i], (lp - lm) / (2 * FD_STEP)) < REL_TOL,
			  "softmax xent gradient %d", i);
	}
}

/* ---- EWC --------------------------------------------------------------------- */

typedef struct EwcCase
{
	GnnEwc		ewc;
	gnn_real	params[20];
} EwcCase;

static double
ewc_loss(void *ctx)
{
	EwcCase    *c = ctx;

	return gnn_ewc_penalty(&c->ewc, c->params, NULL);
}

static void
test_ewc_gradient(void)
{
	EwcCase		c;
	gnn_real	g[20];
	gnn_real	grad[20] = {0};
	GnnError	err;

	printf("EWC:\n");
	CHECK(gnn_ewc_init(&c.ewc, 20, 3.0, &err) == GNN_OK, "ewc init: %s", err.message);
	fill_normal(c.params, 20, 1);
	for (int k = 0; k < 4; k++)
	{
		fill_normal(g, 20, 1);
		gnn_ewc_observe(&c.ewc, g);
	}
	gnn_ewc_consolidate(&c.ewc, c.params);
	fill_normal(c.params, 20, 1);
	gnn_ewc_penalty(&c.ewc, c.params, grad);
	note(check_gradient("EWC penalty", c.params, 20, grad, ewc_loss, &c));
	gnn_ewc_free(&c.ewc);
}

/* ---- the scoring model --------------------------------------------------------- */

#define SNV 12
#define SNC 6

typedef struct ScoreCase
{
	GnnModel   *model;
	GnnScoreInput in;
	gnn_real	query[D];
	gnn_real	vectors[SNV * D];
	int			cand[SNC];
	gnn_real	cand_dist[SNC];
	int			nbr_offset[SNC + 1];
	int			nbr[40];
	gnn_real	nbr_dist[40];
	GnnRng		rng_at_start;
	bool		similarity;		/* the training logits, not the scores */
} ScoreCase;

static double
score_loss(void *ctx)
{
	ScoreCase  *sc = ctx;
	gnn_real	scores[SNC];
	GnnError	err;

	sc->model->dropout_rng = sc->rng_at_start;
	if ((sc->similarity ?
		 gnn_score_similarity_forward(sc->model, &sc->in, true, NULL, scores, &err) :
		 gnn_score_forward(sc->model, &sc->in, true, NULL, scores, &err)) != GNN_OK)
		return NAN;
	return gnn_softmax_xent(scores, SNC, 1, 0.1, 0, NULL);
}

static double
l2(const gnn_real *a, const gnn_real *b)
{
	double		s = 0;

	for (int c = 0; c < D; c++)
		s += (a[c] - b[c]) * (a[c] - b[c]);
	return sqrt(s);
}

static void
score_case_init(ScoreCase *sc, GnnModel *model)
{
	int			e = 0;

	memset(sc, 0, sizeof(ScoreCase));
	sc->model = model;
	fill_normal(sc->query, D, 1);
	fill_normal(sc->vectors, SNV * D, 1);
	for (int i = 0; i < SNC; i++)
	{
		int			n = i == 2 ? 0 : 1 + i % 4;	/* candidate 2 has none */

		sc->cand[i] = (i * 5) % SNV;
		sc->cand_dist[i] = l2(sc->query, sc->vectors + sc->cand[i] * D);
		for (int j = 0; j < n; j++, e++)
		{
			sc->nbr[e] = (sc->cand[i] + 1 + 3 * j) % SNV;
			sc->nbr_dist[e] = l2(sc->vectors + sc->cand[i] * D,
								 sc->vectors + sc->nbr[e] * D);
		}
		sc->nbr_offset[i + 1] = e;
	}
	sc->in.query = sc->query;
	sc->in.n_vectors = SNV;
	sc->in.vectors = sc->vectors;
	sc->in.n_cand = SNC;
	sc->in.cand = sc->cand;
	sc->in.cand_dist = sc->cand_dist;
	sc->in.nbr_offset = sc->nbr_offset;
	sc->in.nbr = sc->nbr;
	sc->in.nbr_dist = sc->nbr_dist;
	sc->in.smooth_dist = NULL;
	sc->rng_at_start = model->dropout_rng;
}

/*
 * The blended score, or (similarity) the similarities cos(q', c_i') that
 * training uses as logits; for those the score weights get no gradient,
 * which the finite differences confirm (the loss does not depend on them).
 */
static void
test_score_gradients(bool similarity)
{
	GnnModel   *model = make_model(D, H, HEADS, 0.2, 13);
	ScoreCase	sc;
	GnnScoreTape *tape = NULL;
	gnn_real	scores[SNC],
				ds[SNC] = {0},
				dq[D] = {0};
	GnnError	err;

	printf("scoring model (InfoNCE over %s, tau 0.1):\n",
		   similarity ? "similarities" : "scores");
	score_case_init(&sc, model);
	sc.similarity = similarity;
	gnn_model_zero_grad(model);
	CHECK((similarity ?
		   gnn_score_similarity_forward(model, &sc.in, true, &tape, scores, &err) :
		   gnn_score_forward(model, &sc.in, true, &tape, scores, &err)) == GNN_OK,
		  "score forward: %s", err.message);
	gnn_softmax_xent(scores, SNC, 1, 0.1, 1, ds);
	CHECK(gnn_score_backward(model, tape, ds, dq, &err) == GNN_OK,
		  "score backward: %s", err.message);
	for (int t = 0; t < GNN_N_TENSORS; t++)
		note(check_gradient(gnn_tensor_name(t), model->params + model->offset[t],
							model->offset[t + 1] - model->offset[t],
							model->grad + model->offset[t], score_loss, &sc));
	note(check_gradient("query", sc.query, D, dq, score_loss, &sc));
	gnn_score_tape_free(tape);
	gnn_model_free(model);
}

int
main(void)
{
	gnn_rng_seed(&test_rng, 2024);
	test_forward_matches_equations();
	test_projected_forward_matches();
	test_layer_gradients(false);
	test_layer_gradients(true);
	test_loss_gradients();
	test_ewc_gradient();
	test_score_gradients(false);
	test_score_gradients(true);
	printf("largest relative gradient error: %.2e (limit %.0e)\n",
		   max_rel_err_seen, REL_TOL);
	return unit_report("gnn_grad");
}
