/*
 * train_models.c
 *		Scope arguments, and gnnvec_model_reset: the models of an index,
 *		of one scope or all, deleted from the model store.
 */
#include "postgres.h"

#include "access/relation.h"
#include "fmgr.h"
#include "lora/lora.h"
#include "store/store.h"
#include "train/train.h"
#include "utils/builtins.h"

const char *
train_scope_arg(const char *given)
{
	int			scope = lora_scope_parse(given);

	if (scope < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown operator scope \"%s\"", given),
				 errhint("Scopes are the operator type names listed by gnnvec_lora_scopes(), in any case, or their numbers 0 to 16.")));
	return lora_scope_name(scope);
}

PG_FUNCTION_INFO_V1(gnnvec_model_reset);
Datum
gnnvec_model_reset(PG_FUNCTION_ARGS)
{
	Relation	index;
	int			n;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("index must not be NULL")));
	index = store_open_index(PG_GETARG_OID(0), true);
	n = store_delete(index, PG_ARGISNULL(1) ? NULL :
					 train_scope_arg(text_to_cstring(PG_GETARG_TEXT_PP(1))));
	relation_close(index, NoLock);
	PG_RETURN_INT32(n);
}
