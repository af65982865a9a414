/*
 * gnn_optim.c
 *		Adam, gradient clipping, elastic weight consolidation and the replay
 *		buffer (seeds/gnn-optimization-strategies.txt sections 4.2 and 6.1).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gnn/gnn.h"

/* ---- Adam (Kingma & Ba 2015, algorithm 1) --------------------------------- */

GnnStatus
gnn_adam_init(GnnAdam *adam, size_t n, double lr, GnnError *err)
{
	memset(adam, 0, sizeof(GnnAdam));
	if (!(lr > 0 && isfinite(lr)))
		return gnn_error(err, GNN_ERR_ARG, "Adam learning rate must be > 0, got %g", lr);
	adam->m = calloc(n > 0 ? n : 1, sizeof(gnn_real));
	adam->v = calloc(n > 0 ? n : 1, sizeof(gnn_real));
	if (adam->m == NULL || adam->v == NULL)
	{
		gnn_adam_free(adam);
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for Adam state");
	}
	adam->n = n;
	adam->lr = lr;
	adam->beta1 = 0.9;
	adam->beta2 = 0.999;
	adam->eps = 1e-8;
	return GNN_OK;
}

void
gnn_adam_free(GnnAdam *adam)
{
	free(adam->m);
	free(adam->v);
	adam->m = adam->v = NULL;
}

/*
 * m <- b1 m + (1-b1) g,  v <- b2 v + (1-b2) g^2,
 * theta <- theta - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
 */
void
gnn_adam_step(GnnAdam *adam, gnn_real *params, const gnn_real *grad)
{
	double		b1 = adam->beta1,
				b2 = adam->beta2;
	double		c1,
				c2;

	adam->t++;
	c1 = 1 - pow(b1, (double) adam->t);
	c2 = 1 - pow(b2, (double) adam->t);
	for (size_t i = 0; i < adam->n; i++)
	{
		double		m = b1 * adam->m[i] + (1 - b1) * grad[i];
		double		v = b2 * adam->v[i] + (1 - b2) * (double) grad[i] * grad[i];

		adam->m[i] = (gnn_real) m;
		adam->v[i] = (gnn_real) v;
		params[i] -= (gnn_real) (adam->lr * (m / c1) / (sqrt(v / c2) + adam->eps));
	}
}

double
gnn_clip_grad_norm(gnn_real *grad, size_t n, double max_norm)
{
	double		ss = 0;
	double		norm;

	for (size_t i = 0; i < n; i++)
		ss += (double) grad[i] * grad[i];
	norm = sqrt(ss);
	if (max_norm > 0 && norm > max_norm)
	{
		gnn_real	scale = (gnn_real) (max_norm / norm);

		for (size_t i = 0; i < n; i++)
			grad[i] *= scale;
	}
	return norm;
}

/* ---- EWC (Kirkpatrick 2017) ------------------------------------------------ */

GnnStatus
gnn_ewc_init(GnnEwc *ewc, size_t n, double lambda, GnnError *err)
{
	memset(ewc, 0, sizeof(GnnEwc));
	if (!(lambda >= 0 && isfinite(lambda)))
		return gnn_error(err, GNN_ERR_ARG, "EWC lambda must be >= 0, got %g", lambda);
	ewc->fisher = calloc(n > 0 ? n : 1, sizeof(gnn_real));
	ewc->anchor = calloc(n > 0 ? n : 1, sizeof(gnn_real));
	ewc->sq_grad_sum = calloc(n > 0 ? n : 1, sizeof(double));
	if (ewc->fisher == NULL || ewc->anchor == NULL || ewc->sq_grad_sum == NULL)
	{
		gnn_ewc_free(ewc);
		return gnn_error(err, GNN_ERR_NOMEM, "out of memory for EWC state");
	}
	ewc->n = n;
	ewc->lambda = lambda;
	return GNN_OK;
}

void
gnn_ewc_free(GnnEwc *ewc)
{
	free(ewc->fisher);
	free(ewc->anchor);
	free(ewc->sq_grad_sum);
	ewc->fisher = ewc->anchor = NULL;
	ewc->sq_grad_sum = NULL;
}

