/*
 * gnn_score.c
 *		The rerank scoring model (definition in gnn.h) and the training step
 *		that fits it with InfoNCE over (query, positive, negatives).
 *
 * One scoring call is one layer call: the query and every candidate are
 * nodes of one GnnGraph whose vector table is the query followed by the
 * caller's vectors, so candidates that are also neighbours of other
 * candidates (or of the query) are transformed once.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "gnn/gnn.h"

struct GnnScoreTape
{
	GnnLayerTape *layer;
	int			n_cand;
	bool		blended;		/* outputs were scores; else similarities */
	GnnGraph	graph;
	gnn_real	a_raw;			/* exp(lambda_raw) */
	gnn_real	b_gnn;			/* exp(lambda_gnn) */
	gnn_real	g_smooth;		/* exp(lambda_smooth) */
	gnn_real	da_raw;			/* da/dlambda_raw */
	gnn_real	db_gnn;			/* db/dlambda_gnn */
	gnn_real	dg_smooth;		/* dg/dlambda_smooth */
	size_t		real_cap;
	size_t		int_cap;
	gnn_real   *reals;
	int		   *ints;
	/* views */
	gnn_real   *vectors;		/* (1 + n_vectors) x D: query, then caller's */
	gnn_real   *edge_w;			/* E */
	gnn_real   *out;			/* (1 + n_cand) x H: q', then c_i' */
	gnn_real   *d_out;			/* (1 + n_cand) x H */
	gnn_real   *rho;			/* n_cand: distance z-scores */
	gnn_real   *cosv;			/* n_cand: cos(q', c_i') */
	gnn_real   *sigma;			/* n_cand: neighbourhood-mean z-scores */
	gnn_real   *ctx_dist;		/* the query context's distances */
	int		   *ctx;			/* n_cand: candidates nearest first */
	int		   *node;			/* 1 + n_cand */
	int		   *nbr_offset;		/* 2 + n_cand */
	int		   *nbr;			/* E */
};

static GnnStatus
validate_input(const GnnScoreInput *in, GnnError *err)
{
	int			n_edges;

	if (in->n_cand < 0 || in->n_vectors < 0)
		return gnn_error(err, GNN_ERR_ARG, "GNN score sizes must not be negative");
	if (in->query == NULL ||
		(in->n_cand > 0 && (in->cand == NULL || in->cand_dist == NULL ||
							in->nbr_offset == NULL || in->vectors == NULL)))
		return gnn_error(err, GNN_ERR_ARG, "GNN score input is missing arrays");
	if (in->n_cand == 0)
		return GNN_OK;
	if (in->nbr_offset[0] != 0)
		return gnn_error(err, GNN_ERR_ARG, "GNN score nbr_offset[0] must be 0");
	for (int i = 0; i < in->n_cand; i++)
	{
		if (in->cand[i] < 0 || in->cand[i] >= in->n_vectors)
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN candidate %d refers to vector %d of %d",
							 i, in->cand[i], in->n_vectors);
		if (!isfinite(in->cand_dist[i]))
			return gnn_error(err, GNN_ERR_ARG, "GNN candidate distance %d is not finite", i);
		if (in->nbr_offset[i + 1] < in->nbr_offset[i])
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN score nbr_offset decreases at candidate %d", i);
	}
	n_edges = in->nbr_offset[in->n_cand];
	if (n_edges > 0 && (in->nbr == NULL || in->nbr_dist == NULL))
		return gnn_error(err, GNN_ERR_ARG, "GNN score input is missing neighbour arrays");
	for (int e = 0; e < n_edges; e++)
	{
		if (in->nbr[e] < 0 || in->nbr[e] >= in->n_vectors)
			return gnn_error(err, GNN_ERR_ARG,
							 "GNN neighbour entry %d refers to vector %d of %d",
							 e, in->nbr[e], in->n_vectors);
		if (!isfinite(in->nbr_dist[e]))
			return gnn_error(err, GNN_ERR_ARG, "GNN neighbour distance %d is not finite", e);
	}
	return GNN_OK;
}

