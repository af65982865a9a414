/*
 * gnn_loss.c
 *		Cosine similarity, softmax cross-entropy, InfoNCE and the local
 *		contrastive loss, each with its gradient
 *		(seeds/gnn-optimization-strategies.txt section 3).
 */
#include <math.h>

#include "gnn/gnn.h"

#define NORM_FLOOR 1e-12

/*
 * cos = a.b / (|a| |b|);  dcos/da = b / (|a| |b|) - cos * a / |a|^2,
 * and symmetrically for b.
 */
gnn_real
gnn_cosine(const gnn_real *a, const gnn_real *b, int dim, gnn_real g,
		   gnn_real *da, gnn_real *db)
{
	double		ab = 0,
				aa = 0,
				bb = 0;
	double		na,
				nb,
				cs;

	for (int i = 0; i < dim; i++)
	{
		ab += (double) a[i] * b[i];
		aa += (double) a[i] * a[i];
		bb += (double) b[i] * b[i];
	}
	na = fmax(sqrt(aa), NORM_FLOOR);
	nb = fmax(sqrt(bb), NORM_FLOOR);
	cs = ab / (na * nb);
	if (g != 0 && da != NULL)
		for (int i = 0; i < dim; i++)
			da[i] += (gnn_real) (g * (b[i] / (na * nb) - cs * a[i] / (na * na)));
	if (g != 0 && db != NULL)
		for (int i = 0; i < dim; i++)
			db[i] += (gnn_real) (g * (a[i] / (na * nb) - cs * b[i] / (nb * nb)));
	return (gnn_real) cs;
}

/*
 * L = logsumexp(l / tau) - l_target / tau, computed with the max
 * subtracted; dL/dl_i = (softmax(l / tau)_i - [i = target]) / tau.
 */
gnn_real
gnn_softmax_xent(const gnn_real *logits, int n, int target, gnn_real tau,
				 gnn_real g, gnn_real *dlogits)
{
	double		mx = logits[0] / tau;
	double		sum = 0;
	double		lse;

	for (int i = 1; i < n; i++)
		mx = fmax(mx, logits[i] / tau);
	for (int i = 0; i < n; i++)
		sum += exp(logits[i] / tau - mx);
	lse = mx + log(sum);
	if (dlogits != NULL && g != 0)
		for (int i = 0; i < n; i++)
		{
			double		p = exp(logits[i] / tau - lse);

			dlogits[i] += (gnn_real) (g * (p - (i == target)) / tau);
		}
	return (gnn_real) (lse - logits[target] / tau);
}

/*
 * InfoNCE with every gradient scaled by g.  Two passes over the cosines
 * (the second recomputes them) keep it free of allocation: an online
 * log-sum-exp first, then p_j = exp(s_j - lse) and
 * dL/ds_pos = (p_pos - 1) / tau, dL/ds_neg = p_neg / tau.
 */
static double
infonce_scaled(const gnn_real *anchor, const gnn_real *pos,
			   const gnn_real *neg, int n_neg, int dim, double tau, double g,
			   gnn_real *d_anchor, gnn_real *d_pos, gnn_real *d_neg)
{
	double		s_pos = gnn_cosine(anchor, pos, dim, 0, NULL, NULL) / tau;
	double		mx = s_pos;
	double		sum = 1;
	double		lse;

	for (int j = 0; j < n_neg; j++)
	{
		double		s = gnn_cosine(anchor, neg + (size_t) j * dim, dim, 0,
								   NULL, NULL) / tau;

		if (s > mx)
		{
			sum = sum * exp(mx - s) + 1;
			mx = s;
		}
		else
			sum += exp(s - mx);
	}
	lse = mx + log(sum);
	if (g != 0 && (d_anchor != NULL || d_pos != NULL || d_neg != NULL))
	{
		gnn_cosine(anchor, pos, dim, (gnn_real) (g * (exp(s_pos - lse) - 1) / tau),
				   d_anchor, d_pos);
		for (int j = 0; j < n_neg; j++)
		{
			const gnn_real *nj = neg + (size_t) j * dim;
			double		s = gnn_cosine(anchor, nj, dim, 0, NULL, NULL) / tau;

			gnn_cosine(anchor, nj, dim, (gnn_real) (g * exp(s - lse) / tau),
					   d_anchor, d_neg != NULL ? d_neg + (size_t) j * dim : NULL);
		}
	}
	return lse - s_pos;
}

gnn_real
gnn_infonce_loss(const gnn_real *anchor, const gnn_real *pos,
				 const gnn_real *neg, int n_neg, int dim, gnn_real tau,
				 gnn_real *d_anchor, gnn_real *d_pos, gnn_real *d_neg)
{
	return (gnn_real) infonce_scaled(anchor, pos, neg, n_neg, dim, tau, 1,
									 d_anchor, d_pos, d_neg);
}

gnn_real
gnn_local_contrastive_loss(const gnn_real *node, const gnn_real *nbrs,
						   int n_nbrs, const gnn_real *non_nbrs, int n_non,
						   int dim, gnn_real tau, gnn_real *d_node,
						   gnn_real *d_nbrs, gnn_real *d_non)
{
	double		total = 0;

	if (n_nbrs <= 0)
		return 0;
	for (int p = 0; p < n_nbrs; p++)
		total += infonce_scaled(node, nbrs + (size_t) p * dim, non_nbrs, n_non,
								dim, tau, 1.0 / n_nbrs, d_node,
								d_nbrs != NULL ? d_nbrs + (size_t) p * dim : NULL,
								d_non);
	return (gnn_real) (total / n_nbrs);
}

void
gnn_edge_weights_from_distances(const gnn_real *dist, int n, gnn_real *w)
{
	double		mean = 0,
				var = 0,
				sd,
				mn;

	if (n <= 0)
		return;
	mn = dist[0];
	for (int j = 0; j < n; j++)
	{
		mean += dist[j];
		mn = fmin(mn, dist[j]);
	}
	mean /= n;
	for (int j = 0; j < n; j++)
		var += (dist[j] - mean) * (dist[j] - mean);
	var /= n;
	/* once, not per weight: the compiler kept a sqrt in the loop */
	sd = sqrt(var);
	for (int j = 0; j < n; j++)
		w[j] = var > 0 ? (gnn_real) exp(-(dist[j] - mn) / sd) : 1;
}
