/*
 * test_gnn.c
 *		The GNN core in the float build gnnvec.so uses: numerical stability,
 *		empty neighbourhoods, argument errors, Adam, clipping, EWC, the replay
 *		reservoir, serialisation and corruption, determinism, and an
 *		end-to-end test that training the reranker really improves recall on
 *		held-out queries.  (Gradients: test_gnn_grad.c, double build.)
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "gnn/gnn.h"
#include "gnn_test_model.h"
#include "vector/distance.h"
#include "unit.h"

static GnnRng test_rng;

static void
fill_normal(gnn_real *x, size_t n, double scale)
{
	for (size_t i = 0; i < n; i++)
		x[i] = (gnn_real) (scale * gnn_rng_normal(&test_rng));
}

static bool
all_finite(const gnn_real *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isfinite(x[i]))
			return false;
	return true;
}


/* A small graph: node i is vector i, neighbours i+1 .. i+k (mod n). */
typedef struct RingGraph
{
	GnnGraph	g;
	gnn_real   *vectors;
	int		   *node;
	int		   *off;
	int		   *nbr;
} RingGraph;

static void
ring_graph(RingGraph *rg, int n, int d, int k, double scale)
{
	rg->vectors = malloc(sizeof(gnn_real) * n * d);
	rg->node = malloc(sizeof(int) * n);
	rg->off = malloc(sizeof(int) * (n + 1));
	rg->nbr = malloc(sizeof(int) * (n * k + 1));
	fill_normal(rg->vectors, (size_t) n * d, scale);
	rg->off[0] = 0;
	for (int i = 0; i < n; i++)
	{
		rg->node[i] = i;
		for (int j = 0; j < k; j++)
			rg->nbr[i * k + j] = (i + 1 + j) % n;
		rg->off[i + 1] = (i + 1) * k;
	}
	rg->g.n_vectors = n;
	rg->g.vectors = rg->vectors;
	rg->g.n_nodes = n;
	rg->g.node = rg->node;
	rg->g.nbr_offset = rg->off;
	rg->g.nbr = rg->nbr;
	rg->g.edge_w = NULL;
}

static void
ring_free(RingGraph *rg)
{
	free(rg->vectors);
	free(rg->node);
	free(rg->off);
	free(rg->nbr);
}

/* ---- numerical stability ------------------------------------------------------ */

static void
test_softmax_stability(void)
{
	gnn_real	big[4] = {1e30f, 1e30f - 1e24f, -1e30f, 0};
	gnn_real	close[3] = {1000, 999, -1000};
	gnn_real	p[4];
	gnn_real	dl[3] = {0};
	gnn_real	loss;

	gnn_softmax(big, 4, p);
	CHECK(all_finite(p, 4) && fabsf(p[0] + p[1] + p[2] + p[3] - 1) < 1e-6f,
		  "softmax of 1e30 logits: %g %g %g %g", p[0], p[1], p[2], p[3]);
	CHECK(p[0] == 1 && p[2] == 0, "softmax of 1e30 logits picks the largest");
	gnn_softmax(close, 3, p);
	CHECK(fabs(p[0] - 1 / (1 + exp(-1.0))) < 1e-6, "softmax(1000, 999) = %g", p[0]);
	loss = gnn_softmax_xent(close, 3, 1, 0.01f, 1, dl);
	CHECK(isfinite(loss) && fabs(loss - 100) < 1e-3,
		  "xent of logit gap 1 at tau 0.01 is 100, got %g", loss);
	CHECK(all_finite(dl, 3), "xent gradient finite at tau 0.01");
}

static void
test_huge_inputs(void)
{
	GnnModel   *model = gnn_test_model(16, 16, 4, 0, 1);
	RingGraph	rg;
	gnn_real	out[10 * 16];
	GnnError	err;

	ring_graph(&rg, 10, 16, 4, 1e4);
	CHECK(gnn_layer_forward(model, &rg.g, false, NULL, out, &err) == GNN_OK,
		  "forward on huge inputs: %s", err.message);
	CHECK(all_finite(out, 10 * 16), "outputs finite for inputs of size 1e4");

	/* score weights far outside any trained range still give finite scores */
	{
		gnn_real	q[16];
		int			cand[3] = {0, 1, 2};
		gnn_real	dist[3] = {1, 2, 1e6f};
		int			off[4] = {0, 0, 0, 0};
		GnnScoreInput in = {q, 10, rg.vectors, 3, cand, dist, off, NULL, NULL, NULL};

		fill_normal(q, 16, 1e4);
		gnn_model_tensor(model, GNN_MIX)[0] = 500;
		gnn_model_tensor(model, GNN_MIX)[1] = -500;
		CHECK(gnn_score_forward(model, &in, false, NULL, out, &err) == GNN_OK &&
			  all_finite(out, 3) && out[0] > out[1] && out[1] > out[2],
			  "extreme score weights and distances give finite, ordered scores: %g %g %g",
			  out[0], out[1], out[2]);
	}
	ring_free(&rg);
	gnn_model_free(model);
}

/* ---- empty neighbourhoods ----------------------------------------------------- */

static void
test_empty_neighbours(void)
{
	GnnModel   *model = gnn_test_model(8, 8, 2, 0, 3);
	gnn_real	vec[3 * 8];
	int			node[3] = {0, 1, 2};
	int			off[4] = {0, 0, 2, 2};
	int			nbr[2] = {0, 2};
	GnnGraph	g = {3, vec, 3, node, off, nbr, NULL};
	GnnGraph	alone = {3, vec, 1, node, off, nbr, NULL};
	gnn_real	out[3 * 8],
				out_alone[8],
				d_out[3 * 8];
	GnnLayerTape *tape = NULL;
	GnnError	err;
	GnnScoreInput in;
	gnn_real	q[8];
	double		mean = 0,
				var = 0,
				diff = 0;

	fill_normal(vec, 24, 1);
	fill_normal(q, 8, 1);
	CHECK(gnn_layer_forward(model, &g, false, &tape, out, &err) == GNN_OK,
		  "forward with empty neighbour sets: %s", err.message);
	CHECK(all_finite(out, 24), "empty neighbour sets give finite output");
	/* a LayerNorm output: mean beta = 0, variance gamma^2 = 1 (nearly) */
	for (int c = 0; c < 8; c++)
		mean += out[c] / 8;
	for (int c = 0; c < 8; c++)
		var += (out[c] - mean) * (out[c] - mean) / 8;
	CHECK(fabs(mean) < 1e-5 && fabs(var - 1) < 1e-3,
		  "node without neighbours is normalised: mean %g var %g", mean, var);
	/* it does not depend on the rest of the batch */
	CHECK(gnn_layer_forward(model, &alone, false, NULL, out_alone, &err) == GNN_OK,
		  "forward of a lone node");
	for (int c = 0; c < 8; c++)
		diff = fmax(diff, fabs(out[c] - out_alone[c]));
	CHECK(diff < 1e-5, "a node without neighbours gives the same output alone (diff %g)",
		  diff);
	fill_normal(d_out, 24, 1);
	CHECK(gnn_layer_backward(model, tape, d_out, NULL, &err) == GNN_OK &&
		  all_finite(model->grad, model->n_params),
		  "backward with empty neighbour sets is finite");
	gnn_layer_tape_free(tape);

	/* an empty batch, and a query with no candidates */
	g.n_nodes = 0;
	CHECK(gnn_layer_forward(model, &g, false, NULL, out, &err) == GNN_OK,
		  "forward of an empty batch: %s", err.message);
	memset(&in, 0, sizeof(in));
	in.query = q;
	CHECK(gnn_score_forward(model, &in, false, NULL, out, &err) == GNN_OK,
		  "scoring zero candidates: %s", err.message);
	gnn_model_free(model);
}

/* ---- argument errors ----------------------------------------------------------- */

