/*
 * gnnvec.c
 *		Module entry point: registers settings and picks CPU kernels.
 */
#include "postgres.h"

#include <cblas.h>
#include <dlfcn.h>

#include "fmgr.h"
#include "gnn/gnn.h"
#include "hnsw/hnsw.h"
#include "lora/lora.h"
#include "utils/guc.h"
#include "vector/vector.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * A backend is one thread, and every matrix product here is small or runs
 * in gnnvec's own worker threads (CAGRA), so OpenBLAS's thread pool has no
 * work.  Its workers started when the library loaded, and on this machine
 * an idle one kept spinning on sched_yield: 15% of a core in a backend
 * doing nothing but plain index scans.  One thread from now on, and the
 * pool stopped where this OpenBLAS can stop it (blas_thread_shutdown_ is
 * exported by OpenBLAS but not declared in cblas.h, hence dlsym; setting
 * OPENBLAS_NUM_THREADS=1 for the server avoids the pool altogether).
 */
static void
blas_single_threaded(void)
{
	int			(*shutdown) (void);

	openblas_set_num_threads(1);
	shutdown = (int (*) (void)) dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
	if (shutdown != NULL)
		shutdown();
}

void
_PG_init(void)
{
	blas_single_threaded();
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
