/*
 * lora_index.c
 *		Per-index MicroLoRA adapters of scope HnswScan: stored in
 *		gnnvec_models (kind "lora"), cached per backend, and applied to the
 *		query of a gnnhnsw index scan when gnnvec.adapt is on.
 *
 * Why per index and not the scoped bank of lora_shmem.c: an adapter learns
 * a map from one index's query distribution to its rows, and its dimension
 * is the index's; a single global HnswScan adapter would be shared by
 * indexes of unrelated data and dimensions.  So gnnvec_train(...,
 * scope => 'HnswScan') trains one adapter per index and saves it with the
 * GNN models (versioned, dumped with the extension), and a scan reads it
 * through a per-backend cache keyed by the row version it came from: a new
 * version is seen by a backend as soon as its snapshot sees the commit.
 * The row is looked at once per snapshot (as for the GNN models), so the
 * rescans of a nested loop do not probe the table again.
 * The global bank stays what the gnnvec_lora_* functions adapt.
 *
 * Blob layout (native float32, little-endian machines only, like the GNN
 * blobs): "LORA", u32 format 1, i32 dim, i32 rank, f32 alpha, then A
 * transposed (rank x dim) and B (rank x dim).
 */
#include "postgres.h"

#include <math.h>

#include "hnsw/hnsw.h"
#include "lora/lora.h"
#include "store/store.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#define LORA_BLOB_MAGIC		0x41524F4C	/* "LORA" */
#define LORA_BLOB_FORMAT	1
#define LORA_BLOB_HEADER	(4 * sizeof(int32) + sizeof(float))

bool		lora_adapt_setting = false;

typedef struct CachedAdapter
{
	Oid			indexoid;
	StoreRowId	row;
	StoreSnapshotKey checked;	/* the snapshot the row was last checked in */
	LoraAdapter ad;				/* mem allocated with the entry */
} CachedAdapter;

static List *adapter_cache = NIL;	/* of CachedAdapter *, in TopMemoryContext */

void
lora_index_init(void)
{
	DefineCustomBoolVariable("gnnvec.adapt",
							 "Pass gnnhnsw scan queries through the index's HnswScan MicroLoRA adapter.",
							 "The adapter is trained by gnnvec_train(..., scope => 'HnswScan'); an index without one is searched with the query as given.",
							 &lora_adapt_setting, false,
							 PGC_USERSET, 0, NULL, NULL, NULL);
}

bytea *
lora_index_serialize(const LoraAdapter *ad)
{
	size_t		nparams = (size_t) 2 * ad->rank * ad->dim;
	size_t		len = LORA_BLOB_HEADER + sizeof(float) * nparams;
	bytea	   *blob = palloc(VARHDRSZ + len);
	char	   *p = VARDATA(blob);
	int32		hdr[4] = {LORA_BLOB_MAGIC, LORA_BLOB_FORMAT, ad->dim, ad->rank};

	SET_VARSIZE(blob, VARHDRSZ + len);
	memcpy(p, hdr, sizeof(hdr));
	memcpy(p + sizeof(hdr), &ad->alpha, sizeof(float));
	/* A^T then B are contiguous in the adapter's storage */
	memcpy(p + LORA_BLOB_HEADER, lora_adapter_at(ad), sizeof(float) * nparams);
	return blob;
}

/*
 * Restores an adapter into ad, whose storage was attached with the index's
 * dimension as capacity; ERRORs on anything malformed, and on an adapter of
 * another dimension (only a hand-edited row can have one).
 */
void
lora_index_deserialize(bytea *blob, LoraAdapter *ad, const char *indexname)
{
	size_t		len = VARSIZE_ANY_EXHDR(blob);
	const char *p = VARDATA_ANY(blob);
	int32		hdr[4];
	float		alpha;
	size_t		nparams;
	const char *problem = NULL;

	if (len < LORA_BLOB_HEADER)
		problem = "it is truncated";
	else
	{
		memcpy(hdr, p, sizeof(hdr));
		memcpy(&alpha, p + sizeof(hdr), sizeof(float));
		if (hdr[0] != LORA_BLOB_MAGIC || hdr[1] != LORA_BLOB_FORMAT)
			problem = "it is not a MicroLoRA adapter of a known format";
		else if (hdr[2] != ad->capacity)
			problem = psprintf("it has %d dimensions, the index %d",
							   hdr[2], ad->capacity);
		else if (hdr[3] < 1 || hdr[3] > LORA_MAX_RANK || !isfinite(alpha))
			problem = "its rank or alpha is out of range";
		else if (len != LORA_BLOB_HEADER +
				 sizeof(float) * (size_t) 2 * hdr[2] * hdr[3])
			problem = "its size does not match its dimension and rank";
	}
	if (problem == NULL)
	{
		nparams = (size_t) 2 * hdr[2] * hdr[3];
		(void) lora_adapter_init(ad, hdr[2], hdr[3], alpha);
		memcpy(lora_adapter_at(ad), p + LORA_BLOB_HEADER, sizeof(float) * nparams);
		for (size_t i = 0; i < nparams && problem == NULL; i++)
			if (!isfinite(lora_adapter_at(ad)[i]))
				problem = "it holds a value that is not finite";
	}
	if (problem)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the HnswScan adapter of index \"%s\" cannot be read: %s",
						indexname, problem),
				 errhint("gnnvec_model_reset(index, 'HnswScan') removes it; train again.")));
}

