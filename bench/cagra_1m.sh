#!/usr/bin/env bash
# bench/cagra_1m.sh DATA_DIR OUT_DIR: does a CPU CAGRA build of a large set
# fit maintenance_work_mem?  Run by test/run.sh bench as the server user:
#
#	BENCH_SCRIPT=cagra_1m.sh bash test/run.sh bench synthetic-1m-128
#
# Loads DATA_DIR/base.copy, builds build_method = 'cagra' (device cpu, m
# 16, graph_degree 32, intermediate_graph_degree 48) on 2 threads with
# maintenance_work_mem = ${CAGRA_MEM:-2GB}, and prints the build's stage
# timings (DEBUG1), its wall time and the backend's peak resident memory
# (VmHWM, sampled every 2 s).
set -euo pipefail
dataset=$1
db=gnnvec_cagra_1m
dim=$(sed -n 's/^dim=//p' "$dataset/meta.txt")
dropdb --if-exists $db
createdb $db
psql -X -q -v ON_ERROR_STOP=1 -d $db <<SQL
CREATE EXTENSION gnnvec;
CREATE TABLE items (id int PRIMARY KEY, embedding vector($dim));
COPY items FROM '$dataset/base.copy' (FORMAT binary);
VACUUM ANALYZE items;
SQL
psql -X -v ON_ERROR_STOP=1 -d $db <<SQL &
SET maintenance_work_mem = '${CAGRA_MEM:-2GB}';
SET max_parallel_maintenance_workers = 1;
SET client_min_messages = debug1;
\timing on
CREATE INDEX items_cagra ON items USING gnnhnsw (embedding vector_l2_ops)
	WITH (m = 16, build_method = 'cagra', device = 'cpu', graph_degree = 32,
		  intermediate_graph_degree = 48);
\timing off
SELECT pg_size_pretty(pg_relation_size('items_cagra')) AS index_size;
SQL
client=$!
# the building backend's peak resident memory, read while it lives
backend= hwm=
while kill -0 $client 2>/dev/null; do
	[ -n "$backend" ] || backend=$(psql -X -At -d $db -c "SELECT pid FROM pg_stat_activity
		WHERE datname = '$db' AND query LIKE 'CREATE INDEX items_cagra%'")
	[ -z "$backend" ] || hwm=$(sed -n 's/^VmHWM: *//p' "/proc/$backend/status" 2>/dev/null || echo "$hwm")
	sleep 2
done
wait $client
echo "backend peak resident memory (VmHWM, shared buffers included): $hwm"
dropdb $db
