/*
 * store.c
 *		The model store: the extension tables gnnvec_models, keyed by (index
 *		OID, scope, kind), and gnnvec_feedback_events.
 *
 * Reads go straight through the table's primary key under the caller's
 * snapshot, so a backend sees a new version as soon as its snapshot does
 * (after the writer commits), and its own transaction's writes.  A cached
 * model is reused while the row it came from is the same row version
 * (xmin, ctid and version all equal, StoreRowId); otherwise the blob is
 * read again.  Rows saved before a dump keep the old OID after a restore;
 * they are found by the index's qualified name when their OID names no
 * relation any more, and the next save rebinds them to the new OID.
 *
 * Writes run SQL through SPI as the table's owner: callers are checked
 * first (store_open_index), and the table itself is closed to PUBLIC.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "store/store.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

/* columns of gnnvec_models */
enum
{
	ATT_INDEX_OID = 1,
	ATT_INDEX_NAME,
	ATT_SCOPE,
	ATT_KIND,
	ATT_VERSION,
	ATT_CONFIG,
	ATT_MODEL,
	ATT_STATE,
	ATT_CREATED,
	ATT_UPDATED,
	N_ATTS = ATT_UPDATED
};

/* ---- permissions ----------------------------------------------------- */

/*
 * Opens a gnnhnsw index after checking what the caller may do with it:
 * ownership of its table to change its models, SELECT on the table to
 * search.  The lock is held until the end of the transaction.
 */
Relation
store_open_index(Oid indexoid, bool need_owner)
{
	Relation	index;
	Oid			amoid = get_index_am_oid("gnnhnsw", false);
	Oid			heapoid;

	index = try_relation_open(indexoid, AccessShareLock);
	if (index == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("relation with OID %u does not exist", indexoid)));
	if (index->rd_rel->relkind != RELKIND_INDEX || index->rd_rel->relam != amoid)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a gnnhnsw index",
						RelationGetRelationName(index)),
				 errhint("Pass an index created with USING gnnhnsw.")));
	heapoid = index->rd_index->indrelid;
	if (need_owner && !pg_class_ownercheck(heapoid, GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of table %s to change the models of index %s",
						get_rel_name(heapoid), RelationGetRelationName(index))));
	if (!need_owner &&
		pg_class_aclcheck(heapoid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", get_rel_name(heapoid)),
				 errhint("Searching index %s needs SELECT on its table.",
						 RelationGetRelationName(index))));
	return index;
}

char *
store_index_qualified_name(Relation index)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(index)),
									  RelationGetRelationName(index));
}

/* ---- the table ----------------------------------------------------------- */

/* The extension's schema: that of the gnnhnsw access method's handler. */
static Oid
extension_namespace(void)
{
	Oid			amoid = get_index_am_oid("gnnhnsw", false);
	HeapTuple	tup = SearchSysCache1(AMOID, ObjectIdGetDatum(amoid));
	Oid			nsp;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for access method %u", amoid);
	nsp = get_func_namespace(((Form_pg_am) GETSTRUCT(tup))->amhandler);
	ReleaseSysCache(tup);
	return nsp;
}

static Oid
store_relid(const char *name)
{
	Oid			relid = get_relname_relid(name, extension_namespace());

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("gnnvec model table \"%s\" is missing", name),
				 errhint("Recreate the extension gnnvec.")));
	return relid;
}

static Snapshot
read_snapshot(void)
{
	return ActiveSnapshotSet() ? GetActiveSnapshot() : GetTransactionSnapshot();
}

static void
snapshot_key(Snapshot snap, StoreSnapshotKey *key)
{
	memset(key, 0, sizeof(StoreSnapshotKey));	/* padding too: memcmp'ed */
	if (snap->snapshot_type != SNAPSHOT_MVCC || snap->takenDuringRecovery)
		return;
	key->valid = true;
	key->lxid = MyProc->lxid;
	key->subxid = GetCurrentSubTransactionId();
	key->xmin = snap->xmin;
	key->xmax = snap->xmax;
	key->xcnt = snap->xcnt;
	key->subxcnt = snap->subxcnt;
	key->suboverflowed = snap->suboverflowed;
	key->curcid = snap->curcid;
}

