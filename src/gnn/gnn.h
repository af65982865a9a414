/*
 * gnn.h
 *		The PostgreSQL-free numerical core of the GNN reranker: the
 *		RuvectorLayer (seeds/gnn-architecture-analysis.txt, section 1) with a
 *		hand-derived backward pass, the rerank scoring model, contrastive
 *		losses, Adam, EWC, a replay buffer and model serialisation.
 *
 * Conventions
 *	- gnn_real is float, or double when compiled with -DGNN_DOUBLE (the
 *	  finite-difference gradient tests use the double build; gnnvec.so uses
 *	  float).  Matrices are row-major; a weight W of shape (out x in) maps a
 *	  row vector x to x W^T.  Matrix products go through OpenBLAS.
 *	- Functions that can fail return a GnnStatus and, when err is not NULL,
 *	  fill it with a message; nothing here aborts, exits or longjmps, so the
 *	  code can run inside a PostgreSQL backend.  Memory comes from
 *	  malloc/free; every *_create / *_init has a matching *_free, and each
 *	  function says who owns what it returns.
 *	- Gradients are accumulated (+=) into the buffers they are given, so a
 *	  batch can be summed in place; call gnn_model_zero_grad between steps.
 *	- All randomness (initialisation, dropout, replay) comes from GnnRng
 *	  streams seeded explicitly: equal seeds give bit-identical results on
 *	  the same build and CPU (OpenBLAS and libm pick kernels by CPU, so
 *	  another CPU may round differently).
 */
#ifndef GNNVEC_GNN_H
#define GNNVEC_GNN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef GNN_DOUBLE
typedef double gnn_real;
#else
typedef float gnn_real;
#endif

/* Limits accepted by the model constructor and the deserialiser. */
#define GNN_MAX_DIM		16000
#define GNN_MAX_HEADS	64

typedef enum GnnStatus
{
	GNN_OK = 0,
	GNN_ERR_ARG,				/* invalid argument or input graph */
	GNN_ERR_NOMEM,				/* malloc failed */
	GNN_ERR_CORRUPT,			/* serialised bytes fail validation */
	GNN_ERR_VERSION,			/* serialised by an unknown format version */
	GNN_ERR_NUMERIC				/* a NaN or infinity appeared */
} GnnStatus;

typedef struct GnnError
{
	GnnStatus	code;
	char		message[256];
} GnnError;

/* Deterministic random numbers: a splitmix64 stream (rng/rng.h). */
typedef struct GnnRng
{
	uint64_t	state;
} GnnRng;

extern void gnn_rng_seed(GnnRng *rng, uint64_t seed);
extern double gnn_rng_uniform(GnnRng *rng);	/* [0, 1) */
extern double gnn_rng_normal(GnnRng *rng);	/* N(0, 1) */
extern uint64_t gnn_rng_below(GnnRng *rng, uint64_t bound);	/* [0, bound) */

/* ------------------------------------------------------------------------
 * The model: one RuvectorLayer plus the scoring model's two weights.
 *
 * For a node v with embedding x_v and neighbours u (edge weights e_uv):
 *	 x~_u = sqrt(D) x_u / ||x_u||  (0 for x_u = 0)			(unit RMS input)
 *	 m_u  = W_msg x~_u + b_msg								(message, H)
 *	 q    = W_q m_v,  k_u = W_k m_u,  val_u = W_v m_u		(per head: d_k = H/heads)
 *	 att  = W_o concat_h( sum_u softmax_u(q_h . k_uh / sqrt(d_k)) val_uh )
 *																(Vaswani 2017)
 *	 agg  = sum_u (e_uv / sum_u' e_u'v) m_u					(uniform if all e = 0)
 *	 t    = W_agg (att + agg) + b_agg
 *	 GRU with input t and previous state m_v (Cho 2014):
 *	   z = sigm(W_z t + U_z m_v + b_z),  r = sigm(W_r t + U_r m_v + b_r)
 *	   n = tanh(W_n t + U_n (r * m_v) + b_n),  h = (1 - z) * m_v + z * n
 *	 out  = LayerNorm(d) = gamma * (d - mean(d)) / sqrt(var(d) + eps) + beta,
 *			d = Dropout(h), mean and var over the H features	(Ba 2016)
 * A node with no neighbours gets att = agg = 0, so out = LN(GRU(b_agg, m_v)):
 * its own message, gated.  Dropout is inverted dropout, training only.
 * The input scaling makes the layer independent of the metric's scale
 * (Xavier's unit-variance assumption holds for L2 embeddings of any norm
 * and for unit-norm cosine ones alike, so the GRU's tanh does not start
 * saturated); the score's raw-distance term keeps what norms tell.
 * ------------------------------------------------------------------------
 */