static GnnStatus
tape_reserve(GnnScoreTape *tp, const GnnModel *model, const GnnScoreInput *in,
			 GnnError *err)
{
	size_t		d = model->cfg.in_dim;
	size_t		h = model->cfg.hidden_dim;
	size_t		nv = (size_t) in->n_vectors + 1;
	size_t		n = (size_t) in->n_cand + 1;
	size_t		ne = in->n_cand + in->nbr_offset[in->n_cand];
	size_t		nreal = nv * d + ne + 2 * n * h + 4 * (n - 1);
	size_t		nint = n + (n + 1) + ne + (n - 1);
	gnn_real   *p;
	int		   *q;

	if (nreal > tp->real_cap)
	{
		free(tp->reals);
		tp->real_cap = 0;
		if ((tp->reals = malloc(nreal * sizeof(gnn_real))) == NULL)
			return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN scoring");
		tp->real_cap = nreal;
	}
	if (nint > tp->int_cap)
	{
		free(tp->ints);
		tp->int_cap = 0;
		if ((tp->ints = malloc(nint * sizeof(int))) == NULL)
			return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN scoring");
		tp->int_cap = nint;
	}
	p = tp->reals;
	tp->vectors = p;
	p += nv * d;
	tp->edge_w = p;
	p += ne;
	tp->out = p;
	p += n * h;
	tp->d_out = p;
	p += n * h;
	tp->rho = p;
	p += n - 1;
	tp->cosv = p;
	p += n - 1;
	tp->sigma = p;
	p += n - 1;
	tp->ctx_dist = p;
	q = tp->ints;
	tp->node = q;
	q += n;
	tp->nbr_offset = q;
	q += n + 1;
	tp->nbr = q;
	q += ne;
	tp->ctx = q;
	return GNN_OK;
}

/*
 * tp->ctx: candidate numbers by ascending distance (ties: the lower
 * number), by insertion sort: the candidate sets are a few hundred.
 * Returns how many of the nearest form the query's context.
 */
static int
query_context(GnnScoreTape *tp, const GnnScoreInput *in)
{
	for (int i = 0; i < in->n_cand; i++)
	{
		int			j = i;

		while (j > 0 && in->cand_dist[tp->ctx[j - 1]] > in->cand_dist[i])
		{
			tp->ctx[j] = tp->ctx[j - 1];
			j--;
		}
		tp->ctx[j] = i;
	}
	return in->n_cand < GNN_QUERY_CONTEXT ? in->n_cand : GNN_QUERY_CONTEXT;
}

/*
 * Node 0 is the query (row 0), its neighbours its context: the nearest
 * GNN_QUERY_CONTEXT candidates, as at search time (gnn_rerank.c).  Node
 * i+1 is candidate i with its graph neighbours.  Rows are the caller's
 * plus one.
 */
static void
build_graph(GnnScoreTape *tp, const GnnModel *model, const GnnScoreInput *in)
{
	int			d = model->cfg.in_dim;
	int			nc = in->n_cand;
	int			nq = query_context(tp, in);

	memcpy(tp->vectors, in->query, d * sizeof(gnn_real));
	memcpy(tp->vectors + d, in->vectors, (size_t) in->n_vectors * d * sizeof(gnn_real));
	tp->node[0] = 0;
	tp->nbr_offset[0] = 0;
	tp->nbr_offset[1] = nq;
	for (int j = 0; j < nq; j++)
	{
		tp->nbr[j] = in->cand[tp->ctx[j]] + 1;
		tp->ctx_dist[j] = in->cand_dist[tp->ctx[j]];
	}
	gnn_edge_weights_from_distances(tp->ctx_dist, nq, tp->edge_w);
	for (int i = 0; i < nc; i++)
	{
		int			lo = in->nbr_offset[i];
		int			hi = in->nbr_offset[i + 1];

		tp->node[i + 1] = in->cand[i] + 1;
		for (int e = lo; e < hi; e++)
			tp->nbr[nq + e] = in->nbr[e] + 1;
		gnn_edge_weights_from_distances(in->nbr_dist + lo, hi - lo,
										tp->edge_w + nq + lo);
		tp->nbr_offset[i + 2] = nq + hi;
	}
	tp->graph.n_vectors = in->n_vectors + 1;
	tp->graph.vectors = tp->vectors;
	tp->graph.n_nodes = nc + 1;
	tp->graph.node = tp->node;
	tp->graph.nbr_offset = tp->nbr_offset;
	tp->graph.nbr = tp->nbr;
	tp->graph.edge_w = tp->edge_w;
}

