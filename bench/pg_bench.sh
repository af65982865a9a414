#!/usr/bin/env bash
# The PostgreSQL half of the index benchmark, run by test/run.sh bench as the
# server user against its throwaway cluster (PGHOST/PGPORT set).
#
#   pg_bench.sh DATASET_DIR OUT_DIR
#
# Loads base and queries with binary COPY, builds the index (timed), and for
# each ef_search runs ONE statement that answers all queries through
# LATERAL (... ORDER BY embedding <-> q.embedding LIMIT 10), timed, best of 3.
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

# wall time of one statement in seconds, measured by psql's \timing
timed() {
	psql -X -q -v ON_ERROR_STOP=1 -d $db -c '\timing on' "$@" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1 |
		awk '{ printf "%.4f", $1 / 1000 }'
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
	local name=$1 prefix=$2 reps=$3 with=$4 csv="$out/${csv_prefix}_$1.csv" build bytes best t
	echo "kind,ef,seconds,queries,bytes" >"$csv"
	psql_q -c 'DROP INDEX IF EXISTS items_embedding'
	build=$(timed -c "CREATE INDEX items_embedding ON items USING $am (embedding $opclass) WITH ($with)")
	bytes=$(psql_q -At -c "SELECT pg_relation_size('items_embedding')")
	echo "build,0,$build,$n,$bytes" >>"$csv"
	echo "$ext $am ($name) build: ${build}s for $n rows, index $bytes bytes"

	for ef in $ef_list; do
		best=
		for _ in $(seq "$reps"); do
			t=$(timed -c "SET $guc = $ef" -c "SET enable_seqscan = off" \
				-c "COPY (SELECT q.id, r.id FROM queries q CROSS JOIN LATERAL
				          (SELECT id FROM items ORDER BY embedding $op q.embedding LIMIT 10) r)
				    TO '$out/${prefix}_ef$ef.csv' (FORMAT csv)")
			if [ -z "$best" ] || awk "BEGIN { exit !($t < $best) }"; then best=$t; fi
		done
		echo "search,$ef,$best,$nq,0" >>"$csv"
		echo "$ext $am ($name) ef_search=$ef: ${best}s for all queries"
	done
}

bench_index hnsw ${csv_prefix}_results 3 "m = $m, ef_construction = $efc"
# build_method = 'cagra' is ours alone
if [ "$engine" = gnnvec ]; then
	bench_index cagra pg_cagra_results "${CAGRA_REPS:-3}" \
		"m = $m, ef_construction = $efc, build_method = 'cagra', device = 'cpu', graph_degree = $((2 * m)), intermediate_graph_degree = $((3 * m))"
fi
