/*
 * cagra_gpu.h
 *		The GPU module as gnnvec.so sees it: function pointers filled by
 *		dlopen()/dlsym() from gnnvec_cuda.so (see cuda/gnnvec_cuda.h).
 */
#ifndef GNNVEC_CAGRA_GPU_H
#define GNNVEC_CAGRA_GPU_H

#include <stddef.h>

#include "gnnvec_cuda.h"

typedef struct CudaModule
{
	void	   *handle;
	int			(*device_count) (char *errbuf, size_t errlen);
	int			(*device_info) (int device, char *name, size_t namelen,
								size_t *total_mem, int *cc_major, int *cc_minor,
								char *errbuf, size_t errlen);
} CudaModule;

/* Loads the module on first use; ERRORs when it is missing or stale. */
extern const CudaModule *cagra_gpu_module(void);

#endif							/* GNNVEC_CAGRA_GPU_H */
