/*
 * gnnvec.c
 *		Module entry point: registers settings and picks CPU kernels.
 */
#include "postgres.h"

#include "fmgr.h"
#include "gnn/gnn.h"
#include "hnsw/hnsw.h"
#include "lora/lora.h"
#include "utils/guc.h"
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

	/* every gnnvec.* setting is defined above: reject misspelt ones */
#if PG_VERSION_NUM >= 150000
	MarkGUCPrefixReserved("gnnvec");
#else
	EmitWarningsOnPlaceholders("gnnvec");
#endif
}
