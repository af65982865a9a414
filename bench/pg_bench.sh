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
set -euo pipefail
dataset=$1
out=$2
dim=$(sed -n 's/^dim=//p' "$dataset/meta.txt")
m=${M:-16}
efc=${EF_CONSTRUCTION:-64}
db=gnnvec_bench
psql_q() { psql -X -q -v ON_ERROR_STOP=1 -d $db "$@"; }

# wall time of one statement in seconds, measured by psql's \timing
timed() {
	psql -X -q -v ON_ERROR_STOP=1 -d $db -c '\timing on' "$@" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' | tail -1 |
		awk '{ printf "%.4f", $1 / 1000 }'
}

dropdb --if-exists $db
createdb $db
psql_q <<SQL
CREATE EXTENSION gnnvec;
CREATE TABLE items (id int PRIMARY KEY, embedding vector($dim));
CREATE TABLE queries (id int PRIMARY KEY, embedding vector($dim));
COPY items FROM '$dataset/base.copy' (FORMAT binary);
COPY queries FROM '$dataset/queries.copy' (FORMAT binary);
VACUUM ANALYZE items;
VACUUM ANALYZE queries;
SQL
n=$(psql_q -At -c 'SELECT count(*) FROM items')
nq=$(psql_q -At -c 'SELECT count(*) FROM queries')

# bench_index NAME RESULTS_PREFIX WITH_OPTIONS: build (timed), size, searches
bench_index() {
	local name=$1 prefix=$2 with=$3 csv="$out/pg_$1.csv" build bytes best t
	echo "kind,ef,seconds,queries,bytes" >"$csv"
	psql_q -c 'DROP INDEX IF EXISTS items_embedding'
	build=$(timed -c "CREATE INDEX items_embedding ON items USING gnnhnsw (embedding vector_l2_ops) WITH ($with)")
	bytes=$(psql_q -At -c "SELECT pg_relation_size('items_embedding')")
	echo "build,0,$build,$n,$bytes" >>"$csv"
	echo "gnnhnsw ($name) build: ${build}s for $n rows, index $bytes bytes"

	for ef in 10 20 40 80 160; do
		best=
		for rep in 1 2 3; do
			t=$(timed -c "SET gnnvec.ef_search = $ef" -c "SET enable_seqscan = off" \
				-c "COPY (SELECT q.id, r.id FROM queries q CROSS JOIN LATERAL
				          (SELECT id FROM items ORDER BY embedding <-> q.embedding LIMIT 10) r)
				    TO '$out/${prefix}_ef$ef.csv' (FORMAT csv)")
			if [ -z "$best" ] || awk "BEGIN { exit !($t < $best) }"; then best=$t; fi
		done
		echo "search,$ef,$best,$nq,0" >>"$csv"
		echo "gnnhnsw ($name) ef_search=$ef: ${best}s for all queries"
	done
}

bench_index hnsw pg_results "m = $m, ef_construction = $efc"
bench_index cagra pg_cagra_results \
	"m = $m, ef_construction = $efc, build_method = 'cagra', device = 'cpu', graph_degree = $((2 * m)), intermediate_graph_degree = $((3 * m))"