void
gnn_distance_zscores(const gnn_real *dist, int n, gnn_real *rho)
{
	double		mean = 0,
				var = 0,
				sd;

	for (int i = 0; i < n; i++)
		mean += dist[i];
	mean /= n;
	for (int i = 0; i < n; i++)
		var += (dist[i] - mean) * (dist[i] - mean);
	var /= n;
	/* once, not per element: the compiler kept a sqrt in the loop */
	sd = sqrt(var);
	for (int i = 0; i < n; i++)
		rho[i] = var > 0 ? (gnn_real) (-(dist[i] - mean) / sd) : 0;
}

/*
 * A score weight exp(lambda), with lambda clamped to +-GNN_SCORE_LOG_LIMIT
 * so that no stored model can overflow the scores; *deriv is d weight /
 * d lambda (zero where clamped).
 */
static gnn_real
score_weight(gnn_real lambda, gnn_real *deriv)
{
	if (lambda > GNN_SCORE_LOG_LIMIT || lambda < -GNN_SCORE_LOG_LIMIT)
	{
		*deriv = 0;
		return gnn_exp(lambda > 0 ? GNN_SCORE_LOG_LIMIT : -GNN_SCORE_LOG_LIMIT);
	}
	*deriv = gnn_exp(lambda);
	return *deriv;
}

/*
 * The forward pass: the layer over query and candidates, then per
 * candidate either the blended score (blended) or the similarity
 * cos(q', c_i') alone.
 */
static GnnStatus
score_forward(GnnModel *model, const GnnScoreInput *in, bool training,
			  bool blended, GnnScoreTape **tape, gnn_real *out,
			  GnnError *err)
{
	GnnScoreTape *tp = tape != NULL ? *tape : NULL;
	int			h = model->cfg.hidden_dim;
	GnnStatus	rc;

	if ((rc = validate_input(in, err)) != GNN_OK)
		return rc;
	if (tp == NULL && (tp = calloc(1, sizeof(GnnScoreTape))) == NULL)
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN score tape");
	if (tape != NULL)
		*tape = tp;
	tp->n_cand = in->n_cand;
	tp->blended = blended;
	if (in->n_cand > 0)
	{
		rc = tape_reserve(tp, model, in, err);
		if (rc == GNN_OK)
		{
			build_graph(tp, model, in);
			rc = gnn_layer_forward(model, &tp->graph, training, &tp->layer,
								   tp->out, err);
		}
		if (rc == GNN_OK)
		{
			const gnn_real *mix = gnn_model_tensor(model, GNN_MIX);

			gnn_distance_zscores(in->cand_dist, in->n_cand, tp->rho);
			if (in->smooth_dist != NULL)
				gnn_distance_zscores(in->smooth_dist, in->n_cand, tp->sigma);
			else
				memset(tp->sigma, 0, in->n_cand * sizeof(gnn_real));
			tp->a_raw = score_weight(mix[0], &tp->da_raw);
			tp->b_gnn = score_weight(mix[1], &tp->db_gnn);
			tp->g_smooth = score_weight(mix[2], &tp->dg_smooth);
			for (int i = 0; i < in->n_cand; i++)
			{
				tp->cosv[i] = gnn_cosine(tp->out, tp->out + (size_t) (i + 1) * h,
										 h, 0, NULL, NULL);
				out[i] = blended ?
					tp->a_raw * tp->rho[i] + tp->b_gnn * tp->cosv[i] +
					tp->g_smooth * tp->sigma[i] : tp->cosv[i];
			}
		}
	}
	if (tape == NULL)
		gnn_score_tape_free(tp);
	return rc;
}

GnnStatus
gnn_score_forward(GnnModel *model, const GnnScoreInput *in, bool training,
				  GnnScoreTape **tape, gnn_real *scores, GnnError *err)
{
	return score_forward(model, in, training, true, tape, scores, err);
}

GnnStatus
gnn_score_similarity_forward(GnnModel *model, const GnnScoreInput *in,
							 bool training, GnnScoreTape **tape,
							 gnn_real *sim, GnnError *err)
{
	return score_forward(model, in, training, false, tape, sim, err);
}