/* The parameter tensors, in their order inside GnnModel.params. */
typedef enum GnnTensor
{
	GNN_W_MSG,					/* H x D */
	GNN_B_MSG,					/* H */
	GNN_W_Q,					/* H x H */
	GNN_W_K,					/* H x H */
	GNN_W_V,					/* H x H */
	GNN_W_O,					/* H x H */
	GNN_W_AGG,					/* H x H */
	GNN_B_AGG,					/* H */
	GNN_W_GRU,					/* 3H x H: rows z, r, n (input weights) */
	GNN_U_GRU,					/* 3H x H: rows z, r, n (state weights) */
	GNN_B_GRU,					/* 3H */
	GNN_LN_GAMMA,				/* H */
	GNN_LN_BETA,				/* H */
	GNN_MIX,					/* 3: log a, log b, log g: the score's weights */
	GNN_N_TENSORS
} GnnTensor;

typedef struct GnnConfig
{
	int			in_dim;			/* D: input embedding dimension */
	int			hidden_dim;		/* H: message/output dimension */
	int			heads;			/* attention heads; must divide H */
	double		dropout;		/* probability in [0, 1), training only */
	double		ln_eps;			/* LayerNorm epsilon, > 0 */
	double		raw_weight;		/* initial a in the score, > 0 */
	double		gnn_weight;		/* initial b in the score, > 0 */
	double		smooth_weight;	/* initial g in the score, >= 0 (0: off) */
	uint64_t	seed;			/* initialisation and dropout stream */
} GnnConfig;

typedef struct GnnModel
{
	GnnConfig	cfg;
	size_t		n_params;
	size_t		offset[GNN_N_TENSORS + 1];	/* tensor t is [offset[t], offset[t+1]) */
	gnn_real   *params;			/* n_params values, owned */
	gnn_real   *grad;			/* same layout: the accumulation buffer, owned */
	GnnRng		dropout_rng;
} GnnModel;

/*
 * Defaults: heads 4, dropout 0.1, ln_eps 1e-5, score weights a = b = 1 and
 * g = 0 (the neighbourhood term off until validation chooses it), seed 42.
 */
extern void gnn_config_default(GnnConfig *cfg, int in_dim, int hidden_dim);

/*
 * Allocates a model with Xavier/Glorot-normal weights (std sqrt(2/(in+out)),
 * Glorot & Bengio 2010, as in the seed), zero biases except the GRU update
 * gate's (+2: z ~ 0.88, the layer starts as neighbourhood smoothing; see
 * gnn_model.c), gamma = 1, beta = 0.
 * The caller owns *out and frees it with gnn_model_free.
 */
extern GnnStatus gnn_model_create(const GnnConfig *cfg, GnnModel **out,
								  GnnError *err);
extern void gnn_model_free(GnnModel *model);
extern size_t gnn_model_param_count(int in_dim, int hidden_dim);
extern gnn_real *gnn_model_tensor(GnnModel *model, GnnTensor t);
extern const char *gnn_tensor_name(GnnTensor t);
extern void gnn_model_zero_grad(GnnModel *model);

/*
 * A batch for the layer: a table of vectors and nodes that refer to rows of
 * it, so a vector used by several nodes (a candidate that is also a
 * neighbour) is transformed once and its gradient summed.  Node i is row
 * node[i]; its neighbours are rows nbr[nbr_offset[i] .. nbr_offset[i+1]-1]
 * with edge weights edge_w[same range] (>= 0; NULL means uniform).
 * The layer keeps pointers into these arrays until the backward pass.
 */
typedef struct GnnGraph
{
	int			n_vectors;
	const gnn_real *vectors;	/* n_vectors x D */
	int			n_nodes;
	const int  *node;			/* n_nodes */
	const int  *nbr_offset;		/* n_nodes + 1, nbr_offset[0] = 0 */
	const int  *nbr;			/* nbr_offset[n_nodes] */
	const gnn_real *edge_w;		/* nbr_offset[n_nodes], or NULL */
} GnnGraph;

/* Intermediates of one forward pass, kept for the backward pass. */
typedef struct GnnLayerTape GnnLayerTape;

/*
 * Forward pass for every node of the graph; out is n_nodes x H.  When
 * training, dropout draws from model->dropout_rng.  tape may be NULL
 * (inference); otherwise *tape is created or reused, owned by the caller
 * and released with gnn_layer_tape_free.
 */
extern GnnStatus gnn_layer_forward(GnnModel *model, const GnnGraph *graph,
								   bool training, GnnLayerTape **tape,
								   gnn_real *out, GnnError *err);

/*
 * Backward pass for the forward pass recorded in tape: d_out is
 * n_nodes x H (dLoss/dout).  Adds dLoss/dparams to model->grad and, when
 * d_vectors is not NULL, dLoss/dvectors (n_vectors x D) to d_vectors.
 */
extern GnnStatus gnn_layer_backward(GnnModel *model, GnnLayerTape *tape,
									const gnn_real *d_out,
									gnn_real *d_vectors, GnnError *err);