static void
test_errors(void)
{
	GnnConfig	cfg;
	GnnModel   *model = NULL;
	GnnError	err;
	gnn_real	vec[2 * 4] = {0};
	int			node[1] = {0};
	int			off[2] = {0, 1};
	int			bad_nbr[1] = {5};
	GnnGraph	g = {2, vec, 1, node, off, bad_nbr, NULL};
	gnn_real	out[8];

	gnn_config_default(&cfg, 4, 6);
	cfg.heads = 4;
	CHECK(gnn_model_create(&cfg, &model, &err) == GNN_ERR_ARG && model == NULL &&
		  strstr(err.message, "divide") != NULL,
		  "heads that do not divide hidden_dim are rejected: %s", err.message);
	cfg.heads = 2;
	cfg.dropout = 1;
	CHECK(gnn_model_create(&cfg, &model, &err) == GNN_ERR_ARG, "dropout 1 rejected");
	cfg.dropout = 0;
	cfg.in_dim = 0;
	CHECK(gnn_model_create(&cfg, &model, &err) == GNN_ERR_ARG, "dimension 0 rejected");
	model = gnn_test_model(4, 8, 2, 0, 1);
	CHECK(gnn_layer_forward(model, &g, false, NULL, out, &err) == GNN_ERR_ARG &&
		  strstr(err.message, "vector 5 of 2") != NULL,
		  "out-of-range neighbour rejected: %s", err.message);
	bad_nbr[0] = 1;
	vec[5] = NAN;
	CHECK(gnn_layer_forward(model, &g, false, NULL, out, &err) == GNN_ERR_ARG &&
		  strstr(err.message, "NaN") != NULL, "NaN input rejected: %s", err.message);
	CHECK(gnn_layer_backward(model, NULL, out, NULL, &err) == GNN_ERR_ARG,
		  "backward without forward rejected");
	gnn_model_free(model);
}

/* ---- optimisation ----------------------------------------------------------------- */

/* Adam on f(x) = sum a_i (x_i - c_i)^2 with curvatures over 3 decades. */
static void
test_adam_quadratic(void)
{
	enum
	{
	N = 10};
	gnn_real	x[N],
				g[N],
				a[N],
				c[N];
	GnnAdam		adam;
	GnnError	err;
	double		worst = 0;

	for (int i = 0; i < N; i++)
	{
		a[i] = (gnn_real) pow(10, -1.5 + 3.0 * i / (N - 1));
		c[i] = (gnn_real) (i - 4.5);
		x[i] = 0;
	}
	CHECK(gnn_adam_init(&adam, N, 0.05, &err) == GNN_OK, "adam init");
	for (int step = 0; step < 3000; step++)
	{
		for (int i = 0; i < N; i++)
			g[i] = 2 * a[i] * (x[i] - c[i]);
		gnn_adam_step(&adam, x, g);
	}
	for (int i = 0; i < N; i++)
		worst = fmax(worst, fabs(x[i] - c[i]));
	CHECK(worst < 1e-2, "Adam converges on a quadratic: max |x - c| = %g", worst);
	/* the first step is lr * sign(g) exactly, by the bias correction */
	gnn_adam_free(&adam);
	gnn_adam_init(&adam, N, 0.05, &err);
	for (int i = 0; i < N; i++)
	{
		x[i] = 0;
		g[i] = (gnn_real) (i % 2 ? 1e-3 : -7);
	}
	gnn_adam_step(&adam, x, g);
	CHECK(fabsf(x[0] - 0.05f) < 1e-6f && fabsf(x[1] + 0.05f) < 1e-6f,
		  "bias-corrected first Adam step is lr * sign(g): %g %g", x[0], x[1]);
	gnn_adam_free(&adam);
}

static void
test_clip(void)
{
	gnn_real	g[4] = {3, 4, 0, 0};
	double		before = gnn_clip_grad_norm(g, 4, 1.0);

	CHECK(fabs(before - 5) < 1e-6 && fabsf(g[0] - 0.6f) < 1e-6f &&
		  fabsf(g[1] - 0.8f) < 1e-6f, "clip scales (3,4) to norm 1");
	before = gnn_clip_grad_norm(g, 4, 10.0);
	CHECK(fabsf(g[0] - 0.6f) < 1e-6f, "clip leaves short gradients alone");
}

static void
test_ewc(void)
{
	GnnEwc		ewc;
	GnnError	err;
	gnn_real	theta[3] = {1, 2, 3};
	gnn_real	g1[3] = {1, 0, 2},
				g2[3] = {3, 0, 0};
	gnn_real	grad[3] = {0};

	CHECK(gnn_ewc_init(&ewc, 3, 2.0, &err) == GNN_OK, "ewc init");
	gnn_ewc_observe(&ewc, g1);
	gnn_ewc_observe(&ewc, g2);
	CHECK(gnn_ewc_penalty(&ewc, theta, grad) == 0 && grad[0] == 0,
		  "no EWC penalty before consolidation");
	gnn_ewc_consolidate(&ewc, theta);
	CHECK(ewc.fisher[0] == 5 && ewc.fisher[1] == 0 && ewc.fisher[2] == 2,
		  "Fisher is the mean squared gradient: %g %g %g",
		  ewc.fisher[0], ewc.fisher[1], ewc.fisher[2]);
	CHECK(gnn_ewc_penalty(&ewc, theta, NULL) == 0, "no penalty at the anchor");
	theta[0] += 1;
	theta[1] += 5;
	CHECK(fabs(gnn_ewc_penalty(&ewc, theta, grad) - 5.0) < 1e-12 && grad[0] == 10,
		  "penalty lambda/2 F d^2 = 5, gradient lambda F d = 10");
	/* a second task adds its importance to the first */
	gnn_ewc_observe(&ewc, g1);
	gnn_ewc_consolidate(&ewc, theta);
	CHECK(ewc.fisher[0] == 6 && ewc.anchor[0] == theta[0],
		  "consolidation accumulates Fisher and moves the anchor");
	gnn_ewc_free(&ewc);
}

/* ---- replay ------------------------------------------------------------------------ */

/*
 * Algorithm R keeps each of N offered records with probability cap/N.
 * Over many independent streams the inclusion count of every record is
 * binomial; check every count within 5 sigma and the chi-square statistic
 * over all records within 5 standard deviations of its mean.
 */
static void
test_replay_reservoir(void)
{
	enum
	{
	CAP = 20, N = 200, TRIALS = 2000};
	static int	included[N];
	double		p = (double) CAP / N;
	double		expect = TRIALS * p;
	double		sd = sqrt(TRIALS * p * (1 - p));
	double		chi2 = 0;
	int			worst = 0;
	GnnReplay	r,
				r2;
	GnnError	err;
	int			slots[CAP];
	int			n;
	bool		same = true,
				distinct = true;

	for (int t = 0; t < TRIALS; t++)
	{
		gnn_replay_init(&r, CAP, 1, 1000 + t, &err);
		for (int i = 0; i < N; i++)
		{
			gnn_real	rec = (gnn_real) i;

			gnn_replay_add(&r, &rec);
		}
		for (int s = 0; s < CAP; s++)
			included[(int) gnn_replay_record(&r, s)[0]]++;
		gnn_replay_free(&r);
	}
	for (int i = 0; i < N; i++)
	{
		double		z = (included[i] - expect) / sd;

		chi2 += z * z;
		if (fabs(z) > fabs((included[worst] - expect) / sd))
			worst = i;
	}
	CHECK(fabs((included[worst] - expect) / sd) < 5,
		  "record %d kept %d times, expected %.0f +- %.1f", worst, included[worst],
		  expect, sd);
	CHECK(fabs(chi2 - N) < 5 * sqrt(2.0 * N), "reservoir chi-square %.1f for %d records",
		  chi2, N);

	/* deterministic with a seed; sampling gives distinct held slots */
	gnn_replay_init(&r, CAP, 2, 77, &err);
	gnn_replay_init(&r2, CAP, 2, 77, &err);
	for (int i = 0; i < N; i++)
	{
		gnn_real	rec[2] = {(gnn_real) i, (gnn_real) -i};

		same &= gnn_replay_add(&r, rec) == gnn_replay_add(&r2, rec);
	}
	CHECK(same && memcmp(r.records, r2.records, sizeof(gnn_real) * 2 * CAP) == 0,
		  "equal seeds give equal reservoirs");
	n = gnn_replay_sample(&r, 8, slots);
	for (int i = 1; i < n; i++)
		distinct &= slots[i] > slots[i - 1];
	CHECK(n == 8 && distinct && slots[n - 1] < CAP, "sample of 8 distinct slots");
	CHECK(gnn_replay_sample(&r, 100, slots) == CAP, "sample is capped by the content");
	gnn_replay_free(&r);
	gnn_replay_free(&r2);
	CHECK(gnn_replay_init(&r, 0, 1, 1, &err) == GNN_ERR_ARG, "capacity 0 rejected");
}