/*
 * score_i = a rho_i + b cos_i + g sigma_i with a = exp(lambda_raw),
 * b = exp(lambda_gnn), g = exp(lambda_smooth):
 *	 dscore_i/dlambda_raw = a rho_i,  dscore_i/dlambda_gnn = b cos_i,
 *	 dscore_i/dlambda_smooth = g sigma_i,  dscore_i/dcos_i = b.
 * After gnn_score_similarity_forward the outputs are cos_i themselves:
 * no gradient for the weights, dcos_i/dcos_i = 1.
 */
GnnStatus
gnn_score_backward(GnnModel *model, GnnScoreTape *tape,
				   const gnn_real *d_scores, gnn_real *d_query, GnnError *err)
{
	int			h = model->cfg.hidden_dim;
	int			d = model->cfg.in_dim;
	double		d_lraw = 0,
				d_lgnn = 0,
				d_lsmooth = 0;
	gnn_real   *d_vectors = NULL;
	GnnStatus	rc;

	if (tape == NULL)
		return gnn_error(err, GNN_ERR_ARG, "GNN score backward without a forward pass");
	if (tape->n_cand == 0)
		return GNN_OK;
	memset(tape->d_out, 0, (size_t) (tape->n_cand + 1) * h * sizeof(gnn_real));
	for (int i = 0; i < tape->n_cand; i++)
	{
		gnn_real	d_cos = tape->blended ? tape->b_gnn * d_scores[i] : d_scores[i];

		if (tape->blended)
		{
			d_lraw += d_scores[i] * tape->da_raw * tape->rho[i];
			d_lgnn += d_scores[i] * tape->db_gnn * tape->cosv[i];
			d_lsmooth += d_scores[i] * tape->dg_smooth * tape->sigma[i];
		}
		gnn_cosine(tape->out, tape->out + (size_t) (i + 1) * h, h, d_cos,
				   tape->d_out, tape->d_out + (size_t) (i + 1) * h);
	}
	model->grad[model->offset[GNN_MIX]] += (gnn_real) d_lraw;
	model->grad[model->offset[GNN_MIX] + 1] += (gnn_real) d_lgnn;
	model->grad[model->offset[GNN_MIX] + 2] += (gnn_real) d_lsmooth;
	if (d_query != NULL)
	{
		d_vectors = calloc((size_t) tape->graph.n_vectors * d, sizeof(gnn_real));
		if (d_vectors == NULL)
			return gnn_error(err, GNN_ERR_NOMEM, "out of memory for the query gradient");
	}
	rc = gnn_layer_backward(model, tape->layer, tape->d_out, d_vectors, err);
	if (rc == GNN_OK && d_query != NULL)
		for (int c = 0; c < d; c++)
			d_query[c] += d_vectors[c];
	free(d_vectors);
	return rc;
}

void
gnn_score_tape_free(GnnScoreTape *tape)
{
	if (tape == NULL)
		return;
	gnn_layer_tape_free(tape->layer);
	free(tape->reals);
	free(tape->ints);
	free(tape);
}

/* ---- training --------------------------------------------------------------- */

void
gnn_train_config_default(GnnTrainConfig *cfg)
{
	cfg->lr = 3e-4;
	cfg->temperature = 0.1;
	cfg->clip_norm = 5.0;
	cfg->ewc_lambda = 100.0;
}

GnnStatus
gnn_trainer_init(GnnTrainer *tr, GnnModel *model, const GnnTrainConfig *cfg,
				 GnnError *err)
{
	GnnStatus	rc;

	memset(tr, 0, sizeof(GnnTrainer));
	if (!(cfg->temperature > 0 && isfinite(cfg->temperature)))
		return gnn_error(err, GNN_ERR_ARG, "InfoNCE temperature must be > 0, got %g",
						 cfg->temperature);
	tr->model = model;
	tr->cfg = *cfg;
	if ((rc = gnn_adam_init(&tr->adam, model->n_params, cfg->lr, err)) != GNN_OK)
		return rc;
	if ((rc = gnn_ewc_init(&tr->ewc, model->n_params, cfg->ewc_lambda, err)) != GNN_OK)
	{
		gnn_adam_free(&tr->adam);
		return rc;
	}
	tr->batch_grad = malloc(model->n_params * sizeof(gnn_real));
	if (tr->batch_grad == NULL)
	{
		gnn_trainer_free(tr);
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for the GNN trainer");
	}
	return GNN_OK;
}