extern void gnn_layer_tape_free(GnnLayerTape *tape);

/*
 * The layer in two halves, for inference with a cache.  The first depends
 * on a vector alone: its projection p = (m, k, val) = (W_msg x~ + b_msg,
 * W_k m, W_v m), 3H values.  gnn_layer_project writes the projections of
 * n vectors to proj (n x 3H, each row m, k, val).
 * gnn_layer_forward_projected computes one node's output (out: H) from its
 * vector (node_vector: D; only its message is needed) and its neighbours'
 * projections (nbr: the three parts as separate n x H arrays, read in
 * place) with edge
 * weights (NULL: uniform), equal up to rounding to gnn_layer_forward
 * without training on the same vectors (its activations go through
 * gnn_exp_approx: relative error a few units in the last place).
 */
typedef struct GnnProjections
{
	int			n;
	const gnn_real *msg;		/* n x H */
	const gnn_real *key;		/* n x H */
	const gnn_real *val;		/* n x H */
} GnnProjections;

extern GnnStatus gnn_layer_project(GnnModel *model, const gnn_real *vectors,
								   int n, gnn_real *proj, GnnError *err);
extern GnnStatus gnn_layer_forward_projected(GnnModel *model,
											 const gnn_real *node_vector,
											 const GnnProjections *nbr,
											 const gnn_real *edge_w,
											 gnn_real *out, GnnError *err);

/* Numerically stable softmax (max subtracted); in and out may alias. */
extern void gnn_softmax(const gnn_real *in, int n, gnn_real *out);

/*
 * e^x of n values (in and out may alias), four at a time: relative error
 * under 3 * 2^-24 for x in [-87, 88], arguments clamped to it (libm's
 * exp in the double build).  gnn_layer_forward_projected's activations
 * (gnn_layer.c).
 */
extern void gnn_exp_approx(const gnn_real *in, int n, gnn_real *out);

/*
 * Edge weights from distances, for the GnnGraph: w_j = exp(-(d_j - min d) /
 * sd(d)), so nearer vectors weigh more whatever the metric's scale or sign
 * (inner-product "distances" are negative).  All equal (or n < 2): w = 1.
 */
extern void gnn_edge_weights_from_distances(const gnn_real *dist, int n,
											gnn_real *w);

/* ------------------------------------------------------------------------
 * Losses.  Similarities are cosines.  Gradient pointers may be NULL; the
 * gradients are added to them.
 * ------------------------------------------------------------------------
 */

/*
 * Cosine similarity; when da/db are given, adds g * dcos/da and g * dcos/db.
 * Norms are floored at 1e-12 so a zero vector gives cos 0, not NaN.
 */
extern gnn_real gnn_cosine(const gnn_real *a, const gnn_real *b, int dim,
						   gnn_real g, gnn_real *da, gnn_real *db);

/*
 * Cross-entropy of softmax(logits / tau) against index target, 0 <= target
 * < n (the InfoNCE form): returns logsumexp(l / tau) - l[target] / tau and
 * adds g * dL/dlogits to dlogits when it is not NULL.
 */
extern gnn_real gnn_softmax_xent(const gnn_real *logits, int n, int target,
								 gnn_real tau, gnn_real g, gnn_real *dlogits);

/*
 * InfoNCE (van den Oord 2018), one positive and n_neg negatives (rows of
 * negatives, n_neg x dim):
 *	 L = -log( exp(cos(a,p)/tau) / (exp(cos(a,p)/tau) + sum_n exp(cos(a,n)/tau)) )
 * Gradients are added to d_anchor (dim), d_pos (dim), d_neg (n_neg x dim).
 */
extern gnn_real gnn_infonce_loss(const gnn_real *anchor, const gnn_real *pos,
								 const gnn_real *neg, int n_neg, int dim,
								 gnn_real tau, gnn_real *d_anchor,
								 gnn_real *d_pos, gnn_real *d_neg);

/*
 * Local contrastive loss over graph neighbours (seed section 3.2): the node
 * should be nearer its graph neighbours than non-neighbours; the InfoNCE of
 * each neighbour against all non-neighbours, averaged over neighbours:
 *	 L = (1/P) sum_p InfoNCE(node, nbr_p, non_nbrs)
 * Returns 0 (and no gradient) when there are no neighbours.
 */
extern gnn_real gnn_local_contrastive_loss(const gnn_real *node,
										   const gnn_real *nbrs, int n_nbrs,
										   const gnn_real *non_nbrs,
										   int n_non, int dim, gnn_real tau,
										   gnn_real *d_node, gnn_real *d_nbrs,
										   gnn_real *d_non);

/* ------------------------------------------------------------------------
 * Optimisation
 * ------------------------------------------------------------------------
 */