/* ---- serialisation -------------------------------------------------------------- */

static void
test_serialisation(void)
{
	GnnModel   *model = gnn_test_model(12, 8, 2, 0.25, 5);
	GnnModel   *back = NULL;
	RingGraph	rg;
	size_t		len = gnn_model_serialized_size(model);
	uint8_t    *buf = malloc(len);
	uint8_t    *bad = malloc(len);
	gnn_real	out1[6 * 8],
				out2[6 * 8];
	GnnError	err;
	GnnEwc		ewc,
				ewc2;

	fill_normal(model->params, model->n_params, 0.5);
	gnn_model_serialize(model, buf);
	CHECK(gnn_model_deserialize(buf, len, &back, &err) == GNN_OK,
		  "round trip: %s", err.message);
	CHECK(back != NULL && back->n_params == model->n_params &&
		  memcmp(back->params, model->params, model->n_params * sizeof(gnn_real)) == 0 &&
		  back->cfg.heads == 2 && back->cfg.dropout == 0.25,
		  "round trip keeps every parameter and setting");
	ring_graph(&rg, 6, 12, 3, 1);
	gnn_layer_forward(model, &rg.g, false, NULL, out1, &err);
	gnn_layer_forward(back, &rg.g, false, NULL, out2, &err);
	CHECK(memcmp(out1, out2, sizeof(out1)) == 0, "restored model gives the same output");
	gnn_model_free(back);

	CHECK(gnn_model_deserialize(buf, 10, &back, &err) == GNN_ERR_CORRUPT &&
		  back == NULL && strstr(err.message, "truncated"), "truncated: %s", err.message);
	CHECK(gnn_model_deserialize(buf, len - 4, &back, &err) == GNN_ERR_CORRUPT,
		  "one parameter short rejected");
	memcpy(bad, buf, len);
	bad[0] = 'X';
	CHECK(gnn_model_deserialize(bad, len, &back, &err) == GNN_ERR_CORRUPT &&
		  strstr(err.message, "magic"), "wrong magic: %s", err.message);
	memcpy(bad, buf, len);
	bad[4] = 3;
	CHECK(gnn_model_deserialize(bad, len, &back, &err) == GNN_ERR_VERSION &&
		  strstr(err.message, "version 3"), "newer version: %s", err.message);
	memcpy(bad, buf, len);
	bad[12] ^= 1;				/* hidden_dim */
	CHECK(gnn_model_deserialize(bad, len, &back, &err) == GNN_ERR_CORRUPT &&
		  strstr(err.message, "CRC"), "changed dimension: %s", err.message);
	memcpy(bad, buf, len);
	bad[len / 2] ^= 0x40;
	CHECK(gnn_model_deserialize(bad, len, &back, &err) == GNN_ERR_CORRUPT,
		  "flipped bit in the parameters rejected");
	CHECK(gnn_model_deserialize(NULL, 0, &back, &err) == GNN_ERR_CORRUPT,
		  "NULL buffer rejected");

	gnn_ewc_init(&ewc, model->n_params, 7.5, &err);
	gnn_ewc_observe(&ewc, model->params);
	gnn_ewc_consolidate(&ewc, model->params);
	gnn_ewc_observe(&ewc, model->params);
	free(buf);
	len = gnn_ewc_serialized_size(&ewc);
	buf = malloc(len);
	gnn_ewc_serialize(&ewc, buf);
	CHECK(gnn_ewc_deserialize(buf, len, &ewc2, &err) == GNN_OK &&
		  ewc2.active && ewc2.lambda == 7.5 && ewc2.n_observed == 1 &&
		  memcmp(ewc2.fisher, ewc.fisher, ewc.n * sizeof(gnn_real)) == 0 &&
		  memcmp(ewc2.anchor, ewc.anchor, ewc.n * sizeof(gnn_real)) == 0 &&
		  gnn_ewc_penalty(&ewc2, model->params, NULL) == 0,
		  "EWC round trip");
	gnn_ewc_free(&ewc2);
	buf[40] ^= 1;
	CHECK(gnn_ewc_deserialize(buf, len, &ewc2, &err) == GNN_ERR_CORRUPT,
		  "corrupt EWC data rejected");
	gnn_ewc_free(&ewc);
	ring_free(&rg);
	free(buf);
	free(bad);
	gnn_model_free(model);
}

/* ---- end to end: training improves recall -------------------------------------------- */

/*
 * Synthetic relevance data where raw distance misleads and the graph does
 * not: TOPICS latent topics with centres c_t ~ N(0, I); every item and every
 * query is c_t + NOISE * N(0, I), so a single vector says little about its
 * topic.  An item's graph neighbours are SAME_NBRS random items of its own
 * topic and OTHER_NBRS random others (as an index graph over many views
 * would mostly link same-topic items).  Relevant = same topic.  Candidates
 * are the N_CAND nearest items by raw L2 (what the index scan returns); the
 * reranker reorders them.  Recall@10 = relevant among the top 10 / 10 (every
 * topic has more than 10 items).
 */
#define E_D			16
#define TOPICS		8
#define PER_TOPIC	30
#define N_ITEMS		(TOPICS * PER_TOPIC)
#define SAME_NBRS	6
#define OTHER_NBRS	2
#define N_NBRS		(SAME_NBRS + OTHER_NBRS)
#define NOISE		1.4
#define N_CAND		30
#define N_TRAIN		480
#define N_TEST		100
#define TOP_K		10
#define HIDDEN		32
#define EPOCHS		10

typedef struct Corpus
{
	gnn_real	items[N_ITEMS * E_D];
	int			topic[N_ITEMS];
	int			nbr_offset[N_ITEMS + 1];
	int			nbr[N_ITEMS * N_NBRS];
	gnn_real	nbr_dist[N_ITEMS * N_NBRS];
} Corpus;

typedef struct Query
{
	gnn_real	q[E_D];
	int			topic;
	int			cand[N_CAND];
	gnn_real	cand_dist[N_CAND];
	/* the candidates' neighbour lists, flattened for GnnScoreInput */
	int			nbr_offset[N_CAND + 1];
	int			nbr[N_CAND * N_NBRS];
	gnn_real	nbr_dist[N_CAND * N_NBRS];
	gnn_real	smooth_dist[N_CAND];	/* to each one's neighbourhood mean */
} Query;

static double
l2(const gnn_real *a, const gnn_real *b, int d)
{
	double		s = 0;

	for (int i = 0; i < d; i++)
		s += ((double) a[i] - b[i]) * ((double) a[i] - b[i]);
	return sqrt(s);
}

