/*
 * gnn_test_model.h
 *		A GNN model for the unit tests (float and double builds alike).
 */
#ifndef GNNVEC_GNN_TEST_MODEL_H
#define GNNVEC_GNN_TEST_MODEL_H

#include <stdio.h>
#include <stdlib.h>

#include "gnn/gnn.h"

/* d -> h, with the given heads, dropout and seed; exits on failure. */
static GnnModel *
gnn_test_model(int d, int h, int heads, double dropout, uint64_t seed)
{
	GnnConfig	cfg;
	GnnModel   *model = NULL;
	GnnError	err;

	gnn_config_default(&cfg, d, h);
	cfg.heads = heads;
	cfg.dropout = dropout;
	cfg.seed = seed;
	if (gnn_model_create(&cfg, &model, &err) != GNN_OK)
	{
		fprintf(stderr, "model: %s\n", err.message);
		exit(1);
	}
	return model;
}

#endif							/* GNNVEC_GNN_TEST_MODEL_H */