/*
 * The key of the snapshot reads of the store use now, in *now; returns
 * whether a cache entry last checked under *checked (NULL: no entry) was
 * checked under an equivalent snapshot (e.g. by a join's earlier rescan),
 * so that it needs no new look at its row.
 */
bool
store_snapshot_checked(const StoreSnapshotKey *checked, StoreSnapshotKey *now)
{
	snapshot_key(read_snapshot(), now);
	return checked != NULL && now->valid &&
		memcmp(now, checked, sizeof(StoreSnapshotKey)) == 0;
}

/* Does this row belong to the index?  By OID, or by name after a restore. */
static bool
row_is_index(Datum *values, Relation index, const char *qualname)
{
	Oid			rowoid = DatumGetObjectId(values[ATT_INDEX_OID - 1]);
	char	   *rowname;
	bool		stale;

	if (rowoid == RelationGetRelid(index))
		return true;
	rowname = TextDatumGetCString(values[ATT_INDEX_NAME - 1]);
	if (strcmp(rowname, qualname) != 0)
		return false;
	/* the row's OID must name no relation (it came from another cluster) */
	stale = !SearchSysCacheExists1(RELOID, ObjectIdGetDatum(rowoid));
	return stale;
}

/*
 * Calls fn on the index's row for (scope, kind), found by OID or by name,
 * while the tuple is still pinned; returns false when there is none.
 */
typedef void (*RowFn) (HeapTuple tup, Datum *values, bool *nulls, void *arg);

static bool
with_row(Relation index, const char *scope, const char *kind, Snapshot snap,
		 RowFn fn, void *arg)
{
	Relation	rel = table_open(store_relid("gnnvec_models"), AccessShareLock);
	char	   *qualname = store_index_qualified_name(index);
	Datum		values[N_ATTS];
	bool		nulls[N_ATTS];
	bool		found = false;
	int			pass;

	for (pass = 0; pass < 2 && !found; pass++)
	{
		ScanKeyData keys[3];
		SysScanDesc scan;
		HeapTuple	tup;

		if (pass == 0)
		{
			ScanKeyInit(&keys[0], ATT_INDEX_OID, BTEqualStrategyNumber,
						F_OIDEQ, ObjectIdGetDatum(RelationGetRelid(index)));
			scan = systable_beginscan(rel, store_relid("gnnvec_models_pkey"),
									  true, snap, 1, keys);
		}
		else
		{
			ScanKeyEntryInitialize(&keys[0], 0, ATT_INDEX_NAME,
								   BTEqualStrategyNumber, InvalidOid,
								   DEFAULT_COLLATION_OID, F_TEXTEQ,
								   CStringGetTextDatum(qualname));
			scan = systable_beginscan(rel, store_relid("gnnvec_models_name"),
									  true, snap, 1, keys);
		}
		while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			char	   *s;
			char	   *k;

			heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
			s = TextDatumGetCString(values[ATT_SCOPE - 1]);
			k = TextDatumGetCString(values[ATT_KIND - 1]);
			if (strcmp(s, scope) == 0 && strcmp(k, kind) == 0 &&
				row_is_index(values, index, qualname))
			{
				fn(tup, values, nulls, arg);
				found = true;
			}
		}
		systable_endscan(scan);
	}
	table_close(rel, AccessShareLock);
	return found;
}

/* RowFn: which row version this is */
static void
row_id(HeapTuple tup, Datum *values, bool *nulls, void *arg)
{
	StoreRowId *id = (StoreRowId *) arg;

	id->version = DatumGetInt64(values[ATT_VERSION - 1]);
	id->xmin = HeapTupleHeaderGetXmin(tup->t_data);
	id->ctid = tup->t_self;
}

static bool
row_id_equal(const StoreRowId *a, const StoreRowId *b)
{
	return a->version == b->version && a->xmin == b->xmin &&
		ItemPointerEquals((ItemPointer) &a->ctid, (ItemPointer) &b->ctid);
}

static void
state_row(HeapTuple tup, Datum *values, bool *nulls, void *arg)
{
	bytea	  **out = (bytea **) arg;

	*out = nulls[ATT_STATE - 1] ? NULL :
		DatumGetByteaPCopy(values[ATT_STATE - 1]);
}

