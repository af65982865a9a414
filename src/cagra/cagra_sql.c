/*
 * cagra_sql.c
 *		SQL face of the GPU module: gnnvec_gpu_devices().
 *
 * gnnvec.so never links CUDA: the module is opened with dlopen() (see
 * cagra_gpu.c) the first time a GPU is asked for, so the extension loads on
 * machines without CUDA, and a missing or broken module is an ERROR with a
 * hint rather than a failed CREATE EXTENSION.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/tuplestore.h"

#include "cagra/cagra.h"

static CagraGpu *gpu_module;

/* The module, opened once per backend; NULL with a message if unusable. */
CagraGpu *
cagra_gpu_module_try(char *errbuf, size_t errlen)
{
	char		path[MAXPGPATH];

	if (gpu_module != NULL)
		return gpu_module;
	snprintf(path, sizeof(path), "%s/gnnvec_cuda.so", pkglib_path);
	gpu_module = cagra_gpu_open(path, errbuf, errlen);
	return gpu_module;
}

/* The module; ERROR when it cannot be used. */
static CagraGpu *
cagra_gpu_module(void)
{
	char		errbuf[512];

	if (cagra_gpu_module_try(errbuf, sizeof(errbuf)) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("gnnvec GPU module is not available"),
				 errdetail("%s", errbuf),
				 errhint("Build gnnvec where the CUDA toolkit (nvcc) is installed, or build the index with device = 'cpu'.")));
	return gpu_module;
}

/* gnnvec_gpu_devices(): one row per CUDA device; none without a GPU. */
PG_FUNCTION_INFO_V1(gnnvec_gpu_devices);
Datum
gnnvec_gpu_devices(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CagraGpu   *gpu = cagra_gpu_module();
	char		errbuf[512];
	int			count;

	InitMaterializedSRF(fcinfo, 0);
	if (cagra_gpu_device_count(gpu, &count, errbuf, sizeof(errbuf)) != CAGRA_OK)
		ereport(ERROR,
				(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
				 errmsg("could not query GPUs: %s", errbuf)));

	for (int dev = 0; dev < count; dev++)
	{
		char		name[256];
		size_t		total_bytes;
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		if (cagra_gpu_device_info(gpu, dev, name, sizeof(name), &total_bytes,
								  errbuf, sizeof(errbuf)) != CAGRA_OK)
			ereport(ERROR,
					(errcode(ERRCODE_EXTERNAL_ROUTINE_EXCEPTION),
					 errmsg("could not query GPU %d: %s", dev, errbuf)));
		values[0] = Int32GetDatum(dev);
		values[1] = CStringGetTextDatum(name);
		values[2] = Int64GetDatum((int64) (total_bytes / (1024 * 1024)));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