static void
make_corpus(Corpus *c, gnn_real *centres)
{
	fill_normal(centres, TOPICS * E_D, 1.0);
	for (int i = 0; i < N_ITEMS; i++)
	{
		c->topic[i] = i % TOPICS;
		fill_normal(c->items + i * E_D, E_D, NOISE);
		for (int k = 0; k < E_D; k++)
			c->items[i * E_D + k] += centres[c->topic[i] * E_D + k];
	}
	for (int i = 0; i < N_ITEMS; i++)
	{
		c->nbr_offset[i] = i * N_NBRS;
		for (int j = 0; j < N_NBRS; j++)
		{
			int			u;

			do
			{
				u = (int) gnn_rng_below(&test_rng, N_ITEMS);
			} while (u == i || (j < SAME_NBRS) != (c->topic[u] == c->topic[i]));
			c->nbr[i * N_NBRS + j] = u;
			c->nbr_dist[i * N_NBRS + j] =
				(gnn_real) l2(c->items + i * E_D, c->items + u * E_D, E_D);
		}
	}
	c->nbr_offset[N_ITEMS] = N_ITEMS * N_NBRS;
}

/* The mean of item i and its graph neighbours (the score's sigma term). */
static void
neighbourhood_mean(const Corpus *c, int i, gnn_real *mean)
{
	memcpy(mean, c->items + i * E_D, sizeof(gnn_real) * E_D);
	for (int j = 0; j < N_NBRS; j++)
		for (int k = 0; k < E_D; k++)
			mean[k] += c->items[c->nbr[i * N_NBRS + j] * E_D + k];
	for (int k = 0; k < E_D; k++)
		mean[k] /= N_NBRS + 1;
}

/* The N_CAND nearest items to q, nearest first (selection is fine here). */
static void
make_query(const Corpus *c, const gnn_real *centres, Query *q)
{
	double		dist[N_ITEMS];
	bool		taken[N_ITEMS] = {false};
	gnn_real	mean[E_D];

	q->topic = (int) gnn_rng_below(&test_rng, TOPICS);
	fill_normal(q->q, E_D, NOISE);
	for (int k = 0; k < E_D; k++)
		q->q[k] += centres[q->topic * E_D + k];
	for (int i = 0; i < N_ITEMS; i++)
		dist[i] = l2(q->q, c->items + i * E_D, E_D);
	q->nbr_offset[0] = 0;
	for (int r = 0; r < N_CAND; r++)
	{
		int			best = -1;

		for (int i = 0; i < N_ITEMS; i++)
			if (!taken[i] && (best < 0 || dist[i] < dist[best]))
				best = i;
		taken[best] = true;
		neighbourhood_mean(c, best, mean);
		q->cand[r] = best;
		q->cand_dist[r] = (gnn_real) dist[best];
		memcpy(q->nbr + r * N_NBRS, c->nbr + best * N_NBRS, sizeof(int) * N_NBRS);
		memcpy(q->nbr_dist + r * N_NBRS, c->nbr_dist + best * N_NBRS,
			   sizeof(gnn_real) * N_NBRS);
		q->nbr_offset[r + 1] = (r + 1) * N_NBRS;
		q->smooth_dist[r] = (gnn_real) l2(q->q, mean, E_D);
	}
}

static void
score_input(const Corpus *c, const Query *q, GnnScoreInput *in)
{
	in->query = q->q;
	in->n_vectors = N_ITEMS;
	in->vectors = c->items;
	in->n_cand = N_CAND;
	in->cand = q->cand;
	in->cand_dist = q->cand_dist;
	in->nbr_offset = q->nbr_offset;
	in->nbr = q->nbr;
	in->nbr_dist = q->nbr_dist;
	in->smooth_dist = q->smooth_dist;
}

/* Recall@10 of the candidates ordered by score (NULL: by raw distance). */
static double
recall_at_k(const Corpus *c, const Query *q, const gnn_real *score)
{
	bool		used[N_CAND] = {false};
	int			hits = 0;

	for (int r = 0; r < TOP_K; r++)
	{
		int			best = -1;

		for (int i = 0; i < N_CAND; i++)
			if (!used[i] && (best < 0 || (score != NULL ? score[i] > score[best] :
										  q->cand_dist[i] < q->cand_dist[best])))
				best = i;
		used[best] = true;
		hits += c->topic[q->cand[best]] == q->topic;
	}
	return (double) hits / TOP_K;
}

static double
mean_recall(GnnModel *model, const Corpus *c, const Query *qs, int n)
{
	double		sum = 0;
	gnn_real	scores[N_CAND];
	GnnScoreInput in;
	GnnError	err;

	for (int i = 0; i < n; i++)
	{
		if (model == NULL)
			sum += recall_at_k(c, &qs[i], NULL);
		else
		{
			score_input(c, &qs[i], &in);
			if (gnn_score_forward(model, &in, false, NULL, scores, &err) != GNN_OK)
				return -1;
			sum += recall_at_k(c, &qs[i], scores);
		}
	}
	return sum / n;
}

/*
 * A logged (query, relevant item) pair: the positive is one relevant
 * candidate (the click; the only use of the labels).  Training leaves out,
 * as gnnvec_train does without labels, the candidates nearer to the
 * positive than the query is (likely relevant too); validation sees all
 * the query's candidates, as the index scan does.
 */
typedef struct TrainPair
{
	Query		q;				/* training candidates */
	int			n_cand;
	int			positive;		/* in q.cand */
	Query		full;			/* every candidate, for validation */
	int			full_positive;	/* in full.cand */
} TrainPair;

static bool
make_pair(const Corpus *c, const Query *q, TrainPair *tp)
{
	int			pos = -1,
				n = 0,
				e = 0;
	int			keep[N_CAND];
	double		q_to_pos;

	for (int i = 0; i < N_CAND; i++)
		if (c->topic[q->cand[i]] == q->topic)
		{
			if (pos < 0 || gnn_rng_below(&test_rng, 2) == 0)
				pos = i;
		}
	if (pos < 0)
		return false;
	q_to_pos = l2(q->q, c->items + q->cand[pos] * E_D, E_D);
	for (int i = 0; i < N_CAND; i++)
	{
		if (i == pos)
			tp->positive = n;
		else if (l2(c->items + q->cand[i] * E_D, c->items + q->cand[pos] * E_D,
					E_D) < q_to_pos)
			continue;
		keep[n++] = i;
	}
	tp->full = *q;
	tp->full_positive = pos;
	tp->q = *q;
	tp->n_cand = n;
	tp->q.nbr_offset[0] = 0;
	for (int j = 0; j < n; j++)
	{
		tp->q.cand[j] = q->cand[keep[j]];
		tp->q.cand_dist[j] = q->cand_dist[keep[j]];
		tp->q.smooth_dist[j] = q->smooth_dist[keep[j]];
		for (int k = 0; k < N_NBRS; k++, e++)
		{
			tp->q.nbr[e] = q->nbr[keep[j] * N_NBRS + k];
			tp->q.nbr_dist[e] = q->nbr_dist[keep[j] * N_NBRS + k];
		}
		tp->q.nbr_offset[j + 1] = e;
	}
	return n >= 2;
}

/* Trains a fresh model; returns it (caller frees) and the last epoch's loss. */
static GnnModel *
train_model(const Corpus *c, const TrainPair *pairs, int n_pairs, int epochs,
			double *last_loss)
{
	enum
	{
	BATCH = 8};
	GnnModel   *model = gnn_test_model(E_D, HIDDEN, 4, 0.1, 99);
	GnnTrainer	tr;
	GnnTrainConfig tcfg;
	GnnExample	ex[BATCH];
	GnnError	err;

	gnn_train_config_default(&tcfg);
	if (gnn_trainer_init(&tr, model, &tcfg, &err) != GNN_OK)
		return model;
	for (int ep = 0; ep < epochs; ep++)
	{
		double		sum = 0;
		int			steps = 0;

		for (int b = 0; b + BATCH <= n_pairs; b += BATCH)
		{
			double		loss;

			for (int k = 0; k < BATCH; k++)
			{
				score_input(c, &pairs[b + k].q, &ex[k].in);
				ex[k].in.n_cand = pairs[b + k].n_cand;
				ex[k].positive = pairs[b + k].positive;
			}
			if (gnn_train_step(&tr, ex, BATCH, &loss, &err) != GNN_OK)
			{
				fprintf(stderr, "train step: %s\n", err.message);
				break;
			}
			sum += loss;
			steps++;
		}
		*last_loss = sum / steps;
	}
	gnn_trainer_free(&tr);
	return model;
}

