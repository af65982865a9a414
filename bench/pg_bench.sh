#!/usr/bin/env bash
# The PostgreSQL half of the index benchmark, run by test/run.sh bench as the
# server user against its throwaway cluster (PGHOST/PGPORT set).
#
#   pg_bench.sh DATASET_DIR OUT_DIR
#
# Loads base and queries with binary COPY, builds the index (timed), and for
# each ef_search runs ONE statement that answers all queries through
# LATERAL (... ORDER BY embedding <-> q.embedding LIMIT 10), timed twice in
# each of 3 new sessions: the first time in a new backend (cold_* columns)
# and the steady state after it, best of 3 each.  The server has gnnvec
# preloaded (test/run.sh), so gnnhnsw's scan cache is shared: the first
# session fills it, and the best new backend meets it warm, as pgvector's
# meets shared_buffers warm.
# Writes OUT_DIR/pg_hnsw.csv and OUT_DIR/pg_results_ef*.csv (query id, item id);
# then the same for an index built with build_method = 'cagra' (same m,
# graph_degree 2m, intermediate_graph_degree 3m): OUT_DIR/pg_cagra.csv and
# OUT_DIR/pg_cagra_results_ef*.csv.
#
# Environment: M, EF_CONSTRUCTION; EF_LIST (ef_search values, default
# "10 20 40 80 160"); CAGRA_REPS (timed runs per ef for the CAGRA build, 3);
# ENGINE=pgvector measures pgvector's hnsw instead, in its own database (its
# type "vector" cannot live beside ours), writing OUT_DIR/pgv_hnsw.csv and
# OUT_DIR/pgv_results_ef*.csv.  The metric (l2 or cosine) comes from
# DATASET_DIR/meta.txt.
set -euo pipefail
dataset=$1
out=$2
dim=$(sed -n 's/^dim=//p' "$dataset/meta.txt")
metric=$(sed -n 's/^metric=//p' "$dataset/meta.txt")
m=${M:-16}
efc=${EF_CONSTRUCTION:-64}
ef_list=${EF_LIST:-10 20 40 80 160}
case ${metric:-l2} in
	l2) opclass=vector_l2_ops op='<->' ;;
	cosine) opclass=vector_cosine_ops op='<=>' ;;
	*) echo "pg_bench.sh: unknown metric $metric" >&2; exit 2 ;;
esac
engine=${ENGINE:-gnnvec}
case $engine in
	gnnvec) db=gnnvec_bench ext=gnnvec am=gnnhnsw guc=gnnvec.ef_search csv_prefix=pg ;;
	pgvector) db=pgvector_bench ext=vector am=hnsw guc=hnsw.ef_search csv_prefix=pgv ;;
	*) echo "pg_bench.sh: unknown ENGINE $engine" >&2; exit 2 ;;
esac
psql_q() { psql -X -q -v ON_ERROR_STOP=1 -d $db "$@"; }

# CPU seconds used so far by the backend: /proc/self/schedstat counts its
# main thread in nanoseconds (scans are single-threaded); /proc/self/stat
# counts every thread, in clock ticks (CAGRA builds run threads of their own)
cpu_thread="split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint / 1e9"
cpu_process="(split_part(pg_read_file('/proc/self/stat'), ' ', 14)::bigint +
	split_part(pg_read_file('/proc/self/stat'), ' ', 15)::bigint) / $(getconf CLK_TCK)::numeric"

# timed RUNS CPU_EXPR [-c SQL ...] -c STATEMENT: "WALL CPU" for each of RUNS
# runs of the last statement in one session, the seconds by psql's \timing
# and by CPU_EXPR, so that the second does not depend on what else runs on
# a shared machine
timed() {
	local runs=$1 cpu=$2 last=${*: -1} one
	set -- "${@:3:$#-4}"
	one="SELECT $cpu AS cpu0 \gset
\timing on
$last;
\timing off
SELECT 'cpu ' || ($cpu - :cpu0);"
	for _ in $(seq "$runs"); do echo "$one"; done |
		psql -X -q -At -v ON_ERROR_STOP=1 -d $db "$@" -f - |
		awk '/^Time: / { wall = $2 / 1000 }
			/^cpu / { out = out sep sprintf("%.4f %.4f", wall, $2); sep = " " }
			END { print out }'
}