/* Adam with bias correction (Kingma & Ba 2015). */
typedef struct GnnAdam
{
	size_t		n;
	gnn_real   *m;				/* first moment, owned */
	gnn_real   *v;				/* second moment, owned */
	int64_t		t;				/* steps taken */
	double		lr,
				beta1,
				beta2,
				eps;
} GnnAdam;

extern GnnStatus gnn_adam_init(GnnAdam *adam, size_t n, double lr,
							   GnnError *err);	/* beta 0.9/0.999, eps 1e-8 */
extern void gnn_adam_free(GnnAdam *adam);
extern void gnn_adam_step(GnnAdam *adam, gnn_real *params,
						  const gnn_real *grad);

/* Scales grad so its L2 norm is at most max_norm; returns the norm before. */
extern double gnn_clip_grad_norm(gnn_real *grad, size_t n, double max_norm);

/*
 * Elastic weight consolidation (Kirkpatrick 2017):
 *	 penalty = lambda/2 * sum_i F_i (theta_i - theta*_i)^2
 * F is the diagonal empirical Fisher: the mean of squared per-example
 * gradients observed since the last consolidation (seed section 8.2).
 * consolidate() adds that mean to F (importance from every earlier task is
 * kept), sets theta* to the current parameters and activates the penalty.
 */
typedef struct GnnEwc
{
	size_t		n;
	double		lambda;
	bool		active;			/* penalty applies once consolidated */
	int64_t		n_observed;		/* gradients observed since consolidation */
	gnn_real   *fisher;			/* F, owned */
	gnn_real   *anchor;			/* theta*, owned */
	double	   *sq_grad_sum;	/* sum of squared gradients, owned */
} GnnEwc;

extern GnnStatus gnn_ewc_init(GnnEwc *ewc, size_t n, double lambda,
							  GnnError *err);
extern void gnn_ewc_free(GnnEwc *ewc);
extern void gnn_ewc_observe(GnnEwc *ewc, const gnn_real *grad);
extern void gnn_ewc_consolidate(GnnEwc *ewc, const gnn_real *params);

/* Returns the penalty and, when grad is not NULL, adds its gradient. */
extern double gnn_ewc_penalty(const GnnEwc *ewc, const gnn_real *params,
							  gnn_real *grad);

/*
 * Replay buffer of fixed-length records with reservoir sampling (Vitter
 * 1985, algorithm R): after N additions every record seen is in the buffer
 * with probability capacity/N.
 */
typedef struct GnnReplay
{
	int			capacity;
	int			record_len;		/* gnn_real values per record */
	int			count;			/* records held, <= capacity */
	int64_t		seen;			/* records offered */
	gnn_real   *records;		/* capacity x record_len, owned */
	GnnRng		rng;
} GnnReplay;

extern GnnStatus gnn_replay_init(GnnReplay *replay, int capacity,
								 int record_len, uint64_t seed, GnnError *err);
extern void gnn_replay_free(GnnReplay *replay);

/* Offers a record; returns the slot it was stored in, or -1 if dropped. */
extern int	gnn_replay_add(GnnReplay *replay, const gnn_real *record);

/* Up to n distinct slots, uniformly at random; returns how many. */
extern int	gnn_replay_sample(GnnReplay *replay, int n, int *slots);
extern const gnn_real *gnn_replay_record(const GnnReplay *replay, int slot);

/* ------------------------------------------------------------------------
 * The rerank scoring model.
 *
 * For a query q with candidates c_1..c_n, their raw distances d_i = d(q, c_i)
 * from the index, and each candidate's graph neighbours N(c_i) with
 * distances d(c_i, u):
 *	 c_i' = layer(c_i, N(c_i), edge weights from d(c_i, u))
 *	 q'   = layer(q, the GNN_QUERY_CONTEXT nearest candidates, edge
 *			weights from their d_i)
 *			(query refinement: the query attends over its candidate set,
 *			 the seed's differentiable search, section 4)
 *	 rho_i   = z(-d_i): raw distance as a per-query z-score (z(x)_i =
 *			   (x_i - mean x) / sd x, 0 if sd = 0), unit-free for every metric
 *	 sigma_i = z(-s_i), s_i = d(q, mean(c_i, K(c_i))): the distance to the
 *			   candidate's neighbourhood mean, the skip connection around
 *			   the layer (the caller computes s_i in its metric; for an
 *			   index, K(c) is the nearest GNN_NEIGHBOURHOOD_K of c's
 *			   neighbours and their neighbours, gnn_rerank.c)
 *	 score_i = a * rho_i + b * cos(q', c_i') + g * sigma_i,
 *			 (a, b, g) = exp(GNN_MIX), each lambda clamped to
 *			 +-GNN_SCORE_LOG_LIMIT so no stored model overflows; a weight at
 *			 the lower clamp (1e-13) is off: it only breaks ties
 * Candidates are ranked by descending score, so only the ratios matter.
 * Edge weights come from gnn_edge_weights_from_distances.
 *
 * Why the neighbourhood mean: on data where relevance is a latent class
 * (topics, image classes) a single embedding is a noisy view of its class,
 * and the mean of an element with its graph neighbours is a less noisy one.
 * Measured (docs/gnn.md): on 64-d topics the mean over an element's near
 * items scores far above raw distance, while the attention layer trained
 * alone from random weights stayed well below it.  The term is the layer's residual path, not learned: its weight is
 * chosen on validation with the others, so the trained model can only
 * match or improve on the baseline that needs no learning.
 *
 * Training fits the layer and the blend separately:
 *	- The layer minimises the InfoNCE (van den Oord 2018) of the positive's
 *	  similarity among the candidates, at temperature tau:
 *		 L = -log softmax_i(cos(q', c_i') / tau)[positive].
 *	  The raw term is left out of this loss on purpose: with it, candidates
 *	  that raw distance already orders correctly saturate the softmax and
 *	  give the layer no gradient, and the loss can fall by flattening a and
 *	  b together (measured: training loss halved while held-out recall did
 *	  not move).  The similarity alone must learn to tell relevant from
 *	  irrelevant candidates.
 *	- The blend is then chosen, not learned: among the weights of
 *	  gnn_blends, by the held-out positives' ranks (gnn_blend_tally_*,
 *	  gnn_blend_apply_best).  Blend 0 is raw distance alone, the fallback
 *	  for a model that does not beat raw distance on held-out pairs.
 * The gradient for the query treats the distances d_i and s_i as constants.
 * ------------------------------------------------------------------------
 */
