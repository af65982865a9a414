/*
 * gnnvec_cuda.h
 *		C ABI of gnnvec_cuda.so, the GPU module.  gnnvec.so never links it:
 *		it is opened with dlopen() when a GPU build is asked for, so the
 *		extension loads on machines without CUDA.  No PostgreSQL headers.
 */
#ifndef GNNVEC_CUDA_H
#define GNNVEC_CUDA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C"
{
#endif

/* Bumped when a signature below changes; the loader checks it. */
#define GNNVEC_CUDA_ABI_VERSION 1

int			gnnvec_cuda_abi_version(void);

/*
 * Number of usable CUDA devices (0 when there is no driver or no GPU).
 * On error returns -1 and writes a message into errbuf.
 */
int			gnnvec_cuda_device_count(char *errbuf, size_t errlen);

/* Name, total memory and compute capability of one device; 0 on success. */
int			gnnvec_cuda_device_info(int device, char *name, size_t namelen,
									size_t *total_mem, int *cc_major, int *cc_minor,
									char *errbuf, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif							/* GNNVEC_CUDA_H */