void
gnn_trainer_free(GnnTrainer *tr)
{
	gnn_adam_free(&tr->adam);
	gnn_ewc_free(&tr->ewc);
	gnn_score_tape_free(tr->tape);
	free(tr->batch_grad);
	free(tr->scores);
	tr->tape = NULL;
	tr->batch_grad = tr->scores = tr->d_scores = NULL;
	tr->score_cap = 0;
}

static GnnStatus
reserve_scores(GnnTrainer *tr, int n, GnnError *err)
{
	if (n <= tr->score_cap)
		return GNN_OK;
	free(tr->scores);
	tr->score_cap = 0;
	tr->scores = malloc(2 * (size_t) n * sizeof(gnn_real));
	if (tr->scores == NULL)
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN scores");
	tr->d_scores = tr->scores + n;
	tr->score_cap = n;
	return GNN_OK;
}

/*
 * Forward and backward of one example, the InfoNCE of cos(q', c_i') / tau
 * (gnn.h, Training); its gradient is left in model->grad.
 */
static GnnStatus
example_gradient(GnnTrainer *tr, const GnnExample *ex, double *loss,
				 GnnError *err)
{
	GnnModel   *model = tr->model;
	int			n = ex->in.n_cand;
	GnnStatus	rc;

	if (n < 1 || ex->positive < 0 || ex->positive >= n)
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN training example needs a positive among its %d candidates, got %d",
						 n, ex->positive);
	if ((rc = reserve_scores(tr, n, err)) != GNN_OK)
		return rc;
	gnn_model_zero_grad(model);
	rc = gnn_score_similarity_forward(model, &ex->in, true, &tr->tape,
									  tr->scores, err);
	if (rc != GNN_OK)
		return rc;
	memset(tr->d_scores, 0, n * sizeof(gnn_real));
	*loss = gnn_softmax_xent(tr->scores, n, ex->positive,
							 (gnn_real) tr->cfg.temperature, 1, tr->d_scores);
	return gnn_score_backward(model, tr->tape, tr->d_scores, NULL, err);
}

GnnStatus
gnn_train_step(GnnTrainer *tr, const GnnExample *ex, int n_ex, double *loss,
			   GnnError *err)
{
	GnnModel   *model = tr->model;
	size_t		np = model->n_params;
	double		total = 0;
	double		penalty;
	GnnStatus	rc;

	if (n_ex < 1)
		return gnn_error(err, GNN_ERR_ARG, "GNN training batch is empty");
	memset(tr->batch_grad, 0, np * sizeof(gnn_real));
	for (int e = 0; e < n_ex; e++)
	{
		double		l = 0;

		if ((rc = example_gradient(tr, &ex[e], &l, err)) != GNN_OK)
			return rc;
		gnn_ewc_observe(&tr->ewc, model->grad);
		for (size_t i = 0; i < np; i++)
			tr->batch_grad[i] += model->grad[i] / n_ex;
		total += l;
	}
	memcpy(model->grad, tr->batch_grad, np * sizeof(gnn_real));
	penalty = gnn_ewc_penalty(&tr->ewc, model->params, model->grad);
	if (!isfinite(gnn_clip_grad_norm(model->grad, np, tr->cfg.clip_norm)) ||
		!isfinite(total))
		return gnn_error(err, GNN_ERR_NUMERIC,
						 "GNN training produced a non-finite loss or gradient; the model was not changed");
	gnn_adam_step(&tr->adam, model->params, model->grad);
	*loss = total / n_ex + penalty;
	return GNN_OK;
}

/* ---- choosing the blend ------------------------------------------------------ */

/*
 * Raw distance alone first (the fallback), then raw distance with the GNN
 * and neighbourhood terms at weights relative to it, then without raw
 * distance.  The last weight of each (16) is nearly the term alone.
 */
#define W(r, b, g) {r, b, g}
#define ROW(g) W(1, 0, g), W(1, 0.25, g), W(1, 0.5, g), W(1, 1, g), \
	W(1, 2, g), W(1, 4, g), W(1, 16, g)
const GnnBlend gnn_blends[GNN_BLENDS] = {
	ROW(0), ROW(0.25), ROW(0.5), ROW(1), ROW(2), ROW(4), ROW(16),
	W(0, 1, 0), W(0, 0, 1), W(0, 1, 0.25), W(0, 1, 0.5), W(0, 1, 1),
	W(0, 1, 2), W(0, 1, 4)
};
#undef ROW
#undef W