/* The row's state column (optimiser state of online learning), or NULL. */
bytea *
store_state(Relation index, const char *scope, const char *kind)
{
	bytea	   *state = NULL;

	if (!with_row(index, scope, kind, read_snapshot(), state_row, &state))
		return NULL;
	return state;
}

static void
config_row(HeapTuple tup, Datum *values, bool *nulls, void *arg)
{
	char	  **out = (char **) arg;

	*out = TextDatumGetCString(values[ATT_CONFIG - 1]);
}

/* The row's config column (the training's metadata), or NULL. */
char *
store_config(Relation index, const char *scope, const char *kind)
{
	char	   *config = NULL;

	if (!with_row(index, scope, kind, read_snapshot(), config_row, &config))
		return NULL;
	return config;
}

typedef struct BlobArg
{
	StoreRowId *known;
	bytea	  **blob;
} BlobArg;

static void
blob_row(HeapTuple tup, Datum *values, bool *nulls, void *arg)
{
	BlobArg    *ba = (BlobArg *) arg;
	StoreRowId	now;

	row_id(tup, values, nulls, &now);
	if (row_id_equal(ba->known, &now))
	{
		*ba->blob = NULL;		/* the caller has this row version already */
		return;
	}
	*ba->blob = DatumGetByteaPCopy(values[ATT_MODEL - 1]);
	*ba->known = now;
}

/*
 * The model column of (index, scope, kind), for callers that keep their
 * own cache of what they deserialise from it: returns false when there is
 * no row; otherwise *blob is a palloc'd copy, or NULL when the row is
 * still the version *known names (then nothing is read).  *known is
 * updated to the row read.
 */
bool
store_fetch_blob(Relation index, const char *scope, const char *kind,
				 StoreRowId *known, bytea **blob)
{
	BlobArg		ba;

	ba.known = known;
	ba.blob = blob;
	*blob = NULL;
	return with_row(index, scope, kind, read_snapshot(), blob_row, &ba);
}

/* ---- writing ----------------------------------------------------------- */

/* The row of (index, scope, kind) under this snapshot; version 0: none. */
static StoreRowId
row_under(Relation index, const char *scope, const char *kind, Snapshot snap)
{
	StoreRowId	id;

	memset(&id, 0, sizeof(id));
	(void) with_row(index, scope, kind, snap, row_id, &id);
	return id;
}

/*
 * Writers of a model (gnnvec_train, gnnvec_feedback) start from the stored
 * version; two at once would both start from version N, and the second
 * save would silently drop what the first one learned.  So a writer calls
 * this before it reads anything of (index, scope): it takes an exclusive
 * lock on that entry of gnnvec_models (an object lock whose class is the
 * table, which nothing else takes), held to the end of the transaction, so
 * the next writer waits for this one's commit or abort (lock_timeout and
 * the deadlock detector apply as to any lock; scope_number, the scope's
 * number, tells the scopes of one index apart, so that writers of two
 * scopes do not wait for each other).  Once it has the lock it
 * must read the version the previous writer committed:
 *	- READ COMMITTED: the snapshot pushed here is taken after the wait;
 *	- REPEATABLE READ, SERIALIZABLE: the transaction's snapshot cannot see
 *	  a version committed after it was taken, so that is a serialization
 *	  failure, raised now rather than after the training.
 * Reads until store_end_update() use the pushed snapshot.
 */
void
store_begin_update(Relation index, const char *scope, int scope_number,
				   const char *kind)
{
	LockDatabaseObject(store_relid("gnnvec_models"), RelationGetRelid(index),
					   scope_number, ExclusiveLock);
	PushActiveSnapshot(GetTransactionSnapshot());
	if (IsolationUsesXactSnapshot())
	{
		StoreRowId	seen = row_under(index, scope, kind, GetActiveSnapshot());
		StoreRowId	latest = row_under(index, scope, kind, GetLatestSnapshot());

		if (!row_id_equal(&seen, &latest))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access to the %s model of index \"%s\" due to a concurrent update",
							scope, RelationGetRelationName(index)),
					 errdetail("Another transaction changed the model after this transaction's snapshot was taken."),
					 errhint("Retry the transaction.")));
	}
}

/* The end of what store_begin_update() began; its lock stays. */
void
store_end_update(void)
{
	PopActiveSnapshot();
}

