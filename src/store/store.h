/*
 * store.h
 *		The model store (store.c): the extension tables gnnvec_models (the
 *		models of each gnnhnsw index, keyed by (index, scope, kind) and
 *		versioned) and gnnvec_feedback_events, and who may use them.
 *
 * The store keeps blobs; each kind of model serialises and caches its own
 * (GNN models: src/gnn/gnn_store.c, kind "gnn"; HnswScan adapters:
 * src/lora/lora_index.c, kind "lora").  Reads see what the caller's
 * snapshot sees.  A backend's cache of a deserialised model stays valid
 * while the row it came from is the same row version (StoreRowId), and
 * needs no new look at the row under a snapshot equivalent to the one it
 * was last checked under (StoreSnapshotKey).  Writes run as the tables'
 * owner, after the caller's rights were checked by store_open_index.
 *
 * PostgreSQL glue only: include postgres.h first.
 */
#ifndef GNNVEC_STORE_H
#define GNNVEC_STORE_H

#include "storage/itemptr.h"
#include "utils/relcache.h"

/*
 * What decides an MVCC snapshot's view of other transactions and of its
 * own: two snapshots of one backend with equal keys see the same rows
 * (with xmin, xmax and the in-progress count equal, the in-progress sets
 * are equal too: a newly assigned XID below xmax would have moved xmax).
 * Compared with memcmp; valid is false for snapshots that are not MVCC.
 */
typedef struct StoreSnapshotKey
{
	bool		valid;
	LocalTransactionId lxid;
	SubTransactionId subxid;	/* a rolled-back savepoint changes it */
	TransactionId xmin;
	TransactionId xmax;
	uint32		xcnt;
	int32		subxcnt;
	bool		suboverflowed;
	CommandId	curcid;
} StoreSnapshotKey;

/* Which row version a cached model came from (version 0: none). */
typedef struct StoreRowId
{
	int64		version;
	TransactionId xmin;
	ItemPointerData ctid;
} StoreRowId;

/*
 * Opens a gnnhnsw index (locked until the end of the transaction) after
 * checking the caller's rights: ownership of its table to change its
 * models (need_owner), SELECT on its table to search it.
 */
extern Relation store_open_index(Oid indexoid, bool need_owner);
extern char *store_index_qualified_name(Relation index);

/*
 * The key of the snapshot that reads of the store use now, and whether
 * an entry last checked under *checked (NULL: none) needs no new look at
 * its row.
 */
extern bool store_snapshot_checked(const StoreSnapshotKey *checked,
								   StoreSnapshotKey *now);

/* Reading one model's row */
extern bool store_fetch_blob(Relation index, const char *scope,
							 const char *kind, StoreRowId *known,
							 bytea **blob);
extern bytea *store_state(Relation index, const char *scope,
						  const char *kind);
extern char *store_config(Relation index, const char *scope,
						  const char *kind);

/* Writing */
extern void store_begin_update(Relation index, const char *scope,
							   int scope_number, const char *kind);
extern void store_end_update(void);
extern int64 store_save_blob(Relation index, const char *scope,
							 const char *kind, bytea *blob,
							 const char *config, bytea *state);
extern int	store_delete(Relation index, const char *scope);

/* Feedback events */
extern int64 store_log_feedback(Relation index, Oid vtype, Datum query,
								Datum positive);
extern int	store_take_feedback(Relation index, int n, Datum *queries,
								Datum *positives);

#endif							/* GNNVEC_STORE_H */
