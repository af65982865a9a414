/*
 * cagra_gpu.c
 *		Loader of the GPU module (gnnvec_cuda.so) and gnnvec_gpu_devices().
 *
 * gnnvec.so never links CUDA: the module is opened with dlopen() the first
 * time a GPU is asked for, so the extension loads on machines without CUDA
 * and a broken CUDA installation is an ERROR, not a failed CREATE EXTENSION.
 */
#include "postgres.h"

#include <dlfcn.h>

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "cagra/cagra_gpu.h"

static CudaModule cuda_module;

/*
 * Open the module once per backend; ERROR (with a hint) when it is not
 * installed or does not load.
 */
const CudaModule *
cagra_gpu_module(void)
{
	char		path[MAXPGPATH];
	void	   *handle;
	int			(*abi_version) (void);

	if (cuda_module.handle != NULL)
		return &cuda_module;

	snprintf(path, sizeof(path), "%s/gnnvec_cuda.so", pkglib_path);
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("gnnvec GPU module is not available"),
				 errdetail("%s", dlerror()),
				 errhint("Build gnnvec where the CUDA toolkit (nvcc) is installed, or build the index with device = 'cpu'.")));

	abi_version = (int (*) (void)) dlsym(handle, "gnnvec_cuda_abi_version");
	if (abi_version == NULL || abi_version() != GNNVEC_CUDA_ABI_VERSION)
	{
		dlclose(handle);
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("gnnvec GPU module \"%s\" does not match this gnnvec.so", path),
				 errhint("Reinstall gnnvec so that both libraries come from the same build.")));
	}
	cuda_module.device_count = dlsym(handle, "gnnvec_cuda_device_count");
	cuda_module.device_info = dlsym(handle, "gnnvec_cuda_device_info");
	if (cuda_module.device_count == NULL || cuda_module.device_info == NULL)
	{
		dlclose(handle);
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("gnnvec GPU module \"%s\" lacks an entry point", path)));
	}
	cuda_module.handle = handle;
	return &cuda_module;
}

/* gnnvec_gpu_devices(): one row per CUDA device; none without a GPU. */
PG_FUNCTION_INFO_V1(gnnvec_gpu_devices);
Datum
gnnvec_gpu_devices(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const CudaModule *mod = cagra_gpu_module();
	char		errbuf[256];
	int			count;

	InitMaterializedSRF(fcinfo, 0);
	count = mod->device_count(errbuf, sizeof(errbuf));
	if (count < 0)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not query GPUs: %s", errbuf)));

	for (int dev = 0; dev < count; dev++)
	{
		char		name[256];
		size_t		total_mem;
		int			major,
					minor;
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		if (mod->device_info(dev, name, sizeof(name), &total_mem, &major, &minor,
							 errbuf, sizeof(errbuf)) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("could not query GPU %d: %s", dev, errbuf)));
		values[0] = Int32GetDatum(dev);
		values[1] = CStringGetTextDatum(name);
		values[2] = Int64GetDatum((int64) (total_mem / (1024 * 1024)));
		values[3] = CStringGetTextDatum(psprintf("%d.%d", major, minor));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
