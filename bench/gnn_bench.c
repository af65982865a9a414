/*
 * gnn_bench.c
 *		Microbenchmark of the GNN core at the sizes a rerank sees: dimension
 *		128, hidden 128 (or as given), 4 heads, 8 graph neighbours per
 *		candidate.
 *
 *		make bench/bin/gnn_bench && bench/bin/gnn_bench [candidates] [repeats] [hidden]
 *
 * Prints, per call: the layer forward over a batch of nodes (inference),
 * forward + backward (training), the rerank score of one query over its
 * candidates, and a full training step on a batch of 8 such queries.
 * Single-threaded OpenBLAS, as inside a backend.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "gnn/gnn.h"

#define DIM		128
#define HEADS	4
#define NBRS	8

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void
fail(const char *what, const GnnError *err)
{
	fprintf(stderr, "gnn_bench: %s: %s\n", what, err->message);
	exit(1);
}

int
main(int argc, char **argv)
{
	int			n_cand = argc > 1 ? atoi(argv[1]) : 100;
	int			reps = argc > 2 ? atoi(argv[2]) : 20;
	int			hidden = argc > 3 ? atoi(argv[3]) : DIM;
	int			nv = n_cand * (1 + NBRS);	/* candidates, then neighbours */
	GnnConfig	cfg;
	GnnModel   *model;
	GnnError	err;
	GnnRng		rng;
	gnn_real   *vectors = malloc(sizeof(gnn_real) * nv * DIM);
	gnn_real   *query = malloc(sizeof(gnn_real) * DIM);
	gnn_real   *out = malloc(sizeof(gnn_real) * (n_cand + 1) * hidden);
	gnn_real   *d_out = malloc(sizeof(gnn_real) * (n_cand + 1) * hidden);
	gnn_real   *dist = malloc(sizeof(gnn_real) * n_cand * (1 + NBRS));
	int		   *cand = malloc(sizeof(int) * n_cand);
	int		   *off = malloc(sizeof(int) * (n_cand + 1));
	int		   *nbr = malloc(sizeof(int) * n_cand * NBRS);
	GnnGraph	g;
	GnnScoreInput in;
	GnnExample	ex[8];
	GnnLayerTape *tape = NULL;
	GnnTrainer	tr;
	GnnTrainConfig tcfg;
	double		t0,
				fwd,
				fwdbwd,
				score,
				step,
				loss;

	/* as in a backend (gnnvec.c): these matrices are small */
	openblas_set_num_threads(1);
	if (n_cand < 1 || reps < 1 || hidden < HEADS || hidden % HEADS != 0)
	{
		fprintf(stderr, "usage: gnn_bench [candidates >= 1] [repeats >= 1] [hidden, a multiple of %d]\n",
				HEADS);
		return 1;
	}
	gnn_config_default(&cfg, DIM, hidden);
	cfg.heads = HEADS;
	if (gnn_model_create(&cfg, &model, &err) != GNN_OK)
		fail("model", &err);
	gnn_rng_seed(&rng, 1);
	for (int i = 0; i < nv * DIM; i++)
		vectors[i] = (gnn_real) gnn_rng_normal(&rng);
	for (int i = 0; i < DIM; i++)
		query[i] = (gnn_real) gnn_rng_normal(&rng);
	for (int i = 0; i < n_cand * (1 + NBRS); i++)
		dist[i] = (gnn_real) (1 + gnn_rng_uniform(&rng));
	for (int i = 0; i < (n_cand + 1) * hidden; i++)
		d_out[i] = (gnn_real) gnn_rng_normal(&rng);
	off[0] = 0;
	for (int i = 0; i < n_cand; i++)
	{
		cand[i] = i;
		for (int j = 0; j < NBRS; j++)
			nbr[i * NBRS + j] = n_cand + i * NBRS + j;
		off[i + 1] = (i + 1) * NBRS;
	}
	g.n_vectors = nv;
	g.vectors = vectors;
	g.n_nodes = n_cand;
	g.node = cand;
	g.nbr_offset = off;
	g.nbr = nbr;
	g.edge_w = dist;

	in.query = query;
	in.n_vectors = nv;
	in.vectors = vectors;
	in.n_cand = n_cand;
	in.cand = cand;
	in.cand_dist = dist;
	in.nbr_offset = off;
	in.nbr = nbr;
	in.nbr_dist = dist + n_cand;
	in.smooth_dist = NULL;

	/* warm-up: allocations, OpenBLAS buffers */
	if (gnn_layer_forward(model, &g, true, &tape, out, &err) != GNN_OK)
		fail("forward", &err);

	t0 = now_ms();
	for (int r = 0; r < reps; r++)
		gnn_layer_forward(model, &g, false, &tape, out, &err);
	fwd = (now_ms() - t0) / reps;

	t0 = now_ms();
	for (int r = 0; r < reps; r++)
	{
		gnn_layer_forward(model, &g, true, &tape, out, &err);
		gnn_layer_backward(model, tape, d_out, NULL, &err);
	}
	fwdbwd = (now_ms() - t0) / reps;

	t0 = now_ms();
	for (int r = 0; r < reps; r++)
		if (gnn_score_forward(model, &in, false, NULL, out, &err) != GNN_OK)
			fail("score", &err);
	score = (now_ms() - t0) / reps;

	gnn_train_config_default(&tcfg);
	if (gnn_trainer_init(&tr, model, &tcfg, &err) != GNN_OK)
		fail("trainer", &err);
	for (int k = 0; k < 8; k++)
	{
		ex[k].in = in;
		ex[k].positive = k;
	}
	t0 = now_ms();
	for (int r = 0; r < reps; r++)
		if (gnn_train_step(&tr, ex, 8, &loss, &err) != GNN_OK)
			fail("train step", &err);
	step = (now_ms() - t0) / reps;

	printf("gnn_bench: dim %d, hidden %d, %d heads, %d neighbours, %d candidates, "
		   "%zu parameters, %s\n", DIM, hidden, HEADS, NBRS, n_cand, model->n_params,
		   sizeof(gnn_real) == 8 ? "double" : "float");
	printf("  layer forward (%d nodes)            %8.3f ms  (%.1f us/node)\n",
		   n_cand, fwd, fwd * 1e3 / n_cand);
	printf("  layer forward + backward            %8.3f ms  (%.1f us/node)\n",
		   fwdbwd, fwdbwd * 1e3 / n_cand);
	printf("  rerank score, 1 query               %8.3f ms\n", score);
	printf("  train step, 8 queries               %8.3f ms\n", step);

	gnn_trainer_free(&tr);
	gnn_layer_tape_free(tape);
	gnn_model_free(model);
	free(vectors);
	free(query);
	free(out);
	free(d_out);
	free(dist);
	free(cand);
	free(off);
	free(nbr);
	return 0;
}