/*
 * Chooses the model's blend on pairs (as gnnvec_train does on its
 * validation split); returns its number.
 */
static int
choose_blend(GnnModel *model, const Corpus *c, const TrainPair *pairs, int n)
{
	GnnBlendTally tally;
	GnnExample	ex;
	GnnError	err;
	double		rate;
	double		rank;

	gnn_blend_tally_init(&tally);
	for (int i = 0; i < n; i++)
	{
		score_input(c, &pairs[i].full, &ex.in);
		ex.positive = pairs[i].full_positive;
		if (gnn_blend_tally_add(model, &tally, &ex, TOP_K, &err) != GNN_OK)
			fprintf(stderr, "blend: %s\n", err.message);
	}
	return gnn_blend_apply_best(model, &tally, &rate, &rank);
}

static void
test_training_improves_recall(void)
{
	static Corpus corpus;
	static gnn_real centres[TOPICS * E_D];
	static Query train[N_TRAIN],
				test[N_TEST];
	static TrainPair pairs[N_TRAIN];
	int			n_pairs = 0;
	int			n_fit;
	int			blend;
	GnnModel   *untrained = gnn_test_model(E_D, HIDDEN, 4, 0.1, 99);
	GnnModel   *model,
			   *again;
	double		raw,
				baseline = 0,
				before,
				after,
				loss,
				loss2;

	make_corpus(&corpus, centres);
	for (int i = 0; i < N_TRAIN; i++)
	{
		make_query(&corpus, centres, &train[i]);
		if (make_pair(&corpus, &train[i], &pairs[n_pairs]))
			n_pairs++;
	}
	for (int i = 0; i < N_TEST; i++)
		make_query(&corpus, centres, &test[i]);

	/* the last fifth of the pairs chooses the blend, as a validation split */
	n_fit = n_pairs - n_pairs / 5;
	raw = mean_recall(NULL, &corpus, test, N_TEST);
	/* the baseline that learns nothing: rank by the neighbourhood mean */
	for (int i = 0; i < N_TEST; i++)
	{
		gnn_real	s[N_CAND];

		for (int j = 0; j < N_CAND; j++)
			s[j] = -test[i].smooth_dist[j];
		baseline += recall_at_k(&corpus, &test[i], s) / N_TEST;
	}
	before = mean_recall(untrained, &corpus, test, N_TEST);
	model = train_model(&corpus, pairs, n_fit, EPOCHS, &loss);
	blend = choose_blend(model, &corpus, pairs + n_fit, n_pairs - n_fit);
	after = mean_recall(model, &corpus, test, N_TEST);
	printf("end to end, %d held-out queries: recall@10 raw distance %.3f, "
		   "neighbourhood mean %.3f, untrained rerank %.3f, trained rerank %.3f\n"
		   "  (%d training pairs, %d epochs, final loss %.3f, blend %g:%g:%g chosen on %d pairs)\n",
		   N_TEST, raw, baseline, before, after, n_fit, EPOCHS, loss,
		   gnn_blends[blend].raw, gnn_blends[blend].gnn, gnn_blends[blend].smooth,
		   n_pairs - n_fit);
	CHECK(after >= raw + 0.10, "training raises held-out recall@10 by >= 0.10 over "
		  "raw distance: %.3f -> %.3f", raw, after);
	CHECK(after > before, "trained beats untrained: %.3f vs %.3f", after, before);
	CHECK(after >= baseline - 0.02, "trained is at least the baseline that learns "
		  "nothing (within 0.02): %.3f vs %.3f", after, baseline);

	gnn_model_free(model);

	/* same data, same seeds: bit-identical models */
	model = train_model(&corpus, pairs, n_pairs, 1, &loss);
	again = train_model(&corpus, pairs, n_pairs, 1, &loss2);
	CHECK(loss == loss2 && memcmp(model->params, again->params,
								  model->n_params * sizeof(gnn_real)) == 0,
		  "training is deterministic");
	gnn_model_free(again);
	gnn_model_free(model);
	gnn_model_free(untrained);
}

/* CRC-32 (IEEE 802.3), bit by bit: an independent check of gnn_serial.c's. */
static uint32_t
crc32_bitwise(const uint8_t *p, size_t n, uint32_t crc)
{
	for (size_t i = 0; i < n; i++)
	{
		crc ^= p[i];
		for (int b = 0; b < 8; b++)
			crc = (crc >> 1) ^ (0xedb88320 & -(crc & 1));
	}
	return crc;
}

/*
 * A model stored in format version 1 (two score weights: no neighbourhood
 * term) reads back with every parameter it had and the new term off.
 */
static void
test_serialisation_version_1(void)
{
	GnnModel   *model = gnn_test_model(12, 8, 2, 0, 5);
	GnnModel   *back = NULL;
	size_t		len = gnn_model_serialized_size(model);
	size_t		len1 = len - 4;
	uint8_t    *buf = malloc(len);
	uint64_t	n1 = model->n_params - 1;
	uint32_t	crc;
	GnnError	err;

	fill_normal(model->params, model->n_params, 0.5);
	gnn_model_serialize(model, buf);
	/* version 1, one parameter fewer, its CRC */
	buf[4] = 1;
	buf[5] = 0;
	for (int i = 0; i < 8; i++)
		buf[48 + i] = (uint8_t) (n1 >> (8 * i));
	crc = crc32_bitwise(buf, 56, 0xffffffff);
	crc = crc32_bitwise(buf + 60, len1 - 60, crc) ^ 0xffffffff;
	for (int i = 0; i < 4; i++)
		buf[56 + i] = (uint8_t) (crc >> (8 * i));
	CHECK(gnn_model_deserialize(buf, len1, &back, &err) == GNN_OK,
		  "a version 1 model reads: %s", err.message);
	CHECK(back != NULL && back->n_params == model->n_params &&
		  memcmp(back->params, model->params, n1 * sizeof(gnn_real)) == 0 &&
		  gnn_model_tensor(back, GNN_MIX)[2] == -GNN_SCORE_LOG_LIMIT,
		  "version 1 keeps its parameters and reads with the neighbourhood term off");
	gnn_model_free(back);
	CHECK(gnn_model_deserialize(buf, len, &back, &err) == GNN_ERR_CORRUPT &&
		  back == NULL, "a version 1 header with a version 2 size is rejected");
	gnn_model_free(model);
	free(buf);
}

/* The number of the blend of weights {raw, gnn, smooth} in gnn_blends, or -1 */
static int
find_blend(double raw, double gnn, double smooth)
{
	for (int r = 0; r < GNN_BLENDS; r++)
		if (gnn_blends[r].raw == raw && gnn_blends[r].gnn == gnn &&
			gnn_blends[r].smooth == smooth)
			return r;
	return -1;
}

/*
 * The blend choice: the lowest mean rank of the positives among raw
 * distance and the blends significantly better than it wins, a tie goes
 * to the cheaper blend (raw distance alone first), then to the earlier,
 * and the weights written are the blend's, with a weight of 0 at the
 * lower clamp.
 */
