#!/usr/bin/env bash
# One server against two shards (docs/sharding.md), run by test/run.sh bench
# as the server user against its throwaway cluster (PGHOST/PGPORT set):
#
#   BENCH_SCRIPT=shard_bench.sh bash test/run.sh bench fashion-mnist-784
#
# The throwaway cluster holds the single server (database shard_single) and
# the coordinator (database shard_coord); this script starts two shard
# clusters of its own beside it (ports PGPORT+1 and PGPORT+2, same socket
# directory).  The coordinator's table is partitioned by hash over postgres_fdw
# foreign partitions; its rows go in through the coordinator.  Every cluster
# builds its gnnhnsw index (m 16, ef_construction 64; timed).  For each
# ef_search in EF_LIST (set on the shards through the servers' options), one
# statement answers all queries through LATERAL (... ORDER BY v <-> q LIMIT 10),
# best of 3, on the single server, on the coordinator (fetch_size 10, and
# at ef_search 40 also postgres_fdw's default of 100), on shard 1 alone (its
# half of the rows, no postgres_fdw: the search's share) and on shard 1's
# foreign partition through the coordinator (the same search plus
# postgres_fdw's cost for one shard), and through test/shard_topk.sql
# (dblink: the shards searched concurrently, distances shipped; l2 sets).
# Recall of shard1_alone and shard1_via_fdw is against the whole set's top
# 10, so about half.  Writes
# OUT_DIR/shard/shard.csv (setup, ef, fetch_size, seconds, queries, recall@10
# against the set's exact top 10) and prints it.
set -euo pipefail
dataset=$1
out=$2/shard
here=$(cd "$(dirname "$0")" && pwd)
dim=$(sed -n 's/^dim=//p' "$dataset/meta.txt")
metric=$(sed -n 's/^metric=//p' "$dataset/meta.txt")
ef_list=${EF_LIST:-10 20 40 80}
case ${metric:-l2} in
	l2) opclass=vector_l2_ops op='<->' ;;
	cosine) opclass=vector_cosine_ops op='<=>' ;;
	*) echo "shard_bench.sh: unknown metric $metric" >&2; exit 2 ;;
esac
mkdir -p "$out"

# --- the shard clusters, removed on exit
shards=$(mktemp -d /tmp/gnnvec-shards.XXXXXX)
stop_shards() {
	for i in 1 2; do
		[ -d "$shards/shard$i" ] && pg_ctl -D "$shards/shard$i" -m fast -w stop >/dev/null 2>&1
	done
	rm -rf "$shards"
}
trap stop_shards EXIT
for i in 1 2; do
	initdb -D "$shards/shard$i" --no-sync -A trust >"$shards/initdb$i.log" 2>&1 ||
		{ cat "$shards/initdb$i.log"; exit 1; }
	cat >>"$shards/shard$i/postgresql.conf" <<-EOF
		listen_addresses = ''
		unix_socket_directories = '$PGHOST'
		port = $((PGPORT + i))
		fsync = off
		shared_buffers = 1GB
		maintenance_work_mem = 1GB
		max_parallel_maintenance_workers = 1
		jit = off
	EOF
	pg_ctl -D "$shards/shard$i" -l "$shards/shard$i.log" -w start >/dev/null
done