#define GNN_QUERY_CONTEXT	32
#define GNN_SCORE_LOG_LIMIT 30

typedef struct GnnScoreInput
{
	const gnn_real *query;		/* D */
	int			n_vectors;
	const gnn_real *vectors;	/* n_vectors x D: candidates and neighbours */
	int			n_cand;
	const int  *cand;			/* n_cand rows of vectors */
	const gnn_real *cand_dist;	/* n_cand: d(q, c_i) */
	const int  *nbr_offset;		/* n_cand + 1 */
	const int  *nbr;			/* rows of vectors: neighbours of c_i */
	const gnn_real *nbr_dist;	/* d(c_i, u) for each entry of nbr */
	const gnn_real *smooth_dist;	/* n_cand: s_i, or NULL (sigma = 0) */
} GnnScoreInput;

typedef struct GnnScoreTape GnnScoreTape;

/*
 * Scores the candidates (scores: n_cand).  tape as for gnn_layer_forward;
 * the input's arrays must stay valid until gnn_score_backward.
 */
extern GnnStatus gnn_score_forward(GnnModel *model, const GnnScoreInput *in,
								   bool training, GnnScoreTape **tape,
								   gnn_real *scores, GnnError *err);

/*
 * The similarities cos(q', c_i') alone (sim: n_cand), the training
 * logits; a following gnn_score_backward takes dLoss/dsim and adds no
 * gradient to the score weights.
 */
extern GnnStatus gnn_score_similarity_forward(GnnModel *model,
											 const GnnScoreInput *in,
											 bool training,
											 GnnScoreTape **tape,
											 gnn_real *sim, GnnError *err);

/*
 * Given dLoss/dscores (or dLoss/dsim after gnn_score_similarity_forward),
 * adds dLoss/dparams to model->grad and, when d_query is not NULL,
 * dLoss/dquery (D) to d_query.
 */
extern GnnStatus gnn_score_backward(GnnModel *model, GnnScoreTape *tape,
									const gnn_real *d_scores,
									gnn_real *d_query, GnnError *err);
extern void gnn_score_tape_free(GnnScoreTape *tape);

/* ------------------------------------------------------------------------
 * Training
 * ------------------------------------------------------------------------
 */
typedef struct GnnExample
{
	GnnScoreInput in;
	int			positive;		/* index into in.cand of the relevant one */
} GnnExample;

/*
 * Choosing the blend (a, b, g) (see the scoring model above): a tally, per
 * candidate blend, of where the examples' positives rank.  Blend 0 is raw
 * distance alone; a weight of 0 is off.
 */
typedef struct GnnBlend
{
	double		raw;			/* a */
	double		gnn;			/* b */
	double		smooth;			/* g */
} GnnBlend;

#define GNN_BLENDS 56
extern const GnnBlend gnn_blends[GNN_BLENDS];

typedef struct GnnBlendTally
{
	int			n;				/* examples tallied */
	int			hits[GNN_BLENDS];	/* positive in the top k; [0]: raw alone */
	double		rank_sum[GNN_BLENDS];	/* candidates ranked above the positive */
	/* sums of the products of two blends' ranks, for paired errors */
	double		rank_products[GNN_BLENDS][GNN_BLENDS];
	int			better[GNN_BLENDS]; /* examples ranking it higher than raw */
	int			worse[GNN_BLENDS];	/* ... lower than raw */
} GnnBlendTally;