static void
test_blend_choice(void)
{
	GnnModel   *model = gnn_test_model(8, 8, 2, 0, 5);
	const gnn_real *mix = gnn_model_tensor(model, GNN_MIX);
	GnnBlendTally tally;
	double		rate;
	double		rank;
	int			best;
	int			smooth_alone = find_blend(0, 0, 1);

	gnn_blend_tally_init(&tally);
	tally.n = 20;
	for (int r = 0; r < GNN_BLENDS; r++)
	{
		tally.hits[r] = 12;
		tally.rank_sum[r] = 50;
	}
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == 0 && rate == 0.6 && mix[0] == 0 && mix[1] == -30 &&
		  mix[2] == -30,
		  "a tie with raw distance keeps raw distance: blend %d, weights %g %g %g",
		  best, mix[0], mix[1], mix[2]);
	/* better on average, but 3 better and 1 worse is not significant */
	tally.rank_sum[3] = 20;
	tally.better[3] = 3;
	tally.worse[3] = 1;
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == 0, "an insignificant gain keeps raw distance: blend %d", best);
	/* significantly better ranks (12 to 0), but fewer positives in the top k */
	tally.rank_sum[4] = 20;
	tally.better[4] = 12;
	tally.hits[4] = 11;
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == 0, "a blend with fewer hits than raw distance is not chosen: blend %d",
		  best);
	tally.hits[smooth_alone] = 18;
	tally.rank_sum[smooth_alone] = 30;
	tally.better[smooth_alone] = 12;
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == smooth_alone && rate == 0.9 && mix[0] == -30 &&
		  mix[1] == -30 && mix[2] == 0,
		  "the neighbourhood term alone when it wins: blend %d, weights %g %g %g",
		  best, mix[0], mix[1], mix[2]);
	/* blend 10 has the GNN term: a tie goes to the blend without it */
	CHECK(gnn_blends[10].gnn > 0 && gnn_blends[10].raw > 0,
		  "blend 10 has raw distance and the GNN term");
	tally.rank_sum[10] = 30;
	tally.better[10] = 12;
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == smooth_alone && rank == 1.5,
		  "a tie goes to the cheaper blend: %d, best mean rank %g", best, rank);
	/* two blends of one cost and as many terms: the earlier */
	CHECK(gnn_blends[7].gnn == 0 && gnn_blends[14].gnn == 0 &&
		  gnn_blends[7].raw > 0 && gnn_blends[14].raw > 0,
		  "blends 7 and 14 are raw distance and the neighbourhood term");
	tally.rank_sum[7] = tally.rank_sum[14] = 25;
	tally.better[7] = tally.better[14] = 12;
	tally.hits[7] = tally.hits[14] = 12;
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == 7 &&
		  fabs(exp(mix[2] - mix[0]) - gnn_blends[7].smooth) < 1e-6 &&
		  mix[1] == -30,
		  "a tie between blends alike goes to the earlier: %d, g/a %g",
		  best, exp(mix[2] - mix[0]));

	/*
	 * Fashion-MNIST's tally (docs/gnn.md): one blend of the 55 ranks 103
	 * positives higher and 74 lower, with more hits; significant alone
	 * (z 2.18), not as one of 55, so raw distance stays.
	 */
	gnn_blend_tally_init(&tally);
	tally.n = 399;
	for (int r = 0; r < GNN_BLENDS; r++)
	{
		tally.hits[r] = 45;
		tally.rank_sum[r] = 47.9 * 399;
	}
	tally.hits[4] = 48;
	tally.rank_sum[4] = 47.8 * 399;
	tally.better[4] = 103;
	tally.worse[4] = 74;
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == 0, "a gain significant only as one test of 55 keeps raw distance: blend %d",
		  best);
	gnn_model_free(model);
}

/*
 * Tallies 400 examples of the s1.3 kind (docs/gnn.md): blend with_gnn
 * ranks example i's positive at step + i % 20 and blend other step below
 * or above that (the first plus examples below), raw distance and the
 * other blends 2 step + 10 below.  Returns other's mean rank difference.
 */
static double
tally_pair(GnnBlendTally *tally, int with_gnn, int other, int plus, int step)
{
	gnn_blend_tally_init(tally);
	for (int i = 0; i < 400; i++)
	{
		int			ranks[GNN_BLENDS];

		for (int r = 0; r < GNN_BLENDS; r++)
			ranks[r] = 3 * step + 10 + i % 20;
		ranks[with_gnn] = step + i % 20;
		ranks[other] = ranks[with_gnn] + (i < plus ? step : -step);
		gnn_blend_tally_ranks(tally, ranks, 10);
	}
	return (double) (plus - (400 - plus)) * step / 400;
}

/*
 * The one-standard-error rule of gnn_blend_apply_best: of the blends that
 * qualify, the simplest whose mean rank is within one standard error of
 * the best's (the error of the mean difference, pair by pair), and not one
 * outside it, however simple.
 */
static void
test_blend_one_se(void)
{
	GnnModel   *model = gnn_test_model(8, 8, 2, 0, 5);
	GnnBlendTally tally;
	double		rate;
	double		rank;
	double		diff;
	int			best;
	int			with_gnn = find_blend(1, 1, 4);
	int			smooth_alone = find_blend(0, 0, 1);
	int			smooth_raw = find_blend(1, 0, 4);

	CHECK(with_gnn >= 0 && smooth_alone >= 0 && smooth_raw >= 0,
		  "blends {1, 1, 4}, {0, 0, 1} and {1, 0, 4} exist: %d %d %d",
		  with_gnn, smooth_alone, smooth_raw);
	/* 0.125 behind, the error of the difference 0.25: the cheaper blend */
	diff = tally_pair(&tally, with_gnn, smooth_alone, 205, 5);
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(diff == 0.125 && best == smooth_alone && rank == 14.5,
		  "0.125 behind the best, the neighbourhood term alone: blend %d, best mean rank %g",
		  best, rank);
	/* 0.75 behind: the best, though it costs more */
	diff = tally_pair(&tally, with_gnn, smooth_alone, 230, 5);
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(diff == 0.75 && best == with_gnn && rate == 0.25,
		  "0.75 behind the best is not within one standard error: blend %d", best);
	/* the same 0.75 with a difference of 25 either way is noise */
	diff = tally_pair(&tally, with_gnn, smooth_raw, 206, 25);
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(diff == 0.75 && best == smooth_raw,
		  "0.75 behind, the difference sd 25: raw + neighbourhood: blend %d", best);

	/*
	 * Significantly better than raw distance by the sign test (300 ranks
	 * higher by 4, 100 lower by 11), 0.25 better on average, within the
	 * error of 0.33, as many hits (all, at k 100): raw distance stays
	 * (the Fashion-MNIST case, docs/gnn.md).
	 */
	gnn_blend_tally_init(&tally);
	for (int i = 0; i < 400; i++)
	{
		int			ranks[GNN_BLENDS];

		for (int r = 0; r < GNN_BLENDS; r++)
			ranks[r] = 60;
		ranks[with_gnn] = 20 + i % 20;
		ranks[0] = ranks[with_gnn] + (i % 4 != 0 ? 4 : -11);
		gnn_blend_tally_ranks(&tally, ranks, 100);
	}
	CHECK(tally.hits[with_gnn] == tally.hits[0] &&
		  tally.rank_sum[0] == tally.rank_sum[with_gnn] + 100 &&
		  gnn_significantly_better(tally.better[with_gnn], tally.worse[with_gnn],
								   GNN_BLENDS - 1),
		  "the tally as meant: hits %d / %d, better %d, worse %d",
		  tally.hits[with_gnn], tally.hits[0], tally.better[with_gnn],
		  tally.worse[with_gnn]);
	best = gnn_blend_apply_best(model, &tally, &rate, &rank);
	CHECK(best == 0, "raw distance as good on average stays: blend %d", best);
	gnn_model_free(model);
}

/*
 * The sign test of gnn_significantly_better (better - worse > 2 sqrt(better
 * + worse)) at its edges: what the HnswScan adapter's epochs must pass
 * with the positives entering and leaving the top 10 (src/train/train.c).
 */