static CachedAdapter *
cache_entry(Oid indexoid)
{
	ListCell   *lc;

	foreach(lc, adapter_cache)
	{
		CachedAdapter *ca = (CachedAdapter *) lfirst(lc);

		if (ca->indexoid == indexoid)
			return ca;
	}
	return NULL;
}

static void
cache_drop(CachedAdapter *ca)
{
	adapter_cache = list_delete_ptr(adapter_cache, ca);
	pfree(ca);
}

/*
 * The HnswScan adapter of an index of dim dimensions as the caller's
 * snapshot sees it, or NULL when it has none.  Valid until the next call.
 */
const LoraAdapter *
lora_index_adapter(Relation index, int dim)
{
	CachedAdapter *ca = cache_entry(RelationGetRelid(index));
	StoreRowId	row;
	StoreSnapshotKey now;
	bytea	   *blob;
	MemoryContext old;

	if (store_snapshot_checked(ca ? &ca->checked : NULL, &now))
		return &ca->ad;
	memset(&row, 0, sizeof(row));
	if (ca)
		row = ca->row;
	if (!store_fetch_blob(index, LORA_HNSW_SCOPE_NAME, LORA_KIND, &row, &blob))
	{
		if (ca)
			cache_drop(ca);
		return NULL;
	}
	if (blob == NULL)
	{
		ca->checked = now;		/* still the row this entry was read from */
		return &ca->ad;
	}
	if (ca)
		cache_drop(ca);
	old = MemoryContextSwitchTo(TopMemoryContext);
	ca = palloc0(sizeof(CachedAdapter) + sizeof(float) * lora_adapter_floats(dim));
	MemoryContextSwitchTo(old);
	ca->indexoid = RelationGetRelid(index);
	lora_adapter_attach(&ca->ad, (float *) (ca + 1), dim, 0);
	PG_TRY();
	{
		lora_index_deserialize(blob, &ca->ad, RelationGetRelationName(index));
	}
	PG_CATCH();
	{
		pfree(ca);
		PG_RE_THROW();
	}
	PG_END_TRY();
	ca->row = row;
	ca->checked = now;
	old = MemoryContextSwitchTo(TopMemoryContext);
	adapter_cache = lappend(adapter_cache, ca);
	MemoryContextSwitchTo(old);
	pfree(blob);
	return &ca->ad;
}

/*
 * query := adapter(query), renormalised when unit_norm (cosine indexes
 * compare unit vectors, and the adapter changes the norm).  The input is
 * what training saw: the query as the index stores vectors.
 */
void
lora_index_apply(const LoraAdapter *ad, float *query, bool unit_norm)
{
	float	   *x = palloc(sizeof(float) * ad->dim);
	double		norm = 0;

	memcpy(x, query, sizeof(float) * ad->dim);
	lora_adapter_add_delta(ad, x, 1.0f, query);
	pfree(x);
	if (!unit_norm)
		return;
	for (int i = 0; i < ad->dim; i++)
		norm += (double) query[i] * query[i];
	if (norm > 0)
	{
		float		inv = (float) (1.0 / sqrt(norm));

		for (int i = 0; i < ad->dim; i++)
			query[i] *= inv;
	}
}

/*
 * The scan plug-in (hnsw.h): with gnnvec.adapt on and an adapter of the
 * index's dimension stored, the graph search runs on the adapted query.
 * The executor computes the ORDER BY distance from the heap row and the
 * original query, so the distances it returns stay true; only the order
 * in which the scan offers rows follows the adapted query (relaxed order,
 * like reranking).
 */
void
hnsw_scan_adapt_query(Relation index, HnswMetric metric, float *query, int dim)
{
	const LoraAdapter *ad;

	if (!lora_adapt_setting)
		return;
	ad = lora_index_adapter(index, dim);
	if (ad == NULL || ad->dim != dim)
		return;
	lora_index_apply(ad, query, metric == HNSW_METRIC_COSINE);
}