void
gnn_blend_tally_init(GnnBlendTally *tally)
{
	memset(tally, 0, sizeof(GnnBlendTally));
}

/* How many candidates rank above pos by s (ties: the lower index first)? */
static int
rank_of(const double *s, int n, int pos)
{
	int			better = 0;

	for (int i = 0; i < n; i++)
		if (s[i] > s[pos] || (s[i] == s[pos] && i < pos))
			better++;
	return better;
}

void
gnn_blend_tally_ranks(GnnBlendTally *tally, const int *ranks, int k)
{
	for (int r = 0; r < GNN_BLENDS; r++)
	{
		tally->hits[r] += ranks[r] < k;
		tally->rank_sum[r] += ranks[r];
		tally->better[r] += ranks[r] < ranks[0];
		tally->worse[r] += ranks[r] > ranks[0];
		for (int q = 0; q < GNN_BLENDS; q++)
			tally->rank_products[r][q] += (double) ranks[r] * ranks[q];
	}
	tally->n++;
}

GnnStatus
gnn_blend_tally_add(GnnModel *model, GnnBlendTally *tally,
					const GnnExample *ex, int k, GnnError *err)
{
	int			n = ex->in.n_cand;
	GnnScoreTape *tp = NULL;
	gnn_real   *sim;
	double	   *s;
	int			ranks[GNN_BLENDS];
	GnnStatus	rc;

	if (ex->positive < -1 || ex->positive >= n)
		return gnn_error(err, GNN_ERR_ARG,
						 "GNN blend example's positive %d is not one of its %d candidates",
						 ex->positive, n);
	if (ex->positive < 0)
	{
		tally->n++;				/* a miss at every blend */
		return GNN_OK;
	}
	sim = malloc(n * sizeof(gnn_real));
	s = malloc(n * sizeof(double));
	if (sim == NULL || s == NULL)
	{
		free(sim);
		free(s);
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for GNN blend scores");
	}
	rc = score_forward(model, &ex->in, false, false, &tp, sim, err);
	for (int r = 0; rc == GNN_OK && r < GNN_BLENDS; r++)
	{
		const GnnBlend *bl = &gnn_blends[r];

		for (int i = 0; i < n; i++)
			s[i] = bl->raw * tp->rho[i] + bl->gnn * tp->cosv[i] +
				bl->smooth * tp->sigma[i];
		ranks[r] = rank_of(s, n, ex->positive);
	}
	if (rc == GNN_OK)
		gnn_blend_tally_ranks(tally, ranks, k);
	gnn_score_tape_free(tp);
	free(sim);
	free(s);
	return rc;
}

/* log(w), or the lower clamp for a weight that is off */
static gnn_real
log_weight(double w)
{
	return w > 0 ? (gnn_real) log(w) : -GNN_SCORE_LOG_LIMIT;
}

/* z with a one-sided normal tail of p (0 < p < 0.5), by bisection */
static double
normal_quantile_above(double p)
{
	double		lo = 0;
	double		hi = 40;

	for (int i = 0; i < 100; i++)
	{
		double		mid = (lo + hi) / 2;

		if (0.5 * erfc(mid / M_SQRT2) > p)
			lo = mid;
		else
			hi = mid;
	}
	return (lo + hi) / 2;
}

bool
gnn_significantly_better(int better, int worse, int comparisons)
{
	double		z = normal_quantile_above(GNN_SIGN_TEST_TAIL /
											 (comparisons > 1 ? comparisons : 1));

	return better - worse > z * sqrt((double) better + worse);
}

/*
 * What a blend costs a scan: raw distance alone is not scored at all (0);
 * the neighbourhood term reads each candidate's cached mean (1); the GNN
 * term also runs the layer for q' (2).
 */
static int
blend_cost(const GnnBlend *bl)
{
	return bl->gnn > 0 ? 2 : bl->smooth > 0 ? 1 : 0;
}

static int
blend_terms(const GnnBlend *bl)
{
	return (bl->raw > 0) + (bl->gnn > 0) + (bl->smooth > 0);
}

/* Is blend r simpler than blend s: cheaper, then fewer terms, then ranked better? */
static bool
blend_simpler(const GnnBlendTally *tally, int r, int s)
{
	const GnnBlend *a = &gnn_blends[r];
	const GnnBlend *b = &gnn_blends[s];

	if (blend_cost(a) != blend_cost(b))
		return blend_cost(a) < blend_cost(b);
	if (blend_terms(a) != blend_terms(b))
		return blend_terms(a) < blend_terms(b);
	return tally->rank_sum[r] < tally->rank_sum[s];
}