static void
test_sign_test(void)
{
	CHECK(!gnn_significantly_better(0, 0, 1), "no disagreement is not significant");
	CHECK(!gnn_significantly_better(4, 0, 1), "4 to 0: 4 = 2 sqrt(4), not above");
	CHECK(gnn_significantly_better(5, 0, 1), "5 to 0: 5 > 2 sqrt(5)");
	CHECK(gnn_significantly_better(9, 2, 1), "9 to 2: 7 > 2 sqrt(11) = 6.63");
	CHECK(!gnn_significantly_better(20, 13, 1), "20 to 13: 7 < 2 sqrt(33) = 11.5");
	CHECK(!gnn_significantly_better(2, 9, 1), "losing is never significant");
	/* one of 55 (the blends): z 3.34 */
	CHECK(gnn_significantly_better(103, 74, 1),
		  "Fashion-MNIST's 103 to 74 alone: 29 > 2 sqrt(177) = 26.6");
	CHECK(!gnn_significantly_better(103, 74, 55),
		  "103 to 74, one of 55: 29 < 3.34 sqrt(177) = 44.4");
	CHECK(gnn_significantly_better(120, 57, 55), "120 to 57, one of 55: 63 > 44.4");
	CHECK(!gnn_significantly_better(11, 0, 55), "11 to 0, one of 55: 11 < 3.34 sqrt(11) = 11.08");
	CHECK(gnn_significantly_better(12, 0, 55), "12 to 0, one of 55: 12 > 3.34 sqrt(12) = 11.57");
}

/* ---- EWC keeps an earlier task ------------------------------------------------ */

/*
 * Two conflicting tasks on the same candidates: A makes the candidate with
 * the largest first coordinate relevant, B the one with the smallest.
 * After A, consolidate; train B from the same start with and without the
 * EWC penalty; EWC must keep A's loss lower (and the weights nearer A's
 * in the Fisher metric), at some cost to B.
 */
#define T_VEC	48
#define T_CAND	6
#define T_EX	64

typedef struct TaskData
{
	gnn_real	vectors[T_VEC * 8];
	gnn_real	query[T_EX][8];
	int			cand[T_EX][T_CAND];
	gnn_real	cand_dist[T_EX][T_CAND];
	int			nbr_offset[T_CAND + 1];
	int			nbr[T_EX][T_CAND * 2];
	gnn_real	nbr_dist[T_EX][T_CAND * 2];
	GnnExample	ex[2][T_EX];	/* task A, task B */
} TaskData;

static void
make_tasks(TaskData *td)
{
	fill_normal(td->vectors, T_VEC * 8, 1);
	for (int j = 0; j <= T_CAND; j++)
		td->nbr_offset[j] = 2 * j;
	for (int e = 0; e < T_EX; e++)
	{
		int			hi = 0,
					lo = 0;

		fill_normal(td->query[e], 8, 1);
		for (int j = 0; j < T_CAND; j++)
		{
			int			v = (e * 7 + j * 5) % T_VEC;

			td->cand[e][j] = v;
			td->cand_dist[e][j] = (gnn_real) l2(td->query[e], td->vectors + v * 8, 8);
			for (int k = 0; k < 2; k++)
			{
				int			u = (int) gnn_rng_below(&test_rng, T_VEC);

				td->nbr[e][2 * j + k] = u;
				td->nbr_dist[e][2 * j + k] =
					(gnn_real) l2(td->vectors + v * 8, td->vectors + u * 8, 8);
			}
			if (td->vectors[v * 8] > td->vectors[td->cand[e][hi] * 8])
				hi = j;
			if (td->vectors[v * 8] < td->vectors[td->cand[e][lo] * 8])
				lo = j;
		}
		for (int t = 0; t < 2; t++)
		{
			GnnScoreInput *in = &td->ex[t][e].in;

			in->query = td->query[e];
			in->n_vectors = T_VEC;
			in->vectors = td->vectors;
			in->n_cand = T_CAND;
			in->cand = td->cand[e];
			in->cand_dist = td->cand_dist[e];
			in->nbr_offset = td->nbr_offset;
			in->nbr = td->nbr[e];
			in->nbr_dist = td->nbr_dist[e];
			in->smooth_dist = NULL;
			td->ex[t][e].positive = t == 0 ? hi : lo;
		}
	}
}

static double
task_loss(GnnModel *model, const GnnExample *ex)
{
	double		sum = 0;
	gnn_real	scores[T_CAND];
	GnnError	err;

	for (int e = 0; e < T_EX; e++)
	{
		if (gnn_score_similarity_forward(model, &ex[e].in, false, NULL, scores,
										 &err) != GNN_OK)
			return NAN;
		sum += gnn_softmax_xent(scores, T_CAND, ex[e].positive, 0.1f, 0, NULL);
	}
	return sum / T_EX;
}

static void
train_task(GnnTrainer *tr, const GnnExample *ex, int epochs)
{
	double		loss;
	GnnError	err;

	for (int ep = 0; ep < epochs; ep++)
		for (int b = 0; b < T_EX; b += 8)
			if (gnn_train_step(tr, ex + b, 8, &loss, &err) != GNN_OK)
			{
				fprintf(stderr, "train step: %s\n", err.message);
				return;
			}
}

static void
test_ewc_keeps_earlier_task(void)
{
	static TaskData td;
	GnnModel   *model = gnn_test_model(8, 8, 2, 0, 21);
	GnnModel   *plain = NULL,
			   *kept = NULL;
	GnnTrainer	tr,
				tr_plain,
				tr_kept;
	GnnTrainConfig tcfg;
	GnnError	err;
	size_t		len = gnn_model_serialized_size(model);
	uint8_t    *buf = malloc(len);
	uint8_t    *ewc_buf;
	double		a_before,
				a_plain,
				a_kept,
				b_plain,
				b_kept;

	make_tasks(&td);
	gnn_train_config_default(&tcfg);
	tcfg.lr = 1e-2;
	gnn_trainer_init(&tr, model, &tcfg, &err);
	train_task(&tr, td.ex[0], 30);
	gnn_ewc_consolidate(&tr.ewc, model->params);
	a_before = task_loss(model, td.ex[0]);

	/* two copies of the model after task A, through serialisation */
	gnn_model_serialize(model, buf);
	gnn_model_deserialize(buf, len, &plain, &err);
	gnn_model_deserialize(buf, len, &kept, &err);
	gnn_trainer_init(&tr_plain, plain, &tcfg, &err);
	gnn_trainer_init(&tr_kept, kept, &tcfg, &err);
	/* the kept copy inherits task A's Fisher and anchor */
	ewc_buf = malloc(gnn_ewc_serialized_size(&tr.ewc));
	gnn_ewc_serialize(&tr.ewc, ewc_buf);
	gnn_ewc_free(&tr_kept.ewc);
	CHECK(gnn_ewc_deserialize(ewc_buf, gnn_ewc_serialized_size(&tr.ewc),
							  &tr_kept.ewc, &err) == GNN_OK, "EWC state copied");
	tr_kept.ewc.lambda = 10;

	train_task(&tr_plain, td.ex[1], 30);
	train_task(&tr_kept, td.ex[1], 30);
	a_plain = task_loss(plain, td.ex[0]);
	a_kept = task_loss(kept, td.ex[0]);
	b_plain = task_loss(plain, td.ex[1]);
	b_kept = task_loss(kept, td.ex[1]);
	printf("EWC: task A loss %.3f after A; after B %.3f without EWC, %.3f with "
		   "(task B loss %.3f vs %.3f)\n", a_before, a_plain, a_kept, b_plain, b_kept);
	CHECK(a_kept < a_plain, "EWC keeps task A: loss %.3f with EWC, %.3f without",
		  a_kept, a_plain);
	CHECK(gnn_ewc_penalty(&tr.ewc, kept->params, NULL) <
		  gnn_ewc_penalty(&tr.ewc, plain->params, NULL),
		  "EWC keeps the weights nearer task A's in the Fisher metric");
	CHECK(b_plain < b_kept, "without EWC task B is learnt further");

	gnn_trainer_free(&tr);
	gnn_trainer_free(&tr_plain);
	gnn_trainer_free(&tr_kept);
	gnn_model_free(model);
	gnn_model_free(plain);
	gnn_model_free(kept);
	free(buf);
	free(ewc_buf);
}

/*
 * bfloat16, the rerank cache's form: round trip within 2^-8 relative, ties
 * to even, infinities and NaN kept, a finite value never made infinite,
 * and the vector path (eight at a time) equal to the scalar tail.
 */