/*
 * The blend is chosen by the mean rank of the positive among the
 * candidates, not by the hit rate at k: a logged positive is one relevant
 * item of many, so whether it lands in the top 10 is a noisy stand-in for
 * precision at 10, while its rank moves with the rank of every relevant
 * item.  A blend replaces raw distance only when it ranks positives higher
 * significantly often, by the sign test below on the examples where the
 * two disagree, and puts at least as many in the top k (what gnnvec_train
 * reports beside the plain scan's).  The sign test is of the family of 55
 * blends that each choice tries: one at the single-test level would pass
 * by chance now and then.  On Fashion-MNIST (docs/gnn.md) blend {raw 1,
 * gnn 2} alone of the 55 passed it, 103 positives ranked higher and 74
 * lower (z = 2.18), its mean rank 47.8 against 47.9; it was switched in,
 * doubled the scan's time and left held-out class P@10 where it was.  The
 * hit-rate condition matters too: a blend chosen by a hit rate 2 points
 * better on 399 pairs, with no such test, lost 1 point of class P@10.
 */

/*
 * The sign test: of the examples where a candidate ranking and the one it
 * would replace disagree, does the candidate win significantly often, when
 * it is one of comparisons candidates tried against the same one?
 * better - worse > z * sqrt(better + worse), z the normal quantile whose
 * one-sided tail is GNN_SIGN_TEST_TAIL / comparisons (Bonferroni): the
 * chance that any of them passes by chance stays at most that tail, the
 * one of z = 2 for a single comparison; z is 3.34 for 55.  Also what the
 * HnswScan adapter's epochs must pass against the adapter they would
 * replace, each epoch as a single comparison (src/train/train.c).
 */
#define GNN_SIGN_TEST_TAIL 0.02275
extern bool gnn_significantly_better(int better, int worse, int comparisons);

extern void gnn_blend_tally_init(GnnBlendTally *tally);

/* Tallies one example from its positive's rank under every blend. */
extern void gnn_blend_tally_ranks(GnnBlendTally *tally, const int *ranks, int k);

/*
 * Scores one example (inference) and tallies its hits at every blend; an
 * example whose positive is not among its candidates (positive -1) counts
 * as a miss for all.
 */
extern GnnStatus gnn_blend_tally_add(GnnModel *model, GnnBlendTally *tally,
									 const GnnExample *ex, int k,
									 GnnError *err);

/*
 * Sets the model's score weights and returns the blend's number: of raw
 * distance and the blends significantly better than it, the simplest whose
 * positives' mean rank is within one standard error of the best's (the
 * one-standard-error rule, Breiman et al., "Classification and Regression
 * Trees", 1984, sec. 3.4.3; Hastie et al., "The Elements of Statistical
 * Learning", sec. 7.10), the error being that of the mean rank difference
 * over the same examples.  Simplest is cheapest for a scan (raw distance
 * alone, then without the GNN term, then with it), then with fewer terms,
 * then ranking the positives higher (ties: the earlier blend).  The clicks
 * cannot tell apart blends whose ranks differ by less than their noise,
 * and the costlier of two such blends buys nothing they can show.  The
 * chosen blend's hit rate at k goes to *hit_rate, the best blend's mean
 * rank (what an epoch is kept by) to *best_rank.
 */
extern int	gnn_blend_apply_best(GnnModel *model, const GnnBlendTally *tally,
								 double *hit_rate, double *best_rank);

/* z(-x): rho_i = -(x_i - mean) / sd, or 0 when every x_i is equal. */
extern void gnn_distance_zscores(const gnn_real *dist, int n, gnn_real *rho);

/*
 * bfloat16: the upper half of a float (sign, 8-bit exponent, 7-bit
 * mantissa: after rounding, relative error at most 2^-8), the form of the
 * rerank's cached per-element vectors (gnn_rerank.c): half a float's
 * bytes, a float's range.  From floats: rounded to nearest, ties to even;
 * a finite value that would round to infinity is truncated instead.
 */
typedef uint16_t gnn_bf16;
extern void gnn_bf16_from_floats(const float *in, int n, gnn_bf16 *out);
extern void gnn_bf16_to_floats(const gnn_bf16 *in, int n, float *out);

typedef struct GnnTrainConfig
{
	double		lr;				/* Adam step size */
	double		temperature;	/* InfoNCE tau */
	double		clip_norm;		/* gradient norm limit; <= 0: none */
	double		ewc_lambda;		/* EWC strength */
} GnnTrainConfig;

typedef struct GnnTrainer
{
	GnnModel   *model;			/* not owned */
	GnnTrainConfig cfg;
	GnnAdam		adam;
	GnnEwc		ewc;
	GnnScoreTape *tape;
	gnn_real   *batch_grad;		/* mean gradient of the batch, owned */
	gnn_real   *scores;			/* scratch */
	gnn_real   *d_scores;		/* scratch */
	int			score_cap;
} GnnTrainer;