void
gnn_ewc_observe(GnnEwc *ewc, const gnn_real *grad)
{
	for (size_t i = 0; i < ewc->n; i++)
		ewc->sq_grad_sum[i] += (double) grad[i] * grad[i];
	ewc->n_observed++;
}

void
gnn_ewc_consolidate(GnnEwc *ewc, const gnn_real *params)
{
	for (size_t i = 0; i < ewc->n; i++)
	{
		if (ewc->n_observed > 0)
			ewc->fisher[i] += (gnn_real) (ewc->sq_grad_sum[i] / ewc->n_observed);
		ewc->sq_grad_sum[i] = 0;
	}
	memcpy(ewc->anchor, params, ewc->n * sizeof(gnn_real));
	ewc->n_observed = 0;
	ewc->active = true;
}

/* lambda/2 sum F (theta - theta*)^2; gradient lambda F (theta - theta*). */
double
gnn_ewc_penalty(const GnnEwc *ewc, const gnn_real *params, gnn_real *grad)
{
	double		sum = 0;

	if (!ewc->active)
		return 0;
	for (size_t i = 0; i < ewc->n; i++)
	{
		double		diff = (double) params[i] - ewc->anchor[i];

		sum += ewc->fisher[i] * diff * diff;
		if (grad != NULL)
			grad[i] += (gnn_real) (ewc->lambda * ewc->fisher[i] * diff);
	}
	return 0.5 * ewc->lambda * sum;
}

/* ---- replay buffer (Vitter 1985, algorithm R) ------------------------------ */

GnnStatus
gnn_replay_init(GnnReplay *replay, int capacity, int record_len, uint64_t seed,
				GnnError *err)
{
	memset(replay, 0, sizeof(GnnReplay));
	if (capacity < 1 || record_len < 1)
		return gnn_error(err, GNN_ERR_ARG,
						 "replay buffer capacity and record length must be >= 1, got %d and %d",
						 capacity, record_len);
	replay->records = malloc((size_t) capacity * record_len * sizeof(gnn_real));
	if (replay->records == NULL)
		return gnn_error(err, GNN_ERR_NOMEM,
						 "out of memory for a replay buffer of %d records", capacity);
	replay->capacity = capacity;
	replay->record_len = record_len;
	gnn_rng_seed(&replay->rng, seed);
	return GNN_OK;
}

void
gnn_replay_free(GnnReplay *replay)
{
	free(replay->records);
	replay->records = NULL;
}

/*
 * The k-th record offered (k from 0) fills a free slot, or replaces slot j,
 * j uniform in [0, k], when j < capacity.
 */
int
gnn_replay_add(GnnReplay *replay, const gnn_real *record)
{
	int64_t		slot;

	if (replay->count < replay->capacity)
		slot = replay->count++;
	else
	{
		slot = (int64_t) gnn_rng_below(&replay->rng, (uint64_t) replay->seen + 1);
		if (slot >= replay->capacity)
			slot = -1;
	}
	replay->seen++;
	if (slot >= 0)
		memcpy(replay->records + (size_t) slot * replay->record_len, record,
			   replay->record_len * sizeof(gnn_real));
	return (int) slot;
}

/*
 * Selection sampling (Knuth, TAOCP vol. 2, algorithm S): slot i is taken
 * with probability (still needed) / (slots left), which gives every n-subset
 * the same probability without any allocation.  Slots come out ascending.
 */
int
gnn_replay_sample(GnnReplay *replay, int n, int *slots)
{
	int			taken = 0;

	if (n > replay->count)
		n = replay->count;
	for (int i = 0; i < replay->count && taken < n; i++)
		if (gnn_rng_below(&replay->rng, (uint64_t) (replay->count - i)) <
			(uint64_t) (n - taken))
			slots[taken++] = i;
	return taken;
}

const gnn_real *
gnn_replay_record(const GnnReplay *replay, int slot)
{
	if (slot < 0 || slot >= replay->count)
		return NULL;
	return replay->records + (size_t) slot * replay->record_len;
}
