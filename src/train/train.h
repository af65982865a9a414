/*
 * train.h
 *		The training driver: the SQL functions that change the models of a
 *		gnnhnsw index.  train.c: gnnvec_train (GNN rerank models, scope
 *		Rerank, and HnswScan MicroLoRA adapters, from (query, positive)
 *		pairs or self-supervised), gnnvec_feedback and
 *		gnnvec_feedback_train; train_models.c: gnnvec_model_reset.
 *
 * The driver depends on the GNN (src/gnn), MicroLoRA (src/lora), the model
 * store (src/store) and the index's read API (src/hnsw); none of them
 * depends on it, and GNN and LoRA do not depend on each other.  PostgreSQL
 * glue only: include postgres.h first.
 */
#ifndef GNNVEC_TRAIN_H
#define GNNVEC_TRAIN_H

/*
 * A scope argument: one of the 17 operator type names (any case) or its
 * number, parsed by the LoRA scope parser; returns the canonical name.
 */
extern const char *train_scope_arg(const char *given);

#endif							/* GNNVEC_TRAIN_H */