# best CURRENT NEW: the smaller (CURRENT may be empty)
best() {
	if [ -z "$1" ] || awk "BEGIN { exit !($2 < $1) }"; then echo "$2"; else echo "$1"; fi
}

dropdb --if-exists $db
createdb $db
psql_q <<SQL
CREATE EXTENSION $ext;
CREATE TABLE items (id int PRIMARY KEY, embedding vector($dim));
CREATE TABLE queries (id int PRIMARY KEY, embedding vector($dim));
COPY items FROM '$dataset/base.copy' (FORMAT binary);
COPY queries FROM '$dataset/queries.copy' (FORMAT binary);
VACUUM ANALYZE items;
VACUUM ANALYZE queries;
SQL
n=$(psql_q -At -c 'SELECT count(*) FROM items')
nq=$(psql_q -At -c 'SELECT count(*) FROM queries')

# bench_index NAME RESULTS_PREFIX REPS WITH_OPTIONS: build (timed), size, searches
bench_index() {
	local name=$1 prefix=$2 reps=$3 with=$4 csv="$out/${csv_prefix}_$1.csv" build bytes t wall cpu
	echo "kind,ef,seconds,queries,bytes,cpu_seconds,cold_seconds,cold_cpu_seconds" >"$csv"
	psql_q -c 'DROP INDEX IF EXISTS items_embedding'
	# serial, so that the backend's CPU time is the whole build's work
	build=$(timed 1 "$cpu_process" -c "SET max_parallel_maintenance_workers = 0" \
		-c "CREATE INDEX items_embedding ON items USING $am (embedding $opclass) WITH ($with)")
	# a build that fails (a CAGRA build beyond maintenance_work_mem) is
	# reported and skipped; the caller goes on with the next engine
	if [ "$(psql_q -At -c "SELECT to_regclass('items_embedding') IS NOT NULL")" != t ]; then
		echo "$ext $am ($name) build failed: skipped"
		rm -f "$csv"
		return 1
	fi
	bytes=$(psql_q -At -c "SELECT pg_relation_size('items_embedding')")
	echo "build,0,${build% *},$n,$bytes,${build#* },," >>"$csv"
	echo "$ext $am ($name) build: ${build% *}s wall, ${build#* }s CPU for $n rows, index $bytes bytes"

	for ef in $ef_list; do
		wall= cpu= cold_wall= cold_cpu=
		for _ in $(seq "$reps"); do
			# each run is a new backend: its first statement fills what it
			# keeps between statements (what gnnhnsw's shared scan cache
			# lacks), the second is the steady state a pooled connection sees
			t=$(timed 2 "$cpu_thread" -c "SET $guc = $ef" -c "SET enable_seqscan = off" \
				-c "COPY (SELECT q.id, r.id FROM queries q CROSS JOIN LATERAL
				          (SELECT id FROM items ORDER BY embedding $op q.embedding LIMIT 10) r)
				    TO '$out/${prefix}_ef$ef.csv' (FORMAT csv)")
			read -r w1 c1 w2 c2 <<<"$t"
			# best of the runs, each clock on its own
			wall=$(best "$wall" "$w2") cpu=$(best "$cpu" "$c2")
			cold_wall=$(best "$cold_wall" "$w1") cold_cpu=$(best "$cold_cpu" "$c1")
		done
		echo "search,$ef,$wall,$nq,0,$cpu,$cold_wall,$cold_cpu" >>"$csv"
		echo "$ext $am ($name) ef_search=$ef: ${wall}s wall, ${cpu}s CPU for all queries (new backend: ${cold_wall}s, ${cold_cpu}s CPU)"
	done
}

bench_index hnsw ${csv_prefix}_results 3 "m = $m, ef_construction = $efc"
# build_method = 'cagra' is ours alone
if [ "$engine" = gnnvec ]; then
	bench_index cagra pg_cagra_results "${CAGRA_REPS:-3}" \
		"m = $m, ef_construction = $efc, build_method = 'cagra', device = 'cpu', graph_degree = $((2 * m)), intermediate_graph_degree = $((3 * m))" || true
fi