/* May blend r replace raw distance (gnn.h)? */
static bool
blend_qualifies(const GnnBlendTally *tally, int r)
{
	return r == 0 ||
		(tally->hits[r] >= tally->hits[0] &&
		 gnn_significantly_better(tally->better[r], tally->worse[r],
								  GNN_BLENDS - 1));
}

/*
 * Is blend r's mean rank within one standard error of blend best's?  The
 * error is that of the mean of the two blends' rank differences, example
 * by example (both rank the same examples' positives).
 */
static bool
within_one_se(const GnnBlendTally *tally, int r, int best)
{
	double		n = tally->n;
	double		sum;
	double		sum_sq;
	double		var;

	if (n < 2)
		return r == best;
	sum = tally->rank_sum[r] - tally->rank_sum[best];
	sum_sq = tally->rank_products[r][r] - 2 * tally->rank_products[r][best] +
		tally->rank_products[best][best];
	var = sum_sq / n - (sum / n) * (sum / n);
	return sum / n <= sqrt(fmax(var, 0) / (n - 1));
}

int
gnn_blend_apply_best(GnnModel *model, const GnnBlendTally *tally,
					 double *hit_rate, double *best_rank)
{
	gnn_real   *mix = gnn_model_tensor(model, GNN_MIX);
	int			best = 0;
	int			chosen;

	for (int r = 1; r < GNN_BLENDS; r++)
		if (tally->rank_sum[r] < tally->rank_sum[best] &&
			blend_qualifies(tally, r))
			best = r;
	/* the one-standard-error rule (gnn.h) */
	chosen = best;
	for (int r = 0; r < GNN_BLENDS; r++)
		if (blend_qualifies(tally, r) && within_one_se(tally, r, best) &&
			blend_simpler(tally, r, chosen))
			chosen = r;
	mix[0] = log_weight(gnn_blends[chosen].raw);
	mix[1] = log_weight(gnn_blends[chosen].gnn);
	mix[2] = log_weight(gnn_blends[chosen].smooth);
	*hit_rate = tally->n > 0 ? (double) tally->hits[chosen] / tally->n : 0;
	*best_rank = tally->n > 0 ? tally->rank_sum[best] / tally->n : 0;
	return chosen;
}

/* ---- bfloat16 ------------------------------------------------------------ */

void
gnn_bf16_from_floats(const float *in, int n, gnn_bf16 *out)
{
	for (int i = 0; i < n; i++)
	{
		uint32_t	u;
		uint32_t	r;

		memcpy(&u, &in[i], sizeof(u));
		if ((u & 0x7f800000) == 0x7f800000)
		{
			/* infinity stays, NaN stays NaN (a mantissa bit kept) */
			out[i] = (gnn_bf16) ((u >> 16) | ((u & 0xffff) ? 0x40 : 0));
			continue;
		}
		r = u + 0x7fff + ((u >> 16) & 1);
		if ((r & 0x7f800000) == 0x7f800000)
			r = u;				/* would round to infinity: truncate */
		out[i] = (gnn_bf16) (r >> 16);
	}
}

/*
 * A read of every cached candidate of every reranked scan: eight at a
 * time with SSE2 (x86-64's baseline; interleaving zeros below each value
 * shifts it into a float's upper half), which the compiler does not find
 * at -O2 on its own.
 */
void
gnn_bf16_to_floats(const gnn_bf16 *in, int n, float *out)
{
	int			i = 0;

#ifdef __SSE2__
	const __m128i zero = _mm_setzero_si128();

	for (; i + 8 <= n; i += 8)
	{
		__m128i		x = _mm_loadu_si128((const __m128i *) (in + i));

		_mm_storeu_si128((__m128i *) (out + i), _mm_unpacklo_epi16(zero, x));
		_mm_storeu_si128((__m128i *) (out + i + 4), _mm_unpackhi_epi16(zero, x));
	}
#endif
	for (; i < n; i++)
	{
		uint32_t	u = (uint32_t) in[i] << 16;

		memcpy(&out[i], &u, sizeof(u));
	}
}
