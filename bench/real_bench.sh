#!/usr/bin/env bash
# The real-data index benchmark, run by test/run.sh bench (BENCH_SCRIPT) as the
# server user against its throwaway cluster:
#
#   real_bench.sh DATA_DIR OUT_DIR
#
# For each set named in REAL_SETS (directories under DATA_DIR), one after the
# other so that the three engines of a set are measured minutes apart:
# hnswlib (hnswlib_ref.py), gnnhnsw with the hnsw and the cagra build
# (pg_bench.sh), and pgvector's hnsw (pg_bench.sh, ENGINE=pgvector) when
# pgvector is installed in this cluster's installation.  Results go to
# OUT_DIR/real/SET/.
set -euo pipefail
data=$1
out=$2
here=$(dirname "$0")
export EF_LIST=${EF_LIST:-10 20 40 80 120 200 400}
have_pgvector=$(psql -X -At -d postgres -c "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")

for set in $REAL_SETS; do
	dir=$data/$set
	res=$out/real/$set
	mkdir -p "$res"
	echo "== $set: hnswlib (2 build threads, 1 query thread)"
	/usr/bin/python3 "$here/hnswlib_ref.py" "$dir" "$res/hnswlib.csv" "${M:-16}" "${EF_CONSTRUCTION:-64}" 2
	echo "== $set: gnnhnsw"
	bash "$here/pg_bench.sh" "$dir" "$res"
	if [ "$have_pgvector" = 1 ]; then
		echo "== $set: pgvector"
		ENGINE=pgvector bash "$here/pg_bench.sh" "$dir" "$res"
	else
		echo "== $set: pgvector skipped (not installed; set PGVECTOR_SRC to a pgvector source tree)"
	fi
	# the next set's tables replace these; free their space now
	dropdb --if-exists gnnvec_bench
	dropdb --if-exists pgvector_bench
done