psql_q() { local db=$1; shift; psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"; }
# wall time of the last statement in seconds, measured by psql's \timing
timed() {
	local db=$1; shift
	psql -X -q -v ON_ERROR_STOP=1 -d "$db" -c '\timing on' "$@" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' |
		tail -1 | awk '{ printf "%.4f", $1 / 1000 }'
}

# --- the single server
for db in shard_single shard_coord; do
	dropdb --if-exists $db
	createdb $db
done
psql_q shard_single <<SQL
CREATE EXTENSION gnnvec;
CREATE TABLE items (id int PRIMARY KEY, v vector($dim) NOT NULL);
CREATE TABLE queries (id int PRIMARY KEY, v vector($dim) NOT NULL);
COPY items FROM '$dataset/base.copy' (FORMAT binary);
COPY queries FROM '$dataset/queries.copy' (FORMAT binary);
VACUUM ANALYZE items;
SQL
single_build=$(timed shard_single -c "CREATE INDEX items_v ON items USING gnnhnsw (v $opclass)")

# --- the shards and the coordinator
for i in 1 2; do
	psql_q postgres -p $((PGPORT + i)) <<-SQL
		CREATE EXTENSION gnnvec;
		CREATE TABLE items_s (id int PRIMARY KEY, v vector($dim) NOT NULL);
		CREATE TABLE queries (id int PRIMARY KEY, v vector($dim) NOT NULL);
		COPY queries FROM '$dataset/queries.copy' (FORMAT binary);
	SQL
done
psql_q shard_coord <<SQL
CREATE EXTENSION gnnvec;
CREATE EXTENSION postgres_fdw;
CREATE EXTENSION dblink;
\i $here/../test/shard_topk.sql
CREATE TABLE items (id int NOT NULL, v vector($dim) NOT NULL) PARTITION BY HASH (id);
CREATE TABLE queries (id int PRIMARY KEY, v vector($dim) NOT NULL);
COPY queries FROM '$dataset/queries.copy' (FORMAT binary);
CREATE TEMP TABLE base (id int, v vector($dim));
COPY base FROM '$dataset/base.copy' (FORMAT binary);
$(for i in 1 2; do cat <<-EOS
	CREATE SERVER shard$i FOREIGN DATA WRAPPER postgres_fdw
		OPTIONS (host '$PGHOST', port '$((PGPORT + i))', dbname 'postgres',
				 extensions 'gnnvec', fetch_size '10', batch_size '1000',
				 options '-c gnnvec.ef_search=40');
	CREATE USER MAPPING FOR CURRENT_USER SERVER shard$i;
	CREATE FOREIGN TABLE items_$i PARTITION OF items FOR VALUES WITH (MODULUS 2, REMAINDER $((i - 1)))
		SERVER shard$i OPTIONS (table_name 'items_s');
EOS
done)
\timing on
INSERT INTO items SELECT id, v FROM base;
SQL
shard_builds=
for i in 1 2; do
	psql_q postgres -p $((PGPORT + i)) -c 'VACUUM ANALYZE items_s'
	t=$(timed postgres -p $((PGPORT + i)) -c "CREATE INDEX items_s_v ON items_s USING gnnhnsw (v $opclass)")
	shard_builds="$shard_builds ${t}s"
	echo "shard $i: $(psql_q postgres -p $((PGPORT + i)) -At -c 'SELECT count(*) FROM items_s') rows"
done
psql_q shard_coord -c 'ANALYZE items'
echo "index builds: single ${single_build}s; shards$shard_builds"

# --- searches
csv=$out/shard.csv
echo "setup,ef,fetch_size,seconds,queries,recall10" >"$csv"
nq=$(psql_q shard_single -At -c 'SELECT count(*) FROM queries')
recall() {
	/usr/bin/python3 -c "
import sys; sys.path.insert(0, '$here')
import index_results as r
meta = r.load_meta('$dataset')
print('%.4f' % r.results_recall('$1', r.load_gt10('$dataset', meta)))"
}
# measure SETUP TOPK EF FETCH DB [psql args...]: best of 3 of the statement
# answering every query through LATERAL (TOPK), TOPK a query of q.v
measure() {
	local setup=$1 topk=$2 ef=$3 fetch=$4 db=$5 best= t res=$out/${1}_ef${3}_fetch${4}.csv
	shift 5
	for _ in 1 2 3; do
		t=$(timed "$db" "$@" -c "COPY (SELECT q.id, r.id FROM queries q CROSS JOIN LATERAL ($topk) r)
				TO '$res' (FORMAT csv)")
		if [ -z "$best" ] || awk "BEGIN { exit !($t < $best) }"; then best=$t; fi
	done
	echo "$setup,$ef,$fetch,$best,$nq,$(recall "$res")" >>"$csv"
}
nearest() { echo "SELECT id FROM $1 ORDER BY v $op q.v LIMIT 10"; }
shard_options() {
	local ef=$1 fetch=$2
	for i in 1 2; do
		psql_q shard_coord -c "ALTER SERVER shard$i OPTIONS (SET fetch_size '$fetch',
			SET options '-c gnnvec.ef_search=$ef')"
	done
}
for ef in $ef_list; do
	measure single "$(nearest items)" "$ef" - shard_single -c "SET gnnvec.ef_search = $ef"
	measure shard1_alone "$(nearest items_s)" "$ef" - postgres -p $((PGPORT + 1)) -c "SET gnnvec.ef_search = $ef"
	shard_options "$ef" 10
	measure two_shards "$(nearest items)" "$ef" 10 shard_coord
	measure shard1_via_fdw "$(nearest items_1)" "$ef" 10 shard_coord
	# shard_topk orders by <->
	[ "$op" = '<->' ] && measure two_shards_dblink "SELECT id FROM shard_topk('{shard1,shard2}', q.v, 10)" "$ef" - shard_coord
	if [ "$ef" = 40 ]; then
		shard_options "$ef" 100
		measure two_shards "$(nearest items)" "$ef" 100 shard_coord
	fi
	tail -n +2 "$csv" | grep ",$ef," | sed 's/^/  /'
done

echo
echo "| setup | ef_search | fetch_size | q/s | recall@10 | q/s / single |"
echo "|---|---:|---:|---:|---:|---:|"
awk -F, 'NR > 1 {
	qps = $5 / $4
	if ($1 == "single") ref[$2] = qps
	printf "| %s | %s | %s | %.0f | %s | %.2fx |\n", $1, $2, $3, qps, $6, qps / ref[$2]
}' "$csv"