typedef struct OwnerSpi
{
	Oid			save_user;
	int			save_sec;
	char	   *table;			/* qualified name of the table */
} OwnerSpi;

static void
owner_spi_begin(OwnerSpi *os, const char *table)
{
	Oid			relid = store_relid(table);
	Oid			owner;
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	os->table = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
										   table);
	GetUserIdAndSecContext(&os->save_user, &os->save_sec);
	SetUserIdAndSecContext(owner, os->save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
}

static void
owner_spi_end(OwnerSpi *os)
{
	SPI_finish();
	SetUserIdAndSecContext(os->save_user, os->save_sec);
}

/*
 * Runs an INSERT ... RETURNING one bigint (between owner_spi_begin and
 * _end) and returns it; "<what> failed" is the ERROR otherwise.
 */
static int64
insert_returning_int8(const char *sql, int nargs, Oid *types, Datum *args,
					  const char *nulls, const char *what)
{
	bool		isnull;

	if (SPI_execute_with_args(sql, nargs, types, args, nulls, false, 1) !=
		SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "%s failed", what);
	return DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Saves a serialised model (and optional state) as the next version of
 * (index, scope, kind); returns that version.  Rows of the same index name
 * left by a restore (their OID names no relation) are replaced.
 */
int64
store_save_blob(Relation index, const char *scope, const char *kind,
				bytea *blob, const char *config, bytea *state)
{
	OwnerSpi	os;
	char	   *qualname = store_index_qualified_name(index);
	StringInfoData sql;
	Oid			types[7] = {OIDOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BYTEAOID, BYTEAOID};
	Datum		args[7];
	char		argnulls[8] = "       ";
	int64		version;

	args[0] = ObjectIdGetDatum(RelationGetRelid(index));
	args[1] = CStringGetTextDatum(qualname);
	args[2] = CStringGetTextDatum(scope);
	args[3] = CStringGetTextDatum(kind);
	args[4] = CStringGetTextDatum(config);
	args[5] = PointerGetDatum(blob);
	args[6] = state ? PointerGetDatum(state) : (Datum) 0;
	if (state == NULL)
		argnulls[6] = 'n';

	owner_spi_begin(&os, "gnnvec_models");
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "WITH stale AS ("
					 "  DELETE FROM %s m WHERE index_name = $2 AND scope = $3 AND kind = $4"
					 "  AND index_oid <> $1"
					 "  AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = m.index_oid)"
					 "  RETURNING version, created) "
					 "INSERT INTO %s AS t (index_oid, index_name, scope, kind, version, config, model, state, created) "
					 "SELECT $1, $2, $3, $4, coalesce(max(version), 0) + 1, $5, $6, $7,"
					 "  coalesce(min(created), pg_catalog.now()) FROM stale "
					 "ON CONFLICT (index_oid, scope, kind) DO UPDATE SET "
					 "  index_name = excluded.index_name, version = t.version + 1,"
					 "  config = excluded.config, model = excluded.model,"
					 "  state = excluded.state, updated = pg_catalog.now() "
					 "RETURNING version",
					 os.table, os.table);
	version = insert_returning_int8(sql.data, 7, types, args, argnulls,
									"saving the model");
	owner_spi_end(&os);
	return version;
}

/* ---- feedback events ---------------------------------------------------- */

/*
 * Logs a feedback event (query, positive: values of type vtype) of index
 * in gnnvec_feedback_events, as the table's owner (the caller's right to
 * log is checked by gnnvec_feedback); returns its id.  The model row is
 * not touched: gnnvec_feedback_train learns from the events later.
 */
int64
store_log_feedback(Relation index, Oid vtype, Datum query, Datum positive)
{
	char	   *who = GetUserNameFromId(GetUserId(), false);
	OwnerSpi	os;
	StringInfoData sql;
	Oid			types[4] = {OIDOID, vtype, vtype, TEXTOID};
	Datum		args[4];
	int64		id;

	args[0] = ObjectIdGetDatum(RelationGetRelid(index));
	args[1] = query;
	args[2] = positive;
	args[3] = CStringGetTextDatum(who);
	owner_spi_begin(&os, "gnnvec_feedback_events");
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "INSERT INTO %s (index_oid, query, positive, logged_by) "
					 "VALUES ($1, $2, $3, $4) RETURNING id", os.table);
	id = insert_returning_int8(sql.data, 4, types, args, NULL,
							   "logging the feedback event");
	owner_spi_end(&os);
	return id;
}

