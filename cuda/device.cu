/*
 * device.cu
 *		Device discovery for the GPU module.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

#include "gnnvec_cuda.h"

extern "C" int
gnnvec_cuda_abi_version(void)
{
	return GNNVEC_CUDA_ABI_VERSION;
}

extern "C" int
gnnvec_cuda_device_count(char *errbuf, size_t errlen)
{
	int			count = 0;
	cudaError_t err = cudaGetDeviceCount(&count);

	/* no driver or no device is an answer (zero), not a failure */
	if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver)
		return 0;
	if (err != cudaSuccess)
	{
		snprintf(errbuf, errlen, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
		return -1;
	}
	return count;
}

extern "C" int
gnnvec_cuda_device_info(int device, char *name, size_t namelen,
						size_t *total_mem, int *cc_major, int *cc_minor,
						char *errbuf, size_t errlen)
{
	cudaDeviceProp prop;
	cudaError_t err = cudaGetDeviceProperties(&prop, device);

	if (err != cudaSuccess)
	{
		snprintf(errbuf, errlen, "cudaGetDeviceProperties(%d): %s",
				 device, cudaGetErrorString(err));
		return -1;
	}
	snprintf(name, namelen, "%s", prop.name);
	*total_mem = prop.totalGlobalMem;
	*cc_major = prop.major;
	*cc_minor = prop.minor;
	return 0;
}