static void
test_bf16(void)
{
	float		in[37],
				back[37];
	gnn_bf16	h[37];
	double		worst = 0;
	uint32_t	u;
	float		f;

	for (int i = 0; i < 37; i++)
		in[i] = (float) ((gnn_rng_uniform(&test_rng) - 0.5) * pow(10, i % 9 - 4));
	gnn_bf16_from_floats(in, 37, h);
	gnn_bf16_to_floats(h, 37, back);
	for (int i = 0; i < 37; i++)
		worst = fmax(worst, fabs(back[i] - in[i]) / fabs(in[i]));
	CHECK(worst <= 1.0 / 256, "bfloat16 round trip relative error %g", worst);
	for (int i = 0; i < 37; i++)
	{
		float		one;

		gnn_bf16_to_floats(&h[i], 1, &one);
		CHECK(one == back[i], "element %d read alone differs from the batch", i);
	}
	/* 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to even (1) */
	in[0] = 1.0f + 1.0f / 256;
	/* 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to even */
	in[1] = 1.0f + 3.0f / 256;
	in[2] = INFINITY;
	in[3] = -INFINITY;
	in[4] = NAN;
	in[5] = FLT_MAX;
	in[6] = -FLT_MAX;
	gnn_bf16_from_floats(in, 7, h);
	gnn_bf16_to_floats(h, 7, back);
	CHECK(back[0] == 1.0f, "1 + 2^-8 rounds to %.9g, not to even 1", back[0]);
	CHECK(back[1] == 1.0f + 4.0f / 256, "1 + 3 * 2^-8 rounds to %.9g, not to even",
		  back[1]);
	CHECK(isinf(back[2]) && back[2] > 0 && isinf(back[3]) && back[3] < 0,
		  "infinities kept");
	CHECK(isnan(back[4]), "NaN kept");
	CHECK(isfinite(back[5]) && back[5] > 0.99f * FLT_MAX &&
		  isfinite(back[6]) && back[6] < -0.99f * FLT_MAX,
		  "FLT_MAX stays finite: %g %g", back[5], back[6]);
	u = (uint32_t) h[0] << 16;
	memcpy(&f, &u, sizeof(f));
	CHECK(f == back[0], "a bfloat16 is a float's upper half");
}

/*
 * gnn_exp_approx: within 3 * 2^-24 of e^x over [-87, 88] (every length's
 * tail too), and clamped outside it: finite, positive, saturated.
 */
static void
test_exp_approx(void)
{
#define N 4099
	static gnn_real in[N],
				out[N];
	double		worst = 0;

	for (int pass = 0; pass < 50; pass++)
	{
		for (int i = 0; i < N; i++)
			in[i] = (gnn_real) (-87 + 175 * gnn_rng_uniform(&test_rng));
		if (pass == 0)
		{
			in[0] = -87;
			in[1] = 88;
			in[2] = 0;
			in[3] = (gnn_real) -1e-8;
		}
		/* lengths 1..4099: the four-at-a-time loop and its tail */
		gnn_exp_approx(in, pass == 1 ? 7 : N - pass % 4, out);
		for (int i = 0; i < (pass == 1 ? 7 : N - pass % 4); i++)
			worst = fmax(worst, fabs(out[i] - exp((double) in[i])) / exp((double) in[i]));
	}
	CHECK(worst <= 3.0 / (1 << 24), "e^x relative error %.3g (3 units of 2^-24: %.3g)",
		  worst, 3.0 / (1 << 24));
	in[0] = -1000;
	in[1] = 1000;
	gnn_exp_approx(in, 2, out);
	CHECK(out[0] > 0 && out[0] <= expf(-86) && isfinite(out[1]) && out[1] >= expf(87),
		  "e^x clamped outside [-87, 88]: %g %g", out[0], out[1]);
#undef N
}

/*
 * The n = 1 product (a query's layer call: our AVX-512 loop where the
 * distance kernels use it) against double sums, for shapes around its
 * four-row and sixteen-column steps, y cleared and accumulated into.
 */
static void
test_gemv(void)
{
	static const int outs[] = {1, 3, 4, 5, 64, 67, 192};
	static const int ins[] = {1, 15, 16, 17, 33, 64, 70};
	double		worst = 0;

	vec_distance_init(VEC_ISA_AVX512);
	for (int a = 0; a < 7; a++)
		for (int b = 0; b < 7; b++)
			for (int beta = 0; beta <= 1; beta++)
			{
				int			out = outs[a],
							in = ins[b];
				gnn_real   *w = malloc(sizeof(gnn_real) * out * in);
				gnn_real	x[70],
							y[192],
							y0[192];

				fill_normal(w, (size_t) out * in, 1);
				fill_normal(x, in, 1);
				fill_normal(y0, out, 1);
				memcpy(y, y0, sizeof(gnn_real) * out);
				gnn_gemm_xwt(x, 1, in, w, out, beta, y, in, out);
				for (int j = 0; j < out; j++)
				{
					double		ref = beta ? y0[j] : 0,
								mag = beta ? fabs(y0[j]) : 0;

					for (int c = 0; c < in; c++)
					{
						ref += (double) w[(size_t) j * in + c] * x[c];
						mag += fabs((double) w[(size_t) j * in + c] * x[c]);
					}
					worst = fmax(worst, fabs(y[j] - ref) / fmax(mag, 1e-30));
				}
				free(w);
			}
	CHECK(worst < 1e-5, "one-row product: relative error %.3g", worst);
}

/*
 * gnn_layer_forward_projected (the scan's q', approximate activations)
 * against the batched forward of the same nodes in the float build.
 */
static void
test_projected_forward(void)
{
#define D 16
#define H 16
#define NV 40
	GnnModel   *model = gnn_test_model(D, H, 4, 0, 17);
	static gnn_real vectors[NV * D],
				proj[NV * 3 * H],
				out[H],
				one[H],
				part[3][NV * H];
	int			node = 0,
				nbr[NV - 1],
				offsets[2] = {0, NV - 1};
	gnn_real	edge_w[NV - 1];
	GnnGraph	g = {NV, vectors, 1, &node, offsets, nbr, edge_w};
	GnnProjections p = {NV - 1, part[0], part[1], part[2]};
	double		worst = 0;
	GnnError	err;

	fill_normal(vectors, NV * D, 1);
	for (int j = 0; j < NV - 1; j++)
	{
		nbr[j] = j + 1;
		edge_w[j] = (gnn_real) gnn_rng_uniform(&test_rng);
	}
	CHECK(gnn_layer_forward(model, &g, false, NULL, out, &err) == GNN_OK &&
		  gnn_layer_project(model, vectors, NV, proj, &err) == GNN_OK,
		  "forward: %s", err.message);
	for (int j = 0; j < NV - 1; j++)
		for (int k = 0; k < 3; k++)
			memcpy(part[k] + j * H, proj + (j + 1) * 3 * H + k * H, sizeof(gnn_real) * H);
	CHECK(gnn_layer_forward_projected(model, vectors, &p, edge_w, one, &err) == GNN_OK,
		  "projected forward: %s", err.message);
	for (int c = 0; c < H; c++)
		worst = fmax(worst, fabs(one[c] - out[c]));
	CHECK(worst < 1e-5, "projected forward vs batched forward (float): %.3g", worst);
	gnn_model_free(model);
#undef D
#undef H
#undef NV
}

int
main(void)
{
	gnn_rng_seed(&test_rng, 12345);
	test_exp_approx();
	test_gemv();
	test_projected_forward();
	test_softmax_stability();
	test_huge_inputs();
	test_empty_neighbours();
	test_errors();
	test_adam_quadratic();
	test_clip();
	test_ewc();
	test_replay_reservoir();
	test_serialisation();
	test_training_improves_recall();
	test_blend_choice();
	test_blend_one_se();
	test_sign_test();
	test_serialisation_version_1();
	test_ewc_keeps_earlier_task();
	test_bf16();
	return unit_report("gnn");
}
