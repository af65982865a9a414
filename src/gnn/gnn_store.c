/*
 * gnn_store.c
 *		GNN models in the model store (src/store, kind "gnn"): saved
 *		serialised, and a per-backend cache of the models loaded, each with
 *		the refined candidate embeddings (gnn_rerank.c) computed for it.
 *		A cached model is reused while its row is the same row version,
 *		and looked at once per snapshot (store.h).
 */
#include "postgres.h"

#include "gnn/gnn.h"
#include "utils/memutils.h"
#include "utils/rel.h"

static List *model_cache = NIL; /* of GnnCachedModel *, in TopMemoryContext */

/* ---- helpers shared by the glue files ---------------------------------- */

typedef struct ResetCallback
{
	MemoryContextCallback cb;
	void		(*fn) (void *);
	void	   *arg;
} ResetCallback;

static void
run_reset_callback(void *arg)
{
	ResetCallback *rc = (ResetCallback *) arg;

	rc->fn(rc->arg);
}

void
gnn_on_context_reset(void (*fn) (void *), void *arg)
{
	ResetCallback *rc = palloc(sizeof(ResetCallback));

	rc->fn = fn;
	rc->arg = arg;
	rc->cb.func = run_reset_callback;
	rc->cb.arg = rc;
	MemoryContextRegisterResetCallback(CurrentMemoryContext, &rc->cb);
}

void
gnn_ereport_status(GnnStatus rc, const GnnError *err)
{
	int			code;

	switch (rc)
	{
		case GNN_OK:
			return;
		case GNN_ERR_NOMEM:
			code = ERRCODE_OUT_OF_MEMORY;
			break;
		case GNN_ERR_CORRUPT:
		case GNN_ERR_VERSION:
			code = ERRCODE_DATA_CORRUPTED;
			break;
		case GNN_ERR_NUMERIC:
			code = ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE;
			break;
		default:
			code = ERRCODE_INVALID_PARAMETER_VALUE;
			break;
	}
	ereport(ERROR, (errcode(code), errmsg("%s", err->message)));
}

/* ---- the cache ----------------------------------------------------------- */

static void
cached_model_free(GnnCachedModel *cm)
{
	gnn_rerank_cache_free(cm);
	gnn_model_free(cm->model);
	pfree(cm);
}

static List *
lappend_in_top(List *list, void *item)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

	list = lappend(list, item);
	MemoryContextSwitchTo(old);
	return list;
}

/*
 * The current model of (index, scope, kind) as the caller's snapshot sees
 * it, or NULL when there is none.  The result belongs to the cache: valid
 * until the next lookup.
 */
GnnCachedModel *
gnn_store_lookup(Relation index, const char *scope, const char *kind)
{
	GnnCachedModel *cm = NULL;
	ListCell   *lc;
	StoreSnapshotKey now;
	StoreRowId	row;
	bytea	   *blob;
	GnnModel   *model = NULL;
	GnnError	err;
	GnnStatus	rc;

	foreach(lc, model_cache)
	{
		GnnCachedModel *c = (GnnCachedModel *) lfirst(lc);

		if (c->indexoid == RelationGetRelid(index) &&
			strcmp(c->scope, scope) == 0 && strcmp(c->kind, kind) == 0)
			cm = c;
	}
	if (store_snapshot_checked(cm ? &cm->checked : NULL, &now))
		return cm;
	memset(&row, 0, sizeof(row));
	if (cm)
		row = cm->row;
	if (!store_fetch_blob(index, scope, kind, &row, &blob))
	{
		if (cm)
		{
			model_cache = list_delete_ptr(model_cache, cm);
			cached_model_free(cm);
		}
		return NULL;
	}
	if (blob != NULL)
	{
		rc = gnn_model_deserialize((const uint8_t *) VARDATA_ANY(blob),
								   VARSIZE_ANY_EXHDR(blob), &model, &err);
		if (rc != GNN_OK)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("GNN model %s of index \"%s\" (version " INT64_FORMAT ") cannot be read: %s",
							scope, RelationGetRelationName(index), row.version,
							err.message),
					 errhint("gnnvec_model_reset() removes it; train again.")));
		pfree(blob);
		if (cm == NULL)
		{
			cm = MemoryContextAllocZero(TopMemoryContext, sizeof(GnnCachedModel));
			cm->indexoid = RelationGetRelid(index);
			strlcpy(cm->scope, scope, NAMEDATALEN);
			strlcpy(cm->kind, kind, sizeof(cm->kind));
			model_cache = lappend_in_top(model_cache, cm);
		}
		else
		{
			gnn_rerank_cache_free(cm);
			gnn_model_free(cm->model);
		}
		/* nothing between the deserialiser and here can fail: no leak */
		cm->model = model;
		cm->row = row;
	}
	cm->checked = now;
	return cm;
}

/*
 * Saves a GNN model (and optional state) as the next version of (index,
 * scope, kind); returns that version.
 */
int64
gnn_store_save(Relation index, const char *scope, const char *kind,
			   const GnnModel *model, const char *config, bytea *state)
{
	size_t		size = gnn_model_serialized_size(model);
	bytea	   *blob = palloc(VARHDRSZ + size);
	int64		version;

	SET_VARSIZE(blob, VARHDRSZ + size);
	gnn_model_serialize(model, (uint8_t *) VARDATA(blob));
	version = store_save_blob(index, scope, kind, blob, config, state);
	pfree(blob);
	return version;
}
