/*
 * gnnvec.c
 *		Module entry point: registers settings and picks CPU kernels.
 */
#include "postgres.h"

#include "fmgr.h"
#include "gnn/gnn.h"
#include "hnsw/hnsw.h"
#include "lora/lora.h"
#include "vector/vector.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	vector_init();
	hnsw_init();
	lora_init();
	gnn_init();
}