/* Defaults: lr 3e-4, temperature 0.1, clip_norm 5, ewc_lambda 100. */
extern void gnn_train_config_default(GnnTrainConfig *cfg);
extern GnnStatus gnn_trainer_init(GnnTrainer *tr, GnnModel *model,
								  const GnnTrainConfig *cfg, GnnError *err);
extern void gnn_trainer_free(GnnTrainer *tr);

/*
 * One optimisation step on a batch: the mean InfoNCE loss of the examples'
 * similarities (forward with dropout, backward; the score weights are not
 * trained, see above), plus the EWC penalty once consolidated,
 * clipped, one Adam step.  Each example's gradient is also observed for the
 * EWC Fisher.  *loss receives the mean task loss plus the penalty.
 */
extern GnnStatus gnn_train_step(GnnTrainer *tr, const GnnExample *ex,
								int n_ex, double *loss, GnnError *err);

/* ------------------------------------------------------------------------
 * Serialisation: a flat little-endian byte buffer (for a bytea column).
 *	 model: "GNNM", u16 version (1), u16 flags, dimensions, heads, dropout,
 *			LayerNorm epsilon, seed, u64 n_params, a CRC-32 of all other
 *			bytes, then the parameters as float32 (layout in gnn_serial.c).
 *	 EWC:   "GNNE", the same scheme with lambda, F, theta* and the pending
 *			squared-gradient sums.
 * Deserialisers validate everything (magic, version, sizes, CRC, finite
 * values) and return GNN_ERR_CORRUPT / GNN_ERR_VERSION with a message.
 * ------------------------------------------------------------------------
 */
extern size_t gnn_model_serialized_size(const GnnModel *model);

/* Writes gnn_model_serialized_size(model) bytes to buf. */
extern void gnn_model_serialize(const GnnModel *model, uint8_t *buf);
extern GnnStatus gnn_model_deserialize(const uint8_t *buf, size_t len,
									   GnnModel **out, GnnError *err);

extern size_t gnn_ewc_serialized_size(const GnnEwc *ewc);
extern void gnn_ewc_serialize(const GnnEwc *ewc, uint8_t *buf);

/* Restores into an uninitialised *ewc; free it with gnn_ewc_free. */
extern GnnStatus gnn_ewc_deserialize(const uint8_t *buf, size_t len,
									 GnnEwc *ewc, GnnError *err);

/* ------------------------------------------------------------------------
 * Shared by the files of src/gnn (not for callers).
 * ------------------------------------------------------------------------
 */
#ifdef GNN_DOUBLE
#define gnn_exp(x)	exp(x)
#define gnn_log(x)	log(x)
#define gnn_sqrt(x) sqrt(x)
#define gnn_tanh(x) tanh(x)
#else
#define gnn_exp(x)	expf(x)
#define gnn_log(x)	logf(x)
#define gnn_sqrt(x) sqrtf(x)
#define gnn_tanh(x) tanhf(x)
#endif