/*
 * Takes up to n of the oldest feedback events of index: deletes them (so
 * they are consumed with the transaction that trains on them, and come
 * back if it aborts) and returns their vectors, copied into the caller's
 * memory context, in queries[] and positives[].  Returns how many.
 */
int
store_take_feedback(Relation index, int n, Datum *queries, Datum *positives)
{
	MemoryContext caller = CurrentMemoryContext;
	OwnerSpi	os;
	StringInfoData sql;
	Oid			types[2] = {OIDOID, INT4OID};
	Datum		args[2];
	int			got;

	args[0] = ObjectIdGetDatum(RelationGetRelid(index));
	args[1] = Int32GetDatum(n);
	owner_spi_begin(&os, "gnnvec_feedback_events");
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "DELETE FROM %s WHERE id IN (SELECT id FROM %s"
					 "  WHERE index_oid = $1 ORDER BY id LIMIT $2) "
					 "RETURNING query, positive",
					 os.table, os.table);
	if (SPI_execute_with_args(sql.data, 2, types, args, NULL, false, 0) !=
		SPI_OK_DELETE_RETURNING)
		elog(ERROR, "taking feedback events failed");
	got = (int) SPI_processed;
	for (int i = 0; i < got; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		Datum		q = SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull);
		Datum		p = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);
		MemoryContext old = MemoryContextSwitchTo(caller);

		queries[i] = PointerGetDatum(PG_DETOAST_DATUM_COPY(q));
		positives[i] = PointerGetDatum(PG_DETOAST_DATUM_COPY(p));
		MemoryContextSwitchTo(old);
	}
	owner_spi_end(&os);
	return got;
}

/*
 * Deletes the models of index (rows a restore left under its name
 * included), of one scope or, with scope NULL, of every scope, as the
 * table's owner (the caller has checked the right to: store_open_index);
 * returns how many.
 */
int
store_delete(Relation index, const char *scope)
{
	OwnerSpi	os;
	Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		args[3];
	char		argnulls[4] = "   ";
	char	   *sql;
	int			n;

	args[0] = ObjectIdGetDatum(RelationGetRelid(index));
	args[1] = CStringGetTextDatum(store_index_qualified_name(index));
	if (scope == NULL)
		argnulls[2] = 'n';
	else
		args[2] = CStringGetTextDatum(scope);
	owner_spi_begin(&os, "gnnvec_models");
	sql = psprintf("DELETE FROM %s m WHERE (index_oid = $1 OR (index_name = $2 AND"
				   " NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = m.index_oid)))"
				   " AND ($3 IS NULL OR scope = $3)", os.table);
	if (SPI_execute_with_args(sql, 3, types, args, argnulls, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "deleting GNN models failed");
	n = (int) SPI_processed;
	owner_spi_end(&os);
	return n;
}

/* ---- SQL --------------------------------------------------------------- */

PG_FUNCTION_INFO_V1(gnnvec_model_info);
Datum
gnnvec_model_info(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Relation	index = store_open_index(PG_GETARG_OID(0), false);
	Relation	rel;
	char	   *qualname = store_index_qualified_name(index);
	SysScanDesc scan;
	HeapTuple	tup;

	InitMaterializedSRF(fcinfo, 0);
	rel = table_open(store_relid("gnnvec_models"), AccessShareLock);
	/* a full pass: the table holds a few rows per index */
	scan = systable_beginscan(rel, InvalidOid, false, read_snapshot(), 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Datum		values[N_ATTS];
		bool		nulls[N_ATTS];
		Datum		out[6];
		bool		outnulls[6] = {false};

		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
		if (!row_is_index(values, index, qualname))
			continue;
		out[0] = values[ATT_SCOPE - 1];
		out[1] = values[ATT_KIND - 1];
		out[2] = values[ATT_VERSION - 1];
		out[3] = values[ATT_CONFIG - 1];
		out[4] = Int32GetDatum((int32) toast_raw_datum_size(values[ATT_MODEL - 1]) - VARHDRSZ);
		out[5] = values[ATT_UPDATED - 1];
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, outnulls);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	relation_close(index, NoLock);
	PG_RETURN_VOID();
}