extern GnnStatus gnn_error(GnnError *err, GnnStatus code, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

/* Y (n x out) = X (n x in) W^T + beta Y */
extern void gnn_gemm_xwt(const gnn_real *x, int n, int in, const gnn_real *w,
						 int out, gnn_real beta, gnn_real *y, int ldx,
						 int ldy);

/* dW (out x in) += dY^T (n x out) X (n x in) */
extern void gnn_gemm_dw(const gnn_real *dy, int n, int out, const gnn_real *x,
						int in, gnn_real *dw, int lddy, int ldx);

/* dX (n x in) += dY (n x out) W (out x in) */
extern void gnn_gemm_dx(const gnn_real *dy, int n, int out, const gnn_real *w,
						int in, gnn_real *dx, int lddy, int lddx);
/* A model with every parameter zero, for the deserialiser to fill in. */
extern GnnStatus gnn_model_create_empty(const GnnConfig *cfg, GnnModel **out,
										GnnError *err);
extern gnn_real gnn_sigmoid(gnn_real x);


/* ------------------------------------------------------------------------
 * PostgreSQL glue (gnn_store.c, gnn_view.c, gnn_rerank.c; the training
 * driver, src/train, uses it too), visible to files that include
 * postgres.h before this header.
 * ------------------------------------------------------------------------
 */
#ifdef PG_VERSION_NUM

#include "access/xlogdefs.h"
#include "hnsw/hnsw.h"
#include "store/store.h"
#include "utils/hsearch.h"

#define GNN_KIND_GNN		"gnn"
#define GNN_NEIGHBOURHOOD_K 32	/* items in a candidate's neighbourhood mean */
#define GNN_RERANK_SCOPE	"Rerank"

/* settings (gnn_rerank.c) */
extern bool gnn_rerank_setting;
extern int	gnn_rerank_candidates;
extern int	gnn_rerank_cache_mb;
extern void gnn_init(void);

/* Runs fn(arg) when the current memory context is reset or deleted, on
 * ERROR included: how malloc'd core objects are freed on every path. */
extern void gnn_on_context_reset(void (*fn) (void *), void *arg);
extern void gnn_ereport_status(GnnStatus rc, const GnnError *err);

/*
 * A gnnhnsw index as the GNN reads it (gnn_view.c): elements met so far
 * are nodes 0..n-1, with their vectors (as the index stores them:
 * normalised for cosine) and, once asked for, their level-0 neighbours.
 * Everything lives in cxt; gnn_view_reset forgets it (node numbers die).
 * The lookup table and the arrays are made when the first node is added,
 * the index's size read when first asked for: a reranked scan whose
 * candidates are all cached makes a view and reads neither (making them
 * was 1% of its time).
 */
typedef struct GnnIndexView
{
	Relation	index;
	MemoryContext cxt;			/* everything below */
	HnswReader	reader;
	HnswMetric	metric;
	int			dim;
	BlockNumber nblocks;		/* gnn_view_nblocks: when first asked for, or
								 * InvalidBlockNumber */
	HTAB	   *lookup;			/* element TID -> node; NULL: no node yet */
	int			n;
	int			cap;
	float	   *vecs;			/* n x dim */
	ItemPointerData *tid;		/* element tuple */
	ItemPointerData *nbrtid;	/* its neighbour tuple */
	int		   *nbr_start;		/* into nbr; -1: neighbours not read yet */
	int		   *nbr_count;
	XLogRecPtr *nbr_lsn;		/* LSN of the neighbour page when read */
	uint64	   *nbr_sum;		/* hnsw_neighbors_fingerprint of the list read */
	int		   *nbr;			/* pool of neighbour node numbers */
	int			nbr_used;
	int			nbr_cap;
	int		   *mean_slot;		/* into means; -1: not computed yet */
	float	   *means;			/* neighbourhood means (gnn_rerank.c), dim each */
	int			means_used;
	int			means_cap;
} GnnIndexView;

/* meta: as hnsw_reader_init's (a scan passes the metapage it read) */
extern void gnn_view_init(GnnIndexView *v, Relation index,
						  const HnswMetaPageData *meta);
extern int	gnn_view_node(GnnIndexView *v, ItemPointer tid);
extern BlockNumber gnn_view_nblocks(GnnIndexView *v);
extern void gnn_view_neighbors(GnnIndexView *v, int node);
extern XLogRecPtr gnn_view_neighbor_lsn(GnnIndexView *v, int node);
extern int	gnn_view_search(GnnIndexView *v, const float *query, int ef,
							int *nodes, float *dists, HnswCandidate *cands);
extern void gnn_view_reset(GnnIndexView *v);
extern int	gnn_view_random_node(GnnIndexView *v, GnnRng *rng);
extern int	gnn_view_find(GnnIndexView *v, const float *vec);
extern Size gnn_view_bytes(const GnnIndexView *v);
extern void gnn_view_query_vector(GnnIndexView *v, Datum vec, float *out,
								  const char *what);

/*
 * GNN models in the model store (gnn_store.c, src/store): a loaded model
 * stays cached per backend until the row it came from changes (looked at
 * once per snapshot), with the refined candidate embeddings c' computed
 * for that version.
 */
typedef struct GnnCprimeCache GnnCprimeCache;

typedef struct GnnCachedModel
{
	Oid			indexoid;
	char		scope[NAMEDATALEN];
	char		kind[8];
	StoreRowId	row;			/* the row version the model came from */
	GnnModel   *model;			/* malloc'd, owned by the cache */
	GnnCprimeCache *cprime;		/* element TID -> c' (gnn_rerank.c) */
	StoreSnapshotKey checked;	/* the snapshot the row was last checked in */
} GnnCachedModel;

extern GnnCachedModel *gnn_store_lookup(Relation index, const char *scope,
										const char *kind);
extern int64 gnn_store_save(Relation index, const char *scope,
							const char *kind, const GnnModel *model,
							const char *config, bytea *state);

/* rerank (gnn_rerank.c) */
/* Frees a cached model's refined embeddings (gnn_store.c, on reload). */
extern void gnn_rerank_cache_free(GnnCachedModel *cm);
extern int	gnn_rerank_score(GnnCachedModel *cm, GnnIndexView *v,
							 const float *query, int n,
							 const ItemPointerData *tids,
							 const uint64 *nbr_sum, int *cand,
							 const float *cand_dist, double *scores);
extern void gnn_score_input(GnnIndexView *v, const float *query, int n,
							const int *cand, const float *cand_dist,
							GnnScoreInput *in, float *means);

#endif							/* PG_VERSION_NUM */

#endif							/* GNNVEC_GNN_H */
